"""A fork while another thread holds one of the locks the logging send path takes: the child
still gets a free lock (it has only the forking thread, so a held lock would stay held for
ever and its next log record would deadlock).

amldbg's own locks are made with :mod:`amldbg.core.forksafe` where they are defined; only the
exporter libraries' locks, which amldbg does not make, are replaced by name in the child
(``export._SEND_PATH_LOCKS``).
"""

from __future__ import annotations

import importlib
import os
import threading
import time

import pytest

from amldbg.logs import export

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
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the holder does not exist here
            module = importlib.import_module(module_name)
            os._exit(0 if getattr(module, attribute).acquire(timeout=2) else 7)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the child hung on the lock")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock.locked(), "the parent's lock is still its thread's"
    finally:
        release.set()
        thread.join(5)
