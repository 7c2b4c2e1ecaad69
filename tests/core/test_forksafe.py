"""amldbg.core.forksafe: a lock held by another thread at fork time is free in the child."""

from __future__ import annotations

import os
import threading
import time

import pytest

from amldbg.core import forksafe


@pytest.mark.parametrize("make", [forksafe.lock, forksafe.rlock], ids=["lock", "rlock"])
def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child(make: object) -> None:
    lock = make()  # type: ignore[operator]
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
        if pid == 0:  # the child: only this thread exists; the holder does not
            code = 0 if lock.acquire(timeout=2) else 7
            os._exit(code)
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
        # The parent's lock is still held by its thread: untouched by the fork.
        assert lock.locked()
    finally:
        release.set()
        thread.join(5)
