"""The run-context dimensions every Application Insights record carries.

People filter traces by run, pipeline step, node and rank; these come from
:mod:`amldbg.core.environment` (the only reader of the Azure ML variables) and are computed once per
process (a forked child computes its own, since its pid differs).
"""

from __future__ import annotations

import os

from amldbg.core import environment, forksafe
from amldbg.core.guard import quietly

_lock = forksafe.lock()
_cache: tuple[int, dict[str, str]] | None = None


def _compute() -> dict[str, str]:
    ctx = environment.run_context()
    topo = environment.topology()
    dims: dict[str, str] = {}
    for key, value in (
        ("run_id", ctx.run_id),
        ("experiment", ctx.experiment),
        ("workspace", ctx.workspace),
        ("parent_run_id", ctx.parent_run_id),
        ("root_run_id", ctx.root_run_id),
        ("step_name", ctx.step_name),
    ):
        if value:
            dims[key] = value
    dims["node_address"] = "unknown"
    with quietly():  # a broken network stack must not stop logging
        dims["node_address"] = environment.node_address()[0]
    dims["rank"] = str(topo.rank)
    dims["local_rank"] = str(topo.local_rank)
    dims["world_size"] = str(topo.world_size)
    return dims


def context_dimensions() -> dict[str, str]:
    """Run id, experiment, workspace, parent/root run, step name, node address, rank, world size.

    Keys whose value is unknown (outside Azure ML) are left out. The process id is added
    per record (``pid``), so it is not part of this cached mapping. Returns a shared
    mapping: copy it before changing it.
    """
    global _cache
    pid = os.getpid()
    cached = _cache
    if cached is not None and cached[0] == pid:
        return cached[1]
    with _lock:
        if _cache is None or _cache[0] != pid:
            _cache = (pid, _compute())
        return _cache[1]


def reset() -> None:
    """Forget the cached dimensions (tests change the environment between cases)."""
    global _cache
    with _lock:
        _cache = None
