"""Ending the debugpy adapters that a script under test (or a benchmark's child) started."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Sequence


def reap_debug_adapters(ports: Sequence[int], grace: float = 1.0) -> None:
    """End the debugpy adapters that scripts under test started for ``ports``.

    debugpy's adapter daemonizes, so it is not our child; it normally exits with its
    debuggee, but one that never had a client can linger. It is found by its own command
    line (``debugpy/adapter ... --port P``) and ended by PID.
    """
    if not ports:
        return
    deadline = time.monotonic() + grace
    while True:
        found = debug_adapter_pids(ports)
        if not found:
            return
        if time.monotonic() >= deadline:
            for pid in found:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.2)


def debug_adapter_pids(ports: Sequence[int]) -> list[int]:
    """The PIDs of the debugpy adapters serving ``ports``, found by their command line
    (``debugpy/adapter ... --port P``)."""
    wanted = {str(port) for port in ports}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode("utf-8", "replace") for w in argv]
        if not any(w.replace("\\", "/").endswith("debugpy/adapter") for w in words):
            continue
        at = words.index("--port") + 1 if "--port" in words else len(words)
        if at < len(words) and words[at] in wanted:
            found.append(int(entry.name))
    return found
