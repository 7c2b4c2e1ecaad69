"""A large job's stall reports, written the way the real capture writes them
(``json.dumps(indent=1)``), for benchmarks/bench_stacks_scale.py and the test that checks its
shape against the verdict (tests/cli/test_stacks_collectives.py).

Each rank's dump holds 3 threads of :data:`FRAMES` frames (the innermost with their local
values) and :data:`ENTRIES` Flight Recorder entries in each of 2 process groups whose member
lists are given in full. One rank is stuck in user code before collective #N and two ranks
called ``broadcast`` where the others called ``all_reduce``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FRAMES = 24
ENTRIES = 8

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
