"""Figures for ``amldbg stacks`` over a large job: 4,096 ranks' stall reports with their
collective records (``--quick``: 256 ranks), written the way the real capture writes them
(``json.dumps(indent=1)``; 3 threads of 24 frames each, the innermost frames with their local
values, 8 Flight Recorder entries in each of 2 process groups whose member lists are given in
full). One rank is stuck in user code before collective #N and two ranks called ``broadcast``
where the others called ``all_reduce``.

Each row runs the real command in a child process and reads that child's own peak resident
memory (``ru_maxrss`` from ``os.wait4``) and wall time:

1. ``amldbg stacks DIR --json``: the verdict (goal <= 5 s and <= 1 GB);
2. ``amldbg stacks DIR``: the text report;
3. ``amldbg stacks DIR --html FILE``: the page too (not run while amldbg.cli.stacks_html
   does not exist).

Every run's output is checked (the verdict names the stuck rank and the mismatching pair):
a fast wrong answer is not a figure.

Run: python benchmarks/bench_stacks_scale.py [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PY, ROOT, Row, child_env, goal_text, run_alone

FULL_RANKS = 4096
QUICK_RANKS = 256
FRAMES = 24
ENTRIES = 8
GOAL_SECONDS = 5.0
GOAL_BYTES = 1 << 30

LIB = "/opt/conda/lib/python3.11/site-packages/torch"
CODE = "/mnt/azureml/cr/j/1a2b3c/exe/wd"


def _frame(file: str, line: int, function: str, code: str, values: dict[str, str] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"file": file, "line": line, "function": function,
                             "library": file.startswith("/opt/"), "code": code}
    if values is not None:
        frame["locals"] = values
    return frame


def _padded(frames: list[dict[str, Any]], at: int, first_line: int, function: str) -> list[dict[str, Any]]:
    """``frames`` with library frames inserted at index ``at`` to make :data:`FRAMES` (the
    framework between the user's code and where it waits)."""
    middle = [
        _frame(f"{LIB}/nn/modules/module.py", first_line + 7 * i, f"{function}_{i}",
               f"return forward_call(*args, **kwargs)  # level {i}")
        for i in range(FRAMES - len(frames))
    ]
    return frames[:at] + middle + frames[at:]


def _user_values(kind: str) -> dict[str, str]:
    # Ten values per user frame, as a training loop holds them; "__RANK__" and "__LOSS__"
    # differ from rank to rank, the rest is the same everywhere.
    return {
        "self": "Trainer(model=DistributedDataParallel(...), epochs=3, lr=0.0003)",
        "batch": "<Tensor shape=(32, 512) dtype=torch.float16 device=cpu>",
        "target": "<Tensor shape=(32,) dtype=torch.int64 device=cpu>",
        "step": "1200", "epoch": "2", "rank": "__RANK__", "loss": "__LOSS__",
        "shard": "'/mnt/data/shards/part-00017.pt'", "kind": repr(kind),
        "args": "Namespace(batch_size=32, epochs=3, hf_token=<hidden>)",
    }


def _main_thread(kind: str) -> list[dict[str, Any]]:
    if kind == "stuck":
        inner = [
            _frame(f"{CODE}/train.py", 210, "main", "trainer.fit(loader)", _user_values(kind)),
            _frame(f"{CODE}/train.py", 150, "fit", "batch = self.next_batch()", _user_values(kind)),
            _frame(f"{CODE}/data.py", 61, "next_batch", "return wait_for_shard(path)", _user_values(kind)),
            _frame(f"{CODE}/data.py", 47, "wait_for_shard", "time.sleep(1.0)", _user_values(kind)),
        ]
    else:
        op = "broadcast" if kind == "mismatch" else "all_reduce"
        inner = [
            _frame(f"{CODE}/train.py", 210, "main", "trainer.fit(loader)", _user_values(kind)),
            _frame(f"{CODE}/train.py", 152, "fit", "loss = self.step(batch)", _user_values(kind)),
            _frame(f"{CODE}/train.py", 96, "step", f"dist.{op}(grads)", _user_values(kind)),
            _frame(f"{LIB}/distributed/c10d_logger.py", 81, "wrapper", "return func(*args, **kwargs)"),
            _frame(f"{LIB}/distributed/distributed_c10d.py", 2810 if op == "all_reduce" else 2610, op,
                   "work.wait()", {"tensor": "<Tensor shape=(4096, 1024) dtype=torch.float32 device=cpu>",
                                   "op": "<RedOpType.SUM: 0>", "group": "None", "async_op": "False"}),
        ]
    return _padded(inner, 1 if kind == "stuck" else 3, 1700, "_call_impl")


def _other_thread(name: str) -> list[dict[str, Any]]:
    inner = [
        _frame("/opt/conda/lib/python3.11/threading.py", 1002, "_bootstrap_inner", "self.run()"),
        _frame("/opt/conda/lib/python3.11/threading.py", 982, "run", "self._target(*self._args, **self._kwargs)"),
        _frame(f"{LIB}/utils/data/_utils/{name}.py", 53, f"_{name}_loop", "r = in_queue.get(timeout=MP_STATUS_CHECK_INTERVAL)"),
        _frame("/opt/conda/lib/python3.11/queue.py", 180, "get", "self.not_empty.wait(remaining)"),
        _frame("/opt/conda/lib/python3.11/threading.py", 331, "wait", "gotit = waiter.acquire(True, timeout)",
               {"self": "<Condition(<unlocked _thread.lock object>, 1)>", "timeout": "4.99",
                "waiter": "<_thread.lock object>", "gotit": "False"}),
    ]
    return _padded(inner, 2, 400, "_wrapped")


def _entries(last: int, op_at_last: str, sizes: list[list[int]]) -> list[dict[str, Any]]:
    entries = []
    for seq in range(max(1, last - ENTRIES + 1), last + 1):
        op = op_at_last if seq == last else "all_reduce"
        entries.append({"seq": seq, "op": op, "sizes": sizes, "dtypes": ["float"],
                        "state": "scheduled" if seq == last else "completed"})
    return entries


def _template(kind: str, world: int, seq: int) -> str:
    """The dump file of one kind of rank, as text, with ``__RANK__``-like placeholders."""
    last = seq - 1 if kind == "stuck" else seq
    dump = {
        "amldbg_stacks": 1, "reason": "stall",
        "detail": "the main thread has not moved for 600 s", "time": "2026-03-01T10:00:00.000+00:00",
        "seq": 1, "rank": "__RANK__", "local_rank": "__LOCAL__", "world_size": world,
        "node_rank": "__NODE__", "launcher": "torchrun", "pid": "__PID__", "host": "__HOST__",
        "threads": [
            {"name": "MainThread", "ident": 140001, "main": True, "daemon": False, "frames": _main_thread(kind)},
            {"name": "pin_memory", "ident": 140002, "main": False, "daemon": True, "frames": _other_thread("pin_memory")},
            {"name": "Thread-3 (_worker)", "ident": 140003, "main": False, "daemon": True, "frames": _other_thread("worker")},
        ],
        "collectives": {
            "recorder": "on", "backend": "gloo",
            "groups": [
                {"process_group": "default_pg", "pg": "0", "size": world,  # as the capture writes the whole world
                 "last_enqueued": last, "last_started": None, "last_completed": seq - 1,
                 "entries": _entries(last, "broadcast" if kind == "mismatch" else "all_reduce", [[4096, 1024]])},
                # One group per node of 8 (torch's new_subgroups): each rank is in one.
                {"process_group": "__NODEPG__", "pg": "__NODEPGNAME__", "ranks": "__NODEMEMBERS__",
                 "last_enqueued": 40, "last_started": None, "last_completed": 40,
                 "entries": _entries(40, "all_gather", [[1024], [1024]])},
            ],
        },
        "file": "__FILE__",
    }
    return json.dumps(dump, indent=1) + "\n"


def write_job(folder: Path, world: int) -> dict[str, Any]:
    """Write ``world`` ranks' dump files into ``folder``; return what the verdict must say."""
    seq = 1200
    stuck, pair = world * 3 // 10, [world // 2, world // 2 + 1]
    templates = {kind: _template(kind, world, seq) for kind in ("normal", "stuck", "mismatch")}
    for rank in range(world):
        kind = "stuck" if rank == stuck else "mismatch" if rank in pair else "normal"
        node = rank // 8
        pid = 20000 + rank
        name = f"stacks-rank{rank}-pid{pid}-1.json"
        text = (templates[kind]
                .replace('"__RANK__"', str(rank)).replace("__RANK__", str(rank))
                .replace('"__LOCAL__"', str(rank % 8)).replace('"__NODE__"', str(node))
                .replace('"__PID__"', str(pid)).replace("__HOST__", f"node-{node}")
                .replace("__LOSS__", f"{2.0 + rank / 10000:.4f}")
                .replace("__FILE__", f"/mnt/azureml/outputs/amldbg/{name}")
                .replace("__NODEPGNAME__", str(node + 1)).replace("__NODEPG__", f"node{node}")
                .replace('"__NODEMEMBERS__"', json.dumps(list(range(node * 8, node * 8 + 8)))))
        (folder / name).write_text(text)
    return {"seq": seq, "stuck": stuck, "pair": pair}


def _run(argv: list[str], out: Path) -> tuple[float, float, int, int]:
    """Run ``argv`` with stdout to ``out``: (wall seconds, CPU seconds, peak RSS bytes, status)."""
    with open(out, "wb") as handle:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=ROOT)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[3:]} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, proc.returncode


def _check(kind: str, out: Path, expect: dict[str, Any]) -> None:
    seq, stuck, pair = expect["seq"], expect["stuck"], expect["pair"]
    text = out.read_text()
    if kind == "json":
        finding = json.loads(text)["collectives"][0]
        ok = finding["seq"] == seq and finding["missing"] == [stuck] and \
            [m["ranks"] for m in finding["mismatch"]] == [pair]
    else:
        ok = (f"rank {stuck} never entered it (at data.py:47 in wait_for_shard)" in text
              and f"ranks {pair[0]}-{pair[1]} entered broadcast" in text)
    if not ok:
        raise RuntimeError(f"amldbg stacks ({kind}) gave the wrong verdict:\n{text[:3000]}")


def _figure(values: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    return (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values),
            max(v[2] for v in values))


def scale(quick: bool = False) -> dict[str, tuple[float, float, int] | None]:
    """Print and return, per row, (median wall s, median CPU s, peak RSS bytes); ``None``
    for a row that could not run."""
    world = QUICK_RANKS if quick else FULL_RANKS
    rounds = 1 if quick else 3
    folder = Path(tempfile.mkdtemp(prefix="amldbg-bench-stacks-"))
    figures: dict[str, tuple[float, float, int] | None] = {}
    try:
        dumps = folder / "outputs" / "amldbg"
        dumps.mkdir(parents=True)
        started = time.perf_counter()
        expect = write_job(dumps, world)
        size = sum(p.stat().st_size for p in dumps.iterdir())
        print(f"{world} ranks' dump files ({size / 2**20:.0f} MiB, {size / world / 1024:.0f} KiB each: "
              f"3 threads x {FRAMES} frames with values, 2 process groups x {ENTRIES} entries) "
              f"written in {time.perf_counter() - started:.1f} s")
        base = [PY, "-m", "amldbg", "stacks", str(dumps)]
        rows = {"json": base + ["--json"], "text": base, "html": base + ["--html", str(folder / "job.html")]}
        for name, argv in rows.items():
            values = []
            for _ in range(rounds):
                out = folder / f"{name}.out"
                took, cpu, peak, _ = _run(argv, out)
                _check("json" if name == "json" else "text", out, expect)
                values.append((took, cpu, peak))
            figures[name] = _figure(values)
        html_size = (folder / "job.html").stat().st_size if (folder / "job.html").exists() else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    what = {"json": "--json (the verdict)", "text": "the text report", "html": "--html FILE (the page)"}
    for name, figure in figures.items():
        if figure is None:
            print(f"amldbg stacks over {world} ranks, {what[name]}: not run (amldbg.cli.stacks_html "
                  "does not exist yet)")
            continue
        took, cpu, peak = figure
        goal = ""
        if name == "json":
            met = took <= GOAL_SECONDS and peak <= GOAL_BYTES
            goal = f" (goal <= {GOAL_SECONDS:g} s and <= 1 GB: {goal_text(met)})"
        extra = f", page {html_size / 2**20:.1f} MiB" if name == "html" else ""
        print(f"amldbg stacks over {world} ranks, {what[name]}: {took:.2f} s wall, {cpu:.2f} s CPU, "
              f"peak RSS {peak / 2**20:.0f} MiB{extra} (median of {rounds} run{'s' if rounds != 1 else ''})"
              f"{goal}")
    return figures


def rows(figures: dict[str, tuple[float, float, int] | None], quick: bool = False) -> list[tuple[str, str, str, str]]:
    """The rows of benchmarks/run_all.py's table: (figure, measured, goal, met)."""
    world = QUICK_RANKS if quick else FULL_RANKS
    what = {"json": "the verdict (--json)", "text": "the text report", "html": "the HTML page (--html)"}
    found = []
    for name, title in what.items():
        figure = figures.get(name)
        label = f"amldbg stacks over {world} ranks' dumps with collectives: {title}"
        if figure is None:
            continue
        took, _, peak = figure
        measured = f"{took:.2f} s, {peak / 2**20:.0f} MiB peak"
        if name == "json":
            met = took <= GOAL_SECONDS and peak <= GOAL_BYTES
            found.append((label, measured, "<= 5 s, <= 1 GB", goal_text(met)))
        else:
            found.append((label, measured, "(shown)", ""))
    return found


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    return rows(scale(quick), quick)


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
