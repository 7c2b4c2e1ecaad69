"""Post-mortem debugging, amldbg.breakpoint() and breakpoint() routing, against the real
debugpy: scripts run as subprocesses and a real DAP client attaches over loopback."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

from harness.dap_client import DAPClient
from processes import Running, announced_port, child_env, line_of

LOOPBACK = {"AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "127.0.0.1", "AMLDBG_REMOTE_DEBUG_PORT": "0"}

CRASH = textwrap.dedent("""
    import argparse, sys, amldbg

    parser = argparse.ArgumentParser()
    amldbg.add_args(parser)
    args = parser.parse_args()
    amldbg.enable_remote_debug(args)


    def load(step):
        items = list(range(step))
        total = sum(items)
        if total > 40:
            raise ValueError(f"bad total {total}")
        return total


    for step in range(20):
        load(step)
        # Arming costs nothing: no debugger, no trace function, until the exception.
        untraced = sys.gettrace() is None and "debugpy" not in sys.modules
        print("step", step, "untraced" if untraced else "traced", flush=True)
""")


def write_crash(tmp_path: Path) -> tuple[Path, int]:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    line = next(n for n, text in enumerate(CRASH.splitlines(), 1) if "raise ValueError" in text)
    return script, line


def traceback_of(output: str) -> list[str]:
    """The traceback block Python printed: from its first line to the exception line."""
    lines = output.splitlines()
    start = lines.index("Traceback (most recent call last):")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    return lines[start : end + 1]


def baseline(script: Path, tmp_path: Path) -> tuple[int, list[str]]:
    with Running([str(script)], cwd=tmp_path) as run:
        code = run.wait(60)
    return code, traceback_of(run.output)


def stops(client: DAPClient) -> list[dict[str, object]]:
    return [e for e in client.seen_events if e.get("event") == "stopped"]


def test_client_attaching_after_the_crash_stops_at_the_raising_line(tmp_path: Path) -> None:
    script, raise_line = write_crash(tmp_path)
    expected_code, expected_traceback = baseline(script, tmp_path)
    assert expected_code == 1 and expected_traceback[-1] == "ValueError: bad total 45"

    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60")
    with Running([str(script), "--remote_debug_post_mortem"], env=env, cwd=tmp_path) as run:
        run.wait_for_line(r"post-mortem debugging is armed on rank 0")
        run.wait_for_line(r"^amldbg: post-mortem: uncaught ValueError: bad total 45 in the main thread")
        port = announced_port(run)
        # The work before the crash ran without a debugger or a trace function.
        assert "step 9 untraced" in run.lines
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach()  # no exception filters: the stop comes from amldbg
            stop = client.wait_for_stop()
            assert stop["reason"] == "exception"
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == raise_line
            assert Path(frame["source"]["path"]).resolve() == script.resolve()
            local_vars = client.locals_of(frame["id"])
            assert local_vars["total"] == "45"
            assert local_vars["step"] == "10"
            assert client.evaluate("len(items)", frame["id"]) == "10"
            info = client.request("exceptionInfo", {"threadId": stop["threadId"]})
            assert "bad total 45" in info.get("description", "")
            client.continue_(stop["threadId"])
            assert run.wait(60) == expected_code
        finally:
            client.disconnect()
    assert "Debugger attached = True" in run.lines
    assert traceback_of(run.output) == expected_traceback
    assert len(stops(client)) == 1


def test_without_a_client_the_script_fails_as_before_after_the_timeout(tmp_path: Path) -> None:
    script, _ = write_crash(tmp_path)
    expected_code, expected_traceback = baseline(script, tmp_path)
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_POST_MORTEM="1",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="2")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        run.wait_for_line(r"waiting up to 2 s for a debugger")
        waiting_since = run.line_times[-1]
        code = run.wait(60)
        ended = time.monotonic()
    assert code == expected_code
    assert traceback_of(run.output) == expected_traceback
    assert "Debugger attached = False" in run.lines
    assert "amldbg: post-mortem: no debugger attached; the script fails as it would have" in run.lines
    # The crashed process does not hold the node: it ends soon after the timeout.
    assert ended - waiting_since < 2 + 20


def test_an_attached_client_with_uncaught_filter_sees_one_stop(tmp_path: Path) -> None:
    """With the debugger running from the start and VS Code's default "Uncaught Exceptions"
    filter, debugpy stops on the crash itself; amldbg must not stop a second time."""
    script, raise_line = write_crash(tmp_path)
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60")
    with Running([str(script), "--remote_debug", "--remote_debug_post_mortem"],
                 env=env, cwd=tmp_path) as run:
        port = announced_port(run)
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach(exception_filters=["uncaught"])
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert (stop["reason"], frame["line"]) == ("exception", raise_line)
            client.continue_(stop["threadId"])
            assert run.wait(60) == 1
        finally:
            client.disconnect()
    assert len(stops(client)) == 1, stops(client)
    assert traceback_of(run.output)[-1] == "ValueError: bad total 45"


def test_an_exception_in_a_thread_stops_in_that_thread(tmp_path: Path) -> None:
    script = tmp_path / "thread_crash.py"
    script.write_text(textwrap.dedent("""
        import threading, amldbg
        amldbg.enable_remote_debug()

        def worker():
            shard = "part-0007"
            raise RuntimeError("corrupt " + shard)

        thread = threading.Thread(target=worker, name="loader")
        thread.start()
        thread.join()
        print("main finished", flush=True)
    """))
    raise_line = line_of(script, "raise")
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_POST_MORTEM="1",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        run.wait_for_line(r"post-mortem: uncaught RuntimeError: corrupt part-0007 in thread 'loader'")
        client = DAPClient.connect("127.0.0.1", announced_port(run))
        try:
            client.attach()
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == raise_line
            assert client.locals_of(frame["id"])["shard"] == "'part-0007'"
            client.continue_(stop["threadId"])
            assert run.wait(60) == 0  # as without amldbg: a thread's exception is not fatal
        finally:
            client.disconnect()
    assert "Exception in thread loader:" in run.output
    assert "RuntimeError: corrupt part-0007" in run.lines
    assert run.lines[-1] == "main finished"


def test_explicit_post_mortem_then_reraise_shows_the_exception_once(tmp_path: Path) -> None:
    script = tmp_path / "explicit.py"
    script.write_text(textwrap.dedent("""
        import amldbg

        def run(batch):
            size = len(batch)
            return 10 / (size - 3)

        amldbg.enable_remote_debug()
        try:
            run([1, 2, 3])
        except Exception as error:
            print("shown:", amldbg.post_mortem(error), flush=True)
            raise
    """))
    raise_line = line_of(script, "10 /")
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_POST_MORTEM="1",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        client = DAPClient.connect("127.0.0.1", announced_port(run))
        try:
            client.attach()
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == raise_line
            assert client.locals_of(frame["id"])["size"] == "3"
            client.continue_(stop["threadId"])
            assert run.wait(60) == 1
        finally:
            client.disconnect()
    assert "shown: True" in run.lines
    assert run.output.count("post-mortem: uncaught ZeroDivisionError") == 1
    assert traceback_of(run.output)[-1] == "ZeroDivisionError: division by zero"
    assert len(stops(client)) == 1


def test_sys_exit_and_ctrl_c_are_not_crashes_to_debug(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text(textwrap.dedent("""
        import sys, amldbg
        amldbg.enable_remote_debug()
        if sys.argv[1] == "exit":
            sys.exit(3)
        raise KeyboardInterrupt
    """))
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG_POST_MORTEM="1",
                    AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60")
    for arg in ("exit", "interrupt"):
        with Running([str(script), arg], cwd=tmp_path) as plain:
            code = plain.wait(30)
        assert code in (3, -2)  # sys.exit(3); Python re-raises SIGINT for Ctrl+C
        with Running([str(script), arg], env=env, cwd=tmp_path) as run:
            assert run.wait(30) == code
        assert "post-mortem: uncaught" not in run.output
        assert "Timeout for debug connection" not in run.output


def test_post_mortem_is_off_by_default_and_imports_nothing(tmp_path: Path) -> None:
    script = tmp_path / "off.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, amldbg
        hooks = (sys.excepthook, threading.excepthook, sys.breakpointhook)
        amldbg.enable_remote_debug()
        print("untouched:", hooks == (sys.excepthook, threading.excepthook, sys.breakpointhook),
              "debugpy" in sys.modules, flush=True)
        raise ValueError("plain")
    """))
    with Running([str(script)], env=child_env(**LOOPBACK), cwd=tmp_path) as run:
        assert run.wait(30) == 1
    assert "untouched: True False" in run.lines
    assert "amldbg" not in run.output.replace("import sys, threading, amldbg", "")


BREAKPOINT_SCRIPT = textwrap.dedent("""
    import sys, time, amldbg

    original = sys.breakpointhook
    session = amldbg.enable_remote_debug(timeout=0)
    print("hook kept:", sys.breakpointhook is original, flush=True)
    print("paused without client:", amldbg.breakpoint(), flush=True)
    while not session.is_client_connected():
        time.sleep(0.05)

    def step(epoch):
        loss = 1.0 / (epoch + 1)
        paused = amldbg.breakpoint()
        return loss, paused

    print("result:", step(3), flush=True)
""")


def test_amldbg_breakpoint_pauses_only_with_a_client_at_the_callers_line(tmp_path: Path) -> None:
    script = tmp_path / "bp.py"
    script.write_text(BREAKPOINT_SCRIPT)
    # Like pdb.set_trace() and debugpy.breakpoint(), the pause shows the caller's next line.
    line = 1 + next(n for n, t in enumerate(BREAKPOINT_SCRIPT.splitlines(), 1)
                    if "paused = amldbg.breakpoint()" in t)
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG="1")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        port = announced_port(run)
        run.wait_for_line(r"^paused without client: False$")
        assert "hook kept: True" in run.lines  # plain breakpoint() keeps its meaning
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach()
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == line
            assert frame["name"] == "step"
            assert client.locals_of(frame["id"])["loss"] == "0.25"
            client.continue_(stop["threadId"])
            assert run.wait(60) == 0
        finally:
            client.disconnect()
    assert run.lines[-1] == "result: (0.25, True)"


def test_amldbg_breakpoint_wait_gives_up_after_its_timeout(tmp_path: Path) -> None:
    script = tmp_path / "bpwait.py"
    script.write_text(textwrap.dedent("""
        import time, amldbg
        started = time.monotonic()
        paused = amldbg.breakpoint(wait=True, timeout=1.5)
        print("paused:", paused, "after", round(time.monotonic() - started), flush=True)
    """))
    with Running([str(script)], env=child_env(**LOOPBACK), cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "Timeout for debug connection: 1.5" in run.lines
    assert "Debugger attached = False" in run.lines
    found = re.search(r"^paused: False after (\d+)$", run.output, re.M)
    assert found and 1 <= int(found.group(1)) <= 15, run.output


def test_routed_breakpoint_pauses_in_the_remote_debugger(tmp_path: Path) -> None:
    script = tmp_path / "routed.py"
    script.write_text(textwrap.dedent("""
        import time, amldbg
        session = amldbg.enable_remote_debug(timeout=0)
        breakpoint()  # no client yet: does nothing (no pdb on a job's closed stdin)
        print("passed the first breakpoint", flush=True)
        while not session.is_client_connected():
            time.sleep(0.05)
        answer = 42
        breakpoint()
        print("finished", answer, flush=True)
    """))
    line = 1 + [n for n, t in enumerate(script.read_text().splitlines(), 1) if t == "breakpoint()"][-1]
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_ROUTE_BREAKPOINT="1")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        port = announced_port(run)
        run.wait_for_line(r"^passed the first breakpoint$")
        client = DAPClient.connect("127.0.0.1", port)
        try:
            client.attach()
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == line
            assert client.locals_of(frame["id"])["answer"] == "42"
            client.continue_(stop["threadId"])
            assert run.wait(60) == 0
        finally:
            client.disconnect()
    assert run.lines[-1] == "finished 42"


def test_plain_breakpoint_without_routing_still_starts_pdb(tmp_path: Path) -> None:
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent("""
        import amldbg
        amldbg.enable_remote_debug(timeout=0)
        breakpoint()
        print("after", flush=True)
    """))
    env = child_env(**LOOPBACK, AMLDBG_REMOTE_DEBUG="1")
    with Running([str(script)], env=env, cwd=tmp_path) as run:
        run.wait(60)
    assert "(Pdb)" in run.output  # pdb prompted on stdin (closed here), as without amldbg
