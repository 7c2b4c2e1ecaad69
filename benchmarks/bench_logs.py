"""Figures for issue 4: the cost of a logging call with the driver-log and Application Insights
handlers against a plain stdlib logger measured in the same run, its p99 latency with the
endpoint down or slow, and how fast a process that logged 10,000 records delivers and exits.

Run: python benchmarks/bench_logs.py   (needs opencensus-ext-azure and
azure-monitor-opentelemetry-exporter; talks only to 127.0.0.1: the ingestion server is
tests/logs/ingestion_server.py, started as a separate process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "logs" / "ingestion_server.py"
PY = sys.executable
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AMLDBG_")}
ENV["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
ENV.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
os.environ.update({"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"})

CALLS = 20_000
ROUNDS = 5


@contextlib.contextmanager
def ingestion_server(*args: str) -> Iterator[tuple[str, int]]:
    """A separate ingestion-server process (so it does not share this process's GIL)."""
    proc = subprocess.Popen([PY, str(SERVER), *args], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        fields = proc.stdout.readline().split()
        port, key = int(fields[1]), fields[3]
        yield f"InstrumentationKey={key};IngestionEndpoint=http://127.0.0.1:{port}/", port
    finally:
        proc.terminate()
        proc.wait(10)


def refused() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{port}/"


def envelopes_received(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as answer:
        return int(json.load(answer)["envelopes"])


def per_call(logger: logging.Logger, calls: int = CALLS) -> float:
    """Median over rounds of the mean cost of one logger.info call, in microseconds."""
    means = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(calls):
            logger.info("step %d loss %.4f", i, 0.25)
        means.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(means)


def paced(logger: logging.Logger, calls: int = 10_000, rate: float = 2_000.0) -> tuple[float, float]:
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


def latencies(logger: logging.Logger, calls: int = CALLS) -> tuple[float, float, float]:
    """p50, p99 and max latency of single logger.info calls, in microseconds."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        logger.info("step %d loss %.4f", i, 0.25)
        samples.append((clock() - start) / 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], samples[-1]


def call_cost() -> None:
    from amldbg.logs import driver_log, flush_logs, get_logger

    real_stdout = sys.stdout
    # Both loggers write to the same stream: /dev/null, so the terminal's speed is not measured.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    try:
        baseline = logging.getLogger("bench.baseline")
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        baseline.addHandler(handler)
        baseline.setLevel(logging.INFO)
        baseline.propagate = False
        stdout_only = get_logger("bench.stdout", appinsights=False)
        rows = []
        paced_rows = []
        with ingestion_server() as (connection, port):
            loggers = {"stdlib StreamHandler (baseline)": baseline, "amldbg driver log only": stdout_only}
            for backend in ("opencensus", "otel"):
                loggers[f"amldbg driver log + App Insights ({backend})"] = get_logger(
                    f"bench.{backend}", connection_string=connection, backend=backend)
            time.sleep(2.0)  # let the exporters load, as they do during a script's start-up
            paced_results = {}
            for name, logger in loggers.items():
                paced_results[name] = paced(logger)
                flush_logs(30)
            results = {}
            for name, logger in loggers.items():
                results[name] = per_call(logger)
                flush_logs(30)
            sent = envelopes_received(port)
        base = results["stdlib StreamHandler (baseline)"]
        for name, cost in results.items():
            rows.append(f"  {name:<48} {cost:7.2f} us/call   {cost / base:5.2f}x")
        base_mean = paced_results["stdlib StreamHandler (baseline)"][0]
        for name, (mean, p99) in paced_results.items():
            paced_rows.append(f"  {name:<48} {mean:7.2f} us/call   {mean / base_mean:5.2f}x   p99 {p99:6.1f} us")
        down = {}
        for label, server_args in (("endpoint refusing", None), ("endpoint answering after 2 s", ("--delay", "2"))):
            if server_args is None:
                logger = get_logger("bench.down", connection_string=refused())
                time.sleep(1.0)
                down[label] = latencies(logger)
            else:
                with ingestion_server(*server_args) as (connection, _):
                    logger = get_logger("bench.slow", connection_string=connection)
                    time.sleep(1.0)
                    down[label] = latencies(logger)
        base_lat = latencies(baseline)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    print("Per-call cost at 2,000 calls/s (10,000 calls), same stream (/dev/null), healthy endpoint:")
    print("\n".join(paced_rows))
    print(f"Saturated: back-to-back calls, {CALLS} x {ROUNDS} rounds (median round); the export thread's")
    print("envelope building shares the GIL with the caller, so this is a throughput figure:")
    print("\n".join(rows))
    print(f"  (envelopes the endpoint received meanwhile: {sent})")
    print("Single-call latency (opencensus backend), p50 / p99 / max:")
    print(f"  {'stdlib StreamHandler (baseline)':<32} {base_lat[0]:6.1f} / {base_lat[1]:6.1f} / {base_lat[2]:8.1f} us")
    for label, (p50, p99, worst) in down.items():
        print(f"  {label:<32} {p50:6.1f} / {p99:6.1f} / {worst:8.1f} us")
    print(f"  (rank prefix in use: {driver_log.rank_prefix()!r})")


CHILD = textwrap.dedent("""
    import sys, time
    from amldbg.logs import get_logger
    log = get_logger("bulk", backend=sys.argv[1])
    time.sleep(1.0)  # start-up work of a real script; the exporter loads meanwhile
    for i in range(10_000):
        log.info("record %d", i)
    print("LAST %.6f" % time.time(), flush=True)
""")


def exit_after_10k() -> None:
    print("10,000 records, then exit (healthy endpoint):")
    for backend, grace in (("opencensus", "3"), ("otel", "3"), ("otel", "6")):
        with ingestion_server() as (connection, port):
            env = dict(ENV, APPLICATIONINSIGHTS_CONNECTION_STRING=connection, AMLDBG_LOG_GRACE_PERIOD=grace)
            proc = subprocess.Popen([PY, "-c", CHILD, backend], stdout=subprocess.PIPE, text=True, env=env)
            last = None
            assert proc.stdout is not None
            warnings = []
            for line in proc.stdout:
                if line.startswith("LAST "):
                    last = float(line.split()[1])
                elif line.startswith("amldbg: warning"):
                    warnings.append(line.strip())
            proc.wait(60)
            exited = time.time()
            time.sleep(0.3)
            received = envelopes_received(port)
        took = exited - last if last else float("nan")
        print(f"  {backend:<10} grace {grace} s: delivered {received:5d}/10000, exit {took:5.2f} s after the last record"
              f"{'  ' + '; '.join(warnings) if warnings else ''}")


def main() -> None:
    call_cost()
    exit_after_10k()


if __name__ == "__main__":
    main()
