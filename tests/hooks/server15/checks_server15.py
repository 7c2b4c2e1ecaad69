"""amldbg under the inference server users deploy today: azureml-inference-server-http >= 1.5.

Not collected by the main test run (the file name does not start with ``test_``): the main
venv resolves the server 1.4.1 (OpenCensus era), because amldbg's test extra cannot sit beside
1.5's pins. tests/hooks/test_server_15.py builds a venv with the server >= 1.5 (which pins
``opentelemetry-sdk==1.33.0``, with whatever exporter resolves beside that pin) and runs this
file, and tests/hooks/test_scoring.py, in it with pytest.

Server 1.5 replaced OpenCensus with OpenTelemetry: with ``AML_APP_INSIGHTS_ENABLED=true`` and
``AML_APP_INSIGHTS_KEY`` each worker sets the global ``LoggerProvider`` and ``TracerProvider``,
attaches an OpenTelemetry ``LoggingHandler`` to its loggers ``azmlinfsrv.trace`` (exceptions,
model data) and ``azmlinfsrv.print`` (the script's ``print()``), and sends a request span per
call; its exporters build the connection string ``InstrumentationKey=<key>`` and take the
ingestion endpoint from ``APPLICATIONINSIGHTS_CONNECTION_STRING``, so both the server's records
and amldbg's reach the loopback ingestion server here. The server (a real azmlinfsrv with real
gunicorn workers) runs behind ``netguard``, inherited by the forked workers: nothing may reach
beyond loopback.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import re
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
HOOKS = HERE.parent
LOGS = HOOKS.parent / "logs"
for _path in (HOOKS, LOGS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from logs_support import start_child, write_child  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402
from test_scoring import READY, SERVER, Server, post  # noqa: E402

from conftest import free_port  # noqa: E402
from harness.dap_client import DAPClient  # noqa: E402
from harness.ingestion_server import IngestionServer, kind, message, properties  # noqa: E402
from processes import ROOT, SAMPLES, child_env  # noqa: E402

pytestmark = pytest.mark.slow

SERVER_PACKAGE = "azureml-inference-server-http"
SCORE = HERE / "score_telemetry.py"
SAMPLE = SAMPLES / "score.py"
FAILING_LINE = next(
    n for n, line in enumerate(SCORE.read_text().splitlines(), 1) if "mean = sum" in line
)
SAMPLE_LINE = next(
    n for n, line in enumerate(SAMPLE.read_text().splitlines(), 1) if "predictions =" in line
)
#: The real server entry point (see test_scoring.py), behind netguard: the audit hook is
#: installed in the gunicorn master and inherited by every worker it forks.
GUARDED_SERVER = ["-c", f"import sys\nsys.path.insert(0, {str(LOGS)!r})\nimport netguard  # noqa\n"
                  + SERVER[1]]
#: Variables of the calling environment that would point the server or amldbg elsewhere.
INHERITED_TELEMETRY = ("APPLICATIONINSIGHTS_CONNECTION_STRING", "APPINSIGHTS_INSTRUMENTATIONKEY",
                       "AML_APP_INSIGHTS_ENABLED", "AML_APP_INSIGHTS_KEY")
#: What the OpenTelemetry API says when a second global provider is refused.
OVERRIDE_REFUSED = ("Overriding of current LoggerProvider is not allowed",
                    "Overriding of current TracerProvider is not allowed")


def start(entry: Path, tmp_path: Path, workers: int = 1, **env: str) -> tuple[Server, int]:
    """The real server on 127.0.0.1 behind netguard; ``env`` on top of the test environment."""
    port = free_port()
    child = child_env(TMPDIR=str(tmp_path), **env)  # the server's exporters keep files under TMPDIR
    for name in INHERITED_TELEMETRY:
        if name not in env:
            child.pop(name, None)
    argv = [*GUARDED_SERVER, "--entry_script", str(entry), "--port", str(port),
            "--worker_count", str(workers)]
    return Server(argv, env=child, cwd=tmp_path), port


def stop(run: Server) -> int:
    """Stop the server as a deployment does (SIGTERM to gunicorn's master, which stops its
    workers gracefully) and wait for it: what is queued is sent at exit."""
    run.proc.send_signal(signal.SIGTERM)
    return run.wait(60)


def server_telemetry(ingestion: IngestionServer) -> dict[str, str]:
    """The deployment's settings that turn the server's own Application Insights on, aimed at
    the loopback ingestion server (the key must be a GUID: the server checks)."""
    return {"AML_APP_INSIGHTS_ENABLED": "true", "AML_APP_INSIGHTS_KEY": ingestion.instrumentation_key,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string}


def from_amldbg(envelope: dict[str, Any]) -> bool:
    """amldbg's records carry the logger name as a custom dimension; the server's do not."""
    return "logger_name" in properties(envelope)


def lower_bound(extra: str, package: str) -> Version:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg")
    found = re.search(rf"^\s*{re.escape(package)}\s*>=\s*([^\s,;]+)",
                      parser["options.extras_require"][extra], re.M)
    assert found, f"setup.cfg's {extra} extra has no lower bound for {package}"
    return Version(found.group(1))


def test_environment_is_the_opentelemetry_era_server() -> None:
    server = Version(metadata.version(SERVER_PACKAGE))
    assert server >= Version("1.5"), f"{SERVER_PACKAGE} {server} is not the OpenTelemetry-era server"
    pins = {Requirement(r).name: Requirement(r) for r in metadata.requires(SERVER_PACKAGE) or []
            if "extra ==" not in r}
    for package in ("opentelemetry-sdk", "opentelemetry-api"):
        installed = metadata.version(package)
        assert installed in pins[package].specifier, (package, installed, str(pins[package]))
    exporter = Version(metadata.version("azure-monitor-opentelemetry-exporter"))
    assert exporter >= lower_bound("otel", "azure-monitor-opentelemetry-exporter")
    opencensus = Version(metadata.version("opencensus-ext-azure"))
    assert opencensus >= lower_bound("appinsights", "opencensus-ext-azure")
    # Said once in the output of this run (tests/hooks/test_server_15.py shows it).
    print(f"resolved: {SERVER_PACKAGE} {server}, opentelemetry-sdk {metadata.version('opentelemetry-sdk')}, "
          f"opentelemetry-api {metadata.version('opentelemetry-api')}, "
          f"azure-monitor-opentelemetry-exporter {exporter}, opencensus-ext-azure {opencensus}, "
          f"debugpy {metadata.version('debugpy')}")


@pytest.mark.parametrize("backend", ["otel", "opencensus"])
def test_records_logged_just_before_exit_arrive_with_the_servers_pinned_sdk(
        tmp_path: Path, backend: str) -> None:
    # Outside the server, the same exporter and SDK: a record logged as the script ends is
    # sent by amldbg's exit flush, after the interpreter began to shut down. With SDKs before
    # 1.39 an SDK LogRecord made without a resource runs the resource detectors on a new
    # thread pool, which the interpreter refuses then ("cannot schedule new futures").
    script = write_child(tmp_path, f"""
        import amldbg
        log = amldbg.get_logger("ending", backend={backend!r})
        log.info("early")
        assert amldbg.flush_logs(10)
        log.info("at the end 1")
        log.info("at the end 2")
        """)
    with IngestionServer() as ingestion:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string) as child:
            assert child.wait(60) == 0, child.output
        arrived = [message(e) for e in ingestion.wait_for(3)]
    assert sorted(arrived) == ["at the end 1", "at the end 2", "early"], child.output
    assert "amldbg: warning" not in child.output and "NETGUARD" not in child.output


@pytest.mark.parametrize("backend", ["otel", "opencensus"])
def test_appinsights_from_score_py_beside_the_servers_own_telemetry(tmp_path: Path, backend: str) -> None:
    with IngestionServer() as ingestion:
        run, port = start(SCORE, tmp_path, AMLDBG_APPINSIGHTS_BACKEND=backend,
                          **server_telemetry(ingestion))
        with run:
            run.wait_for_line(READY, 60)
            ok = post(port, {"rows": [1, 3]}, {"x-request-id": "req-ok"})
            failed = post(port, {"rows": []}, {"x-request-id": "req-fail"})
            run.wait_for_line(r"POST /score 500", 30)
            # Records of the failed request are still queued: the worker's exit sends them.
            assert stop(run) == 0
            output = run.output
        envelopes = ingestion.wait_for(0, timeout=0)
    status, answer = ok
    assert status == 200 and answer["mean"] == 2.0, output
    assert answer["delivered"] is True, output
    assert failed[0] == 500

    # amldbg set no second global provider: the worker's providers are the server's SDK ones,
    # the same objects before and after amldbg built its exporter and delivered records.
    assert answer["after"] == answer["at_import"], output
    assert answer["after"]["logger"]["class"] == "opentelemetry.sdk._logs._internal.LoggerProvider"
    assert answer["after"]["tracer"]["class"] == "opentelemetry.sdk.trace.TracerProvider"
    assert not any(text in output for text in OVERRIDE_REFUSED), output

    # amldbg's records, each exactly once, with their custom dimensions; the failure's record
    # (logged by @debug_run, then queued at exit) carries the request id and the traceback.
    ours = [e for e in envelopes if from_amldbg(e)]
    by_message = {message(e): e for e in ours}
    assert sorted(message(e) for e in ours if not message(e).startswith("run() failed")) == [
        "init done", "scoring 0 rows", "scoring 2 rows"], output
    assert properties(by_message["init done"])["stage"] == "init"
    assert properties(by_message["scoring 2 rows"])["rows"] == "2"
    assert properties(by_message["scoring 2 rows"])["logger_name"] == "score_telemetry"
    failures = [e for e in ours if message(e).startswith("run() failed")]
    assert len(failures) == 1, [message(e) for e in ours]
    report = message(failures[0])
    assert "request id req-fail" in report
    assert f'score_telemetry.py", line {FAILING_LINE}, in run' in report
    assert "ZeroDivisionError: division by zero" in report
    assert properties(failures[0])["logger_name"] == "amldbg.scoring"

    # The server's own records still reach its exporter: the script's print() through its
    # azmlinfsrv.print handler, the failed run's exception through azmlinfsrv.trace, one
    # request per call; none of amldbg's records went through the server's handler.
    theirs = [e for e in envelopes if not from_amldbg(e)]
    prints = [e for e in theirs if kind(e) == "MessageData" and message(e) == "print from init"]
    assert len(prints) == 1, [(kind(e), message(e)) for e in theirs]
    assert properties(prints[0])["code.function.name"] == "print_to_logger"
    exceptions = [e for e in theirs if kind(e) == "ExceptionData"]
    assert len(exceptions) == 1, [(kind(e), message(e)) for e in theirs]
    assert "'Request Id': 'req-fail'" in properties(exceptions[0])["custom_dimensions"]
    requests = sorted((properties(e)["Request Id"], properties(e)["resultCode"])
                      for e in theirs if kind(e) == "RequestData")
    assert requests == [("req-fail", "500"), ("req-ok", "200")]
    assert not any(message(e) in ("init done", "scoring 2 rows") for e in theirs)
    # ... and its own log handler (stdout) still has its lines, amldbg's beside them.
    assert re.search(r"^\S+ \S+ I \[\d+\] azmlinfsrv\.print - print from init$", output, re.M)
    assert re.search(r"^\S+ \S+ INFO score_telemetry: scoring 2 rows$", output, re.M)
    assert "NETGUARD" not in output and "amldbg: warning" not in output, output


@pytest.mark.parametrize("who", ["amldbg", "control"])
def test_amldbg_sets_no_global_provider_when_the_server_has_none(tmp_path: Path, who: str) -> None:
    # Application Insights off for the server: the providers stay the API's proxies, also
    # after amldbg's OpenTelemetry exporter delivered records. The control, a score.py that
    # sets providers itself, shows that both checks see it: another class, and the warning
    # of the refused second call.
    extra = {"SCORE_SETS_PROVIDERS": "1"} if who == "control" else {}
    with IngestionServer() as ingestion:
        run, port = start(SCORE, tmp_path, AMLDBG_APPINSIGHTS_BACKEND="otel",
                          APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string, **extra)
        with run:
            run.wait_for_line(READY, 60)
            status, answer = post(port, {"rows": [2, 4]})
            output = run.output
        envelopes = ingestion.wait_for(0, timeout=0)
    assert (status, answer["mean"], answer["delivered"]) == (200, 3.0, True), output
    assert sorted(message(e) for e in envelopes) == ["init done", "scoring 2 rows"]
    assert all(from_amldbg(e) for e in envelopes)
    assert "NETGUARD" not in output and "amldbg: warning" not in output, output
    proxies = {"logger": "opentelemetry._logs._internal.ProxyLoggerProvider",
               "tracer": "opentelemetry.trace.ProxyTracerProvider"}
    classes = {name: answer["after"][name]["class"] for name in proxies}
    refused = [text for text in OVERRIDE_REFUSED if text in output]
    if who == "control":
        assert classes == {"logger": "opentelemetry.sdk._logs._internal.LoggerProvider",
                           "tracer": "opentelemetry.sdk.trace.TracerProvider"}
        assert refused == list(OVERRIDE_REFUSED), output
        return
    assert answer["after"] == answer["at_import"]
    assert classes == proxies
    assert refused == [], output


def test_attach_in_run_while_the_server_sends_its_telemetry(tmp_path: Path) -> None:
    # The sample score.py, a real DAP client stopping in run() and reading a local, while the
    # server's OpenTelemetry processors run their threads in the same worker.
    debug_port = free_port()
    with IngestionServer() as ingestion:
        run, port = start(SAMPLE, tmp_path, AMLDBG_REMOTE_DEBUG="1",
                          AMLDBG_REMOTE_DEBUG_PORT=str(debug_port),
                          AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60",
                          AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1", **server_telemetry(ingestion))
        with run, concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert int(run.wait_for_line(r"^port: (\d+)$", 60).group(1)) == debug_port
            client = DAPClient.connect("127.0.0.1", debug_port)
            try:
                client.attach(breakpoints={str(SAMPLE): [SAMPLE_LINE]})
                run.wait_for_line(READY, 60)
                answer = pool.submit(post, port, {"data": [[1.0, 2.0, 3.0]]}, {"x-request-id": "req-dbg"})
                stop_event = client.wait_for_stop()
                frame = client.top_frame(stop_event["threadId"])
                assert frame["line"] == SAMPLE_LINE
                assert client.locals_of(frame["id"])["scores"] == "array([4.75])"
                assert not answer.done()
                client.request("setBreakpoints", {"source": {"path": str(SAMPLE)}, "breakpoints": []})
                client.continue_(stop_event["threadId"])
                assert answer.result(60) == (200, [4.75])
            finally:
                client.disconnect()
            assert stop(run) == 0
            output = run.output
        envelopes = ingestion.wait_for(0, timeout=0)
    assert "Debugger attached = True" in output
    requests = [properties(e)["Request Id"] for e in envelopes if kind(e) == "RequestData"]
    assert requests == ["req-dbg"], [(kind(e), message(e)) for e in envelopes]
    assert [message(e) for e in envelopes if kind(e) == "MessageData"] == ["model loaded: 3 weights"]
    assert "NETGUARD" not in output, output
