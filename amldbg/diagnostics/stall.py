"""The stall report: ``--remote_debug_stall_timeout SECONDS`` and :func:`heartbeat`.

A daemon thread samples the main thread's Python stack every half second or so (the identity,
code and instruction of each frame: no tracing, no change to the script). When neither the
stack nor :func:`heartbeat`'s counter changed for the timeout, it writes the stacks of every
thread once (:func:`amldbg.diagnostics.stacks.write_dump`), and once more only after progress
resumed and stalled again. It never kills, signals or pauses anything.

The report is held back only while the debugger has the process stopped (a thread paused at
a breakpoint or at the end of a step): a client that is merely connected does not hide a hang,
and the timeout starts again when the debugger resumes. The inference server's gunicorn
workers are left out (an idle worker looks stalled).

What a report shows runs none of the script's code (:mod:`amldbg.diagnostics.values`): a
value whose ``__repr__`` would block cannot hold the report hostage. The exit never waits for
the watchdog more than a fraction of a second.

What counts as progress: the main thread's stack changed between two samples (a function
was called or returned, or the current instruction moved). A rank waiting in a collective, a
queue, a lock or ``time.sleep`` does not change it, nor does a rank polling in a loop that
spends its time in one call (``while not os.path.exists(p): time.sleep(1)``). The samples
hold no reference to the frames (that would keep their local values, a GPU's tensors, alive),
so a new call of the same function can reuse the old frame's address: a loop that spends
all its time, step after step, in one call at one place (``for _ in range(n): y = x @ w``
at the top of a script) looks stalled too. Real training steps pass through data loading,
the optimizer and logging, and samples land there; for a loop that does not, call
:func:`heartbeat` once per step.

A thread cannot run Python code while the main thread holds the GIL inside a C call. For
that case the watchdog keeps :func:`faulthandler.dump_traceback_later` armed with the same
timeout and re-arms it each time it gets to run: it fires, from C, only when the watchdog
itself was starved for the whole timeout, and prints every thread's stack to stderr (the
driver log) once. Note: faulthandler has a single such timer per process; a script that
uses ``faulthandler.dump_traceback_later`` itself should not also use this flag. The timer
is cancelled just before every ``fork`` and re-armed in the parent right after: a child must
not inherit a timer whose thread it does not have (its exit, or arming its own report,
would wait for that thread for ever).

Cost: one sample is a walk of the main thread's frames, about ten microseconds every half
second, in a thread that sleeps in between (``benchmarks/bench_stall.py`` measures it).
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import sys
import threading
import time
from typing import Any

from amldbg.core import announce, environment, forksafe, threads
from amldbg.core.guard import guard, quietly
from amldbg.diagnostics import collectives, stacks, values

__all__ = ["arm", "disarm", "heartbeat", "is_armed"]

#: Seconds between two samples of the main thread (shorter for a short timeout).
SAMPLE_INTERVAL = 0.5
#: Seconds :func:`disarm` waits for the watchdog thread to end (it is a daemon: a watchdog
#: stuck in a write must not hold up the exit).
JOIN_WAIT = 0.5

_beats = 0
_lock = forksafe.lock()
# Held while faulthandler's timer is armed or cancelled, and across a fork, so that the
# watchdog cannot re-arm the timer between the cancel before a fork and the fork itself.
_faulthandler_lock = forksafe.lock()
_watchdog: _Watchdog | None = None


def heartbeat() -> None:
    """Mark progress of the script for the stall report (``--remote_debug_stall_timeout``).

    Call it once per step of a loop whose steps spend their time in one C call (the stall
    watchdog sees no change in the Python stack then). Costs an integer increment; does
    nothing useful but is harmless when the watchdog is not armed. Any thread may call it.
    """
    global _beats
    _beats += 1


def _signature(frame: Any, beats: int) -> tuple[Any, ...]:
    parts: list[Any] = [beats]
    depth = 0
    while frame is not None and depth < 200:
        parts.append((id(frame), id(frame.f_code), frame.f_lasti))
        frame = frame.f_back
        depth += 1
    return tuple(parts)


class _Watchdog(threading.Thread):
    def __init__(self, timeout: float, interval: float) -> None:
        super().__init__(name="amldbg-stall-watchdog", daemon=True)
        # Never suspended at a breakpoint (pydevd stops every thread it traces): a frozen
        # watchdog could not keep faulthandler's timer from firing during the stop.
        threads.own(self)
        self.timeout = timeout
        self.interval = interval
        self.stop_event = threading.Event()
        self.reports = 0
        self.last_report: str | None = None
        self._faulthandler_armed = False
        # faulthandler is re-armed at most this often: arming starts a C thread each time.
        self._rearm_every = max(interval, min(5.0, timeout / 4))
        self._armed_at = 0.0

    def run(self) -> None:
        try:
            with guard("the stall watchdog stopped", once=False):  # never takes the script down
                self._loop()
        finally:
            self._cancel_faulthandler()

    def _main_frame(self) -> Any:
        ident = threading.main_thread().ident
        if ident is None:
            return None
        return sys._current_frames().get(ident)

    def _loop(self) -> None:
        main = threading.main_thread()
        last = _signature(self._main_frame(), _beats)
        changed_at = time.monotonic()
        stalled = False
        while not self.stop_event.wait(self.interval):
            if not main.is_alive():
                return
            now = time.monotonic()
            self._keep_faulthandler_armed(now)
            current = _signature(self._main_frame(), _beats)
            if current != last:
                if stalled:
                    announce.info(
                        f"stall: rank {environment.topology().rank} (pid {os.getpid()}) made "
                        f"progress again after {now - changed_at:.0f} s"
                    )
                last, changed_at, stalled = current, now, False
                continue
            if not stalled and now - changed_at >= self.timeout:
                if _debugger_stopped():
                    # Paused at a breakpoint or stepping, on purpose: not a stall; the
                    # timeout starts again when the debugger lets the script run.
                    changed_at = now
                    continue
                stalled = True
                self.reports += 1
                self.last_report = stacks.write_dump(
                    "stall",
                    f"no progress in the main thread for {now - changed_at:.0f} s "
                    f"(--remote_debug_stall_timeout {announce.seconds(self.timeout)})",
                    skip_threads=(threading.get_ident(),),
                )
                # Writing took a moment; the stack is compared with the one before it.

    def _keep_faulthandler_armed(self, now: float, force: bool = False) -> None:
        if not force and self._faulthandler_armed and now - self._armed_at < self._rearm_every:
            return
        stream = sys.__stderr__
        # Not while a fork is under way (the lock is held across it).
        if stream is None or self.stop_event.is_set() or not _faulthandler_lock.acquire(timeout=1):
            return
        try:
            with quietly():  # stderr closed or not a file: the stall report goes without a timer
                stream.fileno()
                # Fires only if this thread cannot run for the whole timeout (the GIL is held).
                faulthandler.dump_traceback_later(
                    self.timeout + self._rearm_every, repeat=False, file=stream, exit=False
                )
                self._faulthandler_armed = True
                self._armed_at = now
                return
            self._faulthandler_armed = False
        finally:
            _faulthandler_lock.release()

    def _cancel_faulthandler(self) -> None:
        if self._faulthandler_armed:
            self._faulthandler_armed = False
            with quietly():  # on the way out or before a fork: nothing to add
                faulthandler.cancel_dump_traceback_later()


# pydevd's thread state "paused" (pydevd_constants.STATE_SUSPEND).
_STATE_SUSPEND = 2


def _debugger_stopped() -> bool:
    """True while the debugger has the process stopped: a thread is paused (a breakpoint, a
    pause, an exception stop, the end of a step). A connected client alone is not, nor a step
    whose call is still running."""
    if "pydevd" not in sys.modules:
        return False
    for thread in list(threading.enumerate()):
        info = values.instance_dict(thread).get("additional_info")
        if info is None:
            continue
        with quietly():  # pydevd's object is not as expected: that thread is not paused
            # Only a thread paused now: a step over a call that then hangs leaves its step
            # command set while the script runs, and must not hide the hang.
            if info.pydev_state == _STATE_SUSPEND:
                return True
    return False


def arm(timeout: float, *, interval: float | None = None) -> bool:
    """Start the stall watchdog of this process with ``timeout`` seconds; True when it runs.

    Idempotent (a second call keeps the first watchdog). A timeout of 0 does nothing.
    Announces itself in one line. Never raises.
    """
    global _watchdog
    with guard("the stall report is off", once=False):
        if timeout <= 0:
            return False
        if "gunicorn.workers.base" in sys.modules:
            announce.info(
                "the stall report is off in the inference server: an idle worker waits for "
                "requests and would look stalled"
            )
            return False
        with _lock:
            if _watchdog is not None and _watchdog.is_alive():
                return True
            stacks.resolve_output_dir()
            collectives.prepare()
            # At least ~20 samples per timeout: a short timeout must not hang on a few samples
            # that happened to land on the same instruction of a busy loop.
            step = interval if interval is not None else min(SAMPLE_INTERVAL, max(0.02, timeout / 20))
            _watchdog = _Watchdog(float(timeout), step)
            # Armed here too: the main thread may take the GIL before the thread first runs.
            _watchdog._keep_faulthandler_armed(time.monotonic())
            _watchdog.start()
        topology = environment.topology()
        announce.info(
            f"stall report armed on rank {topology.rank} (pid {os.getpid()}): the stacks are "
            f"written when the main thread makes no progress for {announce.seconds(timeout)} s"
        )
        return True
    return False


def disarm(wait: float = JOIN_WAIT) -> None:
    """Stop the stall watchdog (at exit, or in tests), waiting at most ``wait`` seconds for
    its thread: a watchdog stuck in a write never holds up an exit or a crash."""
    global _watchdog
    if not _lock.acquire(timeout=1):
        return
    try:
        watchdog, _watchdog = _watchdog, None
    finally:
        _lock.release()
    if watchdog is not None:
        watchdog.stop_event.set()
        with _faulthandler_lock:
            watchdog._cancel_faulthandler()
        if watchdog.is_alive() and watchdog is not threading.current_thread():
            watchdog.join(wait)


def is_armed() -> bool:
    """True while the stall watchdog runs in this process."""
    watchdog = _watchdog
    return watchdog is not None and watchdog.is_alive()


def _before_fork() -> None:
    # faulthandler's timer thread would not exist in the child while its state says armed:
    # the child's exit and any new timer there would wait for that thread for ever.
    _faulthandler_lock.acquire()
    watchdog = _watchdog
    if watchdog is not None and watchdog._faulthandler_armed:
        watchdog._cancel_faulthandler()


def _after_fork_in_parent() -> None:
    _faulthandler_lock.release()
    watchdog = _watchdog
    if watchdog is not None and watchdog.is_alive() and not watchdog.stop_event.is_set():
        watchdog._keep_faulthandler_armed(time.monotonic(), force=True)


def _after_fork_in_child() -> None:
    # The watchdog thread does not exist in a forked child (a data loader worker): the child
    # starts unarmed and may arm its own report. (forksafe has already freed the locks.)
    global _watchdog
    _watchdog = None


atexit.register(disarm)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
