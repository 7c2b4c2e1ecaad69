"""Figures for the scoring hooks with debugging off.

1. The per-call cost of ``@debug_run`` on a trivial ``run()`` (goal: <= 1 us extra), and of
   a disabled ``@debug_init`` call.
2. Requests per second of the real inference server (azmlinfsrv, one gunicorn worker) on
   samples/score.py with and without the decorators (goal: ratio >= 0.98). Both servers run
   side by side and, within each round, their requests alternate one by one (ABBA order, so
   a drift of the machine hits both alike); the figure is the median of the per-round
   ratios, shown with their range and interquartile range. Two ratios per round: the requests per second
   the client saw (wall clock), and the requests per second one worker can serve, from the
   CPU time the worker process spent per request (read from /proc/PID/task/*/schedstat).
   The second is the headline: on a shared machine other processes stealing the cores move
   the wall clock by tens of percent from one round to the next, but not a worker's CPU time
   per request.

Run: python benchmarks/bench_scoring.py [--quick]   (talks only to 127.0.0.1; a bounded
number of requests; every server it starts is stopped by its PID)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

from _common import ROOT, Ratio, Row, child_env, free_port, goal_text, ratio, row, run_alone

SCORE = ROOT / "samples" / "score.py"
# One hash seed for both servers, so that the two processes differ only by the decorators
# (not by how each laid out its dicts and sets).
ENV = dict(child_env(), PYTHONHASHSEED="0")
SERVER = ("import sys\nfrom azureml_inference_server_http import amlserver\n"
          "amlserver.DEFAULT_HOST = '127.0.0.1'\nsys.argv[0] = 'azmlinfsrv'\namlserver.run()\n")
READY = "ready for serving traffic"
BODY = json.dumps({"data": [[1.0, 2.0, 3.0]]}).encode()
# The amldbg decorator lines of a score.py, however it spells them (``@amldbg.debug_run``,
# ``@debug_run``, ``@amldbg.hooks.scoring.debug_init(...)``), with any trailing comment.
DECORATOR = re.compile(r"^[ \t]*@(?:[\w.]*\.)?debug_(?:init|run)\b.*\n", re.M)


def undecorated(source: str) -> str:
    """``source`` without amldbg's decorator lines; raises when it had none (so a renamed
    decorator fails loudly here instead of comparing a server with itself)."""
    plain, count = DECORATOR.subn("", source)
    if count == 0:
        raise SystemExit(f"no @debug_init/@debug_run line found in {SCORE}")
    return plain


def per_call_cost(quick: bool = False) -> float:
    """Print and return the extra cost of ``@debug_run`` per call with debugging off, in us."""
    for name in [k for k in os.environ if k.startswith(("AMLDBG_", "AZUREML_DEBUG"))]:
        os.environ.pop(name)
    from amldbg.hooks.scoring import debug_init, debug_run

    def plain(data: object) -> object:
        return data

    decorated = debug_run(plain)
    init = debug_init(lambda: None)
    # CPU time of this thread (other processes on the machine do not count), the two
    # measured in alternation, best of many short repeats.
    number, repeat = (20_000, 3) if quick else (200_000, 15)
    base = hooked = float("inf")
    for _ in range(repeat):
        base = min(base, timeit.timeit(lambda: plain(1), number=number, timer=time.thread_time))
        hooked = min(hooked, timeit.timeit(lambda: decorated(1), number=number,
                                           timer=time.thread_time))
    base, hooked = base / number, hooked / number
    print(f"run() undecorated: {base * 1e9:.0f} ns/call; @debug_run: {hooked * 1e9:.0f} ns/call; "
          f"extra {(hooked - base) * 1e9:.0f} ns (goal <= 1000 ns; CPU time, best of {repeat} "
          f"x {number})")
    init_number = 2_000 if quick else 20_000
    init_cost = empty = float("inf")
    for _ in range(repeat):
        init_cost = min(init_cost, timeit.timeit(init, number=init_number, timer=time.thread_time))
        empty = min(empty, timeit.timeit(lambda: None, number=init_number, timer=time.thread_time))
    init_cost, empty = init_cost / init_number, empty / init_number
    print(f"@debug_init with debugging off: {init_cost * 1e9:.0f} ns/call "
          f"(an empty call: {empty * 1e9:.0f} ns); debugpy imported: "
          f"{'debugpy' in sys.modules}")
    return (hooked - base) * 1e6


def start(entry: Path, workdir: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start the inference server on ``entry`` (one worker) and wait until it serves."""
    port = free_port()
    log = Path(workdir) / f"{entry.stem}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, "--entry_script", str(entry), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
            cwd=workdir)
    deadline = time.monotonic() + 120
    while READY not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc, log)
            raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc, port, log


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Stop the server by its PID, and its gunicorn workers by theirs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in re.findall(r"Booting worker with pid: (\d+)", log.read_text(errors="replace")):
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)


def worker_pids(log: Path) -> list[int]:
    """The gunicorn worker PIDs the server's log announced."""
    text = log.read_text(errors="replace")
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", text)]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes ``pids`` (all their threads) have used so far, in seconds."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def score(port: int) -> None:
    """One scoring request; raises unless the server answered 200."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=BODY, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"the server answered {answer.status}")


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the values themselves when there are fewer than 4)."""
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def _measure_pair(
    entries: list[tuple[str, Path]], workdir: str, rounds: int, per_round: int, warm: int,
    rates: dict[str, list[float]], capacity: dict[str, list[float]],
) -> None:
    """Start a server per entry (in this order), measure them in rounds of requests that
    alternate between them, and append each round's requests/s (client) and capacity (worker
    CPU) per server."""
    servers: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
    try:
        for name, entry in entries:
            servers[name] = start(entry, workdir)
        workers = {name: worker_pids(server[2]) for name, server in servers.items()}
        names = list(servers)
        for name in names:
            for _ in range(warm):
                score(servers[name][1])
        for _ in range(rounds):
            # The two servers' requests alternate one by one (ABBA), so whatever the machine
            # does (another process, the hypervisor taking the core) hits both alike.
            before = {name: cpu_seconds(workers[name]) for name in names}
            waited = dict.fromkeys(names, 0.0)
            for index in range(per_round):
                for name in names if index % 2 == 0 else names[::-1]:
                    started = time.perf_counter()
                    score(servers[name][1])
                    waited[name] += time.perf_counter() - started
            for name in names:
                used = cpu_seconds(workers[name]) - before[name]
                rates[name].append(per_round / waited[name])
                capacity[name].append(per_round / used if used > 0 else float("nan"))
    finally:
        for proc, _, log in servers.values():
            stop(proc, log)


def server_throughput(quick: bool = False, extra_per_call_us: float | None = None) -> Ratio:
    """Print both requests/s ratios (with the decorators / without, median over rounds of
    alternating requests) and return the headline one, from the worker's CPU time per request."""
    # Rounds per server pair, and pairs: each pair is a fresh start of both servers, the
    # second in the opposite order, so that which process started first (and got which
    # memory and CPU placement) does not favour one side.
    rounds, pairs, per_round, warm = (2, 1, 20, 5) if quick else (5, 4, 500, 100)
    rates: dict[str, list[float]] = {"plain": [], "decorated": []}
    capacity: dict[str, list[float]] = {"plain": [], "decorated": []}
    with tempfile.TemporaryDirectory() as workdir:
        plain_entry = Path(workdir) / "score_plain.py"
        plain_entry.write_text(undecorated(SCORE.read_text()))
        entries = [("plain", plain_entry), ("decorated", SCORE)]
        for pair in range(pairs):
            order = entries if pair % 2 == 0 else list(reversed(entries))
            _measure_pair(order, workdir, rounds, per_round, warm, rates, capacity)
    rounds *= pairs
    served = ratio(list(zip(capacity["decorated"], capacity["plain"])))
    seen = ratio(list(zip(rates["decorated"], rates["plain"])))
    served_q = quartiles([d / p for d, p in zip(capacity["decorated"], capacity["plain"])])
    seen_q = quartiles([d / p for d, p in zip(rates["decorated"], rates["plain"])])
    print(f"inference server, samples/score.py, one worker, {rounds} rounds x "
          f"{per_round} requests per server, alternating one by one ({pairs} fresh start(s) of "
          f"both servers); with / without the decorators (goal >= 0.98):")
    print(f"  requests/s one worker can serve (its CPU time per request): "
          f"{statistics.median(capacity['plain']):.0f} without, "
          f"{statistics.median(capacity['decorated']):.0f} with; ratio {served.text()}, "
          f"interquartile {served_q[0]:.3f}-{served_q[1]:.3f}")
    print(f"  requests/s the client saw (wall clock, shares the machine): "
          f"{statistics.median(rates['plain']):.0f} without, "
          f"{statistics.median(rates['decorated']):.0f} with; ratio {seen.text()}, "
          f"interquartile {seen_q[0]:.3f}-{seen_q[1]:.3f}")
    plain = statistics.median(capacity["plain"])
    if extra_per_call_us is not None and plain > 0:
        # One run() call per request: the measured per-call cost bounds the true effect.
        bound = 1 / (1 + extra_per_call_us * 1e-6 * plain)
        print(f"  ratio implied by the per-call cost of @debug_run at {plain:.0f} req/s: "
              f"{bound:.5f}")
    return served


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    extra_us = per_call_cost(quick)
    served = server_throughput(quick, extra_us)
    return [
        ("@debug_run per call, debugging off (extra over an undecorated call)",
         f"{extra_us:+.2f} us", "<= 1 us", goal_text(extra_us <= 1.0)),
        row("inference server requests/s with the decorators vs without", served, ">= 0.98",
            lambda v: v >= 0.98),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
