"""``amldbg signal``: send the on-demand signals to the armed ranks of this node, and only to them.

``pkill -USR1 -f train.py`` also matches torchrun's agent (``python -m torch.distributed.run
... train.py``); SIGUSR1 ends the agent and orphans the ranks. This command signals only the
processes in the registry (:mod:`amldbg.diagnostics.registry`) that are alive and verified:
the pid runs under our uid and started when its entry says (a reused pid is never
signalled), its entry says amldbg handles that signal, and the kernel says the process has a
handler for it (``SigCgt``). Where the kernel offers pidfds the signal goes through one, so
the pid cannot be reused between the check and the signal. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, TextIO

from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, Commands, formatter
from amldbg.core.safetext import escape, safe
from amldbg.diagnostics import registry

__all__ = ["cmd_signal", "ranks", "register"]

SIGNAL_EPILOG = """\
examples:
  amldbg signal                  every armed rank of this node writes its stacks (SIGUSR1)
  amldbg signal --debugger       every armed rank starts the debugger (SIGUSR2)
  amldbg signal --rank 0,3       only ranks 0 and 3 (also 0-3)
  amldbg signal --list           list the armed processes, signal nothing
  amldbg signal --json           the same as JSON

Run it on the node (an SSH or interactive session into the job), as the job's user. It
sends signals only to processes that armed --remote_debug_on_demand, never to the launcher
(torchrun's agent dies on SIGUSR1, which is why 'pkill -USR1 -f train.py' is dangerous).
The registry is $AMLDBG_REGISTRY_DIR, else $XDG_RUNTIME_DIR/amldbg, else /tmp/amldbg-<uid>.
exit status: 0 a process was signalled (or listed), 1 none is armed here, 2 bad usage."""

_ACTIONS = {"SIGUSR1": "stacks", "SIGUSR2": "debugger"}
_STATUS = {
    "exited": "stale: the process has exited",
    "reused": "stale: its pid now names another process",
    "other user": "the pid runs under another user",
    "unverifiable": "cannot verify the pid here (no /proc; Linux only)",
}


def ranks(text: str) -> frozenset[int]:
    """An argparse type: ``0,3`` or ``0-3,8``."""
    found: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rank list: {text!r} (e.g. 0,3 or 0-3)") from None
        if first < 0 or last < first or last - first > 100_000:
            raise argparse.ArgumentTypeError(f"not a rank list: {text!r} (e.g. 0,3 or 0-3)")
        found.update(range(first, last + 1))
    return frozenset(found)


def _send(entry: registry.Entry, name: str) -> str | None:
    """Signal ``entry``'s process; None when sent, else why not."""
    number = int(getattr(signal, name))
    pidfd = -1
    opener = getattr(os, "pidfd_open", None)
    if opener is not None:
        try:
            pidfd = opener(entry.pid)  # pins the process: its pid cannot be reused now
        except ProcessLookupError:
            return "stale: the process has exited"
        except OSError:
            pidfd = -1
    try:
        state = registry.status(entry)  # checked after the pin, not before
        if state != "alive":
            return _STATUS.get(state, state)
        if not registry.catches(entry.pid, name):
            return f"the process has no {name} handler (the signal would end it)"
        sender = getattr(signal, "pidfd_send_signal", None)
        if pidfd >= 0 and sender is not None:
            sender(pidfd, number)
        else:
            os.kill(entry.pid, number)
        return None
    except ProcessLookupError:
        return "stale: the process has exited"
    except PermissionError:
        return "not permitted (run as the job's user)"
    except OSError as error:
        return f"could not signal: {escape(error.strerror or error)}"
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _who(entry: registry.Entry) -> str:
    return f"rank {entry.rank} (pid {entry.pid})"


def cmd_signal(args: argparse.Namespace, out: TextIO) -> int:
    """Signal (or list) the armed processes of this node."""
    name = "SIGUSR2" if getattr(args, "debugger", False) else "SIGUSR1"
    listing = bool(getattr(args, "list", False))
    wanted: frozenset[int] | None = getattr(args, "rank", None)
    as_json = bool(getattr(args, "json", False))
    found = registry.scan()
    for refused in found.refused:
        print(f"amldbg signal: ignored the registry {safe(refused, 400)}: it must be a "
              f"private directory (0700) of this user", file=sys.stderr)
    for skipped in found.skipped[:20]:
        print(f"amldbg signal: skipped a damaged registry file: {safe(skipped, 300)}", file=sys.stderr)
    if len(found.skipped) > 20:
        print(f"amldbg signal: skipped {len(found.skipped) - 20} more registry files", file=sys.stderr)

    results: list[dict[str, Any]] = []
    lines: list[str] = []
    done = 0
    armed = 0
    for entry in found.entries:
        if wanted is not None and entry.rank not in wanted:
            continue
        result = {**entry.to_dict(), "status": "", "reason": ""}
        state = registry.status(entry)
        if state in ("exited", "reused"):
            removed = registry.remove(entry)
            result.update(status="stale", reason=_STATUS[state], removed=removed)
            lines.append(f"skipped {_who(entry)}: {_STATUS[state]}"
                         f"{'; its entry was removed' if removed else ''}")
        elif state != "alive":
            result.update(status="skipped", reason=_STATUS.get(state, state))
            lines.append(f"skipped {_who(entry)}: {result['reason']}")
        elif listing:
            armed += 1
            done += 1
            result.update(status="armed")
        elif name not in entry.signals:
            armed += 1
            reason = f"amldbg does not handle {name} there ({escape(_ACTIONS[name])} on demand is off)"
            result.update(status="skipped", reason=reason)
            lines.append(f"skipped {_who(entry)}: {reason}")
        else:
            armed += 1
            why = _send(entry, name)
            if why is None:
                done += 1
                result.update(status="signalled")
                lines.append(f"signalled {_who(entry)}: {_ACTIONS[name]}")
            else:
                result.update(status="stale" if why.startswith("stale") else "skipped", reason=why)
                lines.append(f"skipped {_who(entry)}: {why}")
        results.append(result)

    if as_json:
        out.write(json.dumps({
            "signal": None if listing else name,
            "processes": results,
            "registry": [escape(folder) for folder in found.directories],
            "skipped_files": len(found.skipped),
        }, indent=2) + "\n")
    else:
        if listing:
            live = [r for r in results if r["status"] == "armed"]
            if live:
                out.write(_table(live) + "\n")
        for line in lines:
            out.write(line + "\n")
    if done:
        return EXIT_OK
    if not armed:
        where = ", ".join(escape(f) for f in registry.candidates())
        only = f" with rank {_ranks_text(wanted)}" if wanted is not None else ""
        print(f"amldbg signal: no process{only} on this node has on-demand triggers armed "
              f"(registry: {where}); start the script with --remote_debug_on_demand",
              file=sys.stderr)
    return EXIT_NEGATIVE


def _ranks_text(wanted: frozenset[int]) -> str:
    return ",".join(map(str, sorted(wanted)[:20])) + ("..." if len(wanted) > 20 else "")


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("RANK", "LOCAL", "WORLD", "PID", "SIGNALS", "LAUNCHER", "ARMED", "SCRIPT")
    body = [
        (str(r["rank"]), str(r["local_rank"]), str(r["world_size"]), str(r["pid"]),
         ",".join(r["signals"]), r["launcher"], r["armed_at"], r["script"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *body]
    )


def register(commands: Commands) -> None:
    """Add ``amldbg signal`` to the subcommands of the ``amldbg`` parser."""
    parser = commands.add_parser(
        "signal", help="make the armed ranks of this node dump their stacks or start the debugger",
        formatter_class=formatter,
        description="Send SIGUSR1 (write the stacks) or, with --debugger, SIGUSR2 (start the "
        "debugger) to every process of this node that armed --remote_debug_on_demand, and to "
        "nothing else: never to the launcher, never to a pid that was reused.",
        epilog=SIGNAL_EPILOG,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--debugger", action="store_true", help="send SIGUSR2: start the debugger (default: SIGUSR1, the stacks)")
    what.add_argument("--list", action="store_true", help="list the armed processes; signal nothing")
    parser.add_argument("--rank", type=ranks, metavar="R[,R...]", help="only these ranks (0,3 or 0-3)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(run=cmd_signal)
