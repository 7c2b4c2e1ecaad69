"""SIGTERM while logs or metrics are queued: flush within the grace period, say what was lost,
then end the process as SIGTERM's default action would.

Azure ML cancelling or pre-empting a job, torchrun ending the surviving ranks after one
failed and a Kubernetes eviction all send SIGTERM, whose default action ends the process at
once: every record still queued would be lost, silently. When the first export channel of a
process is made (Application Insights, MLflow or Azure ML run metrics) and SIGTERM's handler
is the default one, :func:`arm` installs amldbg's. On SIGTERM it:

1. has the export threads send what is queued, within the exit grace period (the same
   bound as a normal exit, :data:`~amldbg.logs.settings.DEFAULT_GRACE_PERIOD` by default);
2. writes the one loss line per destination if anything did not arrive;
3. puts SIGTERM's default action back and sends SIGTERM to the process again: the process
   ends *killed by SIGTERM*, the status a launcher or scheduler sees without amldbg.

It acts at once even while the main thread is blocked in C (a rank waiting in a collective
for a rank that died): the signal thread of :mod:`amldbg.core.signalpipe` sees the signal and
does the work; the flush itself runs on a thread of its own, so a main thread interrupted
while holding a lock of the exporter cannot deadlock it, and every wait is bounded.

A handler installed *before* amldbg's (by the script or a framework) is left alone: amldbg
never replaces it, and the normal exit flush applies if that handler ends the process with
``sys.exit``. A handler installed *after* amldbg's owns SIGTERM from then on: amldbg's signal
thread no longer acts; if that handler chains to amldbg's (calls the previous handler),
amldbg flushes (bounded by the grace period) and returns, leaving the ending to it: a
framework that saves a checkpoint on SIGTERM keeps its own behaviour.

A child made by ``fork`` inherits the handler; it flushes its own records (the parent's are
the parent's) and ends the same way, which covers ``Pool.terminate()``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from typing import Any

from amldbg.core import forksafe, signalpipe, threads
from amldbg.core.guard import guard
from amldbg.logs import export

__all__ = ["arm", "is_armed"]

#: Margin over the grace period for the flush thread before the process ends regardless.
END_MARGIN = 1.0

_lock = forksafe.lock()


@dataclasses.dataclass
class _State:
    """Where this process is with SIGTERM."""

    #: amldbg's handler was installed, or the script's left alone: decided once per process
    #: (a forked child inherits the handler and the decision).
    armed: bool = False
    #: The process whose flush has begun (a forked child's own begins anew), and the end
    #: of that flush (then the process ends).
    started_in: int = 0
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_state = _State()


def arm() -> bool:
    """Install amldbg's SIGTERM handler when SIGTERM's handler is the default one.

    Main thread only (Python's rule for signal handlers): from another thread nothing is
    done, and the next channel made in the main thread tries again. True when amldbg's
    handler is installed. Never raises.
    """
    sigterm = getattr(signal, "SIGTERM", None)
    if _state.armed or sigterm is None or threading.current_thread() is not threading.main_thread():
        return _state.armed and _owns()
    with guard("SIGTERM does not flush the logs", once=False), _lock:
        if _state.armed:
            return _owns()
        _state.armed = True
        if signal.getsignal(sigterm) is not signal.SIG_DFL:
            return False  # the script's or a framework's: left alone
        signal.signal(sigterm, _handler)
        signalpipe.listen(int(sigterm), _on_pipe_signal)
        return True
    return False


def is_armed() -> bool:
    """True while amldbg's SIGTERM handler is the installed one."""
    return _state.armed and _owns()


def _owns() -> bool:
    try:
        return signal.getsignal(signal.SIGTERM) is _handler
    except (OSError, ValueError, AttributeError):
        return False


def _handler(number: int, frame: Any) -> None:
    # The main thread, between bytecodes; or a later handler chaining to amldbg's.
    if not _owns():
        exporter = _own_exporter()
        if exporter is not None:
            # On a thread of its own, waited for at most the grace period: the main thread
            # may have been interrupted holding one of the exporter's locks.
            grace = exporter.grace_period
            export.call_within(lambda: exporter.flush(grace), grace + export.JOIN_MARGIN,
                               "amldbg-sigterm")
        return
    _begin()
    _state.done.wait(_bound())
    _end()


def _on_pipe_signal(number: int) -> None:
    # amldbg's signal thread, at once, even while the main thread is blocked in C. A
    # handler installed after amldbg's owns SIGTERM: then only that handler acts.
    if _owns():
        _begin()


def _begin() -> None:
    """Start the flush once; the thread that flushes ends the process when it is done."""
    with _lock:
        # By pid, not a flag reset at fork: the child's signal thread may act before the
        # fork hooks registered after its own have run.
        if _state.started_in == os.getpid():
            return
        _state.started_in = os.getpid()
        _state.done = threading.Event()
    threads.start(_flush_and_end, "amldbg-sigterm")


def _own_exporter() -> export.Exporter | None:
    exporter = export.existing_exporter()
    return exporter if exporter is not None and exporter.pid == os.getpid() else None


def _bound() -> float:
    exporter = _own_exporter()
    grace = exporter.grace_period if exporter is not None else 0.0
    return max(0.0, grace) + export.JOIN_MARGIN + END_MARGIN


def _flush_and_end() -> None:
    try:
        with guard("flushing the logs on SIGTERM failed", once=False):
            exporter = _own_exporter()
            if exporter is not None:
                exporter.shutdown()  # bounded by the grace period; writes the loss lines
    finally:
        _state.done.set()
    _end()


def _end() -> None:
    """End the process as SIGTERM's default action does (status: killed by SIGTERM)."""
    sigterm = signal.SIGTERM
    with guard("could not end the process with SIGTERM", once=False):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sigterm, signal.SIG_DFL)
        else:
            # Only the main thread may call signal.signal; the C library's signal() sets
            # the same disposition from any thread (the main thread may be stuck in C).
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.signal.restype = ctypes.c_void_p
            libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
            libc.signal(int(sigterm), None)  # SIG_DFL is the null handler
        os.kill(os.getpid(), sigterm)
        return
    if threading.current_thread() is not threading.main_thread():
        return  # the main thread's handler ends it once it runs
    os._exit(128 + int(sigterm))


export.when_channel_made(arm)
