"""A fork while another thread holds one of the locks the logging send path takes: the child
still gets a free lock (it has only the forking thread, so a held lock would stay held for
ever and its next log record would deadlock).

amldbg's own locks are made with :mod:`amldbg.core.forksafe` where they are defined; only the
exporter libraries' locks, which amldbg does not make, are replaced by name in the child
(``export._SEND_PATH_LOCKS``).
"""

from __future__ import annotations

import importlib

import pytest

from amldbg.logs import export
from processes import acquired_after_fork

#: amldbg's locks on the send path (a warning, the run-context dimensions, the metrics'
#: destination, this process's exporter).
OWN_LOCKS = [
    ("amldbg.core.announce", "_warned_lock"),
    ("amldbg.logs.context", "_lock"),
    ("amldbg.logs.metrics", "_lock"),
    ("amldbg.logs.export", "_exporter_lock"),
]


def test_the_locks_replaced_by_name_are_only_the_exporter_libraries() -> None:
    assert export._SEND_PATH_LOCKS
    assert not [module for module, _ in export._SEND_PATH_LOCKS if module.split(".")[0] == "amldbg"]


@pytest.mark.parametrize(("module_name", "attribute"), OWN_LOCKS, ids=[f"{m}.{a}" for m, a in OWN_LOCKS])
def test_a_lock_of_amldbgs_held_at_fork_is_free_in_the_child(module_name: str, attribute: str) -> None:
    lock = getattr(importlib.import_module(module_name), attribute)
    assert acquired_after_fork(lock, lambda: getattr(importlib.import_module(module_name), attribute))
