"""Watchdog timeouts that can kill a job while a debugger holds one of its processes.

While a client keeps one rank stopped at a breakpoint, its peers wait in their next
collective, and the platform's watchdogs count that time as a hang:

* ``torch.distributed``: a collective that waits longer than the process group's timeout
  fails (``init_process_group(timeout=...)``; 30 minutes by default for gloo, 10 for NCCL).
* ParallelRunStep: a ``run(mini_batch)`` call longer than ``run_invocation_timeout``
  (``ParallelRunConfig``, 60 s by default) is abandoned and retried.
* The inference server's gunicorn kills a worker that has not answered for ``WORKER_TIMEOUT``
  seconds (environment variable of the deployment, 300 by default).

The first is set in the script, so :func:`process_group_timeout` and :func:`watchdog_timeout`
lengthen it while debugging when ``--remote_debug_watchdog_timeout`` asks for it. The other
two are fixed before the script starts (in the pipeline definition or the deployment), so
amldbg can only tell about them. Nothing here imports torch unless
:func:`process_group_timeout` is called without a default.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from typing import Any, Mapping, TypeVar

from amldbg.core import announce, environment
from amldbg.core import settings as settings_module
from amldbg.core.settings import DebugSettings

T = TypeVar("T", int, float, datetime.timedelta)

#: torch.distributed's default process-group timeout for non-NCCL backends (gloo, mpi).
TORCH_DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
#: The inference server's default gunicorn worker timeout (WORKER_TIMEOUT), in seconds.
GUNICORN_DEFAULT_TIMEOUT = 300


def _lengthen_to(settings: DebugSettings) -> float:
    """Seconds the watchdogs should allow while debugging; 0 when nothing is to change."""
    debugging = settings.remote_debug or settings.remote_debug_post_mortem
    return settings.remote_debug_watchdog_timeout if debugging else 0.0


def watchdog_timeout(default: T, args: Any = None, **overrides: Any) -> T:
    """Return ``default``, or a longer timeout while debugging.

    When remote debugging (or post-mortem debugging) is enabled for the job and
    ``--remote_debug_watchdog_timeout`` / ``AMLDBG_REMOTE_DEBUG_WATCHDOG_TIMEOUT`` is above 0,
    returns the larger of ``default`` and that many seconds, in the type of ``default``
    (``int`` or ``float`` seconds, or a ``datetime.timedelta``); otherwise ``default``
    unchanged. Every rank gets the same answer whichever ranks debug, because the ranks
    that are *not* stopped are the ones whose watchdogs fire. ``args`` and ``overrides`` are
    read as by :func:`amldbg.enable_remote_debug`; without them, the settings the script
    enabled debugging with (its flags), else the ``AMLDBG_*`` variables.
    """
    seconds = _lengthen_to(settings_module.settings_for(args, **overrides))
    if seconds <= 0:
        return default
    longer: Any
    if isinstance(default, datetime.timedelta):
        longer = datetime.timedelta(seconds=seconds)
    elif isinstance(default, int) and not isinstance(default, bool):
        longer = math.ceil(seconds)
    else:
        longer = float(seconds)
    return default if default >= longer else longer


def _torch_default(backend: str | None) -> datetime.timedelta:
    try:
        from torch.distributed import constants
    except ImportError:
        return TORCH_DEFAULT_TIMEOUT
    if backend is not None and str(backend).lower() == "nccl":
        nccl = getattr(constants, "default_pg_nccl_timeout", None)
        if isinstance(nccl, datetime.timedelta):
            return nccl
    value = getattr(constants, "default_pg_timeout", TORCH_DEFAULT_TIMEOUT)
    return value if isinstance(value, datetime.timedelta) else TORCH_DEFAULT_TIMEOUT


def process_group_timeout(
    default: datetime.timedelta | None = None,
    backend: str | None = None,
    args: Any = None,
    **overrides: Any,
) -> datetime.timedelta | None:
    """The ``timeout=`` to pass to ``torch.distributed.init_process_group``.

    Returns ``default`` (``None`` lets torch choose) unless debugging is enabled and
    ``--remote_debug_watchdog_timeout`` is set; then the larger of that and ``default``
    (or torch's default for ``backend`` when ``default`` is ``None``), so a rank held at a
    breakpoint does not make its peers' collectives time out. Without ``args`` it follows the
    flags the script enabled debugging with, else the ``AMLDBG_*`` variables::

        dist.init_process_group("gloo", timeout=amldbg.process_group_timeout(backend="gloo"))
    """
    seconds = _lengthen_to(settings_module.settings_for(args, **overrides))
    if seconds <= 0:
        return default
    base = default if default is not None else _torch_default(backend)
    return max(base, datetime.timedelta(seconds=seconds))


def announce_watchdogs(
    settings: DebugSettings, topology: environment.Topology, env: Mapping[str, str] | None = None
) -> None:
    """Write one line about the watchdog that may end a debug session early, if any.

    Called by :func:`amldbg.enable_remote_debug` on a debugging process: in a distributed
    job it names the process-group timeout and the flag that lengthens it; in the inference
    server's gunicorn worker it compares ``WORKER_TIMEOUT`` with the connection timeout.
    """
    env = os.environ if env is None else env
    if topology.is_distributed:
        lengthen = settings.remote_debug_watchdog_timeout
        if lengthen > 0:
            announce.info(
                f"while this rank is stopped the other {topology.world_size - 1} wait in their "
                f"collectives; timeouts passed through amldbg.process_group_timeout() are at "
                f"least {lengthen:g} s"
            )
        else:
            announce.info(
                f"while this rank is stopped the other {topology.world_size - 1} wait in their "
                f"collectives and fail after the process-group timeout (torch.distributed: 30 "
                f"min by default); pass timeout=amldbg.process_group_timeout() to "
                f"init_process_group and --remote_debug_watchdog_timeout SECONDS to lengthen it"
            )
    if "gunicorn" in sys.modules:
        raw = env.get("WORKER_TIMEOUT", str(GUNICORN_DEFAULT_TIMEOUT))
        try:
            worker_timeout = float(raw)
        except ValueError:
            return
        if 0 < worker_timeout <= max(settings.timeout, settings.remote_debug_watchdog_timeout):
            announce.info(
                f"gunicorn ends a worker that has not answered for WORKER_TIMEOUT={raw} s, "
                f"also while it is stopped in the debugger; set WORKER_TIMEOUT on the "
                f"deployment to debug longer"
            )
