"""ParallelRunStep specifics: which worker process this is, and the runtime's own logger.

A ParallelRunStep node runs ``process_count_per_node`` worker processes, each calling the
entry script's ``init()`` once and ``run(mini_batch)`` per mini-batch. When remote debugging
is enabled, only the selected processes listen (``AMLDBG_REMOTE_DEBUG_PROCESSES``, default
``0``: the first process of each debugged node), each on base port + its local process
index, so that several processes of one node never ask for the same port.

The runtime's ``EntryScript`` class (``azureml_user.parallel_run.EntryScript``, formerly
``entry_script.EntryScript``) is only looked up, never required: the same entry script runs
under a plain local loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Mapping

#: The local index of this worker process on its node (0-based); set it when the runtime's
#: ``EntryScript().agent_name`` does not carry it (a local driver does).
PROCESS_INDEX_ENV = "AMLDBG_PROCESS_INDEX"
#: Which worker processes of a node listen for a debugger: ``all`` or a list like ``0,2``.
PROCESSES_ENV = "AMLDBG_REMOTE_DEBUG_PROCESSES"

# The runtime's module names, newest first.
_RUNTIME_MODULES = ("azureml_user.parallel_run", "entry_script")

_NOT_LOOKED_UP: Any = object()
_entry_script_class: Any = _NOT_LOOKED_UP


def _find_module(name: str) -> Any:
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        # find_spec imports the parent package of a dotted name; a missing parent is "absent".
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    return importlib.import_module(name)


def entry_script_class() -> Any:
    """The ParallelRunStep runtime's ``EntryScript`` class, or ``None`` outside the runtime.

    Looked up once per process. A module called ``entry_script`` counts only when it defines
    ``EntryScript``. Importing a broken runtime module is treated as "not there".
    """
    global _entry_script_class
    if _entry_script_class is _NOT_LOOKED_UP:
        found = None
        for name in _RUNTIME_MODULES:
            try:
                module = _find_module(name)
            except Exception:  # a broken or unrelated module must not break the entry script
                module = None
            candidate = getattr(module, "EntryScript", None)
            if candidate is not None:
                found = candidate
                break
        _entry_script_class = found
    return _entry_script_class


def entry_script_logger() -> Any:
    """``EntryScript().logger`` (it writes to ``logs/user/<ip>/Process-*.txt``), or ``None``."""
    cls = entry_script_class()
    if cls is None:
        return None
    try:
        return cls().logger
    except Exception:
        return None


def _agent_index() -> int | None:
    cls = entry_script_class()
    if cls is None:
        return None
    try:
        name = str(cls().agent_name)
    except Exception:
        return None
    found = re.search(r"(\d+)$", name)
    return int(found.group(1)) if found else None


def in_parallel_run(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is a ParallelRunStep worker (the runtime is present) or a local
    driver said so by setting ``AMLDBG_PROCESS_INDEX``."""
    env = os.environ if env is None else env
    return PROCESS_INDEX_ENV in env or entry_script_class() is not None


def process_index(env: Mapping[str, str] | None = None) -> int:
    """This worker process's local index on its node, 0-based.

    ``AMLDBG_PROCESS_INDEX`` wins; otherwise the trailing number of the runtime's
    ``EntryScript().agent_name`` (``agent003`` is 3); otherwise 0. An invalid value in the
    variable is ignored (with the agent name or 0 used instead).
    """
    env = os.environ if env is None else env
    raw = env.get(PROCESS_INDEX_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
            if value >= 0:
                return value
        except ValueError:
            pass
    agent = _agent_index()
    return agent if agent is not None else 0


def selected_processes(env: Mapping[str, str] | None = None) -> tuple[int, ...] | None:
    """The process indexes that debug (``None`` means all), from ``AMLDBG_REMOTE_DEBUG_PROCESSES``.

    Raises ``ValueError`` for an invalid value; the default is ``(0,)``.
    """
    from amldbg.cli_args import parse_ranks

    env = os.environ if env is None else env
    raw = env.get(PROCESSES_ENV)
    if raw is None or not raw.strip():
        return (0,)
    return parse_ranks(raw)
