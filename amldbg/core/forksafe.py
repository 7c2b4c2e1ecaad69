"""Locks that survive ``fork``: a child never inherits one held by a thread it does not have.

A DataLoader worker (or any ``os.fork()``) may be created while another thread of the parent
holds one of amldbg's locks, in the middle of a dump or an export. The child has only the
forking thread, so such a lock would stay held for ever there, and the child's next dump or
log record would deadlock. :func:`lock` and :func:`rlock` return locks that are made new and
free in every child, right after the fork, before any of the child's code runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any

__all__ = ["lock", "rlock"]

# Weak: a lock that is no longer used must not be kept alive for its re-initialisation.
_locks: weakref.WeakSet[Any] = weakref.WeakSet()


class _Reinitialisable:
    """A lock (or re-entrant lock) whose state can be reset in a forked child; Python 3.8
    has no ``_at_fork_reinit``, so the wrapped lock is replaced there instead."""

    __slots__ = ("_factory", "_lock", "__weakref__")

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._lock = factory()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        probe = getattr(self._lock, "locked", None)
        if probe is not None:
            return bool(probe())
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _reset(self) -> None:
        reinit = getattr(self._lock, "_at_fork_reinit", None)
        if reinit is not None:
            reinit()
        else:
            self._lock = self._factory()


def lock() -> _Reinitialisable:
    """A ``threading.Lock`` that is free again in every forked child."""
    made = _Reinitialisable(threading.Lock)
    _locks.add(made)
    return made


def rlock() -> _Reinitialisable:
    """A ``threading.RLock`` that is free again in every forked child."""
    made = _Reinitialisable(threading.RLock)
    _locks.add(made)
    return made


def _after_fork_in_child() -> None:
    for made in list(_locks):
        with contextlib.suppress(Exception):  # a lock that cannot be reset must not stop the child
            made._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
