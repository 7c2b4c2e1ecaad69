"""How a script's end loses no record, or says how many it lost: SIGTERM in the middle of an
export, and processes started with ``fork`` (multiprocessing pools and processes, DataLoader
workers) that end with ``os._exit`` or are terminated.

Real exporters (both Application Insights backends) post to the real loopback
``IngestionServer`` of this test process, and the MLflow variant to the loopback
``MlflowServer``; the scripts are real child processes. Every line a child writes that the
test reads is written with one ``os.write`` (never split or interleaved with another
process's). What is checked is the outcome: the exit status, which records arrived and how
often, and the one loss line. No timing is asserted; waits are generous bounds.

Which call blocks the main thread in C for good: relocking a default (``PTHREAD_MUTEX_NORMAL``)
pthread mutex the thread already holds. glibc waits for it in ``futex`` and goes back to
waiting after a signal, so the main thread never returns to the interpreter and a Python
signal handler never runs. The other candidates do return: ``pause()``, libc ``sleep()``
and ``read()`` end with ``EINTR`` (CPython installs its handlers without ``SA_RESTART``);
``threading.Lock.acquire`` runs the handler and waits again (Python 3); ``pthread_join`` on a
Python thread fails at once (CPython detaches its threads). The blocked test proves its own
premise: a SIGUSR2 handler that would write a line if the main thread ran Python never does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import pytest
from logs_support import start_child, start_group, write_child

from harness.ingestion_server import IngestionServer, message
from harness.mlflow_server import MlflowServer

BACKENDS = ["opencensus", "otel"]
#: Records of a burst that SIGTERM interrupts.
BURST = 2000
#: amldbg's loss line: one per destination, written at exit when something did not arrive.
LOSS = re.compile(r"^amldbg: warning: (?P<destination>.+?): (?P<count>\d+) record\(s\) were "
                  r"not delivered", re.M)

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="pthread mutex through ctypes.CDLL(None): glibc")


def _losses(output: str, destination: str) -> list[int]:
    """The counts of the loss lines for destinations whose name starts with ``destination``."""
    return [int(found["count"]) for found in LOSS.finditer(output)
            if found["destination"].startswith(destination)]


def _arrived_once_or_counted(arrived: Iterable[object], expected: list[object], output: str,
                             destination: str) -> int:
    """Every record arrived at most once, none that was not logged, and either all of them
    arrived (no loss line) or the one loss line counts exactly the missing ones. Returns how
    many arrived."""
    counts = Counter(arrived)
    unknown = set(counts) - set(expected)
    assert not unknown, f"records nobody logged arrived: {sorted(map(str, unknown))[:5]}"
    twice = {str(item): n for item, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} record(s) arrived more than once: {list(twice.items())[:5]}"
    missing = len(expected) - len(counts)
    losses = _losses(output, destination)
    if missing:
        assert losses == [missing], (f"{missing} of {len(expected)} did not arrive; the loss "
                                     f"line(s) for {destination!r} said {losses}:\n{output}")
    else:
        assert losses == [], output
    return len(counts)


def _settle(server: IngestionServer, count: int) -> list[str]:
    """The messages that arrived once the child is gone (a duplicate would come by now)."""
    server.wait_for(count, timeout=5)
    time.sleep(0.3)
    return [message(e) for e in list(server.envelopes)]


def _no_leaks(output: str, server: IngestionServer) -> None:
    assert "NETGUARD" not in output, output
    assert server.instrumentation_key not in output.lower(), "the instrumentation key was printed"
    assert "Traceback" not in output, output


# -- SIGTERM ---------------------------------------------------------------------------------

#: A burst of BURST records, a ready line, then BLOCK (where SIGTERM finds the main thread).
#: LOADED: the exporter finished loading and sent a first record before the burst (else
#: SIGTERM comes while it still loads).
BURST_SCRIPT = """
    import os, signal, sys, time
    from amldbg.logs import flush_logs, get_logger

    BEFORE
    log = get_logger("ending", backend=BACKEND)
    if LOADED:
        log.info("setup")
        flush_logs(30)
    AFTER
    shown = sys.stdout
    sys.stdout = open(os.devnull, "w")  # the driver log's copy of the burst is not the point
    for i in range(COUNT):
        log.info("burst %d", i)
    sys.stdout = shown
    handler = signal.getsignal(signal.SIGTERM)
    os.write(1, ("READY handler %s\\n" % getattr(handler, "__module__", handler)).encode())
    BLOCK
    os.write(1, b"STILL RUNNING\\n")
"""

SLEEP = "time.sleep(60)"

#: The main thread blocked in C for good (see the module's notes), with a Python handler for
#: SIGUSR2 that would show if the main thread ran Python again.
MUTEX = """
    import ctypes
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (normal type)
    assert libc.pthread_mutex_lock(mutex) == 0
    signal.signal(signal.SIGUSR2, lambda number, frame: os.write(1, b"PYTHON HANDLER RAN\\n"))
    os.write(1, ("BLOCKING %#x\\n" % ctypes.addressof(mutex)).encode())
    libc.pthread_mutex_lock(mutex)  # relocked by its owner: waits in futex, signals or not
"""


def _wait_until_in_futex(pid: int, address: str, timeout: float = 30.0) -> None:
    """Wait until the main thread of ``pid`` waits in the kernel on the mutex at ``address``.

    ``/proc/PID/syscall`` gives the system call a blocked thread is in and its arguments:
    ``futex``'s first is the address of the mutex's lock word (its first field). Before
    that, a signal could still find the main thread running Python (between the ready line
    and the call, or waiting for the GIL, which is a futex too but at another address).
    """
    path = Path(f"/proc/{pid}/task/{pid}/syscall")
    deadline = time.monotonic() + timeout
    fields: list[str] = []
    while time.monotonic() < deadline:
        try:
            fields = path.read_text().split()
        except PermissionError:
            pytest.fail("/proc/PID/syscall is not readable: the premise (main thread blocked in C) cannot be checked")
        except OSError:
            break
        if len(fields) > 1 and int(fields[1], 16) == int(address, 16):
            return
        time.sleep(0.02)
    raise AssertionError(f"the main thread never waited on the mutex at {address}: {fields}")


def _burst_script(tmp_path: Path, backend: str, loaded: bool = True, block: str = SLEEP,
                  before: str = "", after: str = "") -> Path:
    def indented(text: str) -> str:
        return textwrap.indent(textwrap.dedent(text).strip(), "    ").lstrip()

    body = (BURST_SCRIPT.replace("BACKEND", repr(backend)).replace("LOADED", repr(loaded))
            .replace("COUNT", str(BURST)).replace("BEFORE", indented(before) or "pass")
            .replace("AFTER", indented(after) or "pass").replace("BLOCK", indented(block)))
    return write_child(tmp_path, body)


EXPECTED_BURST: list[object] = [f"burst {i}" for i in range(BURST)]


def _burst_arrivals(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith("burst ")]


@pytest.mark.parametrize("loaded", [True, False], ids=["exporter-loaded", "exporter-loading"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_mid_burst_delivers_or_counts_every_record_and_ends_killed_by_sigterm(
    tmp_path: Path, backend: str, loaded: bool
) -> None:
    script = _burst_script(tmp_path, backend, loaded)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            child.wait_for_line(r"^READY handler ", timeout=60)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
        messages = _settle(server, BURST + loaded)
    output = child.output
    _no_leaks(output, server)
    assert code == -signal.SIGTERM, f"exit status {code}, not killed by SIGTERM:\n{output}"
    assert "STILL RUNNING" not in output
    _arrived_once_or_counted(_burst_arrivals(messages), EXPECTED_BURST, output,
                             "Application Insights")
    assert re.search(r"^READY handler amldbg\.", output, re.M), "amldbg's SIGTERM handler was not installed"


@needs_linux
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_while_the_main_thread_is_blocked_in_c_still_flushes_and_ends(
    tmp_path: Path, backend: str
) -> None:
    script = _burst_script(tmp_path, backend, block=MUTEX)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            address = child.wait_for_line(r"^BLOCKING (0x[0-9a-f]+)$", timeout=60).group(1)
            _wait_until_in_futex(child.proc.pid, address)
            # The premise: the main thread runs no Python. A SIGUSR2 handler would write a line
            # (CPython runs pending handlers in signal-number order: SIGUSR2 before SIGTERM).
            child.proc.send_signal(signal.SIGUSR2)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
        messages = _settle(server, BURST + 1)
    output = child.output
    _no_leaks(output, server)
    assert "PYTHON HANDLER RAN" not in output, "the main thread was not blocked in C"
    assert code == -signal.SIGTERM, f"exit status {code}, not killed by SIGTERM:\n{output}"
    _arrived_once_or_counted(_burst_arrivals(messages), EXPECTED_BURST, output,
                             "Application Insights")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sigterm_handler_the_script_installed_first_is_left_alone(tmp_path: Path, backend: str) -> None:
    # The script's handler decides the ending (here sys.exit(7)); amldbg neither replaces it
    # nor ends the process itself, and the normal exit flush applies to what is queued.
    before = """
        def on_sigterm(number, frame):
            os.write(1, b"SCRIPT HANDLER\\n")
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_sigterm)
    """
    script = _burst_script(tmp_path, backend, before=before)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            child.wait_for_line(r"^READY handler ", timeout=60)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
        messages = _settle(server, BURST + 1)
    output = child.output
    _no_leaks(output, server)
    assert "READY handler __main__" in output, "amldbg replaced the script's handler"
    assert child.lines.count("SCRIPT HANDLER") == 1, output
    assert code == 7, f"exit status {code}: the script's handler said sys.exit(7)\n{output}"
    _arrived_once_or_counted(_burst_arrivals(messages), EXPECTED_BURST, output,
                             "Application Insights")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_later_sigterm_handler_that_chains_to_amldbgs_gets_the_flush(tmp_path: Path, backend: str) -> None:
    # A framework's handler installed after amldbg's, calling the previous one, then ending
    # with os._exit: no atexit runs, so only the chained flush can have sent the burst.
    after = """
        previous = signal.getsignal(signal.SIGTERM)
        os.write(1, ("PREVIOUS %s\\n" % getattr(previous, "__module__", previous)).encode())
        def on_sigterm(number, frame):
            os.write(1, b"SCRIPT HANDLER\\n")
            previous(number, frame)
            os.write(1, b"PREVIOUS RETURNED\\n")
            os._exit(9)
        signal.signal(signal.SIGTERM, on_sigterm)
    """
    script = _burst_script(tmp_path, backend, after=after)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="20") as child:
            child.wait_for_line(r"^READY handler ", timeout=60)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
        messages = _settle(server, BURST + 1)
    output = child.output
    assert re.search(r"^PREVIOUS amldbg\.", output, re.M), f"amldbg's handler was not installed:\n{output}"
    _no_leaks(output, server)
    assert "READY handler __main__" in output, output
    assert child.lines.count("SCRIPT HANDLER") == 1 and "PREVIOUS RETURNED" in output, output
    assert code == 9, f"exit status {code}: the script's handler ends with os._exit(9)\n{output}"
    burst = Counter(_burst_arrivals(messages))
    assert burst == Counter(EXPECTED_BURST), (
        f"{len(burst)} distinct of {BURST} arrived, {sum(burst.values()) - len(burst)} duplicates")


MLFLOW_SCRIPT = """
    import os, sys, time
    import amldbg

    if LOADED:
        amldbg.log_metric("setup", 1.0, step=0)
        amldbg.flush_logs(60)
    for step in range(COUNT):
        amldbg.log_metric("loss", 1.0 / (step + 1), step=step)
    os.write(1, b"READY\\n")
    time.sleep(60)
    os.write(1, b"STILL RUNNING\\n")
"""


@pytest.mark.parametrize("loaded", [True, False], ids=["client-loaded", "client-loading"])
def test_sigterm_after_mlflow_metrics_delivers_or_counts_them(tmp_path: Path, loaded: bool) -> None:
    script = write_child(tmp_path, MLFLOW_SCRIPT.replace("LOADED", repr(loaded))
                         .replace("COUNT", str(BURST)))
    with MlflowServer() as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id) as child:
            child.wait_for_line(r"^READY$", timeout=60)
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
        server.wait_for(BURST + loaded, timeout=5)
        time.sleep(0.3)
        metrics = list(server.metrics)
    output = child.output
    assert "NETGUARD" not in output and "Traceback" not in output, output
    assert code == -signal.SIGTERM, f"exit status {code}, not killed by SIGTERM:\n{output}"
    assert "STILL RUNNING" not in output
    assert all(run == run_id for run, _, _, _ in metrics), metrics[:3]
    arrived = [(key, step) for _, key, _, step in metrics if key == "loss"]
    _arrived_once_or_counted(arrived, [("loss", step) for step in range(BURST)], output,
                             "MLflow metrics")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sigterm_the_script_blocks_waits_until_it_unblocks_it(tmp_path: Path, backend: str) -> None:
    # A script that blocks SIGTERM around a critical section (a checkpoint's write) gets it
    # when it unblocks it, as without amldbg: amldbg's own threads never take the signal.
    script = write_child(tmp_path, f"""
        import os, signal, time
        from amldbg.logs import flush_logs, get_logger

        log = get_logger("ending", backend={backend!r})
        log.info("setup")
        flush_logs(30)
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # amldbg's threads run meanwhile
        log.info("critical section done")
        os.write(1, b"CRITICAL SECTION DONE\\n")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGTERM}})
        time.sleep(30)
        os.write(1, b"STILL RUNNING\\n")
    """)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            code = child.wait(60)
        messages = _settle(server, 2)
    output = child.output
    assert "CRITICAL SECTION DONE" in output and "STILL RUNNING" not in output, output
    assert code == -signal.SIGTERM, output
    assert sorted(messages) == ["critical section done", "setup"], messages


# -- fork --------------------------------------------------------------------------------------

#: The parent loads the exporter, then logs PARENT records that are still queued when it
#: forks: the parent's to send, never a child's.
FORK_HEADER = """
    import multiprocessing, os, sys, time
    from amldbg.logs import flush_logs, get_logger

    log = get_logger("forks", backend=BACKEND)
    log.info("parent setup")
    flush_logs(30)
    ctx = multiprocessing.get_context("fork")

    def parent_records():
        for i in range(PARENT):
            log.info("parent before fork %d", i)
"""
PARENT = 50


def _fork_script(tmp_path: Path, backend: str, body: str) -> Path:
    text = textwrap.dedent(FORK_HEADER) + textwrap.dedent(body)
    return write_child(tmp_path, text.replace("BACKEND", repr(backend)).replace("PARENT", str(PARENT)))


def _run_fork_script(script: Path, server: IngestionServer, done: str, expected: int) -> tuple[int, str, list[str]]:
    # start_group: a forked worker that hangs must not outlive the test.
    with start_group(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                     AMLDBG_LOG_GRACE_PERIOD="20") as child:
        try:
            code = child.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script did not end within 90 s; output:\n{child.output}")
    output = child.output
    assert re.search(done, output, re.M), output
    return code, output, _settle(server, expected)


def _each_once(messages: list[str], expected: list[str]) -> None:
    counts = Counter(messages)
    missing = sorted(set(expected) - set(counts))
    twice = sorted(m for m, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - set(expected))
    assert not missing and not twice and not unknown, (
        f"of {len(expected)} records: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(twice)} arrived more than once (e.g. {twice[:3]}), unknown {unknown[:3]}")


def _parent_expected(after: bool = True) -> list[str]:
    return (["parent setup"] + [f"parent before fork {i}" for i in range(PARENT)]
            + (["parent after"] if after else []))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_pool_closed_and_joined_delivers_every_workers_record_once(tmp_path: Path, backend: str) -> None:
    script = _fork_script(tmp_path, backend, """
        def work(task):
            for i in range(125):
                log.info("pool task %d record %d", task, i)
            return os.getpid()

        if __name__ == "__main__":
            parent_records()
            pool = ctx.Pool(2)
            pids = pool.map(work, range(2), chunksize=1)
            pool.close()
            pool.join()
            log.info("parent after")
            os.write(1, ("POOL DONE in %d worker(s)\\n" % len(set(pids))).encode())
    """)
    expected = _parent_expected() + [f"pool task {t} record {i}" for t in range(2) for i in range(125)]
    with IngestionServer() as server:
        code, output, messages = _run_fork_script(script, server, r"^POOL DONE", len(expected))
    _no_leaks(output, server)
    assert code == 0, output
    _each_once(messages, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_process_started_and_joined_delivers_its_records_once(tmp_path: Path, backend: str) -> None:
    script = _fork_script(tmp_path, backend, """
        def child():
            for i in range(100):
                log.info("process record %d", i)

        if __name__ == "__main__":
            parent_records()
            process = ctx.Process(target=child)
            process.start()
            process.join()
            log.info("parent after")
            os.write(1, ("PROCESS EXIT %s\\n" % process.exitcode).encode())
    """)
    expected = _parent_expected() + [f"process record {i}" for i in range(100)]
    with IngestionServer() as server:
        code, output, messages = _run_fork_script(script, server, r"^PROCESS EXIT 0$", len(expected))
    _no_leaks(output, server)
    assert code == 0, output
    _each_once(messages, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_pool_terminated_after_its_workers_logged_delivers_their_records(
    tmp_path: Path, backend: str
) -> None:
    # Pool.terminate() sends SIGTERM to each worker, blocked in its task: amldbg's handler,
    # inherited through fork, flushes the worker's own records before it ends.
    script = _fork_script(tmp_path, backend, """
        logged = ctx.Queue()

        def work(task):
            for i in range(125):
                log.info("pool task %d record %d", task, i)
            logged.put(task)
            time.sleep(120)  # until Pool.terminate()

        if __name__ == "__main__":
            parent_records()
            pool = ctx.Pool(2)
            pool.map_async(work, range(2), chunksize=1)
            tasks = sorted(logged.get(timeout=60) for _ in range(2))
            os.write(1, ("LOGGED %s\\n" % tasks).encode())
            workers = list(pool._pool)
            pool.terminate()
            pool.join()
            log.info("parent after")
            os.write(1, ("TERMINATED %s\\n" % [w.exitcode for w in workers]).encode())
    """)
    expected = _parent_expected() + [f"pool task {t} record {i}" for t in range(2) for i in range(125)]
    with IngestionServer() as server:
        code, output, messages = _run_fork_script(script, server, r"^TERMINATED", len(expected))
    _no_leaks(output, server)
    assert code == 0, output
    assert "LOGGED [0, 1]" in output, output
    _each_once(messages, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_blocked_in_c_ends_at_sigterm_that_another_of_its_threads_received(
    tmp_path: Path, backend: str
) -> None:
    # The kernel gives a process's SIGTERM to any thread that does not block it; Python runs
    # the inherited handler only on the main thread, between bytecodes. A worker asleep in C
    # (Pool.terminate() finds its workers so) must still flush and end at once, as it would
    # without amldbg. The main thread blocks SIGTERM here so that another thread gets it.
    script = _fork_script(tmp_path, backend, """
        import signal, threading

        def child():
            for i in range(100):
                log.info("forked record %d", i)
            threading.Thread(target=time.sleep, args=(120,), daemon=True).start()  # a queue's feeder
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            os.write(1, ("CHILD BLOCKED %d\\n" % os.getpid()).encode())
            time.sleep(120)  # blocked in C
            os.write(1, b"CHILD WOKE\\n")

        if __name__ == "__main__":
            parent_records()
            process = ctx.Process(target=child)
            process.start()
            process.join()
            log.info("parent after")
            os.write(1, ("CHILD ENDED %s\\n" % process.exitcode).encode())
    """)
    expected = _parent_expected() + [f"forked record {i}" for i in range(100)]
    with IngestionServer() as server:
        with start_group(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="20") as child:
            pid = int(child.wait_for_line(r"^CHILD BLOCKED (\d+)$", timeout=60).group(1))
            os.kill(pid, signal.SIGTERM)
            child.wait_for_line(r"^CHILD ENDED -15$", timeout=60)
            code = child.wait(60)
        output = child.output
        messages = _settle(server, len(expected))
    _no_leaks(output, server)
    assert code == 0 and "CHILD WOKE" not in output, output
    _each_once(messages, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_sent_sigterm_as_soon_as_it_is_forked_never_ends_the_parent(tmp_path: Path, backend: str) -> None:
    # Until its fork hook has run, a child's wakeup fd is still the parent's pipe: a SIGTERM
    # the child gets at once (Process.start() then terminate()) must end the child, never
    # be acted on by the parent.
    script = _fork_script(tmp_path, backend, """
        def child():
            time.sleep(60)

        if __name__ == "__main__":
            parent_records()
            codes = []
            for _ in range(20):
                process = ctx.Process(target=child)
                process.start()
                process.terminate()  # most often before the child has run a line
                process.join(30)
                codes.append(process.exitcode)
            log.info("parent after")
            os.write(1, ("CHILDREN ENDED %s\\n" % sorted(set(codes))).encode())
    """)
    with IngestionServer() as server:
        code, output, messages = _run_fork_script(script, server, r"^CHILDREN ENDED", len(_parent_expected()))
    _no_leaks(output, server)
    assert code == 0 and "CHILDREN ENDED [-15]" in output, output
    _each_once(messages, _parent_expected())


# Not skipped without torch: it is part of the test extra, and a missing component must fail.
@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_dataloader_workers_deliver_the_record_of_every_item_once(tmp_path: Path, backend: str) -> None:
    script = _fork_script(tmp_path, backend, """
        from torch.utils.data import DataLoader, Dataset

        class Items(Dataset):
            def __len__(self):
                return 40

            def __getitem__(self, index):
                log.info("item %d", index)
                return index

        if __name__ == "__main__":
            parent_records()
            loader = DataLoader(Items(), batch_size=4, num_workers=2, multiprocessing_context="fork")
            seen = sorted(int(x) for batch in loader for x in batch)
            log.info("parent after")
            os.write(1, ("LOADED %d items\\n" % len(seen)).encode())
    """)
    expected = _parent_expected() + [f"item {i}" for i in range(40)]
    with IngestionServer() as server:
        code, output, messages = _run_fork_script(script, server, r"^LOADED 40 items$", len(expected))
    _no_leaks(output, server)
    assert code == 0, output
    _each_once(messages, expected)
