"""`amldbg doctor` with a port really taken, connection strings, and bad settings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Iterator

import pytest

from amldbg.cli import doctor as doctor_module
from amldbg.core import settings as core_settings
from amldbg.debugger.start import PORT_ATTEMPTS
from conftest import free_port
from processes import ROOT, child_env, run_amldbg

SECRET_KEY = "3f2a9c1e-7b4d-4e8a-9c0f-5d6e7f8a9b0c"


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m amldbg doctor` with a clean, deterministic environment."""
    base = child_env(AMLDBG_NODE_ADDRESS="10.9.8.7", **env)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "AZUREML_RUN_ID", "RANK", "LOCAL_RANK"):
        if name not in env:
            base.pop(name, None)
    return run_amldbg("doctor", *args, env=base)


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
    assert "InstrumentationKey=" in checks["app insights"]
    assert ";IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com" in checks["app insights"]
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


# -- doctor and the script agree (issue 10) ----------------------------------------------------
INVALID_VALUES = [
    ("AMLDBG_REMOTE_DEBUG", "maybe"),
    ("AMLDBG_REMOTE_DEBUG", "disabled"),
    ("AMLDBG_REMOTE_DEBUG", "2"),
    ("AMLDBG_REMOTE_DEBUG_POST_MORTEM", "sometimes"),
    ("AMLDBG_REMOTE_DEBUG_SUBPROCESS", "yes please"),
    ("AMLDBG_REMOTE_DEBUG_PORT", "70000"),
    ("AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT", "soon"),
    ("AMLDBG_REMOTE_DEBUG_RANKS", "first"),
]


@pytest.mark.parametrize("name,value", INVALID_VALUES)
def test_invalid_values_resolve_as_in_the_script(name: str, value: str) -> None:
    # The script resolves with core.settings.resolve_settings (one warning, then the default:
    # off for every switch); doctor must land on the same settings and fail the line.
    env = {name: value, "AMLDBG_REMOTE_DEBUG_PORT": "5999"} if name != "AMLDBG_REMOTE_DEBUG_PORT" else {name: value}
    checks, resolved = doctor_module.settings_checks(env, {})
    assert resolved == core_settings.resolve_settings(None, env=env)
    assert resolved.enabled is False or name != "AMLDBG_REMOTE_DEBUG"
    assert checks[0].ok is False and name in checks[0].detail


def test_invalid_remote_debug_means_off_in_doctor() -> None:
    done = doctor("--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(free_port()),
                  AMLDBG_REMOTE_DEBUG="maybe")
    checks = check_lines(done.stdout)
    assert checks["settings"].startswith("FAIL")
    assert "AMLDBG_REMOTE_DEBUG:" in checks["settings"] and "the script warns and uses off" in checks["settings"]
    assert "remote debugging off" in checks["settings"]


def test_blank_values_are_the_defaults_as_in_the_script() -> None:
    # read_env: a blank port or timeout means "not set"; a blank switch means off. No failure.
    done = doctor("--remote_debug_listen_host", "127.0.0.1",
                  AMLDBG_REMOTE_DEBUG="", AMLDBG_REMOTE_DEBUG_PORT=" ", AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="")
    checks = check_lines(done.stdout)
    assert checks["settings"].startswith("ok"), checks["settings"]
    assert "remote debugging off" in checks["settings"] and ":5678;" in checks["settings"]
    assert "timeout 300 s" in checks["settings"]


def consecutive_ports(count: int) -> tuple[int, list[socket.socket]]:
    """``count`` consecutive ports on 127.0.0.1, each held by a listening socket."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
                sock.listen(1)
            return base, held
        except OSError:
            for sock in held:
                sock.close()
    pytest.fail(f"no {count} consecutive free ports on 127.0.0.1")


def test_fallback_port_prediction_matches_the_script() -> None:
    # The script tries PORT_ATTEMPTS ports from the requested one; with all of them taken it
    # runs without a debugger, and doctor must not promise a port beyond them.
    base, held = consecutive_ports(PORT_ATTEMPTS)
    try:
        done = doctor("--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(base))
        script = subprocess.run(
            [sys.executable, "-c", "import amldbg; amldbg.enable_remote_debug(); print('script went on')"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=str(ROOT),
            env=child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1",
                          AMLDBG_REMOTE_DEBUG_PORT=str(base), AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="0",
                          AMLDBG_NODE_ADDRESS="10.9.8.7"),
        )
        # One port freed at the end of the range: both pick it.
        last = base + PORT_ATTEMPTS - 1
        held.pop().close()
        moved = doctor("--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(base))
    finally:
        for sock in held:
            sock.close()
    port_line = check_lines(done.stdout)["port"]
    assert port_line.startswith("FAIL") and f"ports {base}-{last} are all taken" in port_line
    assert "would move" not in port_line
    assert "could not listen for a debugger" in script.stdout and "script went on" in script.stdout
    assert f"the script would move to port {last}" in check_lines(moved.stdout)["port"]


def test_endpoint_user_info_and_authorization_values_are_masked() -> None:
    token = "s3cr3tT0kenValue"
    with_user = (f"InstrumentationKey={SECRET_KEY};"
                 f"IngestionEndpoint=https://user:{token}@westeurope-5.in.applicationinsights.azure.com/")
    done = doctor("--remote_debug_port", "0", APPLICATIONINSIGHTS_CONNECTION_STRING=with_user)
    line = check_lines(done.stdout)["app insights"]
    assert "westeurope-5.in.applicationinsights.azure.com" in line
    assert token not in done.stdout + done.stderr and "user:" not in line
    auth = f"InstrumentationKey={SECRET_KEY};Authorization={token};IngestionEndpoint=https://example.invalid/"
    done = doctor("--remote_debug_port", "0", "--json", APPLICATIONINSIGHTS_CONNECTION_STRING=auth)
    assert token not in done.stdout + done.stderr and SECRET_KEY[:8] not in done.stdout
    assert json.loads(done.stdout)  # still valid JSON after masking


def test_doctor_never_prints_a_secret_or_a_control_character() -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    done = doctor(
        "--json",
        AMLDBG_REMOTE_DEBUG_CLIENT_IP=f"https://{token}@vscode.example",
        AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1",
        AMLDBG_REMOTE_DEBUG_PORT="\x1b]0;owned\x07",
        APPINSIGHTS_INSTRUMENTATIONKEY=SECRET_KEY,
    )
    assert token not in done.stdout + done.stderr and SECRET_KEY[:8] not in done.stdout
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert checks["settings"]["ok"] is False and "AMLDBG_REMOTE_DEBUG_PORT" in checks["settings"]["detail"]
    assert checks["app insights"]["ok"] is False
