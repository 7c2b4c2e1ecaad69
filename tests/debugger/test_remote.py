"""amldbg.debug against the real debugpy: scripts run as subprocesses and a real DAP client
attaches over a loopback socket (or listens, for reverse connect)."""

from __future__ import annotations

import json
import re
import socket
import textwrap
import time
from pathlib import Path

import pytest

from conftest import free_port
from harness.dap_client import DAPClient, listening_adapter
from processes import SAMPLES, Running, announced_port, child_env, line_of

TRAIN = str(SAMPLES / "train.py")
LOOP_LINE = line_of(TRAIN, "error = weight")
LOOPBACK = ["--remote_debug_listen_host", "127.0.0.1"]


def endpoint_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(m) for m in re.findall(r"^amldbg endpoint: (\{.*\})$", output, re.M)]


def test_client_attaches_stops_at_breakpoint_and_reads_locals(tmp_path: Path) -> None:
    args = [TRAIN, "--remote_debug", *LOOPBACK, "--remote_debug_port", "0",
            "--remote_debug_connection_timeout", "60", "--output_dir", str(tmp_path / "out")]
    with Running(args, cwd=tmp_path) as run:
        run.wait_for_line(r"^Timeout for debug connection: 60$")
        assert run.wait_for_line(r"^ip_address: (.+)$").group(1) == "127.0.0.1"
        port = announced_port(run)
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach(breakpoints={TRAIN: [LOOP_LINE]})
            stop = client.wait_for_stop()
            assert stop["reason"] == "breakpoint"
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == LOOP_LINE
            assert Path(frame["source"]["path"]).resolve() == Path(TRAIN).resolve()
            local_vars = client.locals_of(frame["id"])
            assert local_vars["epoch"] == "0"
            assert local_vars["weight"] == "0.0"
            assert client.evaluate("len(samples)", frame["id"]) == "20"
            client.request("setBreakpoints", {"source": {"path": TRAIN}, "breakpoints": []})
            client.continue_(stop["threadId"])
        finally:
            client.disconnect()
        assert run.wait(60) == 0
    assert "Debugger attached = True" in run.lines
    assert (tmp_path / "out" / "model.txt").exists()
    states = [e["state"] for e in endpoint_lines(run.output)]
    assert states == ["waiting", "attached"]


def test_nobody_attaches_script_continues_after_timeout(tmp_path: Path) -> None:
    timeout = 2
    args = [TRAIN, "--remote_debug", *LOOPBACK, "--remote_debug_port", "0",
            "--remote_debug_connection_timeout", str(timeout), "--output_dir", str(tmp_path)]
    with Running(args, cwd=tmp_path) as run:
        waiting = run.wait_for_line(r"waiting up to 2 s for a debugger")
        assert waiting
        started_waiting = run.line_times[-1]
        assert run.wait(60) == 0
    finished = run.line_times[run.lines.index("Debugger attached = False")]
    # The wait ends at the timeout, not never (debugpy.wait_for_client has no timeout).
    assert timeout - 0.5 <= finished - started_waiting <= timeout + 5
    assert any("trained weight" in line for line in run.lines)
    assert [e["state"] for e in endpoint_lines(run.output)] == ["waiting", "not-attached"]


def test_lines_arrive_before_exit_when_stdout_is_a_pipe(tmp_path: Path) -> None:
    # PYTHONUNBUFFERED is not set: stdout to a pipe is block-buffered, as in a container.
    env = child_env()
    env.pop("PYTHONUNBUFFERED", None)
    args = [TRAIN, "--remote_debug", *LOOPBACK, "--remote_debug_port", "0",
            "--remote_debug_connection_timeout", "30", "--output_dir", str(tmp_path)]
    with Running(args, env=env, cwd=tmp_path) as run:
        port = announced_port(run)
        run.wait_for_line(r"waiting up to 30 s")
        assert run.proc.poll() is None  # still waiting, and we already read the lines
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach()
        finally:
            client.disconnect()
        assert run.wait(60) == 0


def test_progress_lines_while_waiting(tmp_path: Path) -> None:
    script = tmp_path / "wait.py"
    script.write_text(textwrap.dedent("""
        import amldbg
        amldbg.enable_remote_debug(progress_interval=0.5)
        print("done", flush=True)
    """))
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="2")
    with Running([str(script)], env=env) as run:
        assert run.wait(60) == 0
    progress = [line for line in run.lines if "still waiting for a debugger on 127.0.0.1:" in line]
    assert 2 <= len(progress) <= 4, run.output
    assert re.search(r": [01] s left$", progress[-1])
    assert run.lines[-1] == "done"


def test_timeout_zero_listens_without_waiting_and_a_client_attaches_later(tmp_path: Path) -> None:
    script = tmp_path / "later.py"
    script.write_text(textwrap.dedent("""
        import time, amldbg
        session = amldbg.enable_remote_debug(timeout=0)
        print("returned at once:", session.mode, session.attached, flush=True)
        while not session.is_client_connected():
            time.sleep(0.05)

        def work():
            answer = 6 * 7
            return answer

        work()
        print("finished", flush=True)
    """))
    line = line_of(script, "return answer")
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    with Running([str(script)], env=env) as run:
        port = announced_port(run)
        run.wait_for_line(r"^returned at once: listen False$")
        assert "Debugger attached = False" not in run.output
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach(breakpoints={str(script): [line]})
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert client.locals_of(frame["id"])["answer"] == "42"
            client.continue_(stop["threadId"])
        finally:
            client.disconnect()
        assert run.wait(60) == 0
    assert run.lines[-1] == "finished"


def test_late_attach_after_timeout_stops_in_a_running_loop(tmp_path: Path) -> None:
    """After the wait timed out the script runs at full speed; a client attaching later
    still stops at a breakpoint inside the loop that is already running."""
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent("""
        import time, amldbg
        session = amldbg.enable_remote_debug(timeout=0.5)
        print("looping", flush=True)
        deadline = time.monotonic() + 60
        step = 0
        while time.monotonic() < deadline:
            step += 1
            doubled = step * 2
            time.sleep(0.01)
        print("finished", step, flush=True)
    """))
    line = line_of(script, "doubled =")
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    with Running([str(script)], env=env) as run:
        port = announced_port(run)
        run.wait_for_line(r"^Debugger attached = False$")
        run.wait_for_line(r"^looping$")
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach(breakpoints={str(script): [line]})
            stop = client.wait_for_stop(timeout=20)
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == line
            assert int(client.locals_of(frame["id"])["step"]) > 1
        finally:
            client.disconnect()
            run.proc.kill()


def test_reverse_connect_to_a_listening_vscode(tmp_path: Path) -> None:
    port = free_port()
    args = [TRAIN, "--remote_debug", "--remote_debug_client_ip", "127.0.0.1",
            "--remote_debug_port", str(port), "--remote_debug_connection_timeout", "60",
            "--output_dir", str(tmp_path)]
    runs: list[Running] = []
    try:
        with listening_adapter("127.0.0.1", port) as client:
            client.attach(
                attach_arguments={"listen": {"host": "127.0.0.1", "port": port}},
                breakpoints={TRAIN: [LOOP_LINE]},
                on_attach_sent=lambda: runs.append(Running(args, cwd=tmp_path)),
            )
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == LOOP_LINE
            assert client.locals_of(frame["id"])["epoch"] == "0"
            client.request("setBreakpoints", {"source": {"path": TRAIN}, "breakpoints": []})
            client.continue_(stop["threadId"])
            assert runs[0].wait(60) == 0
        run = runs[0]
        assert "Debugger attached = True" in run.lines
        assert f"connecting to the VS Code listening at 127.0.0.1:{port}" in run.output
        assert '"listen": {' in run.output  # the matching launch.json entry was printed
        assert [e["state"] for e in endpoint_lines(run.output)] == ["connecting", "attached"]
    finally:
        for run in runs:
            run.__exit__(None, None, None)


def test_reverse_connect_with_nobody_listening_carries_on(tmp_path: Path) -> None:
    port = free_port()
    args = [TRAIN, "--remote_debug", "--remote_debug_client_ip", "127.0.0.1",
            "--remote_debug_port", str(port), "--remote_debug_connection_timeout", "5",
            "--output_dir", str(tmp_path)]
    with Running(args, cwd=tmp_path) as run:
        assert run.wait(120) == 0
    warnings = [line for line in run.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0], run.output
    assert "Traceback" not in run.output  # pydevd's own report is kept off stderr
    assert "Debugger attached = False" in run.lines
    assert any("trained weight" in line for line in run.lines)


def test_taken_port_moves_to_the_next_free_one(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        args = [TRAIN, "--remote_debug", *LOOPBACK, "--remote_debug_port", str(taken),
                "--remote_debug_connection_timeout", "0.5", "--output_dir", str(tmp_path)]
        with Running(args, cwd=tmp_path) as run:
            moved = run.wait_for_line(rf"port {taken} is taken; listening on port (\d+) instead")
            assert int(moved.group(1)) > taken
            assert announced_port(run) == int(moved.group(1))
            assert run.wait(60) == 0


def test_missing_debugpy_gives_one_line_and_the_script_runs(tmp_path: Path) -> None:
    # Make `import debugpy` fail as it does where the package is not installed.
    prelude = ("import runpy, sys; sys.modules['debugpy'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    args = ["-c", prelude, TRAIN, "--remote_debug", *LOOPBACK,
            "--remote_debug_connection_timeout", "30", "--output_dir", str(tmp_path)]
    with Running(args, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    warnings = [line for line in run.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1
    assert "debugpy is not installed" in warnings[0]
    assert "pip install debugpy" in warnings[0]
    assert "Timeout for debug connection" not in run.output
    assert any("trained weight" in line for line in run.lines)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--remote_debug_port", "70000"), ("--remote_debug_port", "abc"),
     ("--remote_debug_connection_timeout", "-1")],
)
def test_bad_flag_values_are_argparse_errors_naming_the_flag(
    tmp_path: Path, flag: str, value: str
) -> None:
    with Running([TRAIN, "--remote_debug", flag, value], cwd=tmp_path) as run:
        assert run.wait(30) == 2
    assert f"argument {flag}" in run.output


def test_calling_twice_returns_the_same_session(tmp_path: Path) -> None:
    script = tmp_path / "twice.py"
    script.write_text(textwrap.dedent("""
        import amldbg
        first = amldbg.enable_remote_debug(timeout=0)
        second = amldbg.enable_remote_debug(timeout=0)
        print("same:", first is second, first.mode, first.port == second.port, flush=True)
    """))
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    with Running([str(script)], env=env) as run:
        assert run.wait(60) == 0
    assert "same: True listen True" in run.lines
    assert "already enabled in this process" in run.output
    assert run.output.count("Timeout for debug connection") == 1


def test_an_active_debugger_is_reused(tmp_path: Path) -> None:
    script = tmp_path / "reuse.py"
    script.write_text(textwrap.dedent("""
        import amldbg
        session = amldbg.enable_remote_debug(timeout=0)
        print("mode:", session.mode, flush=True)
    """))
    port = free_port()
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT=str(port))
    with Running(["-m", "debugpy", "--listen", f"127.0.0.1:{free_port()}", str(script)],
                 env=env) as run:
        assert run.wait(60) == 0
    assert "mode: reused" in run.lines
    assert "a debugger is already active in this process" in run.output
    assert "Timeout for debug connection" not in run.output


def test_disabled_touches_nothing(tmp_path: Path) -> None:
    script = tmp_path / "off.py"
    script.write_text(textwrap.dedent("""
        import argparse, sys, amldbg
        hook = sys.breakpointhook
        parser = argparse.ArgumentParser()
        amldbg.add_args(parser)
        session = amldbg.enable_remote_debug(parser.parse_args([]))
        session2 = amldbg.enable_remote_debug()
        print(session.mode, session2.mode, "debugpy" in sys.modules,
              sys.breakpointhook is hook, flush=True)
    """))
    with Running([str(script)]) as run:
        assert run.wait(30) == 0
    assert run.lines == ["disabled disabled False True"]


def test_wait_ends_within_the_timeout_even_when_it_is_short(tmp_path: Path) -> None:
    # Cancelling before debugpy's wait has started is the race the watchdog must survive.
    script = tmp_path / "short.py"
    script.write_text("import amldbg\nprint(amldbg.enable_remote_debug(timeout=0.01).attached)\n")
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    started = time.monotonic()
    with Running([str(script)], env=env) as run:
        assert run.wait(60) == 0
    assert run.lines[-1] == "False"
    assert time.monotonic() - started < 30


def test_only_a_listener_other_machines_can_reach_warns_about_authentication(tmp_path: Path) -> None:
    from amldbg.debugger.start import exposure_warning

    # Tests listen on loopback only, so the rule is checked in-process for 0.0.0.0.
    assert "no authentication" in (exposure_warning("0.0.0.0", 5678) or "")
    assert "port 5678" in (exposure_warning("10.3.0.5", 5678) or "")
    assert exposure_warning("127.0.0.1", 5678) is None
    script = tmp_path / "local.py"
    script.write_text("import amldbg\namldbg.enable_remote_debug(timeout=0)\n")
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    with Running([str(script)], env=env) as run:
        assert run.wait(60) == 0
    assert re.search(r"listening on 127\.0\.0\.1:\d+", run.output)
    assert not any("no authentication" in line for line in run.lines)
