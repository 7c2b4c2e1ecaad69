"""The benchmarks cannot rot: each one runs in ``--quick`` mode as a real subprocess (real
debugpy, real ingestion server, real inference server, all on 127.0.0.1), exits 0 and prints
its figures. Each runs once, through benchmarks/run_all.py (``--only``), so that its rows of
the table are checked too and no benchmark runs twice. Nothing here looks at how fast
anything was."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from processes import ROOT, child_env

BENCHMARKS = ROOT / "benchmarks"

# For each benchmark, lines it must print (a figure is a number followed by its goal).
EXPECTED = {
    "bench_debug.py": [
        r"^import amldbg: -?[\d.]+ ms over a bare interpreter",
        r"^enable_remote_debug\(args\) with the flag off: [\d.]+ us per call",
        r"main thread [\d.]+ \(.*\), thread started after the wait [\d.]+ .*\(goal >= 0\.95\)",
    ],
    "bench_scoring.py": [
        r"^run\(\) undecorated: \d+ ns/call; @debug_run: \d+ ns/call; extra -?\d+ ns",
        r"^  requests/s one worker can serve .*; ratio [\d.]+ \(.* over 2 rounds\)",
        r"^  requests/s the client saw .*; ratio [\d.]+ \(.* over 2 rounds\)",
    ],
    "bench_logs.py": [
        r"vs the guides' AzureLogHandler set-up: [\d.]+x .*\(goal <= 1\.0x\); "
        r"vs a plain StreamHandler: [\d.]+x .*\(goal <= 1\.3x\)",
        r"opencensus\s+grace 3 s: delivered\s+\d+/1000",
        r"^  stdlib StreamHandler\s+[\d.]+ us; amldbg with App Insights \(opencensus\)\s+[\d.]+ us: "
        r"[\d.]+x \(.*\(during the burst only: [\d.]+x",
        r"^  opencensus\s+\d+ records: amldbg\s+[\d.]+ s from SIGTERM to exit, delivered\s+\d+/\d+, "
        r"status -?\d+, .*; SIGTERM's default action \(baseline\)\s+[\d.]+ s, delivered\s+\d+/\d+",
        r"^  opencensus\s+fork Pool\(2\): delivered\s+\d+/\d+,\s+[\d.]+ s from start to join; "
        r"spawn Pool\(2\) \(baseline\): delivered\s+\d+/\d+",
    ],
    "bench_stall.py": [
        r"armed vs nothing armed: [\d.]+ \(.*\) \(goal >= 0\.99",
        r"to the last rank's dump written: [\d., ]+ s \(goal <= 2 s",
        r"an object whose repr blocks\): from the stall timeout to the last rank's dump "
        r"written: [\d., ]+ s \(goal <= 2 s",
    ],
    "bench_collectives.py": [
        r"^collective-heavy loop \(gloo, 2 ranks, .*speed with the Flight Recorder ring on \(torch's own\) "
        r"vs off, CPU time of both ranks: [\d.]+ \(.*\) \(goal >= 0\.99",
    ],
    "bench_stacks_scale.py": [
        r"^amldbg stacks over \d+ ranks, --json \(the verdict\): [\d.]+ s wall, [\d.]+ s CPU, peak RSS \d+ MiB .*\(goal <= 5 s and <= 1 GB",
        r"^amldbg stacks over \d+ ranks, the text report: [\d.]+ s wall, [\d.]+ s CPU, peak RSS \d+ MiB",
        r"^amldbg stacks over \d+ ranks, --html FILE \(the page\): [\d.]+ s wall, [\d.]+ s CPU, peak RSS \d+ MiB, page [\d.]+ MiB",
    ],
    "bench_versions.py": [
        rf"^Python 3\.{v}\.\d+: {figure}" for v in ("11", "12", "13") for figure in (
            r"after a wait nobody answered, main thread vs never enabled: [\d.]+ \(.*\) \(goal >= 0\.95\)",
            r"after a wait nobody answered, a _thread\.start_new_thread thread: [\d.]+ \(.*\) \(goal >= 0\.95\)",
            r"attached, no breakpoints, main thread loop: [\d.]+ \(",
            r"a late client stops in threads started after the wait: main (yes|no).*, C (yes|no)",
        )
    ],
}


# For each benchmark, its rows of run_all.py's table (after the table's title).
TABLE = {
    "bench_debug.py": [
        r"^import amldbg, over a bare interpreter \(CPU time\)\s+-?[\d.]+ ms\s+<= 10 ms",
        r"^enable_remote_debug\(args\) with the flag off, per call\s+[\d.]+ us\s+<= 20 us",
        r"^pure-Python speed, main thread, after a wait that timed out.*[\d.]+ \(.*>= 0\.95",
        r"^the same on a thread started after that wait\s+[\d.]+ \(.*>= 0\.95",
    ],
    "bench_logs.py": [
        r"^saturated logging, App Insights on \(opencensus\).*[\d.]+x \(.*<= 1\.0x",
        r"^the same vs a plain stdlib StreamHandler.*[\d.]+x \(.*<= 1\.3x",
        r"^the same, counting the export done after the burst.*[\d.]+x \(.*\(shown\)",
    ],
    "bench_mlflow.py": [
        r"^a training step against a tracking server answering after 0\.7 s, mlflow\.log_metric vs "
        r"amldbg\.log_metric\s+[\d.]+x \(.*\(shown\)",
        r"^the same, amldbg\.log_metric vs no metrics\s+[\d.]+x \(.*\(shown\)",
    ],
    "bench_scoring.py": [
        r"^@debug_run per call, debugging off.*[+-][\d.]+ us\s+<= 1 us",
        r"^inference server requests/s with the decorators vs without\s+[\d.]+ \(.*>= 0\.98",
    ],
    "bench_stall.py": [
        r"^training-like loop with the stall watchdog .*[\d.]+ \(.*>= 0\.99",
        r"^from the stall timeout to the last of 4 ranks' dump written \(worst\)\s+[\d.]+ s",
        r"^from the stall timeout to the last of 4 ranks' dump written, a stuck frame holding a "
        r"blocking repr \(worst\)\s+[\d.]+ s",
    ],
    "bench_collectives.py": [
        r"^collective-heavy loop \(gloo, 2 ranks\) with the Flight Recorder ring on vs off\s+[\d.]+ \(.*>= 0\.99",
    ],
    "bench_stacks_scale.py": [
        r"^amldbg stacks over \d+ ranks' dumps with collectives: the verdict \(--json\)\s+[\d.]+ s, \d+ MiB peak\s+<= 5 s, <= 1 GB",
        r"^amldbg stacks over \d+ ranks' dumps with collectives: the text report\s+[\d.]+ s",
        r"^amldbg stacks over \d+ ranks' dumps with collectives: the HTML page \(--html\)\s+[\d.]+ s",
    ],
    "bench_telemetry_profile.py": [
        rf"^one App Insights record \({backend}\): the caller's logging call, the export thread's "
        r"work\s+[\d.]+ us, [\d.]+ us\s+\(shown\)" for backend in ("opencensus", "otel")
    ],
    "bench_versions.py": [
        rf"^Python 3\.{v}\.\d+: {figure}" for v in ("11", "12", "13") for figure in (
            r"after a wait nobody answered, main thread vs never enabled\s+[\d.]+ \(.*>= 0\.95",
            r"a late client stops in threads started after the wait\s+main (yes|no).*\(shown\)",
        )
    ],
}
TITLE = r"^== amldbg performance figures \(--quick"


# Every benchmark on disk runs, once, through run_all.py (which must know it: it refuses a
# name it did not find); the ones above must also print those figures, any other must at
# least print a number and a row of the table.
ALL = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_benchmark_runs_quick_and_prints_its_figures(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--only", name[:-len(".py")]],
        capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=280,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    own, _, table = done.stdout.partition("\n== amldbg performance figures")
    for pattern in EXPECTED.get(name, [r"\d"]):
        assert re.search(pattern, own, re.M), (pattern, done.stdout)
    assert re.search(TITLE, done.stdout, re.M), done.stdout
    for pattern in TABLE.get(name, [r"^figure .*\n\S.*\d"]):
        assert re.search(pattern, table, re.M), (pattern, done.stdout)
    assert "Traceback" not in done.stderr, done.stderr


def test_the_table_benchmarks_exist() -> None:
    assert set(EXPECTED) | set(TABLE) <= set(ALL)
