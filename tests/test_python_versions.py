"""Every Python version amldbg claims, tested: the full suite runs on 3.11 (this run); each other
claimed version runs, in a venv of its own (harness/venvs.py), the tests that depend on the
interpreter, as a real ``python -m pytest`` of that version.

What runs there: remote debugging with the real DAP client (listen, reverse connect,
timeouts, late attach into threads started after the wait), post-mortem, the stall report
and the on-demand triggers, logs to the loopback ingestion server with both backends, the
driver log, and the CLI on hostile input. What does not, and why, is in :data:`NOT_THERE`
(torch lies on this disk for 3.11 only). A missing interpreter, a venv that does not
install, a failed test or a skip that is not listed in :data:`SKIPS` fails the version's
test here. The versions run two at a time (they mostly wait on sockets and timeouts), their
venvs built one after the other first; each prints its counts and times.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from harness.venvs import build_seconds, interpreter, matrix_venv, python_of
from processes import ROOT, child_env

#: The versions amldbg claims besides 3.11 (setup.cfg's classifiers say the same).
VERSIONS = ("3.10", "3.12", "3.13")
CLAIMED = ("3.10", "3.11", "3.12", "3.13")

# Each version's venv (harness/venvs.py's MATRIX_REQUIREMENTS) installs amldbg with the extras
# these tests drive (debug, appinsights, otel, mlflow, cli) and pytest. Not ``aml``
# (azureml-core: none of these tests drives it), not mpich (its one test sits in a module that
# imports torch), never torch (see NOT_THERE).

#: The interpreter-dependent tests, run on every version.
SELECTION = (
    "tests/debugger/test_remote.py",
    "tests/debugger/test_idle.py",
    "tests/debugger/test_postmortem.py",
    "tests/debugger/test_on_demand.py",
    "tests/debugger/test_reliability.py",
    "tests/debugger/test_stall_with_debugger.py",
    "tests/diagnostics/test_stall.py",
    "tests/diagnostics/test_never_worse.py",
    "tests/logs/test_logs_appinsights.py",
    "tests/logs/test_logs_driver_log.py",
    "tests/cli/test_hostile_input.py",
)

#: Tests of the selected files that stay 3.11-only, and why (they run in the main run).
NOT_THERE = {
    "tests/diagnostics/test_never_worse.py::"
    "test_tensors_in_containers_show_shape_without_any_of_their_code_and_frames_no_columns":
        "needs torch (a tensor subclass), which lies on this disk for 3.11 only",
    "tests/diagnostics/test_never_worse.py::test_values_of_a_dump_never_break_the_rank_prefix":
        "needs torch (an nn.Module's multi-line repr), 3.11 only",
}
#: Interpreter-dependent tests not selected at all (they cannot even be collected without torch).
NOT_SELECTED = {
    "tests/debugger/test_distributed.py": "a real torchrun: needs torch (3.11 only)",
    "tests/diagnostics/test_stall_launchers.py": "torchrun and mpiexec: imports torch (3.11 only)",
}

#: Skips allowed per version (a node id prefix and the words its reason must contain); any
#: other skip fails, so that a version's coverage never shrinks unnoticed.
SKIPS: dict[str, dict[str, str]] = {
    "3.12": {
        "tests/debugger/test_idle.py::test_keep_tracing_leaves_new_threads_traced": "sys.monitoring",
        "tests/debugger/test_idle.py::test_a_failure_falls_back_to_the_waiting_thread_alone":
            "sys.monitoring",
        "tests/debugger/test_idle.py::test_every_thread_runs_untraced_after_an_unanswered_wait":
            "sys.monitoring",
    },
}
SKIPS["3.13"] = SKIPS["3.12"]
SKIPS["3.10"] = {
    "tests/debugger/test_idle.py::test_no_monitoring_events_in_any_thread_after_an_unanswered_wait":
        "sys.monitoring",
}

#: At most this many versions' test runs at a time (2 cores; the runs mostly wait).
AT_ONCE = 2
#: A version's whole run, in seconds (one test is bounded by pytest-timeout's 300 s there).
RUN_TIMEOUT = 1500


@dataclass
class Outcome:
    version: str
    python_version: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    build_seconds: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    error: str = ""

    def line(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        built = "reused" if self.build_seconds is None else f"built in {self.build_seconds:.0f} s"
        return (f"Python {self.python_version or self.version}: {counts or 'no results'} in "
                f"{self.seconds:.0f} s (venv {built})")


def pytest_argv(python: Path, basetemp: Path, junit: Path) -> list[str]:
    argv = [str(python), "-m", "pytest", *SELECTION, "-p", "no:cacheprovider", "-q",
            "-o", "addopts=--strict-markers", "-rfEs", f"--basetemp={basetemp}",
            f"--junitxml={junit}"]
    for node in NOT_THERE:
        argv += ["--deselect", node]
    return argv


def _node_id(case: ElementTree.Element) -> str:
    """``tests/x/test_y.py::test_z[param]`` of a JUnit ``testcase`` (module-level tests)."""
    return f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name', '')}"


def read_junit(junit: Path, outcome: Outcome) -> None:
    """Per-test results from pytest's JUnit XML (robust against any text output)."""
    root = ElementTree.parse(junit).getroot()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0, "deselected": len(NOT_THERE)}
    for case in root.iter("testcase"):
        node = _node_id(case)
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            outcome.failed.append(node)
        elif (skip := case.find("skipped")) is not None:
            if skip.get("type") == "pytest.xfail":
                counts["xfailed"] += 1
            else:
                counts["skipped"] += 1
                outcome.skipped[node] = skip.get("message", "")
        else:
            counts["passed"] += 1
    outcome.counts = counts


#: The versions' pytest processes still running (killed when the module's tests end).
_running: set[subprocess.Popen[bytes]] = set()


def run_version(version: str, workdir: Path, builds: threading.Lock, slots: threading.Semaphore
                ) -> Outcome:
    outcome = Outcome(version)
    interpreter(version)  # fails here, with the reason, when it is missing
    with builds:  # pip installs one at a time: they compete for the same 2 cores
        before = time.monotonic()
        venv = matrix_venv(version)
        took = time.monotonic() - before
        outcome.build_seconds = build_seconds(venv) if took > 5 else None
    venv_python = python_of(venv)
    outcome.python_version = subprocess.run(
        [str(venv_python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    junit = workdir / f"py{version}.xml"
    outcome.log = workdir / f"py{version}.log"
    env = {k: v for k, v in child_env().items() if not k.startswith("PYTEST_")}
    env.pop("PYTHONPATH", None)
    with slots:
        started = time.monotonic()
        with open(outcome.log, "w") as log:
            proc = subprocess.Popen(pytest_argv(venv_python, workdir / f"tmp{version}", junit),
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=ROOT, env=env)
            _running.add(proc)
            try:
                outcome.returncode = proc.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                outcome.error = f"the run took more than {RUN_TIMEOUT} s"
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(30)
                _running.discard(proc)
        outcome.seconds = time.monotonic() - started
    if junit.exists():
        read_junit(junit, outcome)
    return outcome


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """Every version's run, started at once in the background (AT_ONCE at a time)."""
    workdir = tmp_path_factory.mktemp("versions")
    builds, slots = threading.Lock(), threading.Semaphore(AT_ONCE)
    futures: dict[str, Future[Outcome]] = {v: Future() for v in VERSIONS}

    def work(version: str) -> None:
        try:
            futures[version].set_result(run_version(version, workdir, builds, slots))
        except BaseException as error:  # pytest.fail raises a BaseException
            futures[version].set_exception(error)

    workers = [threading.Thread(target=work, args=(v,), name=f"py{v}", daemon=True)
               for v in VERSIONS]
    for worker in workers:
        worker.start()
        time.sleep(0.1)  # the builds queue in VERSIONS order
    try:
        yield futures
    finally:
        for proc in list(_running):
            if proc.poll() is None:
                proc.kill()
        for worker in workers:
            worker.join(60)


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT * 2 + 600)
@pytest.mark.parametrize("version", VERSIONS)
def test_the_interpreter_dependent_tests_pass_on(
    version: str, matrix: dict[str, Future[Outcome]], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = matrix[version].result()
    with capsys.disabled():  # the counts and times show in CI's output, passed or not
        print(f"\n{outcome.line()}")
    log = outcome.log.read_text(errors="replace") if outcome.log and outcome.log.exists() else ""
    assert not outcome.error, outcome.error + "\n" + log[-5000:]
    assert outcome.counts, f"Python {version}: no results; the run printed:\n{log[-5000:]}"
    assert not outcome.failed, f"Python {version}: failed: {outcome.failed}\n{log[-20000:]}"
    allowed = SKIPS.get(version, {})
    unexpected = {
        node: reason for node, reason in outcome.skipped.items()
        if not any(node.startswith(prefix) and words in reason for prefix, words in allowed.items())
    }
    assert not unexpected, f"Python {version}: skips not allowed here: {unexpected}"
    assert outcome.returncode == 0, f"Python {version}: pytest exited {outcome.returncode}\n{log[-5000:]}"
    assert outcome.counts["passed"] > 0


def test_the_claim_is_the_tested_versions() -> None:
    """setup.cfg claims exactly 3.11 (the main run) plus the versions tested here."""
    text = (ROOT / "setup.cfg").read_text()
    classified = re.findall(r"Programming Language :: Python :: (3\.\d+)$", text, re.M)
    assert sorted(classified, key=lambda v: int(v.split(".")[1])) == list(CLAIMED)
    assert re.search(r"^python_requires = >=3\.10$", text, re.M)
    assert sorted({"3.11", *VERSIONS}) == sorted(CLAIMED)
    assert sys.version_info[:2] == (3, 11), "the main run is the 3.11 one"


def test_deselections_name_real_tests() -> None:
    """Each test kept off the other versions still exists (else the list hides nothing)."""
    for node in NOT_THERE:
        path, _, name = node.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), node
    for path in [*SELECTION, *NOT_SELECTED]:
        assert (ROOT / path).is_file(), path
    for prefixes in SKIPS.values():
        for prefix in prefixes:
            path, _, name = prefix.partition("::")
            assert f"def {name}" in (ROOT / path).read_text(), prefix
