"""Post-mortem debugging of uncaught exceptions: ``--remote_debug_post_mortem``,
:func:`enable_post_mortem` and :func:`post_mortem`.

Post-mortem debugging is armed by ``--remote_debug_post_mortem`` (or
``AMLDBG_REMOTE_DEBUG_POST_MORTEM=1``) through :func:`amldbg.enable_remote_debug`, or
explicitly by :func:`enable_post_mortem`. Arming costs nothing at run time: it plugs into
amldbg's crash hooks (:mod:`amldbg.diagnostics.crash`, which chain ``sys.excepthook`` and
``threading.excepthook``) and does not start debugpy. When an uncaught exception reaches
them, the crash report is written first; then amldbg starts the debugger if it is not
running, announces where to attach, waits at most the connection timeout, and when a client
attaches, stops at the frame that raised with its locals intact
(``debugpy.trigger_exception_handler``). Then the hook that was there before runs, so the
same traceback is printed and the process exits with the same code as without amldbg.

debugpy is imported only when an exception actually has to be shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from types import TracebackType
from typing import Any

from amldbg.core import announce, environment, forksafe
from amldbg.core import settings as settings_module
from amldbg.core.guard import guard
from amldbg.core.settings import DebugSettings
from amldbg.debugger import session as sessions
from amldbg.debugger import start
from amldbg.diagnostics import crash, values

_STAYS_OPEN = (
    "the debug port {port} stays open for the rest of this process (debugpy cannot close a "
    "listener); a client can still attach to it"
)
# Quitting pdb is stopping the script on purpose too: no crash report, nothing to debug.
_NOT_CRASHES = frozenset({"bdb.BdbQuit"})


class _Armed:
    """What post-mortem debugging was armed with in this process."""

    def __init__(self) -> None:
        self.lock = forksafe.rlock()
        self.settings: DebugSettings | None = None
        # A long-running process (a scoring server) may raise many times: only the first
        # post-mortem waits for a client; later ones stop only when a client is attached.
        self.waited = False


_armed = _Armed()


# -- arming ----------------------------------------------------------------------------------
def install(settings: DebugSettings, topology: environment.Topology | None = None) -> None:
    """Install the post-mortem exception hooks when ``settings`` ask for them, and keep
    ``settings`` for the hooks and for :func:`post_mortem`. Idempotent; the rank is assumed
    to be selected."""
    with _armed.lock:
        _armed.settings = settings
        if not settings.remote_debug_post_mortem:
            return
        crash.install()
        if not crash.add_handler(_HANDLER):
            return  # armed before
    topology = topology or environment.topology()
    announce.info(
        f"post-mortem debugging is armed on rank {topology.rank} (pid {os.getpid()}): an "
        f"uncaught exception waits up to {sessions.seconds(settings.timeout)} s for a debugger"
    )


def enable_post_mortem(args: Any = None, **overrides: Any) -> bool:
    """Arm post-mortem debugging for this process, whatever ``--remote_debug_post_mortem`` says.

    ``args`` and keyword overrides are read as by :func:`amldbg.enable_remote_debug` (the
    timeout, port, ranks, listen host...). Returns ``True`` when armed, ``False`` when this
    rank is not selected by ``--remote_debug_ranks`` or the settings are invalid (one warning
    line). Nothing is started until an exception is uncaught.
    """
    # Each call warns (once=False): a scoring server may arm per request, as before the chain.
    with guard("post-mortem debugging is off", once=False):
        settings = settings_module.resolve_settings(args, post_mortem=True, **overrides)
        topology = environment.topology()
        settings_module.remember(settings)
        if not settings.debugs_rank(topology.rank):
            return False
        install(settings, topology)
        return True
    return False


def enabled_settings() -> DebugSettings | None:
    """The settings post-mortem debugging was armed with in this process, else ``None``."""
    settings = _armed.settings
    return settings if settings is not None and settings.remote_debug_post_mortem else None


# -- the crash-hook steps --------------------------------------------------------------------
def _stop_stall_watchdog(uncaught: crash.Uncaught) -> None:
    """Before the crash report: the main thread is ending (and may wait for a debugger now),
    which is not a stall."""
    stall = sys.modules.get("amldbg.diagnostics.stall")  # not imported when never armed
    if stall is not None and uncaught.where == crash.MAIN_THREAD:
        with contextlib.suppress(Exception):  # the report and the debugger come first
            stall.disarm()


def _offer_debugger(uncaught: crash.Uncaught) -> None:
    """After the crash report (on disk even when nobody attaches): the post-mortem wait."""
    settings = _armed.settings
    if settings is not None:
        _post_mortem(uncaught.exc_type, uncaught.exc, uncaught.tb, settings, uncaught.where)


_HANDLER = crash.Handler(
    failure="post-mortem debugging failed",
    before_report=_stop_stall_watchdog,
    after_report=_offer_debugger,
    not_crashes=_NOT_CRASHES,
)


def _ignored(exc_type: type[BaseException]) -> bool:
    # Read without the class's own attribute hooks (a metaclass's __getattribute__).
    return not crash.is_crash(exc_type) or values.type_name(exc_type) in _NOT_CRASHES


def _already_handled(exc: BaseException) -> bool:
    return not crash.first_time(exc, "post-mortem")


def _post_mortem(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
    settings: DebugSettings,
    where: str,
    wait: bool = True,
) -> bool:
    """Show ``exc`` to a debugger client; return True when a client was stopped on it."""
    if tb is None or _ignored(exc_type) or _already_handled(exc):
        return False
    topology = environment.topology()
    # Not str(exc): an exception whose __str__ raises or blocks still gets its debugger.
    text = values.exception_text(exc, 200)
    announce.info(
        f"post-mortem: uncaught {text} in {where} on rank {topology.rank} (pid {os.getpid()})"
    )
    with _armed.lock:
        must_wait = wait and not _armed.waited and settings.timeout > 0
        _armed.waited = _armed.waited or must_wait
    session = sessions.current_session()
    started_now = False
    if not sessions.existing_debugger():
        # Start the debugger now; start() announces where to attach and waits.
        session = start.start(
            dataclasses.replace(
                settings,
                remote_debug=True,
                remote_debug_connection_timeout=settings.timeout if must_wait else 0,
            ),
            topology,
        )
        if not session.active:
            announce.info("post-mortem: no debugger could be started; failing as before")
            return False
        started_now = True
    import debugpy

    connected_before = not started_now and bool(debugpy.is_client_connected())
    if not started_now and must_wait and not debugpy.is_client_connected():
        # The debugger was already running (the wait at start-up may have timed out).
        where_to = (
            f"{session.host}:{session.port}" if session and session.host else "the active debugger"
        )
        announce.info(
            f"post-mortem: waiting up to {sessions.seconds(settings.timeout)} s for a debugger to "
            f"attach to {where_to} (rank {topology.rank})"
        )
        attached = sessions.wait_for_client(
            debugpy, settings.timeout, sessions.PROGRESS_INTERVAL, where_to
        )
        sessions.say_attached(attached)
    if not debugpy.is_client_connected():
        announce.info("post-mortem: no debugger attached; the script fails as it would have")
        if started_now and session is not None and session.mode == "listen":
            announce.warn(_STAYS_OPEN.format(port=session.port))
        return False
    if connected_before and _client_stops_on_uncaught(exc_type):
        # The client asked for stops on uncaught exceptions and pydevd traced this thread:
        # it has already stopped here, and a second stop would show the same thing again.
        announce.info("post-mortem: the debugger already stopped on this exception")
        return True
    frame_tb = tb
    while frame_tb.tb_next is not None:
        frame_tb = frame_tb.tb_next
    code = frame_tb.tb_frame.f_code
    announce.info(
        f"post-mortem: stopping at {code.co_filename}:{frame_tb.tb_lineno} in "
        f"{code.co_name}; continue in the debugger to let the script fail as it would have"
    )
    _show_exception(debugpy, (exc_type, exc, tb))
    announce.info("post-mortem: the debugger resumed; the exception continues")
    return True


def _client_stops_on_uncaught(exc_type: type[BaseException]) -> bool:
    try:
        import pydevd

        py_db = pydevd.get_global_debugger()
        uncaught = getattr(py_db, "break_on_uncaught_exceptions", None)
        if py_db is None or not uncaught:
            return False
        if not py_db.get_exception_breakpoint(exc_type, uncaught):
            return False
    except Exception:  # a pydevd without these internals: amldbg stops on the exception itself
        return False
    # Python 3.12+ debugpy watches every frame through sys.monitoring; before, pydevd only
    # sees exceptions on a thread that carries its trace function.
    return sys.version_info >= (3, 12) or sys.gettrace() is not None


def _show_exception(debugpy: Any, excinfo: tuple[Any, Any, Any]) -> None:
    trigger = getattr(debugpy, "trigger_exception_handler", None)
    if trigger is not None:
        # as_uncaught=False: stop whatever exception filters the client chose; the user
        # asked for this stop by arming post-mortem debugging.
        trigger(excinfo, as_uncaught=False)
        return
    # debugpy before 1.8.22 has no public way; pydevd's own method does the same.
    import pydevd

    py_db = pydevd.get_global_debugger()
    tb = excinfo[2]
    while tb.tb_next is not None:
        tb = tb.tb_next
    thread = threading.current_thread()
    info = py_db.set_additional_thread_info(thread)
    info.is_tracing += 1
    try:
        py_db.do_stop_on_unhandled_exception(thread, tb.tb_frame, None, excinfo)
    finally:
        info.is_tracing -= 1


def post_mortem(exc: BaseException | None = None, args: Any = None, **overrides: Any) -> bool:
    """Show an exception to a remote debugger, like ``pdb.post_mortem`` for VS Code.

    Call it in an ``except`` block (``exc`` defaults to the exception being handled), then
    re-raise. Starts the debugger if it is not running (settings from ``args``, keyword
    overrides and the ``AMLDBG_*`` variables, as for :func:`amldbg.enable_remote_debug`),
    announces where to attach, waits at most the timeout for a client (only once per
    process), and when one is attached stops at the frame that raised. Returns ``True`` when
    a client was shown the exception. Never raises; an exception already shown (by this
    function or the post-mortem hooks) is not shown again.
    """
    with guard("post-mortem debugging failed", once=False):
        if exc is None:
            exc = sys.exc_info()[1]
        if exc is None:
            announce.warn("amldbg.post_mortem() was called with no exception to show")
            return False
        settings = _armed.settings
        if args is not None or overrides or settings is None:
            settings = settings_module.settings_for(args, **overrides)
        return show(exc, settings, "the caller")
    return False


def show(exc: BaseException, settings: DebugSettings, where: str) -> bool:
    """Show ``exc`` to a debugger client with settings already resolved (the entry-script
    hooks call it for a failing ``run()``); True when a client was stopped on it."""
    if not settings.debugs_rank(environment.topology().rank):
        return False
    return _post_mortem(type(exc), exc, exc.__traceback__, settings, where)
