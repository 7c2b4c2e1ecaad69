"""The runtime that calls the script: the inference server's gunicorn, or a parallel job.

Entry scripts (``score.py``, parallel-job and ParallelRunStep entry scripts) have no
command line; what they need to know about the process that calls them is read here, from
the call stack and the runtime's own modules, never by importing anything heavy:

* :func:`gunicorn_worker`: this process as a worker of the Azure ML inference server;
* :func:`inference_server_preloads`: ``init()`` runs in the gunicorn master;
* :func:`entry_script_class` / :func:`entry_script_logger`: the parallel job runtime's
  ``EntryScript`` (``azureml_user.parallel_run`` in SDK v2 parallel jobs and current
  ParallelRunStep images, ``entry_script`` in older ones);
* :func:`in_parallel_run` / :func:`process_index`: which worker process of the node this is.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Mapping

from amldbg.core import settings
from amldbg.core.guard import quietly

# The parallel runtime's module names, newest first.
_RUNTIME_MODULES = ("azureml_user.parallel_run", "entry_script")


@dataclasses.dataclass(frozen=True)
class GunicornWorker:
    """This process as a worker of a gunicorn server (the Azure ML inference server runs one).

    ``index`` is 0-based and stable for the workers started at boot (gunicorn numbers each
    spawned worker with an increasing ``age``; a replacement worker gets a new age, so its
    index wraps around). ``count`` is the configured number of workers (``WORKER_COUNT``
    for the inference server) and ``timeout`` gunicorn's worker timeout in seconds
    (``WORKER_TIMEOUT``): a worker silent for longer, such as one paused at a breakpoint,
    is killed and replaced.
    """

    index: int
    age: int
    count: int
    timeout: float
    pid: int


def gunicorn_worker() -> GunicornWorker | None:
    """Describe this process as a gunicorn worker, or return ``None`` when it is not one.

    gunicorn exposes no worker number in the environment, so this looks for the worker
    object on the current call stack: the inference server imports the entry script and
    calls ``init()`` from the worker's ``init_process``. Called outside that stack (from
    a request thread, or after start-up) it returns ``None``.
    """
    base = sys.modules.get("gunicorn.workers.base")
    worker_class = getattr(base, "Worker", None)
    if worker_class is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, worker_class):
            age = int(getattr(candidate, "age", 1) or 1)
            cfg = getattr(candidate, "cfg", None)
            count = max(1, int(getattr(cfg, "workers", 1) or 1))
            timeout = float(getattr(cfg, "timeout", 0) or 0)
            return GunicornWorker(
                index=(age - 1) % count, age=age, count=count, timeout=timeout, pid=os.getpid()
            )
        frame = frame.f_back  # type: ignore[assignment]
    return None


def inference_server_preloads(env: Mapping[str, str] | None = None) -> bool:
    """True when the Azure ML inference server loads the entry script in the gunicorn master
    before forking its workers (``WORKER_PRELOAD=true``), so ``init()`` runs in the master."""
    env = os.environ if env is None else env
    return env.get("WORKER_PRELOAD", "").strip().lower() == "true" and "gunicorn" in sys.modules


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
            module = None
            with quietly():  # a broken or unrelated module must not break the entry script
                module = _find_module(name)
            candidate = getattr(module, "EntryScript", None)
            if candidate is not None:
                found = candidate
                break
        _entry_script_class = found
    return _entry_script_class


def entry_script_logger() -> Any:
    """``EntryScript().logger`` (it writes to ``logs/user/<ip>/Process-*.txt``), or ``None``
    outside a parallel job."""
    cls = entry_script_class()
    if cls is None:
        return None
    with quietly():  # the runtime's own failure: no logger, as outside a parallel job
        return cls().logger
    return None


def _agent_index() -> int | None:
    cls = entry_script_class()
    if cls is None:
        return None
    name = ""
    with quietly():  # the runtime's own failure: no agent number
        name = str(cls().agent_name)
    found = re.search(r"(\d+)$", name)
    return int(found.group(1)) if found else None


def in_parallel_run(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is a ParallelRunStep worker (the runtime is present) or a local
    driver said so by setting ``AMLDBG_PROCESS_INDEX``."""
    env = os.environ if env is None else env
    return settings.env_text(settings.PROCESS_INDEX, env) is not None or entry_script_class() is not None


def process_index(env: Mapping[str, str] | None = None) -> int:
    """This worker process's local index on its node, 0-based.

    ``AMLDBG_PROCESS_INDEX`` wins; otherwise the trailing number of the runtime's
    ``EntryScript().agent_name`` (``agent003`` is 3); otherwise 0. An invalid value in the
    variable is ignored (with the agent name or 0 used instead).
    """
    explicit = settings.env_value(settings.PROCESS_INDEX, env)
    if explicit is not None:
        return explicit
    agent = _agent_index()
    return agent if agent is not None else 0
