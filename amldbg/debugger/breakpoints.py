"""``amldbg.breakpoint()``, and the opt-in routing of plain ``breakpoint()`` calls to the
remote debugger (``--remote_debug_route_breakpoint``).

Both pause only when a client is attached, so they are safe to leave in code that runs
unattended. debugpy is imported only when a debugger already runs in the process, or when
:func:`breakpoint` is asked to wait for one.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from types import FrameType
from typing import Any, Callable

from amldbg.core import announce, environment
from amldbg.core import settings as settings_module
from amldbg.core.guard import guard
from amldbg.debugger import session as sessions
from amldbg.debugger import start

_original_breakpointhook: Callable[..., Any] | None = None
_routing = False


def breakpoint(*, wait: bool = False, timeout: float | None = None) -> bool:  # noqa: A001
    """Pause in the remote debugger at the caller's line, only when a client is attached.

    Without a client (or without a debugger, or on a rank that does not debug) it returns
    ``False`` at once, so it is safe to leave in code that runs unattended. With
    ``wait=True`` it first starts the debugger if needed and waits at most ``timeout``
    seconds (default: the connection timeout) for a client, as post-mortem debugging does.
    Returns ``True`` when it paused. Never raises.
    """
    frame = sys._getframe(1)
    try:
        with guard("amldbg.breakpoint() failed"):
            return _pause(frame, wait, timeout)
        return False
    finally:
        del frame


def _pause(frame: FrameType, wait: bool, timeout: float | None) -> bool:
    started_now = False
    if not sessions.existing_debugger():
        if not wait:
            return False
        settings = settings_module.settings_for()
        topology = environment.topology()
        if not settings.debugs_rank(topology.rank):
            return False
        limit = settings.timeout if timeout is None else timeout
        session = start.start(
            dataclasses.replace(settings, remote_debug=True, remote_debug_connection_timeout=limit),
            topology,
        )
        if not session.active:
            return False
        started_now = True  # start() has waited already
        if session.mode == "listen" and not session.attached:
            announce.warn(
                f"amldbg.breakpoint: no debugger attached; the debug port {session.port} stays "
                f"open for the rest of this process (debugpy cannot close a listener)"
            )
    import debugpy

    if wait and not started_now and not debugpy.is_client_connected():
        limit = settings_module.settings_for().timeout if timeout is None else timeout
        if limit > 0:
            current = sessions.current_session()
            where = f"{current.host}:{current.port}" if current and current.host else "the debugger"
            announce.info(
                f"amldbg.breakpoint: waiting up to {sessions.seconds(limit)} s for a debugger on {where}"
            )
            attached = sessions.wait_for_client(debugpy, limit, sessions.PROGRESS_INTERVAL, where)
            sessions.say_attached(attached)
    if not debugpy.is_client_connected():
        return False
    _suspend_at(debugpy, frame)
    return True


def _suspend_at(debugpy: Any, frame: FrameType) -> None:
    try:
        from debugpy.server import api as server_api

        settrace = server_api._settrace
    except (ImportError, AttributeError):
        # debugpy.breakpoint() stops in its caller's frame, i.e. in amldbg; one step out
        # reaches the user's line.
        debugpy.breakpoint()
        return
    # What debugpy.breakpoint() does, but stopping in the user's frame rather than ours.
    settrace(
        suspend=True,
        trace_only_current_thread=True,
        patch_multiprocessing=False,
        stop_at_frame=frame,
    )


def _routed_breakpointhook(*args: Any, **kwargs: Any) -> Any:
    # PYTHONBREAKPOINT=0 keeps its documented meaning: every breakpoint() is a no-op.
    if os.environ.get("PYTHONBREAKPOINT", "").strip() == "0":
        return None
    frame = sys._getframe(1)
    try:
        with guard("breakpoint() routing failed"):
            return _pause(frame, False, None)
        return None
    finally:
        del frame


def route_breakpoints() -> None:
    """Make plain ``breakpoint()`` calls pause in the remote debugger (when a client is attached)."""
    global _original_breakpointhook, _routing
    if not _routing:
        _original_breakpointhook = sys.breakpointhook
        _routing = True
    sys.breakpointhook = _routed_breakpointhook
