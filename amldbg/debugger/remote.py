"""``amldbg.enable_remote_debug``: the block the Azure ML guides have users paste into every
script, as one call.

It keeps the guides' log lines (``Timeout for debug connection: N``, ``ip_address: A``,
``Debugger attached = True|False``) and fixes what goes wrong with the hand-written
version: the wait honours its timeout, the lines are flushed, the address is one a client
can reach, a taken port or a missing debugpy does not stop the script, and a process nobody
attached to runs at full speed afterwards.

The settings are resolved once here and passed down (:mod:`.start`, :mod:`.postmortem`,
:mod:`.breakpoints`, :mod:`.watchdogs`) and remembered for helpers called later. debugpy is
imported only when debugging is enabled: its first API call replaces ``sys.breakpointhook``
and starts threads, so a script with debugging off never touches it.
"""

from __future__ import annotations

import os
from typing import Any

from amldbg.core import announce, environment
from amldbg.core import settings as settings_module
from amldbg.core.guard import describe, guard
from amldbg.core.settings import DebugSettings
from amldbg.debugger import breakpoints, postmortem, start, watchdogs
from amldbg.debugger.session import DISABLED, PROGRESS_INTERVAL, DebugSession

__all__ = ["DebugSession", "enable_remote_debug", "enable_with"]


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
    An invalid value never turns debugging on. Nothing amldbg does here raises: a failure
    gives one warning line and a session with ``mode="failed"``. Calling it again returns
    the first session.
    """
    try:
        settings = settings_module.resolve_settings(args, **overrides)
    except (ValueError, TypeError) as error:
        announce.warn(f"remote debugging is off: {error}")
        return DebugSession(mode="failed", reason=str(error))
    return enable_with(settings, progress_interval=progress_interval)


def enable_with(
    settings: DebugSettings,
    *,
    progress_interval: float = PROGRESS_INTERVAL,
    topology: environment.Topology | None = None,
) -> DebugSession:
    """:func:`enable_remote_debug` for settings already resolved (the entry-script hooks)."""
    try:
        return _enable(settings, progress_interval, topology)
    except Exception as error:  # not a guard: a failed session comes back, each call warns
        announce.warn(f"remote debugging failed and is off: {describe(error)}")
        return DebugSession(mode="failed", reason=str(error))


def _enable(
    settings: DebugSettings, progress_interval: float, topology: environment.Topology | None
) -> DebugSession:
    wanted = (
        settings.remote_debug
        or settings.remote_debug_post_mortem
        or settings.remote_debug_route_breakpoint
    )
    diagnostics = settings.remote_debug_stall_timeout > 0 or settings.remote_debug_on_demand
    if not wanted and not diagnostics:
        return DISABLED
    topology = topology or environment.topology()
    settings_module.remember(settings)
    # Every rank, before the rank selection below: --remote_debug_ranks selects debuggers,
    # not diagnostics, and neither needs debugpy or --remote_debug. A rank about to wait for
    # a client arms its stall watchdog after the wait: waiting there is not a stall.
    waits_first = settings.remote_debug and settings.debugs_rank(topology.rank)
    if diagnostics:
        _arm_diagnostics(settings, topology, arm_stall=not waits_first)
    if not wanted:
        return DISABLED
    if not settings.debugs_rank(topology.rank):
        if settings.remote_debug_post_mortem:
            # The crash report is written on every rank; only selected ranks wait for a client.
            _arm_crash_reports()
        if topology.is_distributed:
            ranks = ",".join(map(str, settings.remote_debug_ranks or ()))
            announce.info(f"rank {topology.rank} does not debug (--remote_debug_ranks {ranks})")
        if not settings.remote_debug:
            return DISABLED
        return DebugSession(mode="skipped", reason="rank not selected", rank=topology.rank)
    # Post-mortem debugging and breakpoint() routing work without a debugger at start: both
    # are armed before the wait, so a failure during it is caught too.
    if settings.remote_debug_route_breakpoint:
        breakpoints.route_breakpoints()
    if settings.remote_debug_post_mortem:
        postmortem.install(settings, topology)
    if not settings.remote_debug:
        return DISABLED
    watchdogs.announce_watchdogs(settings, topology, os.environ)
    session = start.start(settings, topology, progress_interval=progress_interval)
    if settings.remote_debug_stall_timeout > 0:
        _arm_diagnostics(settings, topology, arm_on_demand=False)
    return session


def _arm_diagnostics(
    settings: DebugSettings,
    topology: environment.Topology,
    *,
    arm_stall: bool = True,
    arm_on_demand: bool = True,
) -> None:
    """Arm the stall report and the on-demand triggers; a failure is one warning line."""
    if arm_stall and settings.remote_debug_stall_timeout > 0:
        with guard("the stall report is off"):
            from amldbg.diagnostics import stall

            stall.arm(settings.remote_debug_stall_timeout)
    if arm_on_demand and settings.remote_debug_on_demand:
        with guard("on-demand triggers are off"):
            from amldbg.debugger import on_demand as triggers

            triggers.arm(settings, topology)


def _arm_crash_reports() -> None:
    with guard("crash reports are off"):
        from amldbg.diagnostics import crash

        crash.install(watch_child_exit=True)
