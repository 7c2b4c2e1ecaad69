"""Figures for the debugger: import cost, the cost of a disabled ``enable_remote_debug``, and
the pure-Python speed of a process after a debugger wait nobody answered, on the main thread
and on a thread the script starts after the wait, against a process that never enabled
debugging, measured in interleaved rounds.

Run: python benchmarks/bench_debug.py [--quick]   (needs debugpy; talks only to 127.0.0.1)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import time
import timeit

from _common import (
    PY,
    Ratio,
    Row,
    child_env,
    goal_text,
    interleaved,
    ratio,
    row,
    run_alone,
)

ENV = child_env()


def cpu(argv: list[str], runs: int) -> float:
    """Median CPU time (user + system) of running ``argv`` as a child process, in seconds.

    CPU time, not wall time: on a shared machine other processes move the wall clock of a
    50 ms interpreter start by more than the few milliseconds measured here."""
    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, env=ENV, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    times.sort()
    return times[len(times) // 2]


def import_cost(quick: bool = False) -> float:
    """Print and return the cost of ``import amldbg`` over a bare interpreter, in ms."""
    runs = 3 if quick else 30
    subprocess.run([PY, "-c", "import amldbg, amldbg.debugger.remote"], env=ENV, check=True)
    bare = cpu([PY, "-c", "pass"], runs)
    with_amldbg = cpu([PY, "-c", "import amldbg"], runs)
    argparse_too = cpu([PY, "-c", "import argparse"], runs)
    extra = 1000 * (with_amldbg - bare)
    print(f"import amldbg: {extra:.1f} ms over a bare interpreter ({1000 * bare:.1f} ms); "
          f"import argparse alone: {1000 * (argparse_too - bare):.1f} ms "
          f"(CPU time, median of {runs}; goal <= 10 ms)")
    return extra


def disabled_call_cost(quick: bool = False) -> float:
    """Print and return the cost of ``enable_remote_debug(args)`` with the flag off, in us."""
    setup = textwrap.dedent("""
        import argparse, amldbg
        parser = argparse.ArgumentParser(); amldbg.add_args(parser, env={})
        args = parser.parse_args([])
        enable = amldbg.enable_remote_debug
        def baseline(a): return getattr(a, "remote_debug", False)
    """)
    number, repeat = (2_000, 2) if quick else (20_000, 15)

    def best(statement: str) -> float:
        # CPU time of this thread: other processes on the machine do not count.
        times = timeit.repeat(statement, setup, number=number, repeat=repeat,
                              timer=time.thread_time)
        return min(times) / number

    off = best("enable(args)")
    off_env = best("enable()")
    base = best("baseline(args)")
    print(f"enable_remote_debug(args) with the flag off: {off * 1e6:.3f} us per call; "
          f"enable_remote_debug() reading the environment: {off_env * 1e6:.3f} us; "
          f"a plain function call reading the flag: {base * 1e6:.3f} us (goal <= 20 us)")
    return off * 1e6


# One child process: optionally a debugger wait nobody answers, then the same pure-Python loop
# on the main thread and on a thread started after the wait (best of a few runs each, in CPU
# time of the thread, so that the other work of a shared machine counts little).
LOOP = textwrap.dedent("""
    import json, sys, threading, time
    MODE, N, REPEAT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if MODE != "never":
        import amldbg
        amldbg.enable_remote_debug(enabled=True, timeout=0.5, port=0, listen_host="127.0.0.1",
                                   keep_tracing=(MODE == "keep-tracing"))

    def work(n):
        total = 0
        for i in range(n):
            total += i % 7
        return total

    def best(n, repeat):
        # CPU time of this thread: other processes competing for the cores do not count.
        fastest = float("inf")
        for _ in range(repeat):
            t = time.thread_time(); work(n); fastest = min(fastest, time.thread_time() - t)
        return fastest

    main = best(N, REPEAT)
    seen = {}
    def in_thread():
        seen["traced"] = sys.gettrace() is not None
        seen["loop"] = best(N, REPEAT)
    worker = threading.Thread(target=in_thread, name="prefetcher")
    worker.start(); worker.join()
    print("RESULT " + json.dumps({"main": main, "thread": seen["loop"],
                                  "thread_traced": seen["traced"]}), flush=True)
""")


def _child(mode: str, n: int, repeat: int) -> dict[str, float]:
    out = subprocess.run([PY, "-c", LOOP, mode, str(n), str(repeat)], capture_output=True,
                         text=True, env=ENV, timeout=300, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT "):])
    return result


def speed_after_wait(quick: bool = False, modes: tuple[str, ...] = ("timed-out",)
                     ) -> dict[str, Ratio]:
    """Speed ratios (never enabled / after the wait: 1.0 = full speed) of the main thread and
    of a thread started after the wait, per mode, as the median of interleaved rounds."""
    rounds, n, repeat = (1, 200_000, 2) if quick else (7, 1_000_000, 7)
    samples: dict[str, list[dict[str, float]]] = {}

    def measure(mode: str) -> float:
        samples.setdefault(mode, []).append(_child(mode, n, repeat))
        return 0.0

    interleaved({mode: (lambda m=mode: measure(m)) for mode in ("never", *modes)}, rounds)
    figures: dict[str, Ratio] = {}
    base = samples["never"]
    for mode in modes:
        runs = samples[mode]
        figures[f"{mode} main"] = ratio([(b["main"], r["main"]) for b, r in zip(base, runs)])
        figures[f"{mode} thread"] = ratio([(b["thread"], r["thread"]) for b, r in zip(base, runs)])
        traced = sum(1 for r in runs if r["thread_traced"])
        print(f"after a wait nobody answered ({mode}), pure-Python loop speed vs never enabled: "
              f"main thread {figures[f'{mode} main'].text()}, thread started after the wait "
              f"{figures[f'{mode} thread'].text()} (goal >= 0.95); that thread had a trace "
              f"function in {traced}/{len(runs)} runs")
    print(f"  (never enabled: {min(b['main'] for b in base) * 1000:.1f} ms of CPU per loop of "
          f"{n:,})")
    return figures


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    imported = import_cost(quick)
    disabled = disabled_call_cost(quick)
    speed = speed_after_wait(quick, modes=("timed-out", "keep-tracing"))
    return [
        ("import amldbg, over a bare interpreter (CPU time)", f"{imported:.1f} ms", "<= 10 ms",
         goal_text(imported <= 10)),
        ("enable_remote_debug(args) with the flag off, per call", f"{disabled:.3f} us",
         "<= 20 us", goal_text(disabled <= 20)),
        row("pure-Python speed, main thread, after a wait that timed out, vs never enabled",
            speed["timed-out main"], ">= 0.95", lambda v: v >= 0.95),
        row("the same on a thread started after that wait", speed["timed-out thread"],
            ">= 0.95", lambda v: v >= 0.95),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
