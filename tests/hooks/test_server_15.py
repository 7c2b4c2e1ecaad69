"""amldbg under the inference server users deploy today: azureml-inference-server-http >= 1.5.

The main venv resolves the server 1.4.1 (OpenCensus era): amldbg's test extra pins things
(azure-monitor-opentelemetry, the newest exporter) that cannot sit beside 1.5's
``opentelemetry-sdk==1.33.0``. So this test builds a venv of its own on Python 3.11 with the
server >= 1.5, amldbg from the work tree with its ``debug``, ``otel`` and ``appinsights``
extras, and whatever exporter releases pip resolves beside the server's pins, and runs two
suites there with pytest:

* ``decorators``: tests/hooks/test_scoring.py as it is (attach in ``run()`` with the real DAP
  client, HTTP 500 with the traceback logged, no listener when debugging is off, post-mortem,
  two workers, the server's own debug mode, inference-schema and ``@rawhttp``);
* ``telemetry``: tests/hooks/server15/checks_server15.py (the resolved versions, amldbg's
  Application Insights logging from score.py with both backends while the server sends its
  own OpenTelemetry telemetry to the same loopback ingestion server, the global providers
  seen from inside the worker, attach in ``run()`` with the server's telemetry on).

Each suite passes only when every one of its tests passed: a skipped, failed or erroring
test inside fails it here, and so does a venv that cannot be built (harness/venvs.py). The
parallel entry-script hook does not apply to the inference server (its process selection is
for ParallelRunStep workers; a server's gunicorn workers each listen on base port + worker
index, which test_scoring.py checks): tests/hooks/test_parallel.py covers it, independent
of the server.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from harness import venvs
from processes import ROOT, child_env

pytestmark = pytest.mark.slow

VENV = "server-1.5"
#: What the venv installs: the server >= 1.5 decides the OpenTelemetry SDK (its pin) and so
#: which exporter release resolves; nothing here pins an exporter.
REQUIREMENTS = (
    f"-e {ROOT}[debug,otel,appinsights]",
    "azureml-inference-server-http>=1.5",
    "numpy",  # samples/score.py
    "packaging",
    "pytest>=7",
    "pytest-timeout>=2",
)
SUITES = {
    "decorators": "tests/hooks/test_scoring.py",
    "telemetry": "tests/hooks/server15/checks_server15.py",
}
#: The versions shown in this test's output (and checked by the telemetry suite).
PACKAGES = ("azureml-inference-server-http", "opentelemetry-sdk", "opentelemetry-api",
            "azure-monitor-opentelemetry-exporter", "opencensus-ext-azure", "debugpy", "gunicorn")
#: Bounds for one suite's run (pytest-timeout still bounds each inner test at 300 s).
SUITE_TIMEOUT = 1200


@pytest.fixture(scope="module")
def server15() -> Path:
    """The interpreter of the server-1.5 venv (built once, reused while its specs hold)."""
    started = time.monotonic()
    venv = venvs.venv_for("3.11", REQUIREMENTS, VENV)
    python = venvs.python_of(venv)
    script = ("import importlib.metadata as m\n"
              f"print(', '.join(f'{{n}} {{m.version(n)}}' for n in {PACKAGES!r}))\n")
    versions = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                              timeout=120, check=True, env=child_env(), stdin=subprocess.DEVNULL)
    print(f"{VENV} venv ({time.monotonic() - started:.0f} s here, last build "
          f"{venvs.build_seconds(venv)} s): {versions.stdout.strip()}")
    return python


@pytest.mark.timeout(venvs.INSTALL_TIMEOUT + SUITE_TIMEOUT + 300)
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_suite_passes_under_inference_server_15(server15: Path, suite: str, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    argv = [str(server15), "-m", "pytest", SUITES[suite], "-p", "no:cacheprovider", "-q", "-rA",
            f"--basetemp={tmp_path / 'inner'}", f"--junitxml={report}"]
    env = child_env()
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=SUITE_TIMEOUT)
    took = time.monotonic() - started
    output = done.stdout.decode("utf-8", "replace")
    tail = "\n".join(output.splitlines()[-200:])
    assert done.returncode == 0, f"the {suite} suite failed under the server 1.5 venv:\n{tail}"
    assert report.is_file(), tail
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[name] = bad[0] if bad else "passed"
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert outcomes and not not_passed, f"{not_passed}\n{tail}"
    print(f"{suite}: {len(outcomes)} passed in {took:.0f} s under {VENV}")
    for name in outcomes:
        print(f"  {name}")
