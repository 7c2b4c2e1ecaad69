"""Both Application Insights backends against the oldest and the newest exporters the extras allow.

The lower bounds of the ``appinsights`` and ``otel`` extras are read from setup.cfg, so this
test is what keeps them true. For each end of the range the test run builds its own venv
(``python -m venv`` from the interpreter running the tests, then ``pip install``):

* ``oldest``: each exporter at its lower bound, and the OpenTelemetry API/SDK at the lowest
  version that exporter release asks for (a fresh resolution would pick today's SDK, with
  which old exporters do not even import: that is the exporter's own limit, not amldbg's);
* ``newest``: whatever pip resolves today for the two extras.

amldbg itself is not installed there (no build in the work tree): the children import it
from the checkout through ``PYTHONPATH``. The children post to the ingestion server on
127.0.0.1 behind ``netguard``, like the other Application Insights tests.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import venv
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from logs_support import CHILD_HEADER, HERE

from harness.ingestion_server import IngestionServer, base_data, kind, message, properties
from processes import ROOT, child_env

pytestmark = pytest.mark.slow

OTEL = "azure-monitor-opentelemetry-exporter"
OPENCENSUS = "opencensus-ext-azure"
BACKENDS = ["opencensus", "otel"]
#: How long one pip step may take (downloads on a cold cache included).
PIP_TIMEOUT = 900


def lower_bound(extra: str, package: str) -> str:
    """The ``>=`` bound of ``package`` in setup.cfg's ``extra`` (fails when there is none)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg")
    requirements = parser["options.extras_require"][extra]
    found = re.search(rf"^\s*{re.escape(package)}\s*>=\s*([^\s,;]+)", requirements, re.M)
    assert found, f"setup.cfg's {extra} extra has no lower bound for {package}"
    return found.group(1)


def _pip(python: Path, *args: str) -> None:
    env = child_env()
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=PIP_TIMEOUT)
    output = done.stdout.decode("utf-8", "replace")
    # pip's warnings about unused index locations are noise here; errors are not.
    lines = [line for line in output.splitlines() if "is ignored: it is neither" not in line]
    assert done.returncode == 0, "pip install failed:\n" + "\n".join(lines[-40:])


def _versions(python: Path) -> dict[str, str]:
    script = ("import json, importlib.metadata as m\n"
              "names = ['azure-monitor-opentelemetry-exporter', 'opencensus-ext-azure', 'opentelemetry-sdk',"
              " 'opentelemetry-api', 'azure-core']\n"
              "print(json.dumps({n: m.version(n) for n in names}))\n")
    done = subprocess.run([str(python), "-c", script], stdout=subprocess.PIPE, timeout=120, check=True)
    return dict(json.loads(done.stdout))


def _lowest_companion(python: Path, package: str, dependency: str) -> str:
    """The lowest release of ``dependency`` that the installed ``package`` accepts (``~=``/``>=``)."""
    script = (f"import importlib.metadata as m\n"
              f"print('\\n'.join(m.requires({package!r}) or []))\n")
    done = subprocess.run([str(python), "-c", script], stdout=subprocess.PIPE, timeout=120, check=True)
    for line in done.stdout.decode().splitlines():
        name = re.split(r"[\s<>=~!;\[(]", line, maxsplit=1)[0]
        if name.lower() == dependency:
            bound = re.search(r"(?:~=|>=)\s*([0-9][0-9.]*)", line)
            if bound:
                release = bound.group(1)
                return release if release.count(".") >= 2 else release + ".0"
    raise AssertionError(f"{package} states no lower bound for {dependency}")


def _make_venv(where: Path, end: str) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    otel_bound = lower_bound("otel", OTEL)
    opencensus_bound = lower_bound("appinsights", OPENCENSUS)
    if end == "oldest":
        _pip(python, f"{OTEL}=={otel_bound}", f"{OPENCENSUS}=={opencensus_bound}")
        api = _lowest_companion(python, OTEL, "opentelemetry-api")
        sdk = _lowest_companion(python, OTEL, "opentelemetry-sdk")
        _pip(python, f"opentelemetry-api=={api}", f"opentelemetry-sdk=={sdk}")
    else:
        _pip(python, "--upgrade", f"{OTEL}>={otel_bound}", f"{OPENCENSUS}>={opencensus_bound}")
    return python


#: A folder where the venvs are kept between runs (a local speed-up; unset, every run
#: builds fresh ones, which is what CI does).
CACHE_ENV = "AMLDBG_TEST_EXPORTER_VENVS"


@pytest.fixture(scope="module", params=["oldest", "newest"])
def exporters(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a venv holding the oldest or the newest exporters the extras allow."""
    end = str(request.param)
    cache = os.environ.get(CACHE_ENV)
    if cache:
        bounds = f"{lower_bound('otel', OTEL)}-{lower_bound('appinsights', OPENCENSUS)}"
        where = Path(cache) / f"{end}-{bounds}"
        python = where / "bin" / "python"
        if not (where / "ready").exists():
            python = _make_venv(where, end)
            (where / "ready").write_text("ok\n")
    else:
        python = _make_venv(tmp_path_factory.mktemp(f"exporters-{end}") / "venv", end)
    versions = _versions(python)
    print(f"{end}: {versions}")
    if end == "oldest":
        assert versions[OTEL] == lower_bound("otel", OTEL), versions
        assert versions[OPENCENSUS] == lower_bound("appinsights", OPENCENSUS), versions
    yield python


SCRIPT = """
    import os, sys
    from amldbg.logs import get_logger, flush_logs

    backend = sys.argv[1]
    log = get_logger("matrix", backend=backend)
    print("PID", os.getpid(), flush=True)
    for i in range(12):
        log.info("record %d", i)
    log.warning("with dimensions", extra={"custom_dimensions": {"epoch": 3}})

    def failing_function():
        raise ValueError("bad input 42")

    try:
        failing_function()
    except ValueError:
        log.exception("step failed")
    print("FLUSHED", flush_logs(30), flush=True)
    log.info("last record before exit")
"""


def _run(python: Path, tmp_path: Path, backend: str, connection: str) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD_HEADER + textwrap.dedent(SCRIPT))
    env = child_env(APPLICATIONINSIGHTS_CONNECTION_STRING=connection, AMLDBG_NODE_ADDRESS="10.0.0.7",
                    PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "AZUREML_RUN_ID"):
        env.pop(name, None)
    # subprocess.run kills and reaps the child if it outlives the timeout.
    done = subprocess.run([str(python), str(script), backend], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=120)
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, output
    return output


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_record_arrives_with_either_end_of_the_exporter_range(
    exporters: Path, tmp_path: Path, backend: str
) -> None:
    with IngestionServer(fail_first=2, fail_status=503) as server:
        output = _run(exporters, tmp_path, backend, server.connection_string)
        server.wait_for(15, timeout=10)
        time.sleep(0.3)  # a duplicate would arrive now
        envelopes = list(server.envelopes)
        statuses = list(server.statuses)
    assert "NETGUARD" not in output, output
    assert server.instrumentation_key not in output
    # Two refusals, then delivery: the failures were retried, not dropped.
    assert "FLUSHED True" in output, output
    assert statuses[:2] == [503, 503] and statuses[-1] == 200, (statuses, output)
    assert output.count("retrying in the background") == 1, output
    messages = Counter(message(e).splitlines()[0] for e in envelopes)
    expected = [f"record {i}" for i in range(12)] + ["with dimensions", "step failed", "last record before exit"]
    assert messages == Counter(expected), (messages, output)
    pid = re.search(r"PID (\d+)", output).group(1)  # type: ignore[union-attr]
    by_message = {message(e).splitlines()[0]: e for e in envelopes}
    for envelope in envelopes:
        props = properties(envelope)
        assert props["pid"] == pid and props["logger_name"] == "matrix" and props["node_address"] == "10.0.0.7"
    assert properties(by_message["with dimensions"])["epoch"] == "3"
    # 1.0.0b21's serializer writes the level as a string ("1"), later ones as a number.
    assert str(base_data(by_message["record 3"])["severityLevel"]) == "1"
    failure = by_message["step failed"]
    assert kind(failure) == "ExceptionData", failure
    assert base_data(failure)["exceptions"][0]["typeName"] == "ValueError"
    assert "failing_function" in json.dumps(base_data(failure)), failure


def test_the_lower_bounds_are_read_from_setup_cfg() -> None:
    # A guard on the guard: the bounds this module tests are the ones users get.
    assert re.match(r"^1\.0\.0b\d+$", lower_bound("otel", OTEL))
    assert re.match(r"^1\.1\.\d+$", lower_bound("appinsights", OPENCENSUS))


if __name__ == "__main__":  # pragma: no cover - a manual run prints the two ends
    sys.exit(pytest.main([__file__, "-q", "-s"]))
