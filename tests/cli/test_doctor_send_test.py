"""`amldbg doctor --send-test`: one marked trace through amldbg's real Application Insights
sinks (both backends) to the test suite's ingestion server on 127.0.0.1, and the one-line
answer: accepted, rejected with the service's reason, unreachable, malformed, not installed.

Every run is the real command in a child that imports ``netguard`` first: a connection or a
name lookup beyond loopback fails loudly (statsbeat, the metadata endpoint, a real region).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from harness.ingestion_server import IngestionServer, properties, refused_endpoint
from processes import ROOT, child_env

LOGS = ROOT / "tests" / "logs"

BACKENDS = ("opencensus", "otel")
# What the real ingestion service answers for a key it does not know (errors[].message).
SERVICE_REASON = "Invalid instrumentation key"


class ReasonServer(IngestionServer):
    """The ingestion server, answering its first ``fail_first`` requests with
    ``fail_status`` and, like the service, the reason in ``errors[].message``.

    ``echo_key`` puts the instrumentation key in the reason, as a hostile or careless
    endpoint might: doctor must still not print it.
    """

    def __init__(self, fail_status: int, reason: str = SERVICE_REASON, echo_key: bool = False) -> None:
        self.reason = reason
        self.echo_key = echo_key
        super().__init__(fail_first=1, fail_status=fail_status)

    def _handler_class(self) -> Any:
        base: Any = super()._handler_class()
        server = self

        class Handler(base):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                if status >= 400 and "errors" in body:
                    reason = server.reason
                    if server.echo_key:
                        reason += f" {server.instrumentation_key}"
                    body = dict(body, errors=[{"index": 0, "statusCode": status, "message": reason}])
                super()._answer(status, body)

        return Handler


def doctor(*args: str, site: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `amldbg doctor` behind the network guard with a deterministic environment."""
    base = child_env(AMLDBG_NODE_ADDRESS="10.9.8.7", **env)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "APPINSIGHTS_INSTRUMENTATIONKEY",
                 "AML_APP_INSIGHTS_KEY", "AML_APP_INSIGHTS_ENABLED", "AZUREML_RUN_ID", "RANK",
                 "LOCAL_RANK", "WORLD_SIZE"):
        if name not in env:
            base.pop(name, None)
    code = (f"import sys; sys.path.insert(0, {str(LOGS)!r}); import netguard; "
            "from amldbg.cli import main; sys.exit(main(sys.argv[1:]))")
    python = [sys.executable]
    if not site:
        # No site-packages: the exporters are really not installed (amldbg itself needs none).
        python.append("-S")
        base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [*python, "-c", code, "doctor", *args],
        capture_output=True, text=True, env=base, timeout=120, stdin=subprocess.DEVNULL,
        cwd=str(ROOT),
    )


def lines_of(stdout: str) -> dict[str, str]:
    """{check name: its line} of the text output (the verdict line left out)."""
    result = {}
    for line in stdout.strip().splitlines()[:-1]:
        status, rest = line.split(None, 1)
        assert status in ("ok", "FAIL"), line
        result[rest.split("  ", 1)[0].strip()] = line
    return result


def assert_clean(done: subprocess.CompletedProcess[str], *secrets: str) -> None:
    """Nothing secret printed, no traceback, nothing tried beyond loopback."""
    everything = done.stdout + done.stderr
    for secret in secrets:
        assert secret not in everything and secret[:8] not in everything
    assert "Traceback" not in everything
    assert "NETGUARD" not in done.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepted_trace_arrives_marked_with_the_run_context(backend: str) -> None:
    with IngestionServer() as server:
        done = doctor(
            "--send-test",
            APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
            AMLDBG_APPINSIGHTS_BACKEND=backend,
            AZUREML_RUN_ID="doctor_run_1", AZUREML_ARM_PROJECT_NAME="doctor-exp",
        )
        arrived = server.wait_for(1)
    assert done.returncode == 0, done.stdout + done.stderr
    line = lines_of(done.stdout)["send test"]
    assert line.startswith("ok") and f"accepted by http://127.0.0.1:{server.port}" in line
    assert f"({backend} exporter)" in line
    assert len(arrived) == 1
    props = properties(arrived[0])
    assert props["amldbg_send_test"] == "true"
    assert f"amldbg_send_test_id == '{props['amldbg_send_test_id']}'" in line
    # The run-context dimensions every amldbg record carries.
    assert props["run_id"] == "doctor_run_1" and props["experiment"] == "doctor-exp"
    assert props["node_address"] == "10.9.8.7" and props["rank"] == "0"
    assert "amldbg doctor --send-test" in arrived[0]["data"]["baseData"]["message"]
    assert_clean(done, server.instrumentation_key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_with_the_services_reason_and_the_key_masked(backend: str) -> None:
    with ReasonServer(400, echo_key=True) as server:
        done = doctor("--send-test", APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                      AMLDBG_APPINSIGHTS_BACKEND=backend)
        assert server.statuses == [400]
    assert done.returncode == 1
    line = lines_of(done.stdout)["send test"]
    assert line.startswith("FAIL") and "rejected by" in line and "HTTP 400 Bad Request" in line
    assert "drops such records" in line
    assert SERVICE_REASON in line
    assert_clean(done, server.instrumentation_key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_error_is_a_rejection_the_script_would_retry(backend: str) -> None:
    with ReasonServer(500, reason="Internal error") as server:
        done = doctor("--send-test", APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                      AMLDBG_APPINSIGHTS_BACKEND=backend)
    assert done.returncode == 1
    line = lines_of(done.stdout)["send test"]
    assert "rejected by" in line and "HTTP 500" in line and "retries" in line
    assert_clean(done, server.instrumentation_key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_port_is_unreachable(backend: str) -> None:
    refused = refused_endpoint()
    key = refused.split(";")[0].split("=", 1)[1]
    done = doctor("--send-test", "--json", APPLICATIONINSIGHTS_CONNECTION_STRING=refused,
                  AMLDBG_APPINSIGHTS_BACKEND=backend)
    assert done.returncode == 1
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    sent = checks["send test"]
    assert sent["ok"] is False and sent["outcome"] == "unreachable"
    assert "connection refused" in sent["detail"]
    assert_clean(done, key)


def test_an_endpoint_that_never_answers_is_given_up_at_the_timeout() -> None:
    with IngestionServer(hang=True) as server:
        done = doctor("--send-test", "--timeout", "3",
                      APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
    assert done.returncode == 1
    line = lines_of(done.stdout)["send test"]
    assert "unreachable" in line and "no answer within 3 s" in line
    assert_clean(done, server.instrumentation_key)


def test_malformed_connection_string_sends_nothing() -> None:
    key = str(uuid.uuid4())
    with IngestionServer() as server:
        malformed = f"InstrumentationKey={key}-EXTRA;IngestionEndpoint={server.endpoint}"
        done = doctor("--send-test", "--json", APPLICATIONINSIGHTS_CONNECTION_STRING=malformed)
        assert server.statuses == []
    assert done.returncode == 1
    sent = {check["name"]: check for check in json.loads(done.stdout)}["send test"]
    assert sent["outcome"] == "malformed" and "malformed connection string" in sent["detail"]
    assert_clean(done, key)


def test_missing_backend_package_is_reported() -> None:
    with IngestionServer() as server:
        done = doctor("--send-test", site=False, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
        assert server.statuses == []
    assert done.returncode == 1, done.stderr
    checks = lines_of(done.stdout)
    assert "opencensus-ext-azure" in checks["send test"] and "not installed" in checks["send test"]
    assert checks["app insights"].startswith("FAIL")
    assert_clean(done, server.instrumentation_key)


def test_invalid_backend_falls_back_like_the_script_and_still_sends() -> None:
    # The script warns about AMLDBG_APPINSIGHTS_BACKEND=bogus and uses opencensus: so does doctor.
    with IngestionServer() as server:
        done = doctor("--send-test", APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                      AMLDBG_APPINSIGHTS_BACKEND="bogus")
        arrived = server.wait_for(1)
    assert done.returncode == 0
    checks = lines_of(done.stdout)
    assert checks["app insights"].startswith("FAIL") and "AMLDBG_APPINSIGHTS_BACKEND" in checks["app insights"]
    assert "uses opencensus" in checks["app insights"]
    assert "(opencensus exporter)" in checks["send test"] and len(arrived) == 1


def test_instrumentation_key_without_connection_string() -> None:
    key = str(uuid.uuid4())
    done = doctor("--send-test", APPINSIGHTS_INSTRUMENTATIONKEY=key)
    assert done.returncode == 1
    checks = lines_of(done.stdout)
    assert checks["app insights"].startswith("FAIL")
    assert "APPINSIGHTS_INSTRUMENTATIONKEY is set but APPLICATIONINSIGHTS_CONNECTION_STRING is not" in checks["app insights"]
    assert "not sent" in checks["send test"]
    assert_clean(done, key)


def test_a_rank_that_does_not_send_is_reported() -> None:
    with IngestionServer() as server:
        done = doctor("--json", "--remote_debug_port", "0", RANK="1", WORLD_SIZE="2",
                      APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
        everyone = doctor("--json", "--remote_debug_port", "0", RANK="1", WORLD_SIZE="2",
                          AMLDBG_LOG_ALL_RANKS="1",
                          APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
        typo = doctor("--json", "--remote_debug_port", "0", RANK="1", WORLD_SIZE="2",
                      AMLDBG_LOG_ALL_RANKS="everyone",
                      APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
        assert server.statuses == []  # without --send-test nothing is sent
    delivery = {c["name"]: c for c in json.loads(done.stdout)}["delivery"]
    assert delivery["ok"] is False and "rank 1 of 2: only rank 0 sends" in delivery["detail"]
    assert done.returncode == 1
    delivery = {c["name"]: c for c in json.loads(everyone.stdout)}["delivery"]
    assert delivery["ok"] is True and "every rank sends" in delivery["detail"]
    # An invalid value means off in the script (one warning there): doctor says so.
    delivery = {c["name"]: c for c in json.loads(typo.stdout)}["delivery"]
    assert delivery["ok"] is False and "AMLDBG_LOG_ALL_RANKS" in delivery["detail"]
    assert "uses off" in delivery["detail"] and "only rank 0 sends" in delivery["detail"]


def test_timeout_must_be_positive() -> None:
    done = doctor("--send-test", "--timeout", "0")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "--timeout" in done.stderr


def test_send_test_function_without_the_command() -> None:
    # The library entry point gives the same answer as the command (used by the lead's code).
    from amldbg.cli import doctor as doctor_module

    with IngestionServer() as server:
        env = child_env(APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
        check = doctor_module.send_test(env, timeout=30)
        assert server.wait_for(1)
    assert check.ok and check.outcome == "accepted"
    assert server.instrumentation_key not in check.detail


def test_the_exporters_messages_reach_no_handler_of_the_caller() -> None:
    # In a process whose root logger prints everything, the exporters' transport messages
    # made while doctor sends (which may echo the envelope and its key) are not printed.
    import io
    import logging

    from amldbg.cli import doctor as doctor_module

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with ReasonServer(400, echo_key=True) as server:
            env = child_env(APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string)
            check = doctor_module.send_test(env, timeout=30)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert check.outcome == "rejected" and SERVICE_REASON in check.detail
    assert server.instrumentation_key not in stream.getvalue() + check.detail
    assert "Non-retryable" not in stream.getvalue() and "/v2.1/track" not in stream.getvalue()
