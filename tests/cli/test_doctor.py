"""`amldbg doctor` with a port really taken, connection strings, and bad settings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Iterator

import pytest

from conftest import free_port
from processes import child_env

SECRET_KEY = "3f2a9c1e-7b4d-4e8a-9c0f-5d6e7f8a9b0c"


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m amldbg doctor` with a clean, deterministic environment."""
    base = child_env(AMLDBG_NODE_ADDRESS="10.9.8.7", **env)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "AZUREML_RUN_ID", "RANK", "LOCAL_RANK"):
        if name not in env:
            base.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "amldbg", "doctor", *args],
        capture_output=True, text=True, env=base, timeout=60, stdin=subprocess.DEVNULL,
    )


def check_lines(stdout: str) -> dict[str, str]:
    """{check name: its line}, from the one-line-per-check output."""
    lines = stdout.strip().splitlines()[:-1]
    result = {}
    for line in lines:
        status, rest = line.split(None, 1)
        assert status in ("ok", "FAIL"), line
        name = rest.split("  ", 1)[0].strip()
        result[name] = line
    return result


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a real listening socket for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def test_all_checks_pass_on_a_free_port() -> None:
    port = free_port()
    done = doctor("--remote_debug", "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(port))
    assert done.returncode == 0, done.stdout
    checks = check_lines(done.stdout)
    assert checks["port"].startswith("ok") and f"{port} is free on 127.0.0.1" in checks["port"]
    assert "10.9.8.7 (chosen by AMLDBG_NODE_ADDRESS)" in checks["node address"]
    assert "remote debugging on" in checks["settings"]
    assert checks["debugpy"].startswith("ok")
    assert "not an Azure ML job" in checks["azure ml"] and "rank 0 of 1" in checks["azure ml"]
    assert done.stdout.rstrip().endswith("all checks passed")


def test_port_taken_fails(taken_port: int) -> None:
    done = doctor("--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(taken_port))
    assert done.returncode == 1
    checks = check_lines(done.stdout)
    assert checks["port"].startswith("FAIL")
    assert f"{taken_port} is in use on 127.0.0.1" in checks["port"]
    failed = [name for name, line in checks.items() if line.startswith("FAIL")]
    assert failed == ["port"]
    assert done.stdout.rstrip().endswith("1 check failed")


def test_port_taken_seen_through_the_environment_and_the_local_rank(taken_port: int) -> None:
    # The script resolves AMLDBG_* like a flag, and local rank 1 listens on base port + 1.
    done = doctor(
        AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1",
        AMLDBG_REMOTE_DEBUG_PORT=str(taken_port - 1),
        RANK="1", LOCAL_RANK="1", WORLD_SIZE="2",
    )
    assert done.returncode == 1
    checks = check_lines(done.stdout)
    assert f"{taken_port} is in use" in checks["port"]
    assert "rank 1 of 2" in checks["azure ml"]


def test_malformed_connection_string_fails_without_showing_it() -> None:
    malformed = f"InstrumentationKey={SECRET_KEY}-EXTRA;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
    done = doctor("--remote_debug_port", "0", APPLICATIONINSIGHTS_CONNECTION_STRING=malformed)
    assert done.returncode == 1
    checks = check_lines(done.stdout)
    assert checks["app insights"].startswith("FAIL")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING is malformed: InstrumentationKey is not a GUID" in checks["app insights"]
    assert SECRET_KEY[:8] not in done.stdout + done.stderr


def test_well_formed_connection_string_is_masked() -> None:
    good = f"InstrumentationKey={SECRET_KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
    done = doctor("--remote_debug_port", "0", APPLICATIONINSIGHTS_CONNECTION_STRING=good)
    checks = check_lines(done.stdout)
    assert checks["app insights"].startswith("ok")
    assert "InstrumentationKey=****;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com" in checks["app insights"]
    assert SECRET_KEY[:8] not in done.stdout + done.stderr and SECRET_KEY[-8:] not in done.stdout


def test_bad_setting_and_a_listen_address_of_another_machine() -> None:
    # The guide's pitfall: the client's IP passed as the listen address (only bound, never
    # contacted: binding a foreign address fails locally).
    done = doctor("--remote_debug_listen_host", "192.0.2.123", AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="soon")
    assert done.returncode == 1
    checks = check_lines(done.stdout)
    assert checks["settings"].startswith("FAIL") and "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT" in checks["settings"]
    assert checks["listen address"].startswith("FAIL") and "192.0.2.123 is not an address of this machine" in checks["listen address"]
    assert "port" not in checks  # nothing to check on an address that cannot be bound


def test_reverse_connect_client_is_not_contacted_and_json_output() -> None:
    done = doctor("--json", "--remote_debug_client_ip", "192.0.2.55", "--remote_debug_port", "5999")
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert checks["client"]["ok"] is True and "192.0.2.55" in checks["client"]["detail"]
    assert "port" not in checks and "listen address" not in checks
    assert done.returncode == 0


def test_invalid_flag_value_is_a_one_line_error() -> None:
    done = doctor("--remote_debug_port", "70000")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "--remote_debug_port" in done.stderr
