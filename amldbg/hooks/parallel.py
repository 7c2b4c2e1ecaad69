"""Parallel jobs (SDK v2 ``parallel`` jobs and SDK v1 ParallelRunStep): which worker
processes of a node start a debugger.

A node runs ``process_count_per_node`` worker processes, each calling the entry script's
``init()`` once and ``run(mini_batch)`` per mini-batch. When remote debugging is enabled,
only the selected processes listen (``AMLDBG_REMOTE_DEBUG_PROCESSES``, default ``0``: the
first process of each debugged node), each on a port of its own from its local process
index (:func:`amldbg.core.environment.debug_port`). Which process this is comes from
:mod:`amldbg.core.runtime`.
"""

from __future__ import annotations

import os
from typing import Mapping

from amldbg.core import announce, runtime, settings

#: Which worker processes of a node listen for a debugger: ``all`` or a list like ``0,2``.
PROCESSES_ENV = settings.REMOTE_DEBUG_PROCESSES.env_var


def selected_processes(env: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """The process indexes that debug (``None`` means all), from ``AMLDBG_REMOTE_DEBUG_PROCESSES``.

    Raises ``ValueError`` for an invalid value; the default is ``(0,)``.
    """
    return settings.env_value(settings.REMOTE_DEBUG_PROCESSES, env)


def debugging_process(env: Mapping[str, str]) -> int | None:
    """This worker process's local index when it is selected to debug, else ``None``.

    A process left out says so in one line. An invalid ``AMLDBG_REMOTE_DEBUG_PROCESSES`` is
    warned about once, and only process 0 debugs.
    """
    index = runtime.process_index(env)
    try:
        selected = selected_processes(env)
    except ValueError as error:  # the user's value, not amldbg's failure: the default applies
        announce.warn_once(
            "processes:" + str(error),
            f"ignoring {PROCESSES_ENV}: {error}; only process 0 debugs",
        )
        selected = (0,)
    if selected is not None and index not in selected:
        announce.info(
            f"parallel job process {index} (pid {os.getpid()}) does not debug "
            f"({PROCESSES_ENV}={','.join(map(str, selected))})"
        )
        return None
    return index
