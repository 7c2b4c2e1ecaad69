"""amldbg's own threads: daemons, named ``amldbg-...``, never traced or listed by the debugger.

pydevd traces every thread started after it and, at a breakpoint, suspends all of them. A
watchdog it suspended could neither re-arm faulthandler's timer (which then fires during the
breakpoint) nor do its work; a thread it lists clutters the user's thread view. pydevd skips
threads carrying its two marks, which :func:`own` sets.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["own", "start"]


def own(thread: threading.Thread) -> threading.Thread:
    """Mark ``thread`` as amldbg's own: pydevd never traces, suspends or lists it."""
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    return thread


def start(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread of amldbg's own called ``name``."""
    thread = own(threading.Thread(target=target, args=args, name=name, daemon=True))
    thread.start()
    return thread
