"""A process nobody attached to gets its speed back, and a late attach still works.

After a wait that timed out, debugpy's idle debugger keeps a trace function on the waiting
thread, which makes pure-Python code about twice as slow. :func:`go_idle` switches that off
and watches for a client that attaches later.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from amldbg.core import announce
from amldbg.core.settings import DebugSettings


def go_idle(debugpy: Any, settings: DebugSettings) -> None:
    """Give a process nobody attached to its speed back, and keep a late attach working.

    The idle debugger keeps a trace function on the waiting thread, which makes pure-Python
    code about twice as slow. amldbg switches that thread's tracing off and starts a small
    watcher thread that polls for a client (5 times a second); when one attaches, the
    watcher puts tracing back on the thread and on the frames it is running, so breakpoints
    in loops already running are hit. The trade-off: a breakpoint is honoured from up to
    0.2 s after the client attached, and threads that the script starts itself are traced
    as debugpy does by default. ``--remote_debug_keep_tracing`` keeps debugpy's own
    behaviour (tracing all along, slower).
    """
    if settings.remote_debug_keep_tracing:
        announce.info("no debugger attached; keeping the idle debugger tracing (slower)")
        return
    try:
        debugpy.trace_this_thread(False)
    except Exception as error:
        announce.warn(f"could not switch off the idle debugger's tracing: {error}")
        return
    watcher = threading.Thread(
        target=_watch_for_late_attach,
        args=(debugpy, threading.get_ident()),
        name="amldbg-late-attach",
        daemon=True,
    )
    watcher.pydev_do_not_trace = True  # type: ignore[attr-defined]
    watcher.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    watcher.start()


def _watch_for_late_attach(debugpy: Any, thread_ident: int) -> None:
    connected = False
    while True:
        time.sleep(0.2)
        try:
            now = bool(debugpy.is_client_connected())
            if now and not connected:
                _trace_thread_again(thread_ident)
            connected = now
        except Exception:  # the host's interpreter may be shutting down
            return


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
