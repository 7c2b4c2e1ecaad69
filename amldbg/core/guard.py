"""The one guard: amldbg's own failures never stop the host script.

Every public entry point runs its work inside :func:`guard`: an ``Exception`` raised by
amldbg's own code becomes one ``amldbg: warning: {what}: {error}`` line and the script
carries on. Where a warning would itself be wrong (a crash or fork path, an exit hook, a
probe whose failure only means "not there"), :func:`quietly` drops the failure without a
word. A function that owes its caller a value puts the fallback after the block::

    with guard("the stall report is off"):
        return arm_watchdog()
    return False

``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is never swallowed, and the
user's own exceptions are never routed through here: wrappers call the user's function
outside the guard and re-raise it untouched. The catches left elsewhere in amldbg are
parsing, reading user objects, or a library's failure handed on as a result; each says why,
and ``tests/test_guard.py`` lists them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from amldbg.core import announce


def describe(error: BaseException) -> str:
    """``"TypeName: message"``, the message cut to 300 characters (it may echo input)."""
    text = str(error)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def guard(what: str, *, once: bool = True, key: str | None = None) -> Iterator[None]:
    """Run the block; an ``Exception`` becomes the warning line ``{what}: {error}``.

    ``once``: the line is written once per process per ``key`` (by default the line
    itself): a failure that repeats on every call, such as a logging call's, must not flood
    the driver log. A ``key`` of its own makes every failure at one place one warning,
    whatever the error says (a loop that fails each time with a new count). ``once=False``
    for a step taken once or rarely, where each failure is news.
    """
    try:
        yield
    except Exception as error:
        message = f"{what}: {describe(error)}"
        if once:
            announce.warn_once(message if key is None else key, message)
        else:
            announce.warn(message)


# One for all: suppress keeps no state between blocks, so it is shared by threads and nested
# blocks alike, and a logging handler's per-record use costs no allocation.
_QUIET = contextlib.suppress(Exception)


def quietly() -> contextlib.suppress:
    """Run the block; an ``Exception`` is dropped without a word.

    For best-effort steps where a warning would be wrong or useless: crash, fork and exit
    paths (a warning there may itself fail, or land in a child's copy of a pipe), and
    probes whose failure only means "not available" (the caller's fallback says it).
    """
    return _QUIET
