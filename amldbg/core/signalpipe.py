"""One wakeup pipe for amldbg's signals, so that a signal is acted on while the main thread
is blocked in C (a collective, a queue, a long kernel).

Python runs signal handlers only in the main thread, between bytecodes, so a handler alone
would wait for the C call to return: a rank stuck in ``all_reduce`` would never write its
stacks on SIGUSR1, nor flush its logs on SIGTERM. amldbg therefore points
:func:`signal.set_wakeup_fd` at a pipe: CPython's C-level handler writes the signal's number
there at once, from whichever thread the kernel chose, and a daemon thread reading the pipe
(``amldbg-signals``) calls the listener of that signal. The Python handler is still what
makes CPython catch the signal at all; it does the work itself only when the pipe is no
longer the wakeup fd (:func:`delivers`): asyncio, for one, takes the wakeup fd for its own
signal handlers. A forked child gets a pipe and a reader thread of its own.

There is one wakeup fd per process, so there is one pipe for all of amldbg (the on-demand
triggers and the SIGTERM flush of the logs share it); an event loop's wakeup fd that was
there first is kept, never replaced.

Why not ``pthread_sigmask`` and ``sigwait``: a blocked signal mask is inherited by every
thread and child process started later (data loader workers, ``subprocess``), which would
silently break their own signal handling; threads started earlier (torch's, debugpy's) do
not have it blocked, and the default action would still apply there. Only amldbg's own
threads block the signals (:func:`amldbg.core.threads.shield_signals`), so that the kernel
gives them to the script's threads; a process amldbg starts from one of them is started
:func:`~amldbg.core.threads.unshielded`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import threading
from typing import Any, Callable

from amldbg.core import announce, forksafe, threads
from amldbg.core.guard import describe, guard, quietly

__all__ = ["delivers", "forget", "listen", "reader_ident"]

#: Seconds between two calls of the listeners' idle checks (ownership of their handlers).
IDLE_CHECK = 2.0

_lock = forksafe.lock()
_listeners: dict[int, Callable[[int], None]] = {}
_idle_checks: dict[int, Callable[[], None]] = {}
# The signal mask each forking thread had before amldbg blocked its signals for the fork.
_fork_masks: dict[int, Any] = {}


@dataclasses.dataclass
class _Pipe:
    """This process's wakeup pipe and the thread that reads it; -1, -1, None without one."""

    read_fd: int = -1
    write_fd: int = -1
    reader: threading.Thread | None = None

    def forget(self) -> None:
        self.read_fd = self.write_fd = -1
        self.reader = None


def _identity(fd: int) -> tuple[int, int] | None:
    """The file an open descriptor names (device, inode), or None."""
    try:
        found = os.fstat(fd)
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino


_pipe = _Pipe()


def listen(number: int, on_signal: Callable[[int], None],
           on_idle: Callable[[], None] | None = None) -> bool:
    """Call ``on_signal(number)`` on amldbg's signal thread each time signal ``number`` arrives.

    ``on_idle`` is called on that thread every :data:`IDLE_CHECK` seconds without a signal.
    The caller installs the Python handler itself (and must, or the signal's default action
    applies). Main thread only. True when the pipe is the wakeup fd; False when another
    wakeup fd was there first (then only the Python handler sees the signal). Never raises.
    """
    with _lock:
        _listeners[number] = on_signal
        if on_idle is not None:
            _idle_checks[number] = on_idle
        if _pipe.write_fd >= 0:
            return True
        try:
            return _open()
        except (OSError, ValueError) as error:
            announce.warn(f"signals are acted on only between bytecodes: {describe(error)}")
            return False


def _open() -> bool:
    """Make the pipe the wakeup fd and start the thread that reads it; False when another
    wakeup fd was there first. Raises OSError or ValueError (not the main thread)."""
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (OSError, ValueError):
        _close(read_fd, write_fd)
        raise
    if previous != -1:
        # Someone else's wakeup fd (an event loop's): keep theirs; the handlers act.
        with contextlib.suppress(OSError, ValueError):
            signal.set_wakeup_fd(previous)
        _close(read_fd, write_fd)
        return False
    _pipe.read_fd, _pipe.write_fd = read_fd, write_fd
    # Not suspended at a breakpoint: a dump on demand works while the debugger stops.
    _pipe.reader = threads.start(_read_loop, "amldbg-signals", read_fd, _identity(read_fd))
    return True


def forget(number: int) -> None:
    """Stop calling the listener of ``number``; with none left, give the wakeup fd back."""
    with _lock:
        _listeners.pop(number, None)
        _idle_checks.pop(number, None)
        if _listeners or _pipe.write_fd < 0:
            return
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(OSError, ValueError):
                current = signal.set_wakeup_fd(-1)
                if current != _pipe.write_fd:
                    signal.set_wakeup_fd(current)  # someone else's: leave it
        # The reader reads end-of-file, closes its end and ends.
        _close(_pipe.write_fd)
        _pipe.forget()


def delivers() -> bool:
    """True while the pipe is the wakeup fd: the signal thread sees every signal, so a
    Python handler leaves the work to it. Main thread only (a signal handler's thread)."""
    fd = _pipe.write_fd
    if fd < 0 or _pipe.reader is None:
        return False
    try:
        current = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (OSError, ValueError):
        return False
    if current == fd:
        return True
    with contextlib.suppress(OSError, ValueError):
        signal.set_wakeup_fd(current)  # someone else's: give it back
    return False


def reader_ident() -> int | None:
    """The identity of the signal thread, or None (not started, or a forked child)."""
    reader = _pipe.reader
    return reader.ident if reader is not None else None


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_loop(fd: int, identity: tuple[int, int] | None) -> None:
    # The descriptor is checked before each read and the close: a script that closes every
    # descriptor (a daemon's closerange) may reopen the number for a file of its own, which
    # amldbg must neither read nor close.
    try:
        while True:
            try:
                ready, _, _ = select.select([fd], [], [], IDLE_CHECK)
                if _identity(fd) != identity:
                    return  # not ours any more: neither read nor closed (see finally)
                if not ready:
                    for check in list(_idle_checks.values()):
                        _call(check)
                    continue
                data = os.read(fd, 64)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            if not data:  # forget() closed the write end
                return
            for number in data:
                # The wakeup fd receives every signal that has a Python handler, ours or not.
                listener = _listeners.get(number)
                if listener is not None:
                    _call(listener, number)
    finally:
        if identity is not None and _identity(fd) == identity:
            _close(fd)


def _call(function: Callable[..., None], *args: int) -> None:
    # The signal thread must outlive any listener's failure; one warning per listener.
    with guard("a signal listener failed", key=f"signalpipe:{getattr(function, '__qualname__', '?')}"):
        function(*args)


def _before_fork() -> None:
    # Until the child's fork hook has run, the child's wakeup fd is the parent's pipe: a
    # signal sent to the child at once (Process.start() then terminate()) would be written
    # there and acted on by the parent. The forking thread, the child's only thread, blocks
    # amldbg's signals across the fork; the child unblocks them once its own pipe is in, and
    # a signal sent meanwhile waits for that.
    numbers = set(_listeners)
    if _pipe.write_fd < 0 or not numbers:
        return
    with quietly():  # a fork hook must never stop the fork
        _fork_masks[threading.get_ident()] = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)


def _restore_mask(previous: Any = None) -> None:
    if previous is None:
        previous = _fork_masks.pop(threading.get_ident(), None)
    if previous is not None:
        with quietly():
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _after_fork_in_child() -> None:
    try:
        _child_pipe()
    finally:
        # The child's one thread is the forking thread (the same identity, or, should the
        # platform give it another, the one entry a lone fork left).
        previous = _fork_masks.pop(threading.get_ident(), None)
        if previous is None and len(_fork_masks) == 1:
            previous = _fork_masks.popitem()[1]
        _fork_masks.clear()  # other threads' forks in flight: those threads are gone
        _restore_mask(previous)


def _child_pipe() -> None:
    # The reader thread does not exist in a forked child, and the pipe is the parent's: a
    # signal to the child must not wake the parent. So the child gets a pipe and a reader of
    # its own: the kernel may give the child's SIGTERM to any of its threads (a queue's
    # feeder, an exporter), and the inherited Python handler would wait for the main thread
    # to leave its C call (Pool.terminate() would wait for a worker asleep in its task).
    if _pipe.write_fd < 0:
        return
    ours = False
    try:
        current = signal.set_wakeup_fd(-1)
        ours = current == _pipe.write_fd
        if not ours:
            signal.set_wakeup_fd(current)  # someone else's: leave it
    except (OSError, ValueError):
        pass
    _close(_pipe.read_fd, _pipe.write_fd)
    _pipe.forget()
    if ours and _listeners:
        with quietly():  # a fork hook must never stop the child: then the handlers act alone
            _open()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_restore_mask,
                        after_in_child=_after_fork_in_child)
