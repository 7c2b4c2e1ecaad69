"""A process nobody attached to gets its speed back on every thread, and a late attach works.

After a wait that timed out, debugpy's idle debugger keeps tracing: on Python <= 3.11 pydevd
has a trace function on every thread that existed when debugging started, and installs one
on every thread started later (``threading.settrace`` plus its patched ``_thread`` start
functions). A trace function makes pure-Python code about 2-3 times slower. :func:`go_idle`
switches all of that off and watches for a client that attaches later, which puts it back.
"""

from __future__ import annotations

import sys
import threading
import time
from types import FrameType
from typing import Any, Callable

from amldbg.core import announce, threads
from amldbg.core.settings import DebugSettings

#: How often the watcher looks for a client that attached late, in seconds.
POLL_INTERVAL = 0.2


def go_idle(debugpy: Any, settings: DebugSettings) -> None:
    """Give a process nobody attached to its speed back, and keep a late attach working.

    Python <= 3.11 (pydevd traces with ``sys.settrace``): amldbg switches tracing off on the
    waiting thread and on every other thread of the process, and makes threads the script
    starts later (``threading`` and ``_thread``, so thread pools and prefetchers too) start
    untraced. A small watcher thread polls for a client (5 times a second); when one
    attaches, it puts pydevd's thread hooks back and traces every thread again, including
    the frames they are running, so breakpoints in loops already running are hit. The
    trade-offs: a breakpoint is honoured from up to 0.2 s after the client attached; a
    thread busy in one C call (or waiting on a lock) is traced from its next Python call
    on; pydevd learns of threads started while idle only at the attach (so, like threads
    started from C, they get their debugger thread entry then, not when they start).

    Python >= 3.12 (pydevd uses ``sys.monitoring``): an idle debugger with no breakpoints
    asks for almost no events, in any thread, so nothing is switched off there (expected
    from pydevd's code, not measured: amldbg's benchmarks run on 3.11). Switching the
    waiting thread off would be a loss there: it cannot be switched back on from the
    watcher (pydevd's per-thread flag is thread-local), so a late attach would miss
    breakpoints on that thread.

    If switching off the other threads fails, one warning says so and amldbg falls back to
    untracing only the waiting thread (re-traced on attach). ``--remote_debug_keep_tracing``
    keeps debugpy's own behaviour (tracing all along, 2-3 times slower).
    """
    if settings.remote_debug_keep_tracing:
        announce.info("no debugger attached; keeping the idle debugger tracing (slower)")
        return
    if _uses_sys_monitoring():
        return
    try:
        debugpy.trace_this_thread(False)
    except Exception as error:  # not a guard: a fallback follows, and the text has no type
        announce.warn(f"could not switch off the idle debugger's tracing: {error}")
        return
    untraced: _AllThreadsUntraced | None = None
    try:
        untraced = _AllThreadsUntraced()
        untraced.switch_off()
    except Exception as error:  # not a guard: falls back to untracing this thread only
        announce.warn(
            f"could not switch off the idle debugger's tracing on other threads ({error}); "
            f"only this thread runs at full speed"
        )
        if untraced is not None:
            untraced.restore()
        untraced = None
    # pydevd never traces or lists the watcher.
    threads.start(_watch_for_late_attach, "amldbg-late-attach", debugpy, threading.get_ident(), untraced)


def _uses_sys_monitoring() -> bool:
    """Whether the running pydevd traces with ``sys.monitoring`` (Python >= 3.12)."""
    try:
        from _pydevd_bundle import pydevd_constants  # vendored by debugpy
    except Exception:  # pydevd's layout moved: judge by the Python version instead
        return sys.version_info >= (3, 12)
    return bool(getattr(pydevd_constants, "PYDEVD_USE_SYS_MONITORING", False))


class _AllThreadsUntraced:
    """pydevd's tracing switched off on every thread, and the way to put it back."""

    def __init__(self) -> None:
        import pydevd  # vendored by debugpy; importable once debugpy started
        import pydevd_tracing
        from _pydev_bundle import pydev_monkey

        self.py_db = pydevd.get_global_debugger()
        if self.py_db is None:
            raise RuntimeError("pydevd has no debugger")
        if getattr(self.py_db, "frame_eval_func", None) is not None:
            raise RuntimeError("pydevd runs in frame-evaluation mode")
        self.tracing = pydevd_tracing
        self.monkey = pydev_monkey
        self.thread_hook: Callable[..., Any] | None = None
        self.idle = False

    def switch_off(self) -> None:
        """New threads start untraced; running threads drop their trace function at their
        next traced event."""
        # Both ways pydevd traces a new thread: threading's hook (for threading.Thread) and
        # the wrapper its patched _thread start functions put around every new thread.
        self.thread_hook = _threading_trace_hook()
        self.idle = True
        threading.settrace(None)  # type: ignore[arg-type]
        self.monkey.disable_trace_thread_modules()
        current = threading.get_ident()
        skip = _pydevd_thread_idents()
        for ident, frame in sys._current_frames().items():
            if ident == current or ident in skip:
                continue
            # Another thread's trace function can only be set through pydevd's helper; the
            # one set here removes itself, in that thread, at its next event. Its frames
            # get it too, so a loop that calls nothing drops it at its next line.
            self.tracing.set_trace_to_threads(
                self._untrace, thread_idents=[ident], create_dummy_thread=False
            )
            stack: FrameType | None = frame
            while stack is not None:
                stack.f_trace = self._untrace
                stack = stack.f_back

    def _untrace(self, frame: FrameType, event: str, arg: Any) -> None:
        # Runs in the thread being untraced (the only place its trace function can be unset
        # from Python). After a late attach it only clears the frame's own leftover hook.
        frame.f_trace = None
        if self.idle:
            self.tracing.SetTrace(None)

    def restore(self) -> None:
        """pydevd's thread hooks back, so threads started from now on are traced."""
        self.idle = False
        self.monkey.enable_trace_thread_modules()
        if self.thread_hook is not None:
            threading.settrace(self.thread_hook)

    def trace_everything(self) -> None:
        """Trace every thread and the frames it runs, as pydevd does on its first start."""
        self.restore()
        self.tracing.set_trace_to_threads(self.py_db.trace_dispatch)
        self.py_db.set_tracing_for_untraced_contexts()


def _threading_trace_hook() -> Callable[..., Any] | None:
    gettrace = getattr(threading, "gettrace", None)  # Python >= 3.10
    if gettrace is not None:
        hook: Callable[..., Any] | None = gettrace()
        return hook
    return getattr(threading, "_trace_hook", None)


def _pydevd_thread_idents() -> set[int]:
    return {
        t.ident
        for t in threading.enumerate()
        if t.ident is not None
        and (getattr(t, "is_pydev_daemon_thread", False) or getattr(t, "pydev_do_not_trace", False))
    }


def _watch_for_late_attach(
    debugpy: Any, thread_ident: int, untraced: _AllThreadsUntraced | None
) -> None:
    connected = False
    while True:
        time.sleep(POLL_INTERVAL)
        try:
            now = bool(debugpy.is_client_connected())
        except Exception:  # the host's interpreter may be shutting down
            return
        if now and not connected:
            try:
                if untraced is not None:
                    untraced.trace_everything()
                else:
                    _trace_thread_again(thread_ident)
            except Exception as error:  # not a guard: falls back to re-tracing one thread
                announce.warn(f"could not trace every thread for the late debugger: {error}")
                if untraced is not None:
                    untraced = None
                    try:
                        _trace_thread_again(thread_ident)
                    except Exception:  # the fallback failed too: the watcher ends quietly
                        return
        connected = now


def _trace_thread_again(thread_ident: int) -> None:
    # pydevd's own re-tracing on attach skips a thread whose trace function is unset, so set
    # it (through pydevd's helper, which can reach another thread) and mark its frames.
    import pydevd  # vendored by debugpy; importable once debugpy started
    import pydevd_tracing

    py_db = pydevd.get_global_debugger()
    if py_db is None:
        return
    pydevd_tracing.set_trace_to_threads(
        py_db.trace_dispatch, thread_idents=[thread_ident], create_dummy_thread=False
    )
    frame = sys._current_frames().get(thread_ident)
    if frame is not None:
        py_db.set_trace_for_frame_and_parents(thread_ident, frame)
