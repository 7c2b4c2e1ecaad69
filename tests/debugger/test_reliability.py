"""Settings resolved once and failing closed, and every wait bounded, with real debugpy.

Each case runs a real script in a subprocess and checks what a user sees: the lines in the
driver log, whether a port was opened, the exit code.
"""

from __future__ import annotations

import os
import re
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from processes import Running, child_env

LOOPBACK = {"AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "127.0.0.1", "AMLDBG_REMOTE_DEBUG_PORT": "0"}


def script(tmp_path: Path, body: str, name: str = "script.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("amldbg: warning:")]


@pytest.mark.parametrize("value", ["disabled", "maybe", "2"])
def test_an_invalid_remote_debug_value_never_opens_a_port(tmp_path: Path, value: str) -> None:
    path = script(tmp_path, """
        import sys, amldbg
        session = amldbg.enable_remote_debug()
        print("mode", session.mode, "debugpy imported", "debugpy" in sys.modules, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG=value, AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="30")
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "mode disabled debugpy imported False" in run.lines
    assert "Timeout for debug connection" not in run.output
    found = warnings(run.output)
    assert len(found) == 1 and f"AMLDBG_REMOTE_DEBUG={value!r}" in found[0]
    assert found[0].endswith("using off")


def test_debug_init_with_an_invalid_value_runs_init_without_listening(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import sys, amldbg

        @amldbg.debug_init
        def init():
            print("init ran, debugpy imported:", "debugpy" in sys.modules, flush=True)

        init()
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="maybe", **LOOPBACK)
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "init ran, debugpy imported: False" in run.lines
    assert "ip_address:" not in run.output
    assert len(warnings(run.output)) == 1


def test_an_entry_script_warns_once_about_a_bad_value_and_arms_before_the_failure(
    tmp_path: Path,
) -> None:
    path = script(tmp_path, """
        import amldbg

        @amldbg.debug_init
        def init():
            print("init done", flush=True)

        @amldbg.debug_run
        def run(data):
            raise ValueError("bad request " + data)

        init()
        for attempt in range(2):
            try:
                run(str(attempt))
            except ValueError as error:
                print("caught", error, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="abc",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1",
                    AMLDBG_REMOTE_DEBUG_POST_MORTEM="1", AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="1")
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(90) == 0
    bad_port = [line for line in warnings(run.output) if "AMLDBG_REMOTE_DEBUG_PORT" in line]
    assert len(bad_port) == 1, run.output
    assert "using 5678" in bad_port[0]
    armed = run.lines.index(next(line for line in run.lines if "post-mortem debugging is armed" in line))
    failed = run.lines.index(next(line for line in run.lines if "run() failed" in line))
    assert armed < failed
    caught = [line for line in run.lines if line.startswith("caught")]
    assert caught == ["caught bad request 0", "caught bad request 1"]


def test_watchdog_helpers_follow_the_flags_the_script_was_enabled_with(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import argparse, datetime, amldbg
        parser = argparse.ArgumentParser()
        amldbg.add_args(parser)
        args = parser.parse_args(["--remote_debug_post_mortem",
                                  "--remote_debug_watchdog_timeout", "3600"])
        amldbg.enable_remote_debug(args)
        print("pg", amldbg.process_group_timeout(datetime.timedelta(seconds=60)), flush=True)
        print("wd", amldbg.watchdog_timeout(60), flush=True)
    """)
    with Running([path], env=child_env(), cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "pg 1:00:00" in run.lines
    assert "wd 3600" in run.lines


def test_debug_run_post_mortem_follows_enable_post_mortem(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import amldbg

        amldbg.enable_post_mortem(timeout=1, listen_host="127.0.0.1", port=0)

        @amldbg.debug_run
        def run(data):
            raise KeyError(data)

        try:
            run("missing")
        except KeyError as error:
            print("propagated", repr(error), flush=True)
    """)
    with Running([path], env=child_env(), cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert any("post-mortem: uncaught KeyError: 'missing' in run()" in line for line in run.lines)
    assert "Debugger attached = False" in run.lines
    assert "propagated KeyError('missing')" in run.lines
    stays_open = [line for line in warnings(run.output) if "stays open" in line]
    assert len(stays_open) == 1


def test_reverse_connect_to_a_peer_that_never_speaks_gives_up_at_the_timeout(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    port = silent.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])  # accept, then never answer
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    path = script(tmp_path, """
        import amldbg
        session = amldbg.enable_remote_debug()
        print("continued", session.mode, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_CLIENT_IP="127.0.0.1",
                    AMLDBG_REMOTE_DEBUG_PORT=str(port),
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="2")
    try:
        with Running([path], env=env, cwd=tmp_path) as run:
            assert run.wait(60) == 0
    finally:
        stop.set()
        acceptor.join(5)
        for conn in accepted:
            conn.close()
        silent.close()
    assert accepted, "the script never connected"
    assert "Debugger attached = False" in run.lines
    assert "continued failed" in run.lines
    assert any("did not start a debug session within 2 s" in line for line in warnings(run.output))


def test_a_thread_crashing_while_the_main_thread_waits_does_not_end_either_wait_early_or_never(
    tmp_path: Path,
) -> None:
    path = script(tmp_path, """
        import threading, time, amldbg

        def crash():
            time.sleep(1)
            raise RuntimeError("worker failed")

        worker = threading.Thread(target=crash, name="worker")
        worker.start()
        started = time.monotonic()
        session = amldbg.enable_remote_debug(timeout=4, post_mortem=True)
        print("main waited %.0f s" % (time.monotonic() - started), flush=True)
        worker.join()
        print("main done", session.mode, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", **LOOPBACK)
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(90) == 0
    assert "main done listen" in run.lines
    assert any("post-mortem: uncaught RuntimeError: worker failed in thread 'worker'" in line
               for line in run.lines)
    # The main thread's wait ended at its own deadline (4 s), not at the worker's.
    waited = next(line for line in run.lines if line.startswith("main waited"))
    assert int(waited.split()[2]) >= 3, run.output


def test_an_address_of_another_machine_is_reported_as_such_not_as_a_taken_port(
    tmp_path: Path,
) -> None:
    path = script(tmp_path, """
        import amldbg
        print("mode", amldbg.enable_remote_debug().mode, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_LISTEN_HOST="192.0.2.10",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="30")
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "mode failed" in run.lines
    found = warnings(run.output)
    assert any("192.0.2.10 is not an address of this machine" in line for line in found), run.output
    assert not any("in use" in line for line in found)


def test_an_unresolvable_listen_host_is_looked_up_once(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import socket, amldbg
        calls = []
        real = socket.getaddrinfo
        def counting(host, *args, **kwargs):
            calls.append(host)
            return real(host, *args, **kwargs)
        socket.getaddrinfo = counting
        print("mode", amldbg.enable_remote_debug().mode, flush=True)
        print("lookups", calls.count("no-such-host.invalid"), flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_LISTEN_HOST="no-such-host.invalid",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="2")
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "mode failed" in run.lines
    assert "lookups 1" in run.lines
    assert any("no-such-host.invalid" in line and ("does not resolve" in line or "took longer" in line)
               for line in warnings(run.output)), run.output


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_reports_nor_reuses_its_parents_session(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import os, warnings, amldbg
        from amldbg.debugger import session as sessions
        # Python >= 3.12 warns on stderr about fork() in a threaded process just as the child
        # prints: the two outputs could interleave within one line.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        parent = amldbg.enable_remote_debug(timeout=0.5)
        print("parent", parent.mode, flush=True)
        pid = os.fork()
        if pid == 0:
            print("child sees", sessions.current_session(), flush=True)
            print("child", amldbg.enable_remote_debug(timeout=0.5).mode, flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        print("parent still", sessions.current_session().mode, flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", **LOOPBACK)
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "parent listen" in run.lines
    assert "child sees None" in run.lines
    assert "child failed" in run.lines
    assert "child exit 0" in run.lines
    assert "parent still listen" in run.lines
    assert any("forked from a process that runs a debugger" in line for line in warnings(run.output))


def test_breakpoint_wait_listens_where_enable_remote_debug_would(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import amldbg
        print("paused", amldbg.breakpoint(wait=True, timeout=1), flush=True)
    """)
    env = child_env(**LOOPBACK)
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert re.search(r"listening on 127\.0\.0\.1:\d+", run.output)
    assert "paused False" in run.lines
    assert any("stays open" in line for line in warnings(run.output))


def test_an_invalid_post_mortem_value_does_not_arm(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import amldbg
        amldbg.enable_remote_debug()
        raise SystemExit(3)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG_POST_MORTEM="perhaps", **LOOPBACK)
    with Running([path], env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 3
    assert "armed" not in run.output
    assert len(warnings(run.output)) == 1
