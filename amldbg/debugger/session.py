"""The debug session of this process: what was started, whether a debugger already runs,
and the bounded wait for a client that every path shares.

debugpy is passed in by the callers, which import it only when debugging was asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from typing import Any

from amldbg.core import announce

#: How often a wait repeats where to attach and how long is left, in seconds.
PROGRESS_INTERVAL = 30.0

_ACTIVE_MODES = ("listen", "connect", "reused")
INSTALL_HINT = "python -m pip install debugpy  (or: python -m pip install 'amldbg[debug]')"


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


DISABLED = DebugSession(mode="disabled", reason="remote debugging is off")
_session: DebugSession | None = None
_session_pid = 0
#: Held while a debugger is being started, so two threads never start two.
start_lock = threading.RLock()


def current_session() -> DebugSession | None:
    """The session started in this process by :func:`amldbg.enable_remote_debug`, if any.

    A forked child has no session of its own: the parent's listener and client belong to
    the parent, so the child sees ``None``.
    """
    session = _session
    if session is None or _session_pid != os.getpid():
        return None
    return session


def set_current(session: DebugSession) -> None:
    """Record ``session`` as this process's session."""
    global _session, _session_pid
    _session = session
    _session_pid = os.getpid()


def forget() -> None:
    """Forget this process's session (tests use it)."""
    global _session
    _session = None


def existing_debugger() -> bool:
    # pydevd is only in sys.modules when some debugger was started in this process: by
    # `python -m debugpy`, by the inference server's AZUREML_DEBUG_PORT mode, or by an
    # earlier debugpy.listen/connect call.
    """True when a debugger (pydevd) already runs in this process, whoever started it."""
    pydevd = sys.modules.get("pydevd")
    if pydevd is None:
        return False
    get = getattr(pydevd, "get_global_debugger", None)
    return bool(get is not None and get() is not None)


def seconds(value: float) -> float | int:
    """``300`` for ``300.0``, ``2.5`` for ``2.5``: how the guides' lines show a timeout."""
    return int(value) if float(value).is_integer() else value


def say_attached(attached: bool) -> None:
    """Write the guides' ``Debugger attached = True|False`` line."""
    # The guides' exact line: people (and `amldbg find`) search the driver log for it.
    announce.say(f"Debugger attached = {attached}")


def wait_for_client(debugpy: Any, timeout: float, progress_interval: float, where: str) -> bool:
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
                announce.info(f"still waiting for a debugger on {where}: {left} s left")
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


