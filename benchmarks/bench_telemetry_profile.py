"""Where the time of one Application Insights record goes: the caller's thread and the export thread.

Two profiles per backend (cProfile, deterministic, so the split between functions is what
counts, not the absolute times, which cProfile inflates):

* **caller**: ``logger.info`` calls on a logger from :func:`amldbg.get_logger` (driver log to
  /dev/null plus Application Insights), the export thread running meanwhile;
* **export**: the sink's ``send`` for batches of 512 queued records, run on this thread so
  it can be profiled: building the records/envelopes, serialising and posting them to the
  ingestion server (harness/ingestion_server.py, a separate process on 127.0.0.1).

It also prints the un-profiled per-record figures (microseconds of the caller's call, and of
the export thread's work per record), the ones to compare before and after a change.

Run: python benchmarks/bench_telemetry_profile.py [--quick] [--out FILE] [--backend NAME]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Sequence

from _common import Row, shown
from bench_logs import ingestion_server

os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
BATCH = 512


def _records(count: int) -> list[tuple[object, ...]]:
    """Queued records as the handler makes them (snapshots of real LogRecords)."""
    from amldbg.logs import envelopes

    out = []
    for i in range(count):
        record = logging.LogRecord("bench.export", logging.INFO, __file__, 10, "step %d loss %.4f",
                                   (i, 0.25), None, "train")
        out.append(envelopes.snapshot(record, record.getMessage(), {"epoch": i % 7}))
    return out


def _top(profile: cProfile.Profile, limit: int) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    # Drop pstats' preamble up to the column header.
    text = stream.getvalue()
    return text[text.find("   ncalls"):].rstrip()


def caller_side(backend: str, connection: str, calls: int, limit: int) -> tuple[float, str]:
    """Per-call microseconds (unprofiled) and the profile of the caller's thread."""
    from amldbg.logs import flush_logs, get_logger

    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the driver log goes nowhere
    try:
        logger = get_logger(f"bench.caller.{backend}", connection_string=connection, backend=backend)
        time.sleep(2.0)  # the exporter loads on the export thread meanwhile
        logger.info("warm-up")
        flush_logs(30)
        start = time.perf_counter()
        for i in range(calls):
            logger.info("step %d loss %.4f", i, 0.25)
        plain = (time.perf_counter() - start) / calls * 1e6
        flush_logs(60)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(calls):
            logger.info("step %d loss %.4f", i, 0.25)
        profile.disable()
        flush_logs(60)
    finally:
        sys.stdout.close()
        sys.stdout = real_stdout
    return plain, _top(profile, limit)


def export_side(backend: str, connection: str, batches: int, limit: int) -> tuple[float, str]:
    """Export-thread microseconds per record (unprofiled) and the profile of ``send``."""
    from amldbg.logs import appinsights, export
    from amldbg.logs.connection import parse_connection_string
    from amldbg.logs.settings import LogSettings

    sink = appinsights.create_sink(backend, parse_connection_string(connection), LogSettings())
    items = _records(BATCH)
    assert sink.send(list(items), 10.0) == export.OK  # warm-up (connection, imports)
    start = time.perf_counter()
    for _ in range(batches):
        assert sink.send(list(items), 10.0) == export.OK
    plain = (time.perf_counter() - start) / (batches * BATCH) * 1e6
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(batches):
        sink.send(list(items), 10.0)
    profile.disable()
    sink.close(1.0)
    return plain, _top(profile, limit)


BACKENDS = ("opencensus", "otel")


def figures(quick: bool, backends: Sequence[str] = BACKENDS, top: int = 18,
            out: str | None = None) -> list[Row]:
    """Print every profile of this benchmark (and write them to ``out``); return its rows of
    run_all.py's table: the time per record on each side, per backend."""
    calls, batches = (500, 2) if quick else (20_000, 20)
    report = io.StringIO()
    found: list[Row] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        report.write(text + "\n")

    say(f"Telemetry profile: {calls} caller calls, {batches} x {BATCH} exported records per backend "
        f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    with ingestion_server() as (connection, _port):
        for backend in backends:
            caller_us, caller_profile = caller_side(backend, connection, calls, top)
            export_us, export_profile = export_side(backend, connection, batches, top)
            say(f"\n== {backend}: caller {caller_us:.2f} us/call (driver log + queue), "
                f"export thread {export_us:.2f} us/record")
            say(f"-- caller thread, top {top} by own time (cProfile)")
            say(caller_profile)
            say(f"-- export thread (sink.send of {BATCH}-record batches), top {top} by own time")
            say(export_profile)
            found.append(shown(f"one App Insights record ({backend}): the caller's logging "
                               "call, the export thread's work",
                               f"{caller_us:.2f} us, {export_us:.2f} us"))
    if out:
        Path(out).write_text(report.getvalue())
    return found


def main(argv: list[str] | None = None) -> int:
    """Print (and with ``--out``, write) every profile of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that it runs")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--backend", action="append", choices=list(BACKENDS))
    parser.add_argument("--top", type=int, default=18, help="functions shown per profile")
    args = parser.parse_args(argv)
    figures(args.quick, args.backend or BACKENDS, args.top, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
