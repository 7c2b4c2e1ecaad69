"""Parallel jobs (SDK v2 ``parallel`` jobs and SDK v1 ParallelRunStep): which worker
processes of a node start a debugger.

A node runs ``process_count_per_node`` worker processes, each calling the entry script's
``init()`` once and ``run(mini_batch)`` per mini-batch. When remote debugging is enabled,
only the selected processes listen (``AMLDBG_REMOTE_DEBUG_PROCESSES``, default ``0``: the
first process of each debugged node), each on base port + its local process index, so
that several processes of one node never ask for the same port. Which process this is
comes from :mod:`amldbg.core.runtime`.
"""

from __future__ import annotations

import os
from typing import Mapping

from amldbg.core import settings

#: Which worker processes of a node listen for a debugger: ``all`` or a list like ``0,2``.
PROCESSES_ENV = "AMLDBG_REMOTE_DEBUG_PROCESSES"


def selected_processes(env: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """The process indexes that debug (``None`` means all), from ``AMLDBG_REMOTE_DEBUG_PROCESSES``.

    Raises ``ValueError`` for an invalid value; the default is ``(0,)``.
    """
    env = os.environ if env is None else env
    raw = env.get(PROCESSES_ENV)
    if raw is None or not raw.strip():
        return (0,)
    return settings.parse_ranks(raw)
