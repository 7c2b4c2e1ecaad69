"""The stall report (--remote_debug_stall_timeout) on real scripts: blocked in C, holding the
GIL in C, marking progress with amldbg.heartbeat(), and never changing how the script ends."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest

from processes import Running, announced_port, child_env, dumps, line_of


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_a_job_blocked_in_c_is_reported_once_and_keeps_running(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import os, amldbg

        amldbg.enable_remote_debug(stall_timeout=1)

        def wait_for_peer(fd):
            return os.read(fd, 1)  # blocked in C, like a collective: forever

        r, w = os.pipe()
        wait_for_peer(r)
    """)
    with Running([job], cwd=tmp_path) as run:
        run.wait_for_line(r"^amldbg: stall report armed on rank 0 \(pid \d+\)")
        run.wait_for_line(r"^amldbg stacks: ", timeout=60)
        first = dumps(run.output)[0]
        assert first["reason"] == "stall" and first["rank"] == 0
        main = first["threads"][0]
        assert main["main"] and main["frames"][-1][2] == "wait_for_peer"
        path = Path(tmp_path, first["file"])
        saved = json.loads(path.read_text())
        assert saved["threads"][0]["frames"][-1]["locals"]["fd"].isdigit()
        run.wait_for_line(r"^amldbg: \[rank 0\]   File .*job\.py\", line 7, in wait_for_peer$")
        # Still stalled a while later: no second report for the same stall, and still alive.
        with pytest.raises(AssertionError):
            run.wait_for_line(r'"seq":2', timeout=3)
        assert run.proc.poll() is None, "a stall report never ends the job"


def test_stall_ends_then_a_new_stall_is_reported_again(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import os, select, time, amldbg

        amldbg.enable_remote_debug(stall_timeout=0.5)
        r, w = os.pipe()

        def blocked(seconds):
            select.select([r], [], [], seconds)

        def parse(n):
            return [str(i) for i in range(n)]

        def total(rows):
            return sum(len(row) for row in rows)

        for round in range(2):
            blocked(2.5)
            print(f"round {round} over", flush=True)
            for step in range(90):  # progress: each step waits at another place
                if step % 3 == 0:
                    blocked(0.01)
                elif step % 3 == 1:
                    blocked(0.01)
                else:
                    total(parse(300))
        print("done", flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        assert run.wait(90) == 0
    found = dumps(run.output)
    assert [d["reason"] for d in found] == ["stall", "stall"], run.output
    assert all(d["threads"][0]["frames"][-1][2] == "blocked" for d in found)
    assert len(re.findall(r"^amldbg: stall: rank 0 \(pid \d+\) made progress again", run.output, re.M)) == 2
    assert "done" in run.lines


def test_heartbeat_marks_progress(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import select, amldbg

        amldbg.enable_remote_debug(stall_timeout=0.5)
        for step in range(12):
            select.select([], [], [], 0.25)  # every sample sees this same C call
            amldbg.heartbeat()
        print("done", flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert dumps(run.output) == []
    assert "done" in run.lines


def test_gil_held_in_c_is_reported_by_faulthandler(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import ctypes, amldbg

        amldbg.enable_remote_debug(stall_timeout=1)
        libc = ctypes.PyDLL(None)  # PyDLL keeps the GIL during the call

        def hold_the_gil():
            libc.sleep(4)

        hold_the_gil()
        print("done", flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        assert run.wait(60) == 0
    output = run.output
    assert re.search(r"^Timeout \(0:00:0\d", output, re.M), output
    at = output.index("Timeout (")
    assert re.search(r'File ".*job\.py", line 8 in hold_the_gil', output[at:]), output
    assert "done" in run.lines


def test_off_by_default_and_for_bad_values(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import threading, time, amldbg
        amldbg.enable_remote_debug()
        time.sleep(1.5)
        print("threads", sorted(t.name for t in threading.enumerate()), flush=True)
    """)
    env = child_env(AMLDBG_REMOTE_DEBUG_STALL_TIMEOUT="soon")
    with Running([job], cwd=tmp_path, env=env) as run:
        assert run.wait(60) == 0
    assert "threads ['MainThread']" in run.lines
    assert dumps(run.output) == []
    warning = run.wait_for_line(r"^amldbg: warning: ignoring AMLDBG_REMOTE_DEBUG_STALL_TIMEOUT")
    assert "using 0" in warning.string


def test_no_report_while_waiting_for_a_client_or_stopped_at_a_breakpoint(tmp_path: Path) -> None:
    from harness.dap_client import DAPClient
    from harness.debug_adapters import reap_debug_adapters

    job = script(tmp_path, """
        import argparse, time, amldbg
        parser = argparse.ArgumentParser()
        amldbg.add_args(parser)
        amldbg.enable_remote_debug(parser.parse_args())
        for step in range(3):
            time.sleep(0.05)  # BREAK
        print("done", flush=True)
    """)
    line = line_of(job, "# BREAK")
    args = [job, "--remote_debug", "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port",
            "0", "--remote_debug_connection_timeout", "60", "--remote_debug_stall_timeout", "1"]
    port = 0
    with Running(args, cwd=tmp_path) as run:
        try:
            port = announced_port(run)
            time.sleep(2)  # waiting for a client longer than the stall timeout is no stall
            client = DAPClient.connect("127.0.0.1", port)
            try:
                client.attach(breakpoints={job: [line]})
                stop = client.wait_for_stop(timeout=60)
                run.wait_for_line(r"^amldbg: stall report armed")
                time.sleep(2.5)  # stopped at the breakpoint longer than the stall timeout
                client.request("setBreakpoints", {"source": {"path": job}, "breakpoints": []})
                client.continue_(stop["threadId"])
            finally:
                client.disconnect()
            assert run.wait(60) == 0
        finally:
            reap_debug_adapters([port] if port else [])
    assert dumps(run.output) == []
    assert "done" in run.lines
