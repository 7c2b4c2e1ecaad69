"""``amldbg find LOG...``: list the debug endpoints announced in downloaded logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence, TextIO

from amldbg.cli import log_scan
from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, CliError

FIND_EPILOG = """\
examples:
  amldbg find azureml-logs/70_driver_log.txt
  amldbg find user_logs/ --json          # every log below a downloaded job folder
  az ml job stream -n JOB | amldbg find  # or read standard input

exit status: 0 when endpoints were found, 1 when none, 2 for unreadable input."""


def scan(logs: Sequence[str], stdin: TextIO) -> Any:
    """The endpoints announced in ``logs`` (files, folders, ``-`` for ``stdin``)."""
    scanner = log_scan.Scanner()
    sources = list(logs) or ["-"]
    if sources == ["-"] and stdin.isatty():
        raise CliError("give one or more log files or folders, or pipe a log into standard input")
    for source in sources:
        if source == "-":
            scanner.feed("<stdin>", stdin)
            continue
        if not os.path.exists(source):
            raise CliError(f"{source}: no such file or folder")
        try:
            files = log_scan.log_files(source)
            for file in files:
                with open(file, encoding="utf-8", errors="replace") as handle:
                    scanner.feed(str(file), handle)
        except OSError as error:
            raise CliError(f"cannot read {error.filename or source}: {error.strerror or error}") from None
    for place in scanner.skipped:
        print(f"amldbg find: skipped a damaged 'amldbg endpoint:' line at {place}", file=sys.stderr)
    return scanner.endpoints()


def cmd_find(args: argparse.Namespace, out: TextIO) -> int:
    """List the debug endpoints announced in the logs."""
    endpoints = scan(args.logs, sys.stdin)
    if args.json:
        out.write(json.dumps([e.to_dict() for e in endpoints], indent=2) + "\n")
        return EXIT_OK if endpoints else EXIT_NEGATIVE
    if not endpoints:
        print("amldbg find: no debug endpoint announced in the given logs", file=sys.stderr)
        return EXIT_NEGATIVE
    out.write(log_scan.format_table(endpoints) + "\n")
    return EXIT_OK
