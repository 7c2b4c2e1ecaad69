"""The stall report of a script a real DAP client is attached to: a connected client does not
hide a hang (the report comes while it is connected), a thread stopped at a breakpoint is no
stall, and the report comes once the script runs again and blocks."""

from __future__ import annotations

import contextlib
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from conftest import free_port
from harness.dap_client import DAPClient
from harness.debug_adapters import reap_debug_adapters
from processes import Running, child_env, dumps, line_of

STALL_TIMEOUT = 1
#: Seconds after the script blocks by which its stall report must have come.
REPORT_WITHIN = 8

JOB = """
    import argparse, os, threading, time, amldbg

    parser = argparse.ArgumentParser()
    amldbg.add_args(parser)
    print("amldbg from", amldbg.__file__, flush=True)
    amldbg.enable_remote_debug(parser.parse_args())
    r, w = os.pipe()

    def release_when_told():
        deadline = time.monotonic() + 60  # never blocks for ever, even if the test is gone
        while not os.path.exists("release") and time.monotonic() < deadline:
            time.sleep(0.05)
        os.write(w, b"x")

    def wait_for_shard(fd):
        print("waiting for the shard", flush=True)  # BREAK
        return os.read(fd, 1)  # blocked in C until the test says so

    threading.Thread(target=release_when_told, name="releaser", daemon=True).start()
    wait_for_shard(r)
    print("done", flush=True)
"""


def write_job(tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(JOB).lstrip())
    line = line_of(path, "# BREAK")
    return str(path), line


def job_args(job: str, port: int) -> list[str]:
    return [job, "--remote_debug", "--remote_debug_listen_host", "127.0.0.1",
            "--remote_debug_port", str(port), "--remote_debug_connection_timeout", "20",
            "--remote_debug_stall_timeout", str(STALL_TIMEOUT)]


def assert_stall_reported(run: Running, blocked_at: float) -> dict[str, Any]:
    """The stall report naming wait_for_shard came within REPORT_WITHIN s of ``blocked_at``."""
    found = run.wait_for_line(r"^amldbg stacks: (\{.*\})$", timeout=REPORT_WITHIN)
    dump = json.loads(found.group(1))
    at = run.line_times[run.lines.index(found.string)]
    assert at - blocked_at < REPORT_WITHIN, (at - blocked_at, run.output)
    assert dump["reason"] == "stall", dump
    main = dump["threads"][0]
    assert main["main"] and main["frames"][-1][2] == "wait_for_shard", dump
    return dump


def line_time(run: Running, pattern: str) -> float:
    found = run.wait_for_line(pattern, timeout=REPORT_WITHIN)
    return run.line_times[run.lines.index(found.string)]


@contextlib.contextmanager
def attached(tmp_path: Path, job: str) -> Iterator[tuple[Running, DAPClient]]:
    """The job running with a real DAP client connected to it (not yet attached); on exit the
    client disconnects, the job must end with 0 and its debug adapter is reaped."""
    port = free_port()
    env = child_env(AMLDBG_DIAGNOSTICS_DIR=str(tmp_path / "diagnostics"))
    with Running(job_args(job, port), cwd=tmp_path, env=env) as run:
        try:
            run.wait_for_line(rf"^port: {port}$", timeout=20)
            client = DAPClient.connect("127.0.0.1", port, timeout=20)
            try:
                yield run, client
                (tmp_path / "release").write_text("")
                run.wait_for_line(r"^done$", timeout=10)
            finally:
                client.disconnect()
            assert run.wait(20) == 0
        finally:
            reap_debug_adapters([port])


def test_a_connected_client_does_not_hide_a_hang(tmp_path: Path) -> None:
    job, _ = write_job(tmp_path)
    with attached(tmp_path, job) as (run, client):
        client.attach(timeout=20)  # no breakpoint: the script runs on
        run.wait_for_line(r"^Debugger attached = True$", timeout=10)
        run.wait_for_line(r"^amldbg: stall report armed on rank 0", timeout=10)
        blocked_at = line_time(run, r"^waiting for the shard$")
        assert_stall_reported(run, blocked_at)
        # Still connected and running: the adapter answers, and nothing stopped.
        threads = client.request("threads", timeout=10)["threads"]
        assert any(t["name"] == "MainThread" for t in threads), threads
        assert not [e for e in client.seen_events
                    if e.get("event") in ("stopped", "terminated", "exited")]
    assert len(dumps(run.output)) == 1, run.output


class Stopped:
    """What a script showed while it was stopped at the breakpoint in wait_for_shard, and
    after it ran on and blocked."""

    def __init__(self, run: Running, while_stopped: str, blocked_at: float) -> None:
        self.run = run
        self.while_stopped = while_stopped
        self.blocked_at = blocked_at


def stop_at_a_breakpoint_then_block(tmp_path: Path, check: Callable[[Stopped], None]) -> Running:
    """Run the job with a breakpoint before its blocking call, stay stopped there for more
    than three stall timeouts, continue, and call ``check`` once it is blocked; then let it
    finish. Returns the finished run."""
    job, line = write_job(tmp_path)
    with attached(tmp_path, job) as (run, client):
        client.attach(breakpoints={job: [line]}, timeout=20)
        stop = client.wait_for_stop(timeout=20)
        assert stop["reason"] == "breakpoint"
        assert client.top_frame(stop["threadId"])["line"] == line
        run.wait_for_line(r"^amldbg: stall report armed on rank 0", timeout=10)
        time.sleep(3.5 * STALL_TIMEOUT)  # stopped for more than three timeouts
        while_stopped = run.output
        assert "waiting for the shard" not in run.lines  # still stopped
        client.request("setBreakpoints", {"source": {"path": job}, "breakpoints": []})
        client.continue_(stop["threadId"])
        check(Stopped(run, while_stopped, line_time(run, r"^waiting for the shard$")))
    return run


def test_stopped_at_a_breakpoint_is_no_stall_but_blocking_after_continue_is(tmp_path: Path) -> None:
    def check(stopped: Stopped) -> None:
        assert "amldbg stacks: " not in stopped.while_stopped, stopped.while_stopped
        assert_stall_reported(stopped.run, stopped.blocked_at)

    run = stop_at_a_breakpoint_then_block(tmp_path, check)
    assert len(dumps(run.output)) == 1, run.output


def test_stopped_at_a_breakpoint_gives_no_faulthandler_dump_either(tmp_path: Path) -> None:
    # faulthandler's timer is the stall report of a main thread holding the GIL in C; it
    # must not fire because the debugger has the whole process (the watchdog too) stopped.
    def check(stopped: Stopped) -> None:
        assert not re.search(r"^Timeout \(", stopped.while_stopped, re.M), stopped.while_stopped

    run = stop_at_a_breakpoint_then_block(tmp_path, check)
    assert not re.search(r"^Timeout \(", run.output, re.M), run.output
