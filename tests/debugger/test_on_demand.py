"""On-demand triggers (--remote_debug_on_demand) on real scripts: SIGUSR1 dumps the stacks while the
main thread is blocked in C, SIGUSR2 starts the debugger in a script started without
--remote_debug and a real DAP client stops at a breakpoint in its running loop."""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
from pathlib import Path

from conftest import free_port
from harness.dap_client import DAPClient
from harness.debug_adapters import debug_adapter_pids, reap_debug_adapters
from processes import Running, announced_port, line_of


def write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body).lstrip())
    return str(path)


def test_sigusr1_dumps_stacks_while_main_thread_is_blocked_in_c(tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    job = write(tmp_path, f"""
        import os, amldbg
        amldbg.enable_remote_debug(on_demand=True)

        def wait_for_go():
            print("pid", os.getpid(), flush=True)
            with open({str(fifo)!r}, "rb") as pipe:  # blocked in C until the test writes
                return pipe.read(1)

        wait_for_go()
        print("went on", flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        pid = int(run.wait_for_line(r"^pid (\d+)$").group(1))
        run.wait_for_line(
            rf"^amldbg: on-demand triggers armed on rank 0: kill -USR1 {pid} writes the stacks; "
            rf"kill -USR2 {pid} starts the debugger$"
        )
        os.kill(pid, signal.SIGUSR1)
        found = run.wait_for_line(r"^amldbg stacks: (\{.*\})$")
        dump = json.loads(found.group(1))
        assert dump["reason"] == "signal" and dump["pid"] == pid
        main = dump["threads"][0]
        assert main["main"] and main["frames"][-1][2] == "wait_for_go"
        assert not any(t["name"].startswith("amldbg-") for t in dump["threads"])
        assert (tmp_path / dump["file"]).exists()
        os.kill(pid, signal.SIGUSR1)  # a second signal: a second dump, the script lives on
        run.wait_for_line(r'"seq":2')
        with open(fifo, "wb") as pipe:
            pipe.write(b"x")
        assert run.wait(60) == 0
    assert "went on" in run.lines
    assert len(re.findall(r"^amldbg stacks: ", run.output, re.M)) == 2


def test_a_handler_installed_by_the_script_is_left_alone(tmp_path: Path) -> None:
    job = write(tmp_path, """
        import os, signal, time, amldbg
        got = []
        signal.signal(signal.SIGUSR1, lambda n, f: got.append(n))
        amldbg.enable_remote_debug(on_demand=True)
        print("pid", os.getpid(), flush=True)
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        print("script handler ran" if got else "no signal", flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        pid = int(run.wait_for_line(r"^pid (\d+)$").group(1))
        run.wait_for_line(r"^amldbg: SIGUSR1 already has a handler .*use --remote_debug_stall_timeout instead$")
        os.kill(pid, signal.SIGUSR1)
        assert run.wait(60) == 0
    assert "script handler ran" in run.lines
    assert "amldbg stacks: " not in run.output
    assert f"kill -USR2 {pid} starts the debugger" in run.output


def test_off_by_default(tmp_path: Path) -> None:
    job = write(tmp_path, """
        import signal, threading, amldbg
        amldbg.enable_remote_debug()
        print(signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
              signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL,
              signal.set_wakeup_fd(-1), len(threading.enumerate()), flush=True)
    """)
    with Running([job], cwd=tmp_path) as run:
        assert run.wait(60) == 0
    assert "True True -1 1" in run.lines


def test_sigusr2_starts_the_debugger_and_a_client_stops_in_the_running_loop(tmp_path: Path) -> None:
    job = write(tmp_path, """
        import argparse, os, time, amldbg
        parser = argparse.ArgumentParser()
        amldbg.add_args(parser)
        amldbg.enable_remote_debug(parser.parse_args())
        print("pid", os.getpid(), flush=True)
        step = 0
        while not os.path.exists("stop"):
            step += 1  # LOOP
            time.sleep(0.02)
        print("finished after", step, "steps", flush=True)
    """)
    loop_line = line_of(job, "# LOOP")
    args = [job, "--remote_debug_on_demand", "--remote_debug_listen_host", "127.0.0.1",
            "--remote_debug_port", "0"]
    port = 0
    with Running(args, cwd=tmp_path) as run:
        try:
            pid = int(run.wait_for_line(r"^pid (\d+)$").group(1))
            run.wait_for_line(r"^amldbg: on-demand triggers armed")
            assert "remote debugging on" not in run.output  # nothing listens before the signal
            os.kill(pid, signal.SIGUSR2)
            run.wait_for_line(rf"^amldbg: SIGUSR2: starting the debugger on rank 0 \(pid {pid}\)$")
            assert run.wait_for_line(r"^ip_address: (.+)$").group(1) == "127.0.0.1"
            port = announced_port(run)
            endpoint = json.loads(run.wait_for_line(r"^amldbg endpoint: (\{.*\})$").group(1))
            assert (endpoint["state"], endpoint["port"], endpoint["pid"]) == ("listening", port, pid)
            run.wait_for_line(r'"request": "attach"')  # the launch.json entry
            client = DAPClient.connect("127.0.0.1", port)
            try:
                client.attach(breakpoints={job: [loop_line]})
                stop = client.wait_for_stop(timeout=60)
                frame = client.top_frame(stop["threadId"])
                assert frame["line"] == loop_line
                assert int(client.locals_of(frame["id"])["step"]) >= 1
                client.request("setBreakpoints", {"source": {"path": job}, "breakpoints": []})
                (tmp_path / "stop").write_text("")
                client.continue_(stop["threadId"])
            finally:
                client.disconnect()
            assert run.wait(60) == 0
        finally:
            reap_debug_adapters([port] if port else [])
    assert any(line.startswith("finished after") for line in run.lines)
    assert "Debugger attached" not in run.output  # it did not wait for a client


def test_the_adapter_sigusr2_starts_has_no_signal_blocked(tmp_path: Path) -> None:
    # amldbg's signal thread blocks the process's signals (they are for the script's
    # threads); debugpy's adapter, started from there, must not inherit that mask: blocked,
    # SIGTERM would never end it.
    requested = free_port()  # the adapter's command line names it (0 would not)
    job = write(tmp_path, f"""
        import os, time, amldbg
        amldbg.enable_remote_debug(on_demand=True, listen_host="127.0.0.1", port={requested})
        print("pid", os.getpid(), flush=True)
        while not os.path.exists("stop"):
            time.sleep(0.02)
    """)
    port = 0
    with Running([job], cwd=tmp_path) as run:
        try:
            pid = int(run.wait_for_line(r"^pid (\d+)$").group(1))
            run.wait_for_line(r"^amldbg: on-demand triggers armed")
            os.kill(pid, signal.SIGUSR2)
            port = announced_port(run)
            assert port == requested
            (adapter,) = debug_adapter_pids([port])
            status = Path(f"/proc/{adapter}/status").read_text()
            blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
            shielded = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                        signal.SIGUSR1, signal.SIGUSR2]
            assert [s.name for s in shielded if blocked & (1 << (s - 1))] == []
            (tmp_path / "stop").write_text("")
            assert run.wait(60) == 0
        finally:
            reap_debug_adapters([port] if port else [])
