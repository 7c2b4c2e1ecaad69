"""The one guard: amldbg's own failures never stop the host script.

Every public entry point runs its work inside :func:`guard` (or is decorated with
:func:`guarded`): an ``Exception`` raised by amldbg's own code becomes one
``amldbg: warning: ...`` line (once per distinct message) and the script carries on.
``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is never swallowed, and the
user's own exceptions are never routed through here: wrappers call the user's function
outside the guard and re-raise it untouched.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

from amldbg.core import announce

T = TypeVar("T")


def describe(error: BaseException) -> str:
    """``"TypeName: message"``, the message cut to 300 characters (it may echo input)."""
    text = str(error)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def guard(what: str) -> Iterator[None]:
    """Run the block; an ``Exception`` becomes one warning line ``{what}: {error}``."""
    try:
        yield
    except Exception as error:
        message = f"{what}: {describe(error)}"
        announce.warn_once(message, message)


def guarded(what: str, fallback: T) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function of amldbg's: on an ``Exception`` warn once and return ``fallback``."""

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return function(*args, **kwargs)
            except Exception as error:
                message = f"{what}: {describe(error)}"
                announce.warn_once(message, message)
                return fallback

        return wrapper

    return decorate
