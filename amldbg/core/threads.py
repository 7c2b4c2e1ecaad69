"""amldbg's own threads: daemons, named ``amldbg-...``, never traced or listed by the debugger.

pydevd traces every thread started after it and, at a breakpoint, suspends all of them. A
watchdog it suspended could neither re-arm faulthandler's timer (which then fires during the
breakpoint) nor do its work; a thread it lists clutters the user's thread view. pydevd skips
threads carrying its two marks, which :func:`own` sets.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

__all__ = ["call_within", "own", "shield_signals", "start", "unshielded"]

#: The signals a process is sent by others (not raised by a fault in a thread), by name.
SHIELDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def own(thread: threading.Thread) -> threading.Thread:
    """Mark ``thread`` as amldbg's own: pydevd never traces, suspends or lists it."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    return thread


def _set_shield(how: str) -> Any:
    """``pthread_sigmask(how, SHIELDED)`` for the calling thread: the mask before, or None
    where there is no ``pthread_sigmask``."""
    import signal

    numbers = {getattr(signal, name) for name in SHIELDED if hasattr(signal, name)}
    try:
        return signal.pthread_sigmask(getattr(signal, how), numbers)
    except (AttributeError, OSError, ValueError):
        return None


def shield_signals() -> None:
    """Block the :data:`SHIELDED` signals in the calling thread, one of amldbg's.

    The kernel gives a process's signal to any thread that does not block it, and Python
    runs the handler only on the main thread, between bytecodes: a signal that landed in one
    of amldbg's threads would wait for the main thread to leave its C call (a Ctrl+C would
    not stop a ``sleep``), and one the script blocks in its own threads would still arrive.
    Blocked here, it goes to the script's threads as it would without amldbg; amldbg learns
    of its own through the wakeup pipe (:mod:`amldbg.core.signalpipe`), wherever it landed.
    A process started from such a thread inherits the mask: start it :func:`unshielded`.
    """
    _set_shield("SIG_BLOCK")


@contextlib.contextmanager
def unshielded() -> Iterator[None]:
    """Let the :data:`SHIELDED` signals in on the calling thread for the block, for starting
    a process there (debugpy's adapter): a process inherits its thread's signal mask, and
    one started with SIGTERM blocked would never end on it."""
    previous = _set_shield("SIG_UNBLOCK")
    try:
        yield
    finally:
        if previous is not None:
            import signal

            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread of amldbg's own called ``name``, with the
    process's signals blocked there (:func:`shield_signals`)."""

    def run() -> None:
        shield_signals()
        target(*args)

    thread = own(threading.Thread(target=run, name=name, daemon=True))
    thread.start()
    return thread


def call_within(function: Callable[[], Any], timeout: float, name: str) -> tuple[bool, Any]:
    """Run ``function`` on a daemon thread of amldbg's own and wait at most ``timeout`` seconds.

    Returns ``(True, result)`` when it returned in time, ``(False, None)`` when it did not
    (it carries on in the background, abandoned; at exit it is not waited for). An exception
    it raised is raised here. For library calls whose own limits cannot be set.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as error:  # handed to the caller
            outcome.append((False, error))
        finally:
            done.set()

    start(target, name)
    if not done.wait(max(0.0, timeout)):
        return False, None
    ok, value = outcome[0]
    if not ok:
        raise value
    return True, value
