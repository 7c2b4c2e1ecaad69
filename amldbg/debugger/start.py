"""Starting debugpy: listen (or connect out), announce where to attach, wait at most the
timeout, and give a process nobody attached to its speed back.

:func:`start` is called with settings already resolved (by :func:`amldbg.enable_remote_debug`,
the post-mortem hooks or :func:`amldbg.breakpoint`); it never resolves them again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import socket
import sys
import threading
import time
from typing import Any, Mapping

from amldbg.core import announce, environment, threads, vscode
from amldbg.core.settings import DebugSettings
from amldbg.debugger import idle
from amldbg.debugger import session as sessions
from amldbg.debugger.session import DebugSession, say_attached, seconds, wait_for_client

#: How many ports after the requested one are tried when it is taken.
PORT_ATTEMPTS = 20


def start(
    settings: DebugSettings,
    topology: environment.Topology,
    *,
    progress_interval: float = sessions.PROGRESS_INTERVAL,
    env: Mapping[str, str] | None = None,
) -> DebugSession:
    """Start debugpy as ``settings`` say (the rank is assumed selected), or reuse the debugger
    this process already runs; announce, wait at most the timeout, and return the session.

    A session already started in this process is returned as it is. Failures of amldbg's
    own (debugpy missing, no free port, nobody listening for a reverse connect) give one
    warning line and a session with ``mode="failed"``. ``sys.breakpointhook``, which
    debugpy replaces, is left as it was before.
    """
    env = os.environ if env is None else env
    with sessions.start_lock:
        current = sessions.current_session()
        if current is not None and current.active:
            announce.info(
                f"remote debugging is already enabled in this process ({current.mode} "
                f"{current.host}:{current.port}); reusing it"
            )
            return current
        if sessions.inherited_debugger():
            announce.warn(
                f"this process (pid {os.getpid()}) was forked from a process that runs a "
                f"debugger; a forked child cannot use or restart its parent's debugger "
                f"(start the parent with --remote_debug_subprocess to debug children). "
                f"Continuing without a debugger."
            )
            return DebugSession(
                mode="failed", reason="forked from a debugged process", rank=topology.rank
            )
        # Without it, debugpy warns on stderr about frozen stdlib modules on every start;
        # the user's own files are never frozen.
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        try:
            import debugpy
        except ImportError:
            announce.warn(
                f"remote debugging was requested but debugpy is not installed; install it "
                f"with: {sessions.INSTALL_HINT}. Continuing without a debugger."
            )
            return DebugSession(mode="failed", reason="debugpy is not installed", rank=topology.rank)
        hook = sys.breakpointhook
        try:
            session = _start(debugpy, _Context.of(settings, topology, env, progress_interval))
        finally:
            # debugpy takes over breakpoint(); plain breakpoint() keeps the meaning it had
            # (Python's own, PYTHONBREAKPOINT, or amldbg's routing when that was asked for).
            sys.breakpointhook = hook
        if session.active:
            sessions.set_current(session)
        return session


@dataclasses.dataclass(frozen=True)
class _Context:
    """Who starts a debugger, and where: what every line of one start shares."""

    settings: DebugSettings
    topology: environment.Topology
    progress_interval: float
    #: This node's address as a client elsewhere reaches it, and the rule that chose it.
    node: str
    how: str
    #: How the lines name this process: ``rank 0 (pid 12)``, more when distributed.
    who: str
    #: The script's working directory: the remote root of the launch.json entry.
    cwd: str
    #: The fields every ``amldbg endpoint:`` line of this start carries.
    fields: Mapping[str, Any]

    @classmethod
    def of(
        cls,
        settings: DebugSettings,
        topology: environment.Topology,
        env: Mapping[str, str],
        progress_interval: float,
    ) -> _Context:
        """The context of this process, looked up once."""
        node, how = environment.node_address(env)
        pid = os.getpid()
        cwd = os.getcwd()
        who = f"rank {topology.rank} (pid {pid})"
        if topology.is_distributed:
            who = (
                f"rank {topology.rank} of {topology.world_size} (local rank "
                f"{topology.local_rank}, node {node}, pid {pid})"
            )
        fields = {
            "rank": topology.rank,
            "local_rank": topology.local_rank,
            "world_size": topology.world_size,
            "pid": pid,
            "timeout": seconds(settings.timeout),
            "cwd": cwd,
        }
        return cls(settings, topology, progress_interval, node, how, who, cwd, fields)

    @property
    def port(self) -> int:
        """The port this process debugs on (:func:`amldbg.core.environment.debug_port`)."""
        return environment.debug_port(self.settings.port, self.topology.local_rank)


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """A debug endpoint as its ``amldbg endpoint:`` lines and its session describe it."""

    mode: str  # "listen" or "connect"
    host: str  # the address a client attaches to (listen) or listens at (connect)
    port: int
    bind: str | None = None  # the address listened on, in listen mode

    def announce(self, context: _Context, state: str) -> None:
        """Write the endpoint's ``amldbg endpoint:`` line in ``state``."""
        listened = {} if self.bind is None else {"bind": self.bind}
        announce.endpoint(
            state=state, mode=self.mode, host=self.host, port=self.port, **listened,
            **context.fields,
        )


@dataclasses.dataclass(frozen=True)
class _Opened:
    """An endpoint a mode opened and announced, and how the wait that follows goes."""

    endpoint: _Endpoint
    #: When the timeout started to count.
    started: float
    #: The session's reason when no client attached.
    unattached: str
    #: False when the process listens for a client at any time (listen, timeout 0): no
    #: wait, no ``Debugger attached`` line unless one is there, no idling.
    waits: bool = True
    #: The line written before the wait starts, if any.
    wait_note: str | None = None


def _start(debugpy: Any, context: _Context) -> DebugSession:
    """The one story of a start: reuse a running debugger, or open an endpoint in the
    settings' mode (listen, or connect out to a client) and wait for a client there."""
    if sessions.existing_debugger():
        announce.info(f"a debugger is already active in this process; {context.who} reuses it")
        attached = bool(debugpy.is_client_connected())
        timeout = context.settings.timeout
        if not attached and timeout > 0:
            attached = wait_for_client(
                debugpy, timeout, context.progress_interval, "the active debugger"
            )
        say_attached(attached)
        return DebugSession(
            mode="reused", attached=attached, rank=context.topology.rank,
            reason="debugger already active",
        )

    # Must precede listen/connect: debugpy patches subprocess creation at that point, which
    # costs every child process about a second of start-up.
    debugpy.configure(subProcess=context.settings.remote_debug_subprocess)

    open_endpoint = _connect if context.settings.remote_debug_client_ip else _listen
    opened = open_endpoint(debugpy, context)
    if isinstance(opened, DebugSession):
        return opened  # failed, and said so
    return _wait_for_client(debugpy, context, opened)


def _listen(debugpy: Any, context: _Context) -> _Opened | DebugSession:
    """Listen mode's piece: listen on a free port from the requested one and announce it."""
    settings = context.settings
    bind = settings.remote_debug_listen_host
    requested = context.port
    address, error = _bindable_address(bind, min(10.0, max(1.0, settings.timeout)))
    port = None
    if address is not None:
        port, error = _listen_on_free_port(debugpy, address, requested)
    if port is None:
        announce.warn(f"could not listen for a debugger on {bind}:{requested}: {error}")
        _Endpoint("listen", context.node, requested, bind).announce(context, "failed")
        say_attached(False)
        return DebugSession(mode="failed", reason=str(error), bind=bind, rank=context.topology.rank)
    if requested and port != requested:
        announce.info(f"port {requested} is taken; listening on port {port} instead")

    host = context.node if bind in ("0.0.0.0", "::", "") else bind
    endpoint = _Endpoint("listen", host, port, bind)
    # With timeout 0 the user asked to listen for a client at any time: keep tracing.
    waits = settings.timeout > 0
    _say_where(
        context, f"listening on {bind}:{port}, attach to {host}:{port}", host,
        warning=exposure_warning(bind, port),
    )
    announce.say(f"port: {port}")
    announce.info(f"node address {context.node} chosen by {context.how}")
    endpoint.announce(context, "waiting" if waits else "listening")
    _say_entry(
        vscode.attach_config(
            host, port, remote_root=context.cwd,
            name=f"Azure ML: attach to rank {context.topology.rank}",
        ),
        'add it to "configurations"',
    )
    return _Opened(
        endpoint,
        started=time.monotonic(),
        unattached="no client attached within the timeout",
        waits=waits,
        wait_note=(
            f"waiting up to {seconds(settings.timeout)} s for a debugger to attach to "
            f"{host}:{port}"
        ),
    )


def _wait_for_client(debugpy: Any, context: _Context, opened: _Opened) -> DebugSession:
    """The end both modes share: wait what is left of the timeout for a client, say whether
    one attached, and give a process nobody attached to its speed back."""
    endpoint = opened.endpoint
    attached = bool(debugpy.is_client_connected())
    left = context.settings.timeout - (time.monotonic() - opened.started)
    if opened.waits and not attached and left > 0:
        if opened.wait_note:
            announce.info(opened.wait_note)
        attached = wait_for_client(
            debugpy, left, context.progress_interval, f"{endpoint.host}:{endpoint.port}"
        )
    waited = time.monotonic() - opened.started
    if opened.waits or attached:
        say_attached(attached)
        endpoint.announce(context, "attached" if attached else "not-attached")
    if opened.waits and not attached:
        idle.go_idle(debugpy, context.settings)
    return DebugSession(
        mode=endpoint.mode,
        host=endpoint.host,
        port=endpoint.port,
        bind=endpoint.bind,
        attached=attached,
        rank=context.topology.rank,
        waited=waited,
        reason="client attached" if attached else opened.unattached,
    )


def _say_where(context: _Context, doing: str, address: str, warning: str | None = None) -> None:
    """Say what this process does, then the guides' lines: the timeout and ``ip_address``."""
    announce.info(f"remote debugging on {context.who}: {doing}")
    if warning:
        announce.warn(warning)
    announce.say(f"Timeout for debug connection: {seconds(context.settings.timeout)}")
    announce.say(f"ip_address: {address}")


def _say_entry(entry: dict[str, Any], note: str) -> None:
    """Write the VS Code launch.json entry that reaches the endpoint, and what to do with it."""
    announce.info(f"VS Code launch.json entry ({note}):")
    announce.say(vscode.render(entry))


def exposure_warning(bind: str, port: int) -> str | None:
    """The warning for a listener other machines can reach (debugpy has no authentication)."""
    if environment.is_loopback(bind):
        return None
    return (
        f"debugpy has no authentication; anyone who can reach port {port} on this node "
        f"can run code in this process"
    )


def _bindable_address(host: str, limit: float) -> tuple[str | None, str]:
    """``host`` as a numeric address this machine can listen on, looked up once.

    A host name is resolved once, on a helper thread given at most ``limit`` seconds (a
    lookup can hang for tens of seconds on a broken resolver), instead of once per tried
    port. An address that belongs to another machine (the guides' pitfall: the VS Code
    client's IP passed as the listen address) is reported as such, not as "port in use".
    """
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        numeric = host
    except OSError:
        found: list[Any] = []

        def lookup() -> None:
            try:
                found.append(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
            except OSError as error:
                found.append(error)

        thread = threading.Thread(target=lookup, name="amldbg-resolve", daemon=True)
        thread.start()
        thread.join(limit)
        if not found:
            return None, f"looking up {host!r} took longer than {seconds(limit)} s"
        if isinstance(found[0], OSError):
            return None, f"{host!r} does not resolve ({found[0]})"
        numeric = str(found[0][0][4][0])
    if not environment.port_available(numeric, 0):
        return None, (
            f"{host} is not an address of this machine; listen on 0.0.0.0 (the default), or "
            f"give the VS Code machine's address as --remote_debug_client_ip to connect out to it"
        )
    return numeric, ""


def _listen_on_free_port(debugpy: Any, bind: str, requested: int) -> tuple[int | None, str]:
    error = "no free port"
    candidates = [0] if requested == 0 else [
        p for p in range(requested, min(requested + PORT_ATTEMPTS, 65536))
    ]
    for port in candidates:
        # Checking first saves spawning debugpy's adapter (about 0.5 s) for a port that is
        # certainly taken; the adapter's own bind can still lose a race, handled below.
        if port and not environment.port_available(bind, port):
            error = f"port {port} is in use"
            continue
        try:
            with threads.unshielded():  # the adapter it starts inherits this thread's mask
                _, actual = debugpy.listen((bind, port))
            return int(actual), ""
        except RuntimeError as failure:
            error = str(failure)
            if "in use" in error.lower() or "errno 98" in error.lower():
                continue
            return None, error
    return None, error


def _connect(debugpy: Any, context: _Context) -> _Opened | DebugSession:
    """Connect mode's piece: announce, then connect out to the VS Code listening at the
    client address."""
    client = str(context.settings.remote_debug_client_ip)
    endpoint = _Endpoint("connect", client, context.port)
    port = endpoint.port
    timeout = context.settings.timeout
    _say_where(context, f"connecting to the VS Code listening at {client}:{port}", context.node)
    endpoint.announce(context, "connecting")
    _say_entry(
        vscode.listen_config(
            port, remote_root=context.cwd, name=f"Azure ML: listen for rank {context.topology.rank}"
        ),
        "start it before the script connects",
    )
    started = time.monotonic()
    # pydevd's TCP connect timeout (10 s by default) must not outlast the user's timeout.
    os.environ.setdefault("PYDEVD_CONNECT_TIMEOUT", str(max(1, min(10, math.ceil(timeout)))))
    try:
        _connect_within(debugpy, client, port, timeout)
    except Exception as error:
        # Not a guard: a refused or silent peer is an expected outcome with its own warning,
        # endpoint line and failed session. debugpy makes a single attempt and cannot retry.
        announce.warn(
            f"could not connect to a VS Code listening at {client}:{port} ({error}); "
            f"debugpy cannot retry in this process, so the script continues without a debugger"
        )
        say_attached(False)
        endpoint.announce(context, "failed")
        return DebugSession(
            mode="failed", host=client, port=port, reason=str(error), rank=context.topology.rank
        )
    return _Opened(endpoint, started=started, unattached="the client did not finish attaching in time")


class _ConnectTimeout(Exception):
    pass


def _connect_within(debugpy: Any, client: str, port: int, timeout: float) -> None:
    """``debugpy.connect((client, port))``, given up after ``timeout`` seconds.

    pydevd connects and then waits, without a time limit, for the client to say "ready to
    run": a peer that accepts the TCP connection but never speaks DAP (a port forward with
    nothing behind it, another program on the port) would hold the script for ever. The
    connect runs on a helper thread; when it has not finished in time the script goes on
    without a debugger and the thread is left behind (daemon, blocked on that socket).
    """
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            with _pydevd_log_silenced():
                debugpy.connect((client, port))
            outcome.append(None)
        except BaseException as error:  # handed to the waiting thread
            outcome.append(error)

    thread = threading.Thread(target=connect, name="amldbg-connect", daemon=True)
    thread.start()
    thread.join(max(0.1, timeout))
    if not outcome:
        raise _ConnectTimeout(
            f"connected, but the peer did not start a debug session within "
            f"{seconds(timeout)} s (is it a VS Code listening with the printed entry?)"
        )
    if outcome[0] is not None:
        raise outcome[0]


def _pydevd_log_silenced() -> Any:
    """Keep pydevd's own traceback for a refused connection off stderr: amldbg reports the
    failure in its one warning line instead."""
    pydev_log = sys.modules.get("_pydev_bundle.pydev_log")
    context = getattr(pydev_log, "log_context", None)
    if context is None:
        return contextlib.nullcontext()
    return context(0, io.StringIO())
