"""``amldbg find LOG...``: list the debug endpoints announced in downloaded logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence, TextIO

from amldbg.cli import log_scan
from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, CliError, Commands, formatter, printable
from amldbg.core import joblogs

FIND_EPILOG = """\
examples:
  amldbg find azureml-logs/70_driver_log.txt
  amldbg find user_logs/ --json          # every log below a downloaded job folder
  az ml job stream -n JOB | amldbg find  # or read standard input

A job folder may hold user_logs/std_log.txt, one user_logs/std_log_process_<rank>.txt per
process (the rank comes from the file name when a line lacks it), azureml-logs/70_driver_log*.txt,
or a parallel job's logs/user/stdout/<node>/process<N>.stdout.txt files.

exit status: 0 when endpoints were found, 1 when none, 2 for unreadable input."""


def _say(prog: str, message: str) -> None:
    print(f"{prog}: {printable(message)}", file=sys.stderr)


def scan(logs: Sequence[str], stdin: TextIO, prog: str = "amldbg find") -> Any:
    """The endpoints announced in ``logs`` (files, folders, ``-`` for ``stdin``)."""
    return scan_logs(logs, stdin, prog).endpoints()


def scan_logs(logs: Sequence[str], stdin: TextIO, prog: str = "amldbg find") -> Any:
    """The :class:`~amldbg.cli.log_scan.Scanner` that read ``logs`` (files, folders, ``-``).

    A file that cannot be read is reported on stderr and skipped, and so are the damaged
    records inside a log; :class:`CliError` (exit 2) when a named path does not exist, or
    when nothing at all could be read.
    """
    scanner = log_scan.Scanner()
    sources = list(logs) or ["-"]
    if sources == ["-"] and stdin.isatty():
        raise CliError("give one or more log files or folders, or pipe a log into standard input")
    for source in sources:
        if source != "-" and not os.path.lexists(source):
            raise CliError(f"{source}: no such file or folder")
    unreadable: list[joblogs.Unreadable] = []
    read = 0
    for item in log_scan.walk_logs(sources):
        if isinstance(item, joblogs.Unreadable):
            unreadable.append(item)
            _say(prog, f"cannot read {item.path}: {item.reason}; skipped")
            continue
        try:
            with joblogs.open_lines(item, stdin) as reader:
                scanner.read_lines(item.name, reader)
        except OSError as error:
            unreadable.append(joblogs.Unreadable(item.name, joblogs.reason(error)))
            _say(prog, f"cannot read {item.name}: {joblogs.reason(error)}; skipped")
            continue
        read += 1
    if unreadable and not read:
        first = unreadable[0]
        raise CliError(f"cannot read {first.path}: {first.reason}")
    for place in scanner.skipped:
        _say(prog, f"skipped a damaged 'amldbg endpoint:' or 'amldbg crash:' line at {place}")
    if scanner.damaged > len(scanner.skipped):
        more = scanner.damaged - len(scanner.skipped)
        _say(prog, f"skipped {more} more damaged 'amldbg endpoint:' line{'s' if more != 1 else ''}")
    if scanner.cut_lines:
        _say(
            prog,
            f"{scanner.cut_lines} line{'s' if scanner.cut_lines != 1 else ''} longer than "
            f"{log_scan.MAX_LINE // 1024} KiB read only in part",
        )
    if scanner.dropped:
        _say(prog, f"more than {log_scan.MAX_ENDPOINTS} endpoints; {scanner.dropped} left out")
    return scanner


def cmd_find(args: argparse.Namespace, out: TextIO) -> int:
    """List the debug endpoints (and crash reports) announced in the logs."""
    scanner = scan_logs(args.logs, sys.stdin)
    endpoints = scanner.endpoints()
    crashes = scanner.crashes
    if args.json:
        # json.dumps escapes every control character and lone surrogate (ensure_ascii).
        # The list keeps its shape (endpoints only); `amldbg stacks --json` lists crashes.
        out.write(json.dumps([e.to_dict() for e in endpoints], indent=2) + "\n")
        return EXIT_OK if endpoints else EXIT_NEGATIVE
    if not endpoints and not crashes:
        print("amldbg find: no debug endpoint announced in the given logs", file=sys.stderr)
        return EXIT_NEGATIVE
    if endpoints:
        out.write(log_scan.format_table(endpoints) + "\n")
    else:
        print("amldbg find: no debug endpoint announced in the given logs", file=sys.stderr)
    if crashes:
        text = log_scan.format_crashes(crashes)
        out.write("\n".join(printable(line) for line in text.split("\n")) + "\n")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``amldbg find`` to the subcommands of the ``amldbg`` parser."""
    parser = commands.add_parser(
        "find", help="list the debug endpoints announced in driver logs", formatter_class=formatter,
        description="List every debug endpoint announced in Azure ML logs (70_driver_log.txt, "
        "std_log.txt, ParallelRunStep logs/user/... files): node address, port, rank, mode, "
        "whether a debugger attached, and the timeout.",
        epilog=FIND_EPILOG,
    )
    parser.add_argument("logs", nargs="*", metavar="LOG", help="log file or folder; '-' or nothing reads standard input")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    parser.set_defaults(run=cmd_find)
