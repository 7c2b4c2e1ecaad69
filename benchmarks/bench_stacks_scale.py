"""Figures for ``amldbg stacks`` over a large job: 4,096 ranks' stall reports with their
collective records (``--quick``: 256 ranks), written by harness/stack_dumps.py the way the
real capture writes them (``json.dumps(indent=1)``; 3 threads of 24 frames each, the innermost
frames with their local values, 8 Flight Recorder entries in each of 2 process groups whose
member lists are given in full). One rank is stuck in user code before collective #N and two
ranks called ``broadcast`` where the others called ``all_reduce``.

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

from harness.stack_dumps import ENTRIES, FRAMES, write_job

FULL_RANKS = 4096
QUICK_RANKS = 256
GOAL_SECONDS = 5.0
GOAL_BYTES = 1 << 30


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
