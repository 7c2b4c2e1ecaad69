"""Figures for logging: the cost of a logging call with the driver-log and Application Insights
handlers against a plain stdlib logger and against the guides' own ``AzureLogHandler`` set-up
measured in the same run (saturated: interleaved rounds, median of per-round ratios), the
paced cost, the p99 latency with the endpoint down or slow, how fast a process that
logged 10,000 records delivers and exits, how fast a process killed by SIGTERM in the middle
of an export ends and how much it delivered (next to SIGTERM's default action), and how many
records of ``fork`` pool workers arrive (next to the same pool started with ``spawn``).

Run: python benchmarks/bench_logs.py [--quick]   (needs opencensus-ext-azure and
azure-monitor-opentelemetry-exporter; talks only to 127.0.0.1: the ingestion server is
harness/ingestion_server.py, run as a program in a process of its own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from _common import (
    PY,
    Ratio,
    Row,
    child_env,
    fake_service,
    free_port,
    interleaved,
    ratio,
    row,
    run_alone,
    shown,
)

ENV = child_env()
os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BASELINE = "stdlib StreamHandler (baseline)"
OURS = "amldbg driver log + App Insights (opencensus)"


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (``--quick`` shrinks all of it)."""

    calls: int = 20_000
    rounds: int = 7
    paced_calls: int = 10_000
    latency_calls: int = 20_000
    #: (backend, grace period, records): 10,000 fit in the queue; 120,000 are three default
    #: queues' worth, logged faster than any exporter sends (the oldest are dropped).
    bulk_runs: tuple[tuple[str, str, int], ...] = (
        ("opencensus", "3", 10_000), ("otel", "3", 10_000), ("otel", "6", 10_000),
        ("opencensus", "3", 120_000))
    #: (backend, records) of a burst that SIGTERM interrupts.
    sigterm_runs: tuple[tuple[str, int], ...] = (("opencensus", 10_000), ("otel", 10_000))
    #: (backend, tasks, records per task) of a Pool(2) whose workers log.
    pool_runs: tuple[tuple[str, int, int], ...] = (("opencensus", 8, 1_000), ("otel", 8, 1_000))


FULL = Sizes()
QUICK = Sizes(calls=500, rounds=1, paced_calls=200, latency_calls=500,
              bulk_runs=(("opencensus", "3", 1_000),), sigterm_runs=(("opencensus", 2_000),),
              pool_runs=(("opencensus", 2, 125),))


@contextlib.contextmanager
def ingestion_server(*args: str) -> Iterator[tuple[str, int]]:
    """The ingestion server in a process of its own: its connection string and port."""
    with fake_service("ingestion_server", *args) as banner:  # PORT <n> IKEY <key>
        port, key = int(banner[1]), banner[3]
        yield f"InstrumentationKey={key};IngestionEndpoint=http://127.0.0.1:{port}/", port


def refused() -> str:
    """A connection string whose port nobody listens on."""
    return f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{free_port()}/"


def envelopes_received(port: int) -> int:
    """How many envelopes the ingestion server accepted so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return int(json.load(answer)["envelopes"])


def per_call(logger: logging.Logger, calls: int) -> float:
    """Mean cost of one back-to-back logger.info call over ``calls`` calls, in microseconds.

    Counted in CPU time of the whole process (all its threads) during the calls: with one
    GIL that is the caller's time plus the export thread's share, i.e. the wall time on an
    idle machine, but other processes on a shared machine do not count."""
    start = time.process_time()
    for i in range(calls):
        logger.info("step %d loss %.4f", i, 0.25)
    return (time.process_time() - start) / calls * 1e6


def paced(logger: logging.Logger, calls: int, rate: float = 2_000.0) -> tuple[float, float]:
    """Mean and p99 cost of single calls made at ``rate`` calls per second, in microseconds.

    A training script logs far below the saturated rate; pacing leaves the export thread
    time to run between calls, as it has in real use.
    """
    samples = []
    clock = time.perf_counter
    period = 1.0 / rate
    next_at = clock()
    for i in range(calls):
        start = clock()
        logger.info("step %d loss %.4f", i, 0.25)
        samples.append((clock() - start) * 1e6)
        next_at += period
        pause = next_at - clock()
        if pause > 0:
            time.sleep(pause)
    samples.sort()
    return statistics.fmean(samples), samples[int(len(samples) * 0.99)]


def latencies(logger: logging.Logger, calls: int) -> tuple[float, float, float]:
    """p50, p99 and max latency of single logger.info calls, in microseconds."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        logger.info("step %d loss %.4f", i, 0.25)
        samples.append((clock() - start) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], samples[-1]


def stdlib_logger(name: str, stream: TextIO) -> logging.Logger:
    """A plain stdlib logger with one StreamHandler on ``stream``."""
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class DropCounter(logging.Handler):
    """Counts OpenCensus' "Queue is full. Dropping telemetry." warnings instead of printing
    one line per dropped record to stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count a drop."""
        if "Dropping telemetry" in record.getMessage():
            self.dropped += 1


DROPS = DropCounter()


def guide_logger(name: str, stream: TextIO, connection: str) -> tuple[logging.Logger, logging.Handler]:
    """The set-up the Azure ML guides show: a StreamHandler for the driver log plus
    ``logger.addHandler(AzureLogHandler(connection_string=...))``."""
    from opencensus.ext.azure.log_exporter import AzureLogHandler

    schedule = logging.getLogger("opencensus.common.schedule")
    schedule.addHandler(DROPS)
    schedule.propagate = False
    logger = stdlib_logger(name, stream)
    azure = AzureLogHandler(connection_string=connection)
    logger.addHandler(azure)
    return logger, azure


def call_cost(sizes: Sizes = FULL) -> dict[str, Ratio]:
    """Print the per-call figures; return the saturated cost ratios of amldbg with App
    Insights (opencensus) against the guides' set-up and against a plain StreamHandler."""
    from amldbg.logs import driver_log, flush_logs, get_logger

    real_stdout = sys.stdout
    # Every logger writes to the same stream: /dev/null, so the terminal's speed is not measured.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    figures: dict[str, Ratio] = {}
    try:
        baseline = stdlib_logger("bench.baseline", sys.stdout)
        stdout_only = get_logger("bench.stdout", appinsights=False)
        with ingestion_server() as (connection, port):
            guide, azure = guide_logger("bench.guide", sys.stdout, connection)
            loggers = {
                BASELINE: baseline,
                "guides' StreamHandler + AzureLogHandler": guide,
                "amldbg driver log only": stdout_only,
            }
            for backend in ("opencensus", "otel"):
                loggers[f"amldbg driver log + App Insights ({backend})"] = get_logger(
                    f"bench.{backend}", connection_string=connection, backend=backend)
            time.sleep(2.0)  # let the exporters load, as they do during a script's start-up

            def settle() -> None:
                # Not timed: the export threads catch up so that one logger's backlog does
                # not take the GIL from the next one's measurement (a burst's export waits
                # until the burst is over; its_whole_cost() counts it).
                flush_logs(30)
                azure.flush()

            paced_results = {}
            for name, logger in loggers.items():
                paced_results[name] = paced(logger, sizes.paced_calls)
                settle()

            def measure(logger: logging.Logger) -> float:
                cost = per_call(logger, sizes.calls)
                settle()
                return cost

            results = interleaved(
                {name: (lambda lg=logger: measure(lg)) for name, logger in loggers.items()},
                sizes.rounds,
            )
            sent = envelopes_received(port)
        base = results[BASELINE]
        guides = results["guides' StreamHandler + AzureLogHandler"]
        ours = results[OURS]
        figures["vs guide"] = ratio(list(zip(ours, guides)))
        figures["vs stream"] = ratio(list(zip(ours, base)))
        rows = []
        for name, costs in results.items():
            versus = ratio(list(zip(costs, base)))
            rows.append(f"  {name:<48} {statistics.median(costs):7.2f} us/call   "
                        f"{versus.median:5.2f}x ({versus.low:.2f}-{versus.high:.2f})")
        base_mean = paced_results[BASELINE][0]
        paced_rows = [
            f"  {name:<48} {mean:7.2f} us/call   {mean / base_mean:5.2f}x   p99 {p99:6.1f} us"
            for name, (mean, p99) in paced_results.items()
        ]
        down = {}
        for label, server_args in (("endpoint refusing", None),
                                   ("endpoint answering after 2 s", ("--delay", "2"))):
            if server_args is None:
                logger = get_logger("bench.down", connection_string=refused())
                time.sleep(1.0)
                down[label] = latencies(logger, sizes.latency_calls)
            else:
                with ingestion_server(*server_args) as (connection, _):
                    logger = get_logger("bench.slow", connection_string=connection)
                    time.sleep(1.0)
                    down[label] = latencies(logger, sizes.latency_calls)
        base_lat = latencies(baseline, sizes.latency_calls)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    print(f"Per-call cost at 2,000 calls/s ({sizes.paced_calls} calls), same stream "
          f"(/dev/null), healthy endpoint:")
    print("\n".join(paced_rows))
    print(f"Saturated: back-to-back calls, {sizes.calls} per round, {sizes.rounds} interleaved "
          f"rounds (median; range of per-round ratios to the baseline), process CPU time per")
    print("call (the export thread's envelope building shares the GIL with the caller, so this")
    print("is a throughput figure; a burst's export waits until the burst is over, within half the")
    print("queue and what half the grace period can send):")
    print("\n".join(rows))
    print(f"  amldbg with App Insights (opencensus) vs the guides' AzureLogHandler set-up: "
          f"{figures['vs guide'].text('x')} (goal <= 1.0x); vs a plain StreamHandler: "
          f"{figures['vs stream'].text('x')} (goal <= 1.3x)")
    print(f"  (envelopes the endpoint received meanwhile: {sent}; records the guides' "
          f"AzureLogHandler dropped because its queue was full: {DROPS.dropped})")
    print("Single-call latency (opencensus backend), p50 / p99 / max:")
    print(f"  {'stdlib StreamHandler (baseline)':<32} {base_lat[0]:6.1f} / {base_lat[1]:6.1f} / "
          f"{base_lat[2]:8.1f} us")
    for label, (p50, p99, worst) in down.items():
        print(f"  {label:<32} {p50:6.1f} / {p99:6.1f} / {worst:8.1f} us")
    print(f"  (rank prefix in use: {driver_log.rank_prefix()!r}; the records of the refusing and "
          f"the slow endpoint are reported undelivered when this process exits, as expected)")
    return figures


WHOLE = textwrap.dedent("""
    import logging, os, sys, time
    from amldbg.logs import flush_logs, get_logger
    sys.stdout = open(os.devnull, "w")
    if sys.argv[1] == "stdlib":
        log = logging.getLogger("whole")
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(LINE_FORMAT))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    else:
        log = get_logger("whole")
    for i in range(600):
        log.info("setup %d", i)
    time.sleep(2.0)  # the exporter loads and sends the set-up lines
    flush_logs(30)
    start = time.process_time()
    for i in range(int(sys.argv[2])):
        log.info("step %d loss %.4f", i, 0.25)
    during = time.process_time() - start
    flush_logs(60)
    total = time.process_time() - start
    print("CPU", during, total, file=sys.__stdout__, flush=True)
""").replace("LINE_FORMAT", repr(FORMAT))


def whole_cost(sizes: Sizes = FULL) -> Ratio:
    """Print the whole CPU cost of a burst, the export after it included, each configuration
    in a process of its own (interleaved rounds); return amldbg's ratio to a StreamHandler."""
    costs: dict[str, list[tuple[float, float]]] = {"stdlib": [], "amldbg": []}

    def run(kind: str, connection: str) -> float:
        env = dict(ENV, APPLICATIONINSIGHTS_CONNECTION_STRING=connection)
        done = subprocess.run([PY, "-c", WHOLE, kind, str(sizes.calls)], capture_output=True,
                              text=True, env=env, timeout=120, check=True)
        during, total = (float(v) / sizes.calls * 1e6 for v in done.stdout.split()[1:3])
        costs[kind].append((during, total))
        return total

    with ingestion_server() as (connection, _):
        interleaved({kind: (lambda k=kind: run(k, connection)) for kind in costs}, sizes.rounds)
    during = ratio([(a[0], b[0]) for a, b in zip(costs["amldbg"], costs["stdlib"])])
    total = ratio([(a[1], b[1]) for a, b in zip(costs["amldbg"], costs["stdlib"])])
    ours = statistics.median(t for _, t in costs["amldbg"])
    base = statistics.median(t for _, t in costs["stdlib"])
    print(f"A burst of {sizes.calls} calls in a process of its own, counting the export after it "
          f"(process CPU per record, the burst and the flush that follows):")
    print(f"  stdlib StreamHandler {base:6.2f} us; amldbg with App Insights (opencensus) "
          f"{ours:6.2f} us: {total.text('x')} (during the burst only: {during.text('x')})")
    return total


CHILD = textwrap.dedent("""
    import sys, time
    from amldbg.logs import get_logger
    log = get_logger("bulk", backend=sys.argv[1])
    time.sleep(1.0)  # start-up work of a real script; the exporter loads meanwhile
    for i in range(int(sys.argv[2])):
        log.info("record %d", i)
    print("LAST %.6f" % time.time(), flush=True)
""")


def exit_after_bulk(sizes: Sizes = FULL) -> None:
    """Print how many of a burst of records arrive and how fast the process exits."""
    print("A burst of records logged back to back, then exit (healthy endpoint):")
    for backend, grace, count in sizes.bulk_runs:
        with ingestion_server() as (connection, port):
            env = dict(ENV, APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
                       AMLDBG_LOG_GRACE_PERIOD=grace)
            proc = subprocess.Popen([PY, "-c", CHILD, backend, str(count)],
                                    stdout=subprocess.PIPE, text=True, env=env)
            last = None
            assert proc.stdout is not None
            warnings = []
            for line in proc.stdout:
                if line.startswith("LAST "):
                    last = float(line.split()[1])
                elif line.startswith("amldbg: warning"):
                    warnings.append(line.strip().split(": ", 2)[-1][:90])
            proc.wait(60)
            exited = time.time()
            time.sleep(0.3)
            received = envelopes_received(port)
        took = exited - last if last else float("nan")
        print(f"  {backend:<10} grace {grace} s: delivered {received:6d}/{count}, exit "
              f"{took:5.2f} s after the last record"
              f"{'  (' + '; '.join(warnings) + ')' if warnings else ''}")


SIGTERM_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from amldbg.logs import flush_logs, get_logger
    log = get_logger("ending", backend=sys.argv[1])
    log.info("setup")
    flush_logs(30)  # the exporter is loaded and sending, as in a job that ran for a while
    if sys.argv[3] == "default":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the baseline: SIGTERM's default action
    sys.stdout = open(os.devnull, "w")  # the driver log's copy of the burst
    for i in range(int(sys.argv[2])):
        log.info("record %d", i)
    sys.stdout = sys.__stdout__
    os.write(1, b"READY\\n")
    time.sleep(60)
""")


@dataclass(frozen=True)
class Ending:
    """What one process killed by SIGTERM did: seconds from the signal to its exit, records
    that arrived, its exit status, and the count its loss line gave (None: no line)."""

    seconds: float
    delivered: int
    status: int
    reported: int | None


def _loss_count(output: str) -> int | None:
    counts = [int(line.split("record(s)")[0].rsplit(": ", 1)[-1]) for line in output.splitlines()
              if line.startswith("amldbg: warning:") and "record(s) were not delivered" in line]
    return sum(counts) if counts else None


def sigterm_ending(port: int, connection: str, backend: str, count: int, handler: str) -> Ending:
    """Run SIGTERM_CHILD, send SIGTERM once its burst is logged, and time the ending."""
    env = dict(ENV, APPLICATIONINSIGHTS_CONNECTION_STRING=connection)
    before = envelopes_received(port)
    proc = subprocess.Popen([PY, "-c", SIGTERM_CHILD, backend, str(count), handler],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("READY"):
                break
        else:
            raise RuntimeError("the SIGTERM child ended before its burst:\\n" + "".join(seen))
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
        took = time.perf_counter() - sent
        output = "".join(seen) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    time.sleep(0.3)  # requests the server is still answering
    delivered = envelopes_received(port) - before - 1  # the set-up record
    return Ending(took, delivered, status, _loss_count(output))


def exit_after_sigterm(sizes: Sizes = FULL) -> dict[str, tuple[Ending, Ending]]:
    """Print how fast a process killed by SIGTERM mid-export ends and what it delivered, with
    amldbg's handler and with SIGTERM's default action (the baseline), in the same run."""
    print("SIGTERM right after a burst, exporter loaded, healthy endpoint (grace 3 s): from the "
          "signal to the exit, records delivered:")
    results = {}
    with ingestion_server() as (connection, port):
        for backend, count in sizes.sigterm_runs:
            ours = sigterm_ending(port, connection, backend, count, "amldbg")
            base = sigterm_ending(port, connection, backend, count, "default")
            results[backend] = (ours, base)
            said = "no loss line" if ours.reported is None else f"loss line: {ours.reported}"
            print(f"  {backend:<10} {count} records: amldbg {ours.seconds:5.2f} s from SIGTERM to "
                  f"exit, delivered {ours.delivered:6d}/{count}, status {ours.status}, {said}; "
                  f"SIGTERM's default action (baseline) {base.seconds:5.2f} s, delivered "
                  f"{base.delivered:6d}/{count}, status {base.status}")
    return results


POOL_CHILD = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from amldbg.logs import get_logger
    log = get_logger("pool", backend=os.environ["BENCH_BACKEND"])  # in each spawn worker too
    sys.stdout = open(os.devnull, "w")  # the driver log's copy of the records

    def work(task):
        count = int(os.environ["BENCH_PER_TASK"])
        for i in range(count):
            log.info("task %d record %d", task, i)
        return count

    if __name__ == "__main__":
        started = time.perf_counter()
        pool = multiprocessing.get_context(sys.argv[1]).Pool(2)
        total = sum(pool.map(work, range(int(sys.argv[2])), chunksize=1))
        pool.close()
        pool.join()
        took = time.perf_counter() - started
        os.write(1, ("DONE %d %.3f\\n" % (total, took)).encode())
""")


def pool_delivery(port: int, connection: str, script: Path, backend: str, tasks: int,
                  per_task: int, method: str) -> tuple[int, float]:
    """Records delivered from a Pool(2) of ``method`` workers, and seconds from the pool's
    start to its join (the workers' exit flush included)."""
    env = dict(ENV, APPLICATIONINSIGHTS_CONNECTION_STRING=connection, BENCH_BACKEND=backend,
               BENCH_PER_TASK=str(per_task))
    before = envelopes_received(port)
    done = subprocess.run([PY, str(script), method, str(tasks)], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    fields = done.stdout.split("DONE ", 1)[-1].split()
    time.sleep(0.3)
    return envelopes_received(port) - before, float(fields[1])


def fork_workers(sizes: Sizes = FULL) -> dict[str, tuple[int, int, int]]:
    """Print how many records of fork Pool workers arrive, next to the same pool with spawn."""
    print("Records logged in Pool(2) workers, pool closed and joined (multiprocessing workers end "
          "with os._exit), healthy endpoint:")
    results = {}
    with tempfile.TemporaryDirectory() as folder, ingestion_server() as (connection, port):
        script = Path(folder) / "pool_child.py"
        script.write_text(POOL_CHILD)
        for backend, tasks, per_task in sizes.pool_runs:
            total = tasks * per_task
            forked, fork_took = pool_delivery(port, connection, script, backend, tasks, per_task,
                                              "fork")
            spawned, spawn_took = pool_delivery(port, connection, script, backend, tasks,
                                                per_task, "spawn")
            results[backend] = (forked, spawned, total)
            print(f"  {backend:<10} fork Pool(2): delivered {forked:6d}/{total}, "
                  f"{fork_took:5.2f} s from start to join; spawn Pool(2) (baseline): delivered "
                  f"{spawned:6d}/{total}, {spawn_took:5.2f} s")
    return results


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    sizes = QUICK if quick else FULL
    logs = call_cost(sizes)
    total = whole_cost(sizes)
    exit_after_bulk(sizes)
    exit_after_sigterm(sizes)
    fork_workers(sizes)
    return [
        row("saturated logging, App Insights on (opencensus), per call, vs the guides' "
            "AzureLogHandler set-up", logs["vs guide"], "<= 1.0x", lambda v: v <= 1.0, "x"),
        row("the same vs a plain stdlib StreamHandler to the same stream", logs["vs stream"],
            "<= 1.3x", lambda v: v <= 1.3, "x"),
        shown("the same, counting the export done after the burst (total CPU per record)",
              total.text("x")),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
