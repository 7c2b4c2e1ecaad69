"""Remote debugging with debugpy: listen (or connect out), announce, wait at most the timeout.

``enable_remote_debug`` replaces the block the Azure ML guides have users paste into every
script. It keeps the guides' log lines (``Timeout for debug connection: N``,
``ip_address: A``, ``Debugger attached = True|False``) and fixes what goes wrong with the
hand-written version: the wait honours its timeout, the lines are flushed, the address is
one a client can reach, a taken port or a missing debugpy does not stop the script, and a
process nobody attached to runs at full speed afterwards.

debugpy is imported only when debugging is enabled: its first API call replaces
``sys.breakpointhook`` and starts threads, so a script with debugging off never touches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
import threading
import time
from typing import Any, Mapping

from amldbg import _announce, _env, launch_config
from amldbg.cli_args import DebugSettings, parse_bool, resolve_settings

#: How often the wait repeats where to attach and how long is left, in seconds.
PROGRESS_INTERVAL = 30.0
#: How many ports after the requested one are tried when it is taken.
PORT_ATTEMPTS = 20

_ACTIVE_MODES = ("listen", "connect", "reused")
_INSTALL_HINT = "python -m pip install debugpy  (or: python -m pip install 'amldbg[debug]')"


@dataclasses.dataclass(frozen=True)
class DebugSession:
    """What :func:`enable_remote_debug` did.

    ``mode`` is ``"disabled"`` (not asked for), ``"skipped"`` (this rank does not debug),
    ``"listen"`` (waiting for VS Code on ``host:port``), ``"connect"`` (connected out to a
    listening VS Code at ``host:port``), ``"reused"`` (a debugger was already active in the
    process) or ``"failed"`` (see ``reason``; the script carries on without a debugger).
    ``host`` is the address a client uses (the node's address in listen mode), ``bind``
    the address actually listened on. ``attached`` is whether a client had attached when
    the wait ended; :meth:`is_client_connected` asks again.
    """

    mode: str
    host: str | None = None
    port: int | None = None
    bind: str | None = None
    attached: bool = False
    reason: str = ""
    rank: int = 0
    waited: float = 0.0

    @property
    def active(self) -> bool:
        """True when a debugger runs in this process (listening, connected or reused)."""
        return self.mode in _ACTIVE_MODES

    def is_client_connected(self) -> bool:
        """True when a debugger client is attached right now."""
        if not self.active:
            return False
        try:
            import debugpy
        except ImportError:
            return False
        return bool(debugpy.is_client_connected())


_DISABLED = DebugSession(mode="disabled", reason="remote debugging is off")
_session: DebugSession | None = None
_lock = threading.Lock()


def current_session() -> DebugSession | None:
    """The session started in this process by :func:`enable_remote_debug`, if any."""
    return _session


def _requested(args: Any, overrides: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    for key in ("enabled", "remote_debug"):
        if overrides.get(key) is not None:
            return parse_bool(overrides[key])
    if isinstance(args, Mapping):
        if "remote_debug" in args:
            return parse_bool(args["remote_debug"])
    elif args is not None and hasattr(args, "remote_debug"):
        return parse_bool(args.remote_debug)
    raw = env.get("AMLDBG_REMOTE_DEBUG")
    if raw is None:
        return False
    try:
        return parse_bool(raw)
    except ValueError:
        return True  # resolve_settings will warn about the value and fall back


def enable_remote_debug(
    args: Any = None,
    *,
    progress_interval: float = PROGRESS_INTERVAL,
    **overrides: Any,
) -> DebugSession:
    """Start remote debugging when it was asked for; otherwise return at once.

    ``args`` is the ``argparse.Namespace`` of a parser given :func:`amldbg.add_args`, a
    mapping, or ``None`` to read only the ``AMLDBG_*`` environment variables. Keyword
    overrides (``timeout=``, ``port=``, ``listen_host=``, ``client_ip=``, ``enabled=``, or
    the full flag names) win over both.

    When enabled, the script either listens (default) or, with a client IP, connects out to
    a VS Code that listens there; it prints where to attach and a launch.json entry, waits
    at most the timeout, prints ``Debugger attached = True`` or ``= False`` and returns.
    Nothing amldbg does here raises: a failure gives one warning line and a session with
    ``mode="failed"``. Calling it again returns the first session.
    """
    env = os.environ
    try:
        if not _requested(args, overrides, env):
            # Post-mortem debugging and breakpoint() routing work without a debugger at start.
            _arm_post_mortem(args, overrides, env)
            return _DISABLED
    except ValueError as error:
        _announce.warn(f"remote debugging is off: {error}")
        return DebugSession(mode="failed", reason=str(error))
    try:
        with _lock:
            return _enable(args, overrides, env, progress_interval)
    except Exception as error:  # amldbg's own failure must not stop the host script
        _announce.warn(f"remote debugging failed and is off: {error}")
        return DebugSession(mode="failed", reason=str(error))


def _enable(
    args: Any, overrides: Mapping[str, Any], env: Mapping[str, str], progress_interval: float
) -> DebugSession:
    global _session
    if _session is not None and _session.active:
        _announce.info(
            f"remote debugging is already enabled in this process ({_session.mode} "
            f"{_session.host}:{_session.port}); reusing it"
        )
        return _session
    try:
        settings = resolve_settings(args, env=env, **overrides)
    except ValueError as error:
        _announce.warn(f"remote debugging is off: {error}")
        return DebugSession(mode="failed", reason=str(error))

    topology = _env.topology(env)
    ranks = settings.remote_debug_ranks
    if ranks is not None and topology.rank not in ranks:
        if topology.is_distributed:
            _announce.info(
                f"rank {topology.rank} does not debug (--remote_debug_ranks "
                f"{','.join(map(str, ranks))})"
            )
        return DebugSession(mode="skipped", reason="rank not selected", rank=topology.rank)

    from amldbg import distributed, postmortem

    postmortem.install(settings, topology)
    distributed.announce_watchdogs(settings, topology, env)
    # Without it, debugpy warns on stderr about frozen stdlib modules on every start; the
    # user's own files are never frozen.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        import debugpy
    except ImportError:
        _announce.warn(
            f"remote debugging was requested but debugpy is not installed; install it with: "
            f"{_INSTALL_HINT}. Continuing without a debugger."
        )
        return DebugSession(mode="failed", reason="debugpy is not installed", rank=topology.rank)

    hook = sys.breakpointhook
    try:
        session = _start(debugpy, settings, topology, env, progress_interval)
    finally:
        # debugpy takes over breakpoint(); plain breakpoint() keeps its meaning unless routed.
        postmortem.keep_breakpointhook(hook, settings)
    if session.active:
        _session = session
    return session


def _arm_post_mortem(args: Any, overrides: Mapping[str, Any], env: Mapping[str, str]) -> None:
    try:
        from amldbg import postmortem

        postmortem.arm(args, overrides, env)
    except Exception as error:  # amldbg's own failure must not stop the host script
        _announce.warn(f"post-mortem debugging is off: {error}")


def _existing_debugger() -> bool:
    # pydevd is only in sys.modules when some debugger was started in this process: by
    # `python -m debugpy`, by the inference server's AZUREML_DEBUG_PORT mode, or by an
    # earlier debugpy.listen/connect call.
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        return False
    get = getattr(pydevd, "get_global_debugger", None)
    return bool(get is not None and get() is not None)


def _start(
    debugpy: Any,
    settings: DebugSettings,
    topology: _env.Topology,
    env: Mapping[str, str],
    progress_interval: float,
) -> DebugSession:
    timeout = settings.timeout
    node, how = _env.node_address(env)
    base = {
        "rank": topology.rank,
        "local_rank": topology.local_rank,
        "world_size": topology.world_size,
        "pid": os.getpid(),
        "timeout": _seconds(timeout),
        "cwd": os.getcwd(),
    }
    who = f"rank {topology.rank} (pid {os.getpid()})"
    if topology.is_distributed:
        who = (
            f"rank {topology.rank} of {topology.world_size} (local rank {topology.local_rank}, "
            f"node {node}, pid {os.getpid()})"
        )

    if _existing_debugger():
        _announce.info(f"a debugger is already active in this process; {who} reuses it")
        attached = bool(debugpy.is_client_connected())
        if not attached and timeout > 0:
            attached = _wait(debugpy, timeout, progress_interval, "the active debugger")
        _say_attached(attached)
        return DebugSession(
            mode="reused", attached=attached, rank=topology.rank, reason="debugger already active"
        )

    # Must precede listen/connect: debugpy patches subprocess creation at that point, which
    # costs every child process about a second of start-up.
    debugpy.configure(subProcess=settings.remote_debug_subprocess)

    if settings.remote_debug_client_ip:
        return _connect(debugpy, settings, topology, node, base, who, progress_interval)
    return _listen(debugpy, settings, topology, node, how, base, who, progress_interval)


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _say_attached(attached: bool) -> None:
    # The guides' exact line: people (and `amldbg find`) search the driver log for it.
    _announce.say(f"Debugger attached = {attached}")


def _listen(
    debugpy: Any,
    settings: DebugSettings,
    topology: _env.Topology,
    node: str,
    how: str,
    base: dict[str, Any],
    who: str,
    progress_interval: float,
) -> DebugSession:
    bind = settings.remote_debug_listen_host
    requested = settings.port + topology.local_rank if settings.port else 0
    port, error = _listen_on_free_port(debugpy, bind, requested)
    if port is None:
        _announce.warn(f"could not listen for a debugger on {bind}:{requested}: {error}")
        _announce.endpoint(state="failed", mode="listen", host=node, port=requested, bind=bind, **base)
        _say_attached(False)
        return DebugSession(mode="failed", reason=str(error), bind=bind, rank=topology.rank)
    if requested and port != requested:
        _announce.info(f"port {requested} is taken; listening on port {port} instead")

    host = node if bind in ("0.0.0.0", "::", "") else bind
    _announce.info(f"remote debugging on {who}: listening on {bind}:{port}, attach to {host}:{port}")
    if not _env.is_loopback(bind):
        _announce.warn(
            f"debugpy has no authentication; anyone who can reach port {port} on this node "
            f"can run code in this process"
        )
    timeout = settings.timeout
    _announce.say(f"Timeout for debug connection: {_seconds(timeout)}")
    _announce.say(f"ip_address: {host}")
    _announce.say(f"port: {port}")
    _announce.info(f"node address {node} chosen by {how}")
    _announce.endpoint(
        state="waiting" if timeout > 0 else "listening",
        mode="listen",
        host=host,
        port=port,
        bind=bind,
        **base,
    )
    entry = launch_config.attach_config(
        host, port, remote_root=os.getcwd(), name=f"Azure ML: attach to rank {topology.rank}"
    )
    _announce.info("VS Code launch.json entry (add it to \"configurations\"):")
    _announce.say(launch_config.render(entry))

    attached = bool(debugpy.is_client_connected())
    started = time.monotonic()
    if timeout > 0 and not attached:
        _announce.info(
            f"waiting up to {_seconds(timeout)} s for a debugger to attach to {host}:{port}"
        )
        attached = _wait(debugpy, timeout, progress_interval, f"{host}:{port}")
    waited = time.monotonic() - started
    if timeout > 0 or attached:
        _say_attached(attached)
        _announce.endpoint(
            state="attached" if attached else "not-attached",
            mode="listen",
            host=host,
            port=port,
            bind=bind,
            **base,
        )
    if timeout > 0 and not attached:
        # With timeout 0 the user asked to listen for a client at any time: keep tracing.
        _go_idle(debugpy, settings)
    return DebugSession(
        mode="listen",
        host=host,
        port=port,
        bind=bind,
        attached=attached,
        rank=topology.rank,
        waited=waited,
        reason="client attached" if attached else "no client attached within the timeout",
    )


def _listen_on_free_port(debugpy: Any, bind: str, requested: int) -> tuple[int | None, str]:
    error = "no free port"
    candidates = [0] if requested == 0 else [
        p for p in range(requested, min(requested + PORT_ATTEMPTS, 65536))
    ]
    for port in candidates:
        # Checking first saves spawning debugpy's adapter (about 0.5 s) for a port that is
        # certainly taken; the adapter's own bind can still lose a race, handled below.
        if port and not _env.port_available(bind, port):
            error = f"port {port} is in use"
            continue
        try:
            _, actual = debugpy.listen((bind, port))
            return int(actual), ""
        except RuntimeError as failure:
            error = str(failure)
            if "in use" in error.lower() or "errno 98" in error.lower():
                continue
            return None, error
    return None, error


def _connect(
    debugpy: Any,
    settings: DebugSettings,
    topology: _env.Topology,
    node: str,
    base: dict[str, Any],
    who: str,
    progress_interval: float,
) -> DebugSession:
    client = str(settings.remote_debug_client_ip)
    port = settings.port + topology.local_rank if settings.port else settings.port
    timeout = settings.timeout
    _announce.info(
        f"remote debugging on {who}: connecting to the VS Code listening at {client}:{port}"
    )
    _announce.say(f"Timeout for debug connection: {_seconds(timeout)}")
    _announce.say(f"ip_address: {node}")
    _announce.endpoint(state="connecting", mode="connect", host=client, port=port, **base)
    entry = launch_config.listen_config(
        port, remote_root=os.getcwd(), name=f"Azure ML: listen for rank {topology.rank}"
    )
    _announce.info("VS Code launch.json entry (start it before the script connects):")
    _announce.say(launch_config.render(entry))
    started = time.monotonic()
    # pydevd's TCP connect timeout (10 s by default) must not outlast the user's timeout.
    os.environ.setdefault("PYDEVD_CONNECT_TIMEOUT", str(max(1, min(10, math.ceil(timeout)))))
    try:
        with _pydevd_log_silenced():
            debugpy.connect((client, port))
    except Exception as error:
        # debugpy makes a single attempt and cannot retry in the same process.
        _announce.warn(
            f"could not connect to a VS Code listening at {client}:{port} ({error}); "
            f"debugpy cannot retry in this process, so the script continues without a debugger"
        )
        _say_attached(False)
        _announce.endpoint(state="failed", mode="connect", host=client, port=port, **base)
        return DebugSession(
            mode="failed", host=client, port=port, reason=str(error), rank=topology.rank
        )
    attached = bool(debugpy.is_client_connected())
    left = timeout - (time.monotonic() - started)
    if not attached and left > 0:
        attached = _wait(debugpy, left, progress_interval, f"{client}:{port}")
    _say_attached(attached)
    _announce.endpoint(
        state="attached" if attached else "not-attached", mode="connect", host=client, port=port,
        **base,
    )
    if not attached:
        _go_idle(debugpy, settings)
    return DebugSession(
        mode="connect",
        host=client,
        port=port,
        attached=attached,
        rank=topology.rank,
        waited=time.monotonic() - started,
        reason="client attached" if attached else "the client did not finish attaching in time",
    )


def _pydevd_log_silenced() -> Any:
    """Keep pydevd's own traceback for a refused connection off stderr: amldbg reports the
    failure in its one warning line instead."""
    pydev_log = sys.modules.get("_pydev_bundle.pydev_log")
    context = getattr(pydev_log, "log_context", None)
    if context is None:
        return contextlib.nullcontext()
    return context(0, io.StringIO())


def _wait(debugpy: Any, timeout: float, progress_interval: float, where: str) -> bool:
    """Block until a client has attached (configurationDone) or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    returned = threading.Event()

    def watchdog() -> None:
        next_progress = time.monotonic() + progress_interval
        while not returned.wait(0.05):
            now = time.monotonic()
            if now >= deadline:
                # wait_for_client.cancel() raises before the wait has started and cancels
                # only the wait in progress, so keep cancelling until the wait returned.
                with contextlib.suppress(Exception):
                    debugpy.wait_for_client.cancel()
            elif progress_interval > 0 and now >= next_progress:
                left = max(0, int(round(deadline - now)))
                _announce.info(f"still waiting for a debugger on {where}: {left} s left")
                next_progress += progress_interval

    thread = threading.Thread(target=watchdog, name="amldbg-wait-timeout", daemon=True)
    # pydevd must not trace its own helper threads.
    thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
    thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    thread.start()
    try:
        debugpy.wait_for_client()
    finally:
        returned.set()
        thread.join(5)
    return bool(debugpy.is_client_connected())


def _go_idle(debugpy: Any, settings: DebugSettings) -> None:
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
        _announce.info("no debugger attached; keeping the idle debugger tracing (slower)")
        return
    try:
        debugpy.trace_this_thread(False)
    except Exception as error:
        _announce.warn(f"could not switch off the idle debugger's tracing: {error}")
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
