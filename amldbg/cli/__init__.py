"""The ``amldbg`` command (also ``python -m amldbg``): the developer's side of the workflow.

One module per command:

* ``amldbg find LOG...`` (:mod:`.find`): list the debug endpoints announced in driver logs;
* ``amldbg launch-config`` (:mod:`.launch_config`): VS Code attach configurations, printed
  or merged into launch.json (:mod:`.launch_json`);
* ``amldbg env snapshot`` / ``amldbg env diff`` (:mod:`.env`): what differs between two
  environments;
* ``amldbg doctor`` (:mod:`.doctor`): check, where the script will run, what remote
  debugging needs;
* ``amldbg stacks PATH...`` (:mod:`.stacks`): compare the stacks the ranks of a hung job
  dumped, name the outliers, list crash reports;
* ``amldbg signal`` (:mod:`.signal_ranks`): make the armed ranks of this node dump their
  stacks or start the debugger, never signalling the launcher.

Every subcommand exits 0 on success, 1 for a negative answer (nothing found, snapshots
differ, a check failed) and 2 for bad input, with a one-line reason on stderr. Nothing in
the runtime (what a script imports) imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from amldbg._version import __version__
from amldbg.cli import doctor, env, find, launch_config, signal_ranks, stacks
from amldbg.cli.common import EXIT_OK, EXIT_USAGE, CliError, Parser, formatter, host, port
from amldbg.core import args as core_args
from amldbg.core import settings as core_settings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``amldbg`` argument parser with its subcommands."""
    parser = Parser(
        prog="amldbg",
        description="The developer's side of amldbg: find debug endpoints in Azure ML logs, "
        "write VS Code launch.json entries, compare the stacks of a hung job, compare "
        "environments, check a machine.",
        formatter_class=formatter,
        epilog="run 'amldbg COMMAND --help' for a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"amldbg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    find_parser = commands.add_parser(
        "find", help="list the debug endpoints announced in driver logs", formatter_class=formatter,
        description="List every debug endpoint announced in Azure ML logs (70_driver_log.txt, "
        "std_log.txt, ParallelRunStep logs/user/... files): node address, port, rank, mode, "
        "whether a debugger attached, and the timeout.",
        epilog=find.FIND_EPILOG,
    )
    find_parser.add_argument("logs", nargs="*", metavar="LOG", help="log file or folder; '-' or nothing reads standard input")
    find_parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    find_parser.set_defaults(run=find.cmd_find)

    stacks.add_parser(commands, formatter)
    signal_ranks.add_parser(commands, formatter)

    launch = commands.add_parser(
        "launch-config", help="VS Code attach configurations (print or merge into launch.json)",
        formatter_class=formatter,
        description="Build VS Code attach configurations (\"type\": \"debugpy\") and print them "
        "as a launch.json, or merge them into one with --write.",
        epilog=launch_config.LAUNCH_EPILOG,
    )
    what = launch.add_mutually_exclusive_group()
    what.add_argument("--host", type=host, help="attach to a script listening on HOST (the ip_address in its log)")
    what.add_argument("--listen", action="store_true", help="VS Code listens for a script started with --remote_debug_client_ip")
    what.add_argument("--deployment", action="store_true", help="attach to score.py in a deployment container (remote root /var/azureml-app)")
    what.add_argument("--from-log", nargs="+", metavar="LOG", help="one entry per endpoint found in these logs (as 'amldbg find')")
    launch.add_argument("--port", type=port, default=5678, help="debug port (default: %(default)s)")
    launch.add_argument("--listen-host", type=host, default="0.0.0.0", help="where VS Code listens with --listen (default: %(default)s)")
    launch.add_argument("--local-root", default="${workspaceFolder}", help="local folder of the script's code (default: %(default)s)")
    launch.add_argument("--remote-root", help="the script's folder on the compute (default: the cwd in the log, else '.')")
    launch.add_argument("--name", help="entry name (a prefix with --from-log)")
    launch.add_argument("--no-just-my-code", dest="just_my_code", action="store_false", help="also step into library code")
    launch.add_argument("--no-redirect-output", dest="redirect_output", action="store_false", help="do not show the script's output in VS Code")
    launch.add_argument("--write", metavar="LAUNCH_JSON", help="merge into this launch.json (e.g. .vscode/launch.json) instead of printing")
    launch.set_defaults(run=launch_config.cmd_launch_config)

    env_parser = commands.add_parser(
        "env", help="snapshot and diff Python environments", formatter_class=formatter,
        description="Snapshot this Python environment, or compare two snapshots.",
        epilog=env.ENV_EPILOG,
    )
    env_commands = env_parser.add_subparsers(dest="env_command", metavar="ACTION", parser_class=Parser)
    snapshot = env_commands.add_parser(
        "snapshot", help="snapshot this environment", formatter_class=formatter,
        description="Record the Python version, platform, installed packages, relevant "
        "environment variables, GPU and CUDA of this environment as JSON.",
        epilog=env.SNAPSHOT_EPILOG,
    )
    snapshot.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    snapshot.set_defaults(run=env.cmd_env_snapshot)
    diff = env_commands.add_parser(
        "diff", help="what differs between two snapshots", formatter_class=formatter,
        description="Compare snapshot A (e.g. local) with snapshot B (e.g. the compute's): "
        "missing, extra and different packages, most consequential first.",
        epilog=env.DIFF_EPILOG,
    )
    diff.add_argument("a", metavar="A", help="snapshot file or log (e.g. local.json)")
    diff.add_argument("b", metavar="B", help="snapshot file or log (e.g. remote.json)")
    diff.add_argument("--script", action="append", default=[], metavar="PY", help="a script whose imports count first (repeatable)")
    diff.add_argument("--ignore", action="append", default=[], metavar="PACKAGE", help="leave this package out (repeatable)")
    diff.add_argument("--env", action="store_true", help="also compare environment variables")
    diff.add_argument("--platform", action="store_true", help="also compare the platform (OS, machine, libc)")
    diff.add_argument("--json", action="store_true", help="print JSON for scripts")
    diff.set_defaults(run=env.cmd_env_diff)

    doc = commands.add_parser(
        "doctor", help="check this machine for remote debugging and logging", formatter_class=formatter,
        description="Check, where the script will run, what remote debugging and logging "
        "need: one line per check, ok or FAIL. --send-test sends one test trace to "
        "Application Insights and reports the answer.",
        epilog=doctor.DOCTOR_EPILOG,
    )
    doctor.add_arguments(doc)  # --json, --send-test, --timeout
    # The script's own flags, so that doctor checks exactly what the script would do. Their
    # defaults are None here: a flag not given falls back to AMLDBG_* as in the script.
    core_args.add_args(doc, env={})
    flags = {flag.name: flag for flag in core_settings.FLAGS}
    for action in doc._actions:
        flag = flags.get(action.dest)
        if flag is not None:
            # Show the script's default in --help while the parsed default stays None.
            action.help = (action.help or "").replace("%(default)s", str(flag.default))
            action.default = None
    doc.set_defaults(run=doctor.cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amldbg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        command = "amldbg env" if args.command == "env" else "amldbg"
        choices = "snapshot, diff" if args.command == "env" else "find, launch-config, env, doctor, stacks, signal"
        print(f"{command}: error: choose one of: {choices} (see '{command} --help')", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(run(args, sys.stdout))
    except CliError as error:
        name = "amldbg " + args.command + (f" {args.env_command}" if args.command == "env" else "")
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `amldbg find ... | head`: the reader left. Point stdout at devnull so that the
        # interpreter's final flush does not raise again (the Python docs' recipe).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
