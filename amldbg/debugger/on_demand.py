"""On-demand triggers, ``--remote_debug_on_demand``: ``kill -USR1 PID`` writes the stacks of
every thread, ``kill -USR2 PID`` starts the debugger without waiting.

Off unless asked for. Armed, it costs next to nothing while idle: amldbg's signal thread
waiting in ``select()``, which wakes every :data:`~amldbg.core.signalpipe.IDLE_CHECK` seconds
to check the handlers.

A signal reaches amldbg while the main thread is blocked in C (a collective, a queue)
through :mod:`amldbg.core.signalpipe`: its thread acts at once; the Python handler acts
itself only when that pipe is not the wakeup fd (an event loop took it, a forked child).
Without the Python handler, SIGUSR1's default action would end the process.

Only while amldbg owns the signal: when the script or a framework installs its own handler
after amldbg (Lightning's requeue handler, submitit's preemption handler do so during
``fit``), amldbg stops acting on that signal at once, says so in one line (the reader checks
every :data:`~amldbg.core.signalpipe.IDLE_CHECK` seconds and at every signal), and takes it up again, with one
more line, if that handler is later put back to amldbg's. A SIGUSR2 that is no longer amldbg's
never starts a debugger.

What amldbg never does: replace a handler that the script or a framework installed (it
checks for ``SIG_DFL`` first and says which trigger is left), or install anything in the
inference server's gunicorn processes (gunicorn uses SIGUSR1 to reopen logs and SIGUSR2 to
upgrade itself). A forked child (a data loader worker) keeps the handler and handles a
signal sent to its own pid in its main thread; a child started with exec starts clean.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from typing import Any

from amldbg.core import announce, environment, forksafe, runtime, signalpipe
from amldbg.core.guard import guard
from amldbg.core.settings import DebugSettings
from amldbg.diagnostics import collectives, registry, stacks

__all__ = ["arm", "disarm", "is_armed", "owned_signals"]

_lock = forksafe.lock()
# Signals amldbg installed but whose handler someone else has replaced since: not acted on.
_lost: set[int] = set()
_settings: DebugSettings | None = None
_installed: dict[int, Any] = {}  # signal number -> the handler that was there before


def _signals() -> dict[int, str]:
    found = {}
    for name in ("SIGUSR1", "SIGUSR2"):
        number = getattr(signal, name, None)
        if number is not None:
            found[int(number)] = name
    return found


def arm(settings: DebugSettings, topology: environment.Topology | None = None) -> bool:
    """Install the SIGUSR1/SIGUSR2 triggers as ``settings`` say; True when at least one is.

    Must run in the main thread (Python's rule for signal handlers). Idempotent; never
    raises: a failure is one warning line.
    """
    global _settings
    # Each call's failure is news (a call is rare), so every one warns.
    with guard("on-demand triggers are off", once=False):
        if not settings.remote_debug_on_demand:
            return False
        topology = topology or environment.topology()
        with _lock:
            _settings = settings
            if _installed:
                return True
            return _arm(topology)
    return False


def _arm(topology: environment.Topology) -> bool:
    wanted = _signals()
    if not wanted:
        announce.info("on-demand triggers are off: this platform has no SIGUSR1/SIGUSR2")
        return False
    if "gunicorn.workers.base" in sys.modules or runtime.gunicorn_worker() is not None:
        announce.info(
            "on-demand signals are off in the inference server (gunicorn uses SIGUSR1 and "
            "SIGUSR2); use --remote_debug_stall_timeout for stacks and AMLDBG_REMOTE_DEBUG=1 "
            "with a restart for a debugger"
        )
        return False
    if threading.current_thread() is not threading.main_thread():
        announce.warn(
            "on-demand triggers are off: they must be armed from the main thread "
            "(call amldbg.enable_remote_debug there)"
        )
        return False
    for number, name in wanted.items():
        current = signal.getsignal(number)
        if current is not signal.SIG_DFL:
            what = "stack dumps" if name == "SIGUSR1" else "starting the debugger"
            other = "--remote_debug_stall_timeout" if name == "SIGUSR1" else "--remote_debug"
            announce.info(
                f"{name} already has a handler (installed by the script or a framework); "
                f"amldbg leaves it alone, so {what} on demand is off: use {other} instead"
            )
            continue
        signal.signal(number, _handler)
        _installed[number] = current
    if not _installed:
        return False
    stacks.resolve_output_dir()
    collectives.prepare()
    for number in _installed:
        signalpipe.listen(number, _on_pipe_signal, on_idle=_check_ownership)
    names = {_signals()[number]: number for number in _installed}
    actions = []
    if "SIGUSR1" in names:
        actions.append(f"kill -USR1 {os.getpid()} writes the stacks")
    if "SIGUSR2" in names:
        actions.append(f"kill -USR2 {os.getpid()} starts the debugger")
    announce.info(f"on-demand triggers armed on rank {topology.rank}: " + "; ".join(actions))
    registry.register(names)  # what `amldbg signal` reads; never raises
    return True


def _on_pipe_signal(number: int) -> None:
    # On amldbg's signal thread, at once, even while the main thread is blocked in C.
    if number in _installed and _owns(number):
        _act(number)


def _owns(number: int) -> bool:
    """True while amldbg's handler is the one installed for ``number``; says once when that
    changes, either way."""
    try:
        ours = signal.getsignal(number) is _handler
    except (OSError, ValueError):
        ours = False
    name = _signals().get(number, str(number))
    if not ours and number not in _lost:
        _lost.add(number)
        what = "stack dumps" if name == "SIGUSR1" else "starting the debugger"
        announce.info(
            f"{name} now has another handler (installed by the script or a framework after "
            f"amldbg): amldbg no longer acts on it, so {what} on demand is off"
        )
        registry.update(owned_signals())
    elif ours and number in _lost:
        _lost.discard(number)
        announce.info(f"{name} is amldbg's again: on-demand triggers act on it")
        registry.update(owned_signals())
    return ours


def _check_ownership() -> None:
    for number in list(_installed):
        _owns(number)


def owned_signals() -> list[str]:
    """The names of the signals amldbg acts on now (``SIGUSR1``, ``SIGUSR2``)."""
    names = _signals()
    return [names[number] for number in sorted(_installed) if number not in _lost and number in names]


def _handler(number: int, frame: Any) -> None:
    # Runs in the main thread. A handler installed after amldbg's that calls it on (chains
    # it) does not make the signal amldbg's again.
    if not _owns(number):
        return
    # When the pipe is still the wakeup fd, the signal thread has already acted (or is
    # acting) on this signal.
    if signalpipe.delivers():
        return
    _act(number)


def _act(number: int) -> None:
    # Every failed trigger warns, not only the first: each is a user's request.
    with guard("on-demand trigger failed", once=False):
        name = _signals().get(number, str(number))
        if name == "SIGUSR1":
            stacks.write_dump(
                "signal", "SIGUSR1 (on demand)", skip_threads=_own_threads(),
                # The main thread may be inside _handler right now (Python runs it there when
                # the signal interrupts a blocking call): show the frame it interrupted.
                skip_code=(_handler.__code__, _act.__code__),
            )
        elif name == "SIGUSR2":
            _start_debugger()


def _own_threads() -> tuple[int, ...]:
    ident = signalpipe.reader_ident()
    return (ident,) if ident is not None else ()


def _start_debugger() -> None:
    from amldbg.debugger import session as sessions
    from amldbg.debugger import start

    settings = _settings
    if settings is None:
        return
    topology = environment.topology()
    announce.info(f"SIGUSR2: starting the debugger on rank {topology.rank} (pid {os.getpid()})")
    if not settings.debugs_rank(topology.rank):
        ranks = ",".join(map(str, settings.remote_debug_ranks or ()))
        announce.info(f"rank {topology.rank} does not debug (--remote_debug_ranks {ranks})")
        return
    current = sessions.current_session()
    if current is not None and current.active:
        announce.info(
            f"the debugger already runs ({current.mode} {current.host}:{current.port}); "
            f"attach there"
        )
        return
    # Listen without waiting: the script carries on, and the debugger keeps tracing so that
    # a client attaching later stops at its breakpoints in the running loop.
    start.start(
        dataclasses.replace(settings, remote_debug=True, remote_debug_connection_timeout=0),
        topology,
    )


def disarm() -> None:
    """Restore the handlers amldbg replaced and stop listening on the signal pipe (tests)."""
    with _lock:
        if threading.current_thread() is threading.main_thread():
            for number, previous in list(_installed.items()):
                try:
                    if signal.getsignal(number) is _handler:
                        signal.signal(number, previous)
                except (OSError, ValueError):
                    pass
        for number in list(_installed):
            signalpipe.forget(number)
        _installed.clear()
        _lost.clear()
        registry.unregister()


def is_armed() -> bool:
    """True when at least one on-demand signal is handled by amldbg."""
    return bool(_installed)
