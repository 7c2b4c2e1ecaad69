"""amldbg.debugger.idle against the real debugpy: after a wait nobody answered every thread runs
untraced (the ones that existed and the ones started later, through ``threading``, ``_thread``
or from C), and a real DAP client attaching late still stops at breakpoints in all of them.

Python >= 3.12: pydevd uses ``sys.monitoring`` instead of trace functions, and amldbg leaves
it as it is; the tests there check that no monitoring event is asked for in any thread after
the wait (so every thread runs at full speed by construction) and that a late client still
stops in the threads started after the wait. One thing differs there, in debugpy itself (plain
``debugpy.listen`` too): a thread started from C before the client attached never stops at a
breakpoint (a strict xfail below, so that a debugpy that fixes it is noticed)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harness.dap_client import DAPClient, DAPError
from harness.debug_adapters import reap_debug_adapters
from processes import Running, announced_port, child_env, line_of

MONITORING = sys.version_info >= (3, 12)
#: For the tests of what pydevd's trace functions do (Python <= 3.11).
traces_only = pytest.mark.skipif(
    MONITORING, reason="Python >= 3.12: pydevd uses sys.monitoring, no trace function to switch off"
)

SCRIPT = textwrap.dedent("""
    import _thread, ctypes, sys, threading, time
    import amldbg

    def monitored():  # Python >= 3.12: the events pydevd asks for where the caller runs
        monitoring = sys.monitoring
        code = sys._getframe(1).f_code
        return (monitoring.get_events(monitoring.DEBUGGER_ID)
                | monitoring.get_local_events(monitoring.DEBUGGER_ID, code))

    stop_early = threading.Event()

    def early():  # a thread that exists while the debugger waits (traced by pydevd then)
        while not stop_early.is_set():
            time.sleep(0.01)
        print("early thread traced after the wait:", sys.gettrace() is not None, flush=True)
        if sys.version_info >= (3, 12):
            print("early thread monitoring events:", monitored(), flush=True)

    early_thread = threading.Thread(target=early, name="early")
    early_thread.start()
    session = amldbg.enable_remote_debug(timeout=0.5)
    time.sleep(0.3)
    stop_early.set()
    early_thread.join()
    print("main thread traced after the wait:", sys.gettrace() is not None, flush=True)
    if sys.version_info >= (3, 12):
        print("main thread monitoring events:", monitored(), flush=True)

    deadline = time.monotonic() + 90
    reported = threading.Semaphore(0)

    def pool_worker():  # a thread started after the wait through threading
        print("threading thread traced:", sys.gettrace() is not None, flush=True)
        if sys.version_info >= (3, 12):
            print("threading thread monitoring events:", monitored(), flush=True)
        reported.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1
            pool_marker = count  # breakpoint: threading
            time.sleep(0.01)

    def raw_worker():  # a thread started after the wait through _thread
        print("_thread thread traced:", sys.gettrace() is not None, flush=True)
        if sys.version_info >= (3, 12):
            print("_thread thread monitoring events:", monitored(), flush=True)
        reported.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1
            raw_marker = count  # breakpoint: _thread
            time.sleep(0.01)

    def c_worker(_):  # a thread started from C (pthread_create), calling into Python
        print("C thread traced:", sys.gettrace() is not None, flush=True)
        if sys.version_info >= (3, 12):
            print("C thread monitoring events:", monitored(), flush=True)
        reported.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1
            c_marker = count  # breakpoint: C
            time.sleep(0.01)
        return None

    # One after the other, so that their lines do not interleave.
    threading.Thread(target=pool_worker, name="pool", daemon=True).start()
    reported.acquire()
    _thread.start_new_thread(raw_worker, ())
    reported.acquire()
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p]
    start_routine = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(c_worker)
    c_thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(c_thread), None, start_routine, None) == 0
    reported.acquire()
    print("threads started", flush=True)
    count = 0
    while time.monotonic() < deadline:
        count += 1
        main_marker = count  # breakpoint: main
        time.sleep(0.01)
""")


def start(tmp_path: Path, *extra: str) -> tuple[Path, Running]:
    script = tmp_path / "idle.py"
    script.write_text(SCRIPT)
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    for pair in extra:
        name, value = pair.split("=", 1)
        env[name] = value
    return script, Running([str(script)], env=env)


@traces_only
def test_every_thread_runs_untraced_after_an_unanswered_wait(tmp_path: Path) -> None:
    script, running = start(tmp_path)
    with running as run:
        port = announced_port(run)
        try:
            run.wait_for_line(r"^Debugger attached = False$")
            assert run.wait_for_line(r"^early thread traced after the wait: (\w+)$").group(1) == "False"
            assert run.wait_for_line(r"^main thread traced after the wait: (\w+)$").group(1) == "False"
            assert run.wait_for_line(r"^threading thread traced: (\w+)$").group(1) == "False"
            assert run.wait_for_line(r"^_thread thread traced: (\w+)$").group(1) == "False"
            assert run.wait_for_line(r"^C thread traced: (\w+)$").group(1) == "False"
        finally:
            run.proc.kill()
            run.proc.wait(30)
            reap_debug_adapters([port])
    assert "amldbg: warning" not in run.output


@pytest.mark.skipif(not MONITORING, reason="sys.monitoring exists from Python 3.12 on")
def test_no_monitoring_events_in_any_thread_after_an_unanswered_wait(tmp_path: Path) -> None:
    """Python >= 3.12: no trace function and no sys.monitoring event (global, or local to the
    code each thread runs) in the threads that existed and in every kind started later."""
    script, running = start(tmp_path)
    kinds = ("early", "main", "threading", "_thread", "C")
    with running as run:
        port = announced_port(run)
        try:
            run.wait_for_line(r"^Debugger attached = False$")
            for kind in kinds:
                traced = run.wait_for_line(rf"^{kind} thread traced(?: after the wait)?: (\w+)$")
                assert traced.group(1) == "False", kind
                events = run.wait_for_line(rf"^{kind} thread monitoring events: (\d+)$")
                assert events.group(1) == "0", kind
        finally:
            run.proc.kill()
            run.proc.wait(30)
            reap_debug_adapters([port])
    assert "amldbg: warning" not in run.output


def late_attach(tmp_path: Path, kinds: tuple[str, ...], timeout: float = 30) -> set[str]:
    """Attach a client to the idle script once its threads run, with a breakpoint in the loop
    of each of ``kinds``; return the kinds whose breakpoint stopped a thread of its own."""
    script, running = start(tmp_path)
    lines = {line_of(script, f"# breakpoint: {kind}"): kind for kind in kinds}
    with running as run:
        port = announced_port(run)
        try:
            run.wait_for_line(r"^threads started$")
            assert run.wait_for_line(r"^threading thread traced: (\w+)$").group(1) == "False"
            assert run.wait_for_line(r"^_thread thread traced: (\w+)$").group(1) == "False"
            client = DAPClient.connect("127.0.0.1", port)
            try:
                client.attach(breakpoints={str(script): sorted(lines)})
                # A line that stopped a thread loses its breakpoint, so the others get their
                # turn; stops elsewhere (a thread caught mid-suspension) are resumed. Bounded:
                # a missed breakpoint ends the wait, never hangs the test.
                hit: dict[int, int] = {}
                for _ in range(60):
                    try:
                        stop = client.wait_for_stop(timeout=timeout)
                    except DAPError as error:
                        if "within" not in str(error):
                            raise
                        break  # no further stop within the timeout
                    frame = client.top_frame(stop["threadId"])
                    if frame["line"] in lines and frame["line"] not in hit:
                        assert stop["reason"] == "breakpoint"
                        assert int(client.locals_of(frame["id"])["count"]) >= 1
                        hit[frame["line"]] = stop["threadId"]
                        client.request("setBreakpoints", {
                            "source": {"path": str(script)},
                            "breakpoints": [{"line": n} for n in lines if n not in hit],
                        })
                    if len(hit) == len(lines):
                        break
                    client.continue_(stop["threadId"])
                # Each breakpoint stopped a different thread.
                assert len(set(hit.values())) == len(hit), hit
            finally:
                client.disconnect()
        finally:
            run.proc.kill()
            run.proc.wait(30)
            reap_debug_adapters([port])
    assert "amldbg: warning" not in run.output
    return {lines[line] for line in hit}


def test_a_late_client_stops_in_threads_started_after_the_wait(tmp_path: Path) -> None:
    kinds = ("threading", "_thread", "main")
    assert late_attach(tmp_path, kinds) == set(kinds)


@pytest.mark.xfail(
    MONITORING, strict=True,
    reason="debugpy on sys.monitoring (Python >= 3.12) never stops a thread started from C "
           "before the client attached, with plain debugpy.listen too",
)
def test_a_late_client_stops_in_a_thread_started_from_c(tmp_path: Path) -> None:
    assert late_attach(tmp_path, ("C",), timeout=15) == {"C"}


@traces_only
def test_keep_tracing_leaves_new_threads_traced(tmp_path: Path) -> None:
    _, running = start(tmp_path, "AMLDBG_REMOTE_DEBUG_KEEP_TRACING=1")
    with running as run:
        port = announced_port(run)
        try:
            assert run.wait_for_line(r"^threading thread traced: (\w+)$").group(1) == "True"
            assert run.wait_for_line(r"^_thread thread traced: (\w+)$").group(1) == "True"
        finally:
            run.proc.kill()
            run.proc.wait(30)
            reap_debug_adapters([port])


@traces_only
def test_a_failure_falls_back_to_the_waiting_thread_alone_with_one_warning(
    tmp_path: Path,
) -> None:
    script = tmp_path / "broken.py"
    script.write_text(textwrap.dedent("""
        import sys, threading
        import debugpy._vendored.force_pydevd  # pydevd importable before debugpy starts it
        from _pydev_bundle import pydev_monkey
        import amldbg

        def broken():
            raise RuntimeError("simulated pydevd change")

        pydev_monkey.disable_trace_thread_modules = broken
        amldbg.enable_remote_debug(timeout=0.5)
        print("main thread traced after the wait:", sys.gettrace() is not None, flush=True)
        seen = []
        worker = threading.Thread(target=lambda: seen.append(sys.gettrace() is not None))
        worker.start(); worker.join()
        print("new thread traced:", seen[0], flush=True)
    """))
    env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                    AMLDBG_REMOTE_DEBUG_LISTEN_HOST="127.0.0.1")
    with Running([str(script)], env=env) as run:
        port = announced_port(run)
        try:
            assert run.wait(60) == 0
        finally:
            reap_debug_adapters([port])
    warnings = [line for line in run.lines if line.startswith("amldbg: warning")]
    assert warnings == [
        "amldbg: warning: could not switch off the idle debugger's tracing on other threads "
        "(simulated pydevd change); only this thread runs at full speed"
    ]
    assert "main thread traced after the wait: False" in run.lines
    # Today's behaviour, put back as it was: pydevd traces threads started later.
    assert "new thread traced: True" in run.lines
