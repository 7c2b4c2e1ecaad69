"""Post-mortem debugging of uncaught exceptions, ``amldbg.breakpoint()``, and the opt-in
routing of plain ``breakpoint()`` calls to the remote debugger.

Post-mortem debugging is armed by ``--remote_debug_post_mortem`` (or
``AMLDBG_REMOTE_DEBUG_POST_MORTEM=1``) through :func:`amldbg.enable_remote_debug`, or
explicitly by :func:`enable_post_mortem`. Arming costs nothing at run time: it chains
``sys.excepthook`` and ``threading.excepthook`` and does not start debugpy. When an exception
reaches one of them, amldbg starts the debugger if it is not running, announces where to
attach, waits at most the connection timeout, and when a client attaches, stops at the frame
that raised with its locals intact (``debugpy.trigger_exception_handler``). Then the hook
that was there before runs, so the same traceback is printed and the process exits with the
same code as without amldbg.

debugpy is imported only when an exception actually has to be shown, or when
:func:`breakpoint` is asked to wait.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from types import FrameType, TracebackType
from typing import Any, Callable, Mapping

from amldbg import _announce, _env
from amldbg.cli_args import DebugSettings, parse_bool, resolve_settings

_HANDLED_ATTR = "__amldbg_post_mortem__"
_FLAG_NAMES = ("remote_debug_post_mortem", "remote_debug_route_breakpoint")
_ALIASES = {"post_mortem": "remote_debug_post_mortem",
            "route_breakpoint": "remote_debug_route_breakpoint"}

_lock = threading.RLock()
_settings: DebugSettings | None = None
_hooks_installed = False
_previous_excepthook: Callable[..., Any] | None = None
_previous_threading_excepthook: Callable[..., Any] | None = None
_original_breakpointhook: Callable[..., Any] | None = None
_routing = False
# A long-running process (a scoring server) may raise many times: only the first
# post-mortem waits for a client; later ones stop only when a client is already attached.
_waited = False
_handled_ids: set[int] = set()


# -- arming ----------------------------------------------------------------------------------
def _flag_asked(name: str, args: Any, overrides: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    # A cheap look at one switch, without resolving (and warning about) every setting.
    for key, value in overrides.items():
        if _ALIASES.get(key, key) == name and value is not None:
            return parse_bool(value)
    if isinstance(args, Mapping):
        if name in args and args[name] is not None:
            return parse_bool(args[name])
    elif args is not None and getattr(args, name, None) is not None:
        return parse_bool(getattr(args, name))
    raw = env.get("AMLDBG_" + name.upper())
    if raw is None:
        return False
    try:
        return parse_bool(raw)
    except ValueError:
        return False  # resolve_settings warns about it


def _rank_selected(settings: DebugSettings, topology: _env.Topology) -> bool:
    ranks = settings.remote_debug_ranks
    return ranks is None or topology.rank in ranks


def arm(args: Any, overrides: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Arm post-mortem debugging and ``breakpoint()`` routing when asked for, for a process
    in which remote debugging itself is off (called by :func:`amldbg.enable_remote_debug`)."""
    if not any(_flag_asked(name, args, overrides, env) for name in _FLAG_NAMES):
        return
    settings = resolve_settings(args, env=env, **overrides)
    topology = _env.topology(env)
    if not _rank_selected(settings, topology):
        if topology.is_distributed:
            ranks = ",".join(map(str, settings.remote_debug_ranks or ()))
            _announce.info(f"rank {topology.rank} does not debug (--remote_debug_ranks {ranks})")
        return
    install(settings, topology)


def install(settings: DebugSettings, topology: _env.Topology | None = None) -> None:
    """Install what ``settings`` asks for: the post-mortem exception hooks and/or the
    ``breakpoint()`` routing. Idempotent; the rank is assumed to be selected."""
    global _settings, _hooks_installed, _previous_excepthook, _previous_threading_excepthook
    with _lock:
        _settings = settings
        if settings.remote_debug_route_breakpoint:
            _route_breakpoints()
        if not settings.remote_debug_post_mortem or _hooks_installed:
            return
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
        _previous_threading_excepthook = threading.excepthook
        threading.excepthook = _threading_excepthook
        _hooks_installed = True
    topology = topology or _env.topology()
    _announce.info(
        f"post-mortem debugging is armed on rank {topology.rank} (pid {os.getpid()}): an "
        f"uncaught exception waits up to {_seconds(settings.timeout)} s for a debugger"
    )


def enable_post_mortem(args: Any = None, **overrides: Any) -> bool:
    """Arm post-mortem debugging for this process, whatever ``--remote_debug_post_mortem`` says.

    ``args`` and keyword overrides are read as by :func:`amldbg.enable_remote_debug` (the
    timeout, port, ranks, listen host...). Returns ``True`` when armed, ``False`` when this
    rank is not selected by ``--remote_debug_ranks`` or the settings are invalid (one warning
    line). Nothing is started until an exception is uncaught.
    """
    try:
        settings = resolve_settings(args, post_mortem=True, **overrides)
        topology = _env.topology()
        if not _rank_selected(settings, topology):
            return False
        install(settings, topology)
        return True
    except Exception as error:  # amldbg's own failure must not stop the host script
        _announce.warn(f"post-mortem debugging is off: {error}")
        return False


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# -- the exception hooks ---------------------------------------------------------------------
def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    try:
        if _settings is not None:
            _post_mortem(exc_type, exc, tb, _settings, "the main thread")
    except BaseException as error:  # e.g. Ctrl+C while waiting: still fail as before
        _announce.warn(f"post-mortem debugging failed: {error!r}")
    finally:
        previous = _previous_excepthook or sys.__excepthook__
        previous(exc_type, exc, tb)


def _threading_excepthook(hook_args: Any) -> None:
    try:
        if _settings is not None and hook_args.exc_value is not None:
            name = getattr(hook_args.thread, "name", "a thread")
            _post_mortem(
                hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback, _settings,
                f"thread {name!r}",
            )
    except BaseException as error:
        _announce.warn(f"post-mortem debugging failed: {error!r}")
    finally:
        previous = _previous_threading_excepthook or threading.__excepthook__
        previous(hook_args)


def _ignored(exc_type: type[BaseException]) -> bool:
    # Stopping the script on purpose is not a crash to debug.
    if issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
        return True
    return exc_type.__name__ == "BdbQuit" and exc_type.__module__ == "bdb"


def _already_handled(exc: BaseException) -> bool:
    if getattr(exc, _HANDLED_ATTR, False) or id(exc) in _handled_ids:
        return True
    try:
        setattr(exc, _HANDLED_ATTR, True)
    except Exception:  # an exception type with __slots__
        _handled_ids.add(id(exc))
    return False


def _post_mortem(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
    settings: DebugSettings,
    where: str,
    wait: bool = True,
) -> bool:
    """Show ``exc`` to a debugger client; return True when a client was stopped on it."""
    global _waited
    if tb is None or _ignored(exc_type) or _already_handled(exc):
        return False
    from amldbg import debug

    topology = _env.topology()
    text = f"{exc_type.__name__}: {exc}".strip()
    if len(text) > 200:
        text = text[:197] + "..."
    _announce.info(
        f"post-mortem: uncaught {text} in {where} on rank {topology.rank} (pid {os.getpid()})"
    )
    with _lock:
        must_wait = wait and not _waited and settings.timeout > 0
        _waited = _waited or must_wait
    session = debug.current_session()
    started_now = False
    if not debug._existing_debugger():
        # Start the debugger now; enable_remote_debug announces where to attach and waits.
        values = dataclasses.asdict(settings)
        session = debug.enable_remote_debug(
            values, enabled=True, timeout=settings.timeout if must_wait else 0
        )
        if not session.active:
            _announce.info("post-mortem: no debugger could be started; failing as before")
            return False
        started_now = True
    import debugpy

    connected_before = not started_now and bool(debugpy.is_client_connected())
    if not started_now and must_wait and not debugpy.is_client_connected():
        # The debugger was already running (the wait at start-up may have timed out).
        where_to = (
            f"{session.host}:{session.port}" if session and session.host else "the active debugger"
        )
        _announce.info(
            f"post-mortem: waiting up to {_seconds(settings.timeout)} s for a debugger to "
            f"attach to {where_to} (rank {topology.rank})"
        )
        attached = debug._wait(debugpy, settings.timeout, debug.PROGRESS_INTERVAL, where_to)
        debug._say_attached(attached)
    if not debugpy.is_client_connected():
        _announce.info("post-mortem: no debugger attached; the script fails as it would have")
        return False
    if connected_before and _client_stops_on_uncaught(exc_type):
        # The client asked for stops on uncaught exceptions and pydevd traced this thread:
        # it has already stopped here, and a second stop would show the same thing again.
        _announce.info("post-mortem: the debugger already stopped on this exception")
        return True
    frame_tb = tb
    while frame_tb.tb_next is not None:
        frame_tb = frame_tb.tb_next
    code = frame_tb.tb_frame.f_code
    _announce.info(
        f"post-mortem: stopping at {code.co_filename}:{frame_tb.tb_lineno} in "
        f"{code.co_name}; continue in the debugger to let the script fail as it would have"
    )
    _show_exception(debugpy, (exc_type, exc, tb))
    _announce.info("post-mortem: the debugger resumed; the exception continues")
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
    except Exception:
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


def _current_settings() -> DebugSettings:
    return _settings if _settings is not None else resolve_settings()


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
    try:
        if exc is None:
            exc = sys.exc_info()[1]
        if exc is None:
            _announce.warn("amldbg.post_mortem() was called with no exception to show")
            return False
        if args is None and not overrides and _settings is not None:
            settings = _settings
        else:
            settings = resolve_settings(args, **overrides)
        if not _rank_selected(settings, _env.topology()):
            return False
        return _post_mortem(type(exc), exc, exc.__traceback__, settings, "the caller")
    except Exception as error:
        _announce.warn(f"post-mortem debugging failed: {error!r}")
        return False


def post_mortem_if_enabled(exc: BaseException | None = None) -> bool:
    """For entry-point wrappers (the scoring decorators): run :func:`post_mortem` on ``exc``
    only when post-mortem debugging is enabled by ``--remote_debug_post_mortem`` /
    ``AMLDBG_REMOTE_DEBUG_POST_MORTEM`` and this rank is selected; else return ``False``.
    The caller re-raises ``exc`` afterwards."""
    try:
        settings = _current_settings()
    except Exception as error:
        _announce.warn(f"post-mortem debugging is off: {error}")
        return False
    if not settings.remote_debug_post_mortem:
        return False
    return post_mortem(exc)


# -- breakpoints -----------------------------------------------------------------------------
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
        return _pause(frame, wait, timeout)
    except Exception as error:
        _announce.warn(f"amldbg.breakpoint() failed: {error!r}")
        return False
    finally:
        del frame


def _pause(frame: FrameType, wait: bool, timeout: float | None) -> bool:
    from amldbg import debug

    started_now = False
    if not debug._existing_debugger():
        if not wait:
            return False
        settings = _current_settings()
        if not _rank_selected(settings, _env.topology()):
            return False
        limit = settings.timeout if timeout is None else timeout
        session = debug.enable_remote_debug(
            dataclasses.asdict(settings), enabled=True, timeout=limit
        )
        if not session.active:
            return False
        started_now = True  # enable_remote_debug has waited already
    import debugpy

    if wait and not started_now and not debugpy.is_client_connected():
        limit = _current_settings().timeout if timeout is None else timeout
        if limit > 0:
            current = debug.current_session()
            where = f"{current.host}:{current.port}" if current and current.host else "the debugger"
            _announce.info(f"amldbg.breakpoint: waiting up to {_seconds(limit)} s for a debugger on {where}")
            debug._say_attached(debug._wait(debugpy, limit, debug.PROGRESS_INTERVAL, where))
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
        return _pause(frame, False, None)
    except Exception as error:
        _announce.warn(f"breakpoint() routing failed: {error!r}")
        return None
    finally:
        del frame


def _route_breakpoints() -> None:
    global _original_breakpointhook, _routing
    if not _routing:
        _original_breakpointhook = sys.breakpointhook
        _routing = True
    sys.breakpointhook = _routed_breakpointhook


def keep_breakpointhook(previous: Callable[..., Any], settings: DebugSettings) -> None:
    """Called after debugpy started: debugpy replaces ``sys.breakpointhook`` so that every
    ``breakpoint()`` goes to it. Put back the hook from before (plain ``breakpoint()`` and
    ``PYTHONBREAKPOINT`` keep their meaning) unless routing was asked for."""
    if settings.remote_debug_route_breakpoint or _routing:
        sys.breakpointhook = _routed_breakpointhook
    elif sys.breakpointhook is not previous:
        sys.breakpointhook = previous
