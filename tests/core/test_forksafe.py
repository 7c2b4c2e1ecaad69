"""amldbg.core.forksafe: a lock held by another thread at fork time is free in the child."""

from __future__ import annotations

import pytest

from amldbg.core import forksafe
from processes import acquired_after_fork


@pytest.mark.parametrize("make", [forksafe.lock, forksafe.rlock], ids=["lock", "rlock"])
def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child(make: object) -> None:
    lock = make()  # type: ignore[operator]
    assert acquired_after_fork(lock, lambda: lock)
