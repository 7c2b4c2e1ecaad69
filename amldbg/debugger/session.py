"""The debug session of this process: what was started, whether a debugger already runs,
and the bounded wait for a client that every path shares.

debugpy is passed in by the callers, which import it only when debugging was asked for.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

from amldbg.core import announce, forksafe

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
start_lock = forksafe.rlock()


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
    note_debugger()


def _global_debugger() -> Any:
    # pydevd is only in sys.modules when some debugger was started in this process (or in
    # the process it was forked from): by `python -m debugpy`, by the inference server's
    # AZUREML_DEBUG_PORT mode, or by an earlier debugpy.listen/connect call.
    pydevd = sys.modules.get("pydevd")
    get = getattr(pydevd, "get_global_debugger", None)
    if get is None:
        return None
    try:
        return get()
    except Exception:  # best effort: pydevd half set up counts as no debugger
        return None


# (pid, id of pydevd's debugger object) of the debugger amldbg started or reused last.
_owner: tuple[int, int] | None = None


def note_debugger() -> None:
    """Record that the debugger now running belongs to this process."""
    global _owner
    py_db = _global_debugger()
    if py_db is not None:
        _owner = (os.getpid(), id(py_db))


def inherited_debugger() -> bool:
    """True in a forked child whose only debugger is its parent's: the same pydevd object,
    whose threads and sockets stayed in the parent. It cannot be used or restarted here."""
    owner = _owner
    py_db = _global_debugger()
    return (
        py_db is not None
        and owner is not None
        and owner[0] != os.getpid()
        and owner[1] == id(py_db)
    )


def existing_debugger() -> bool:
    """True when a debugger (pydevd) runs in this process, whoever started it.

    The debugger of the process this one was forked from does not count (see
    :func:`inherited_debugger`); a debugger that pydevd set up again in the child (debugpy's
    subprocess support) does.
    """
    return _global_debugger() is not None and not inherited_debugger()


#: ``300`` for ``300.0``: how the guides' lines show a timeout (one rule for every line).
seconds = announce.seconds


def say_attached(attached: bool) -> None:
    """Write the guides' ``Debugger attached = True|False`` line."""
    # The guides' exact line: people (and `amldbg find`) search the driver log for it.
    announce.say(f"Debugger attached = {attached}")


def wait_for_client(debugpy: Any, timeout: float, progress_interval: float, where: str) -> bool:
    """Block until a client has attached (configurationDone) or ``timeout`` seconds passed.

    Every caller waits on its own deadline: the main thread at start-up, a thread that
    crashed with post-mortem debugging on, ``amldbg.breakpoint(wait=True)``. debugpy's own
    ``wait_for_client()`` has no timeout and a single process-wide ``cancel``, which would
    end another thread's wait; this polls ``debugpy.is_client_connected()`` (pydevd's
    configurationDone flag, what ``wait_for_client`` waits for) instead, and processes
    pydevd's queued commands for this thread between polls as pydevd's own wait does.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    next_progress = time.monotonic() + progress_interval
    wake = threading.Event()
    py_db = _global_debugger()
    process = getattr(py_db, "process_internal_commands", None)
    while True:
        try:
            if debugpy.is_client_connected():
                return True
        except Exception:  # best effort: debugpy torn down (interpreter exiting) means nobody
            return False
        now = time.monotonic()
        if now >= deadline:
            return False
        if progress_interval > 0 and now >= next_progress:
            left = max(0, int(round(deadline - now)))
            announce.info(f"still waiting for a debugger on {where}: {left} s left")
            next_progress += progress_interval
        if process is not None:
            try:
                process()
            except Exception:  # pydevd's internals moved: polling alone still works
                process = None
        wake.wait(min(0.05, max(0.0, deadline - now)))
