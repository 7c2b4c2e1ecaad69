"""``amldbg env snapshot`` and ``amldbg env diff``: what differs between two environments."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, TextIO

from amldbg.cli.common import (
    EXIT_NEGATIVE,
    EXIT_OK,
    CliError,
    Commands,
    Parser,
    formatter,
    printable,
)
from amldbg.core import secrets
from amldbg.diagnostics import envsnap

ENV_EPILOG = """\
examples:
  amldbg env snapshot -o local.json
  amldbg env diff local.json remote.json --script train.py

In a script, amldbg.write_env_snapshot() writes outputs/amldbg_env.json and one
'amldbg env snapshot:' line to the driver log; 'amldbg env diff' reads either."""

SNAPSHOT_EPILOG = """\
examples:
  amldbg env snapshot -o local.json      # write a file
  amldbg env snapshot | jq .packages     # or print the JSON

Secret-looking environment variables (tokens, keys, passwords, connection strings) are
recorded by name only, credentials inside other values (a token in a URL, a SAS signature)
are masked, and the file is created readable by its owner only (0600)."""

DIFF_EPILOG = """\
examples:
  amldbg env diff local.json remote.json
  amldbg env diff local.json 70_driver_log.txt --script train.py --ignore pip

A and B are snapshot files, or logs with an 'amldbg env snapshot:' line. Compared: the
Python version, the packages and GPU/CUDA; --env and --platform add those. Packages the
script imports come first (recorded by write_env_snapshot(), or read from --script files).

exit status: 0 when nothing differs, 1 when something does, 2 for unreadable input."""


def cmd_env_snapshot(args: argparse.Namespace, out: TextIO) -> int:
    """Write or print a snapshot of this environment."""
    # The command's own imports are not a script's: leave "imported" empty.
    snapshot = envsnap.env_snapshot(record_imports=False)
    text = json.dumps(snapshot, indent=1, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        out.write(text)
        return EXIT_OK
    try:
        # Created owner-only (0600) from the start, like write_env_snapshot()'s file.
        secrets.write_private(args.output, text)
    except OSError as error:
        raise CliError(f"cannot write {args.output}: {error.strerror or error}") from None
    out.write(printable(f"amldbg env snapshot: {args.output}: {envsnap.summary(snapshot)}") + "\n")
    return EXIT_OK


def _shown(value: Any) -> Any:
    # Values from another machine's snapshot, made safe to print; format_diff prints lists
    # and objects as JSON, which escapes its own control characters.
    return printable(value) if isinstance(value, str) else value


def cmd_env_diff(args: argparse.Namespace, out: TextIO) -> int:
    """Compare two snapshots; exit 1 when they differ."""
    try:
        left = envsnap.load_snapshot(args.a)
        right = envsnap.load_snapshot(args.b)
    except envsnap.SnapshotError as error:
        raise CliError(str(error)) from None
    modules: list[str] = []
    for script in args.script:
        try:
            modules.extend(envsnap.script_imports(script))
        except OSError as error:
            raise CliError(f"cannot read {script}: {error.strerror or error}") from None
        except SyntaxError as error:
            raise CliError(f"cannot parse {script}: line {error.lineno}: {error.msg}") from None
    sections = ["python", "packages", "gpu"]
    if args.platform:
        sections.append("platform")
    if args.env:
        sections.append("env")
    try:
        differences = envsnap.diff_snapshots(
            left, right, imports=modules, ignore=args.ignore, sections=sections
        )
        if args.json:
            text = json.dumps([d.to_dict() for d in differences], indent=2)
        else:
            shown = [
                dataclasses.replace(d, name=printable(d.name), a=_shown(d.a), b=_shown(d.b))
                for d in differences
            ]
            text = envsnap.format_diff(shown, printable(args.a), printable(args.b))
    except (RecursionError, ValueError, TypeError) as error:
        # The snapshots were checked when loaded; this is a last line of defence.
        raise CliError(f"cannot compare {args.a} and {args.b}: {error}") from None
    out.write(text + "\n")
    return EXIT_NEGATIVE if differences else EXIT_OK


def register(commands: Commands) -> None:
    """Add ``amldbg env`` and its actions ``snapshot`` and ``diff`` to the subcommands of
    the ``amldbg`` parser."""
    parser = commands.add_parser(
        "env", help="snapshot and diff Python environments", formatter_class=formatter,
        description="Snapshot this Python environment, or compare two snapshots.",
        epilog=ENV_EPILOG,
    )
    actions = parser.add_subparsers(dest="env_command", metavar="ACTION", parser_class=Parser)
    snapshot = actions.add_parser(
        "snapshot", help="snapshot this environment", formatter_class=formatter,
        description="Record the Python version, platform, installed packages, relevant "
        "environment variables, GPU and CUDA of this environment as JSON.",
        epilog=SNAPSHOT_EPILOG,
    )
    snapshot.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    snapshot.set_defaults(run=cmd_env_snapshot)
    diff = actions.add_parser(
        "diff", help="what differs between two snapshots", formatter_class=formatter,
        description="Compare snapshot A (e.g. local) with snapshot B (e.g. the compute's): "
        "missing, extra and different packages, most consequential first.",
        epilog=DIFF_EPILOG,
    )
    diff.add_argument("a", metavar="A", help="snapshot file or log (e.g. local.json)")
    diff.add_argument("b", metavar="B", help="snapshot file or log (e.g. remote.json)")
    diff.add_argument("--script", action="append", default=[], metavar="PY", help="a script whose imports count first (repeatable)")
    diff.add_argument("--ignore", action="append", default=[], metavar="PACKAGE", help="leave this package out (repeatable)")
    diff.add_argument("--env", action="store_true", help="also compare environment variables")
    diff.add_argument("--platform", action="store_true", help="also compare the platform (OS, machine, libc)")
    diff.add_argument("--json", action="store_true", help="print JSON for scripts")
    diff.set_defaults(run=cmd_env_diff)
