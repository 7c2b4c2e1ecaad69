"""The lines amldbg writes to the driver log, in one place so that `amldbg find` can read them.

Every line goes to ``sys.stdout`` and is flushed at once: in a container stdout is a pipe
and block-buffered, and the guides' users read the driver log (``70_driver_log.txt`` or
``user_logs/std_log.txt``) while the script waits for them.

Besides the guides' own lines (``Timeout for debug connection: N``, ``ip_address: A``,
``Debugger attached = True``), each state change of a debug endpoint is written once as a
machine-readable line, ``amldbg endpoint: {json}`` (:func:`endpoint`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from amldbg.core import forksafe, secrets

PREFIX = "amldbg: "
ENDPOINT_MARKER = "amldbg endpoint: "

def seconds(value: float) -> float | int:
    """``300`` for ``300.0``, ``2.5`` for ``2.5``: how amldbg's lines show a number of seconds."""
    return int(value) if float(value).is_integer() else value


def say(line: str) -> None:
    """Write one line to stdout and flush it; never raises (a closed stdout is ignored)."""
    try:
        stream = sys.stdout
        if stream is None:
            return
        stream.write(line + "\n")
        stream.flush()
    except Exception:  # not the guard: the guard's own warnings are written through here
        pass


def info(message: str) -> None:
    """Write an ``amldbg: ...`` line."""
    say(PREFIX + message)


def warn(message: str) -> None:
    """Write the single ``amldbg: warning: ...`` line that reports a failure of amldbg's own.

    Warnings often quote what failed (an endpoint, a connection string, an exception's
    text), so secrets in them are masked (:func:`amldbg.core.secrets.mask_value`).
    """
    try:
        message = secrets.mask_value(message)
    except Exception:  # not the guard (it warns through here): masking must never cost the warning
        message = "(a warning that could not be masked was withheld)"
    say(PREFIX + "warning: " + message)


_warned: set[str] = set()
_warned_lock = forksafe.lock()


def warn_once(key: str, message: str) -> bool:
    """Write :func:`warn`'s line once per ``key`` for the life of the process.

    Returns True when the line was written now. A forked child keeps its parent's memory
    of what was said: the parent's driver log already shows it.
    """
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    warn(message)
    return True


def forget_warnings() -> None:
    """Forget which warnings were given (tests change the environment between cases)."""
    with _warned_lock:
        _warned.clear()


def endpoint(**fields: Any) -> None:
    """Write the machine-readable ``amldbg endpoint: {...}`` line for a debug endpoint.

    The keys ``amldbg find`` reads: ``state`` (``waiting``, ``attached``, ``not-attached``,
    ``listening`` for timeout 0, ``failed``), ``mode`` (``listen``, ``connect`` for reverse
    connect, ``reused``), ``host``, ``port``, ``bind``, ``rank``, ``local_rank``,
    ``world_size``, ``pid``, ``timeout``, ``cwd`` and, in an inference server, ``worker``.
    """
    say(ENDPOINT_MARKER + json.dumps(fields, sort_keys=True, default=str))
