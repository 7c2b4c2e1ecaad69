"""The ``amldbg`` command (also ``python -m amldbg``): the developer's side of the workflow.

* ``amldbg find LOG...``: list the debug endpoints announced in downloaded driver logs;
* ``amldbg launch-config``: VS Code attach configurations, printed or merged into launch.json;
* ``amldbg env snapshot`` / ``amldbg env diff``: what differs between two environments;
* ``amldbg doctor``: check, where the script will run, what remote debugging needs.

Every subcommand exits 0 on success, 1 for a negative answer (nothing found, snapshots
differ, a check failed) and 2 for bad input, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn, Sequence, TextIO

from amldbg._version import __version__

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (usage stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _port(text: str) -> int:
    from amldbg.cli_args import parse_port

    try:
        return parse_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _host(text: str) -> str:
    from amldbg.cli_args import parse_host

    try:
        return parse_host(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --- find -----------------------------------------------------------------------------------

FIND_EPILOG = """\
examples:
  amldbg find azureml-logs/70_driver_log.txt
  amldbg find user_logs/ --json          # every log below a downloaded job folder
  az ml job stream -n JOB | amldbg find  # or read standard input

exit status: 0 when endpoints were found, 1 when none, 2 for unreadable input."""


def _scan(logs: Sequence[str], stdin: TextIO) -> Any:
    from amldbg import log_scan

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
    from amldbg import log_scan

    endpoints = _scan(args.logs, sys.stdin)
    if args.json:
        out.write(json.dumps([e.to_dict() for e in endpoints], indent=2) + "\n")
        return EXIT_OK if endpoints else EXIT_NEGATIVE
    if not endpoints:
        print("amldbg find: no debug endpoint announced in the given logs", file=sys.stderr)
        return EXIT_NEGATIVE
    out.write(log_scan.format_table(endpoints) + "\n")
    return EXIT_OK


# --- launch-config ------------------------------------------------------------------------

LAUNCH_EPILOG = """\
examples:
  amldbg launch-config --host 10.3.0.5 --port 5678 --remote-root /mnt/azureml/cr/j/abc/exe/wd
  amldbg launch-config --from-log 70_driver_log.txt --write .vscode/launch.json
  amldbg launch-config --listen --port 5678           # for --remote_debug_client_ip jobs
  amldbg launch-config --deployment --local-root '${workspaceFolder}/score'

--write creates the file, or updates the entries of the same name in place and keeps
everything else (other entries, comments, trailing commas) as it was. --from-log makes one
entry per endpoint plus a compound entry that attaches to all of them at once."""


def _entry_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "local_root": args.local_root,
        "just_my_code": args.just_my_code,
    }


def _from_log_entries(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from amldbg import launch_config

    # A listener that failed has no address to attach to; a reverse connect that failed is
    # exactly the case where VS Code needs the listening entry for the next run.
    usable = [
        e for e in _scan(args.from_log, sys.stdin)
        if e.host and (e.mode == "connect" or (e.mode == "listen" and e.state != "failed"))
    ]
    usable.sort(key=lambda e: (e.rank is None, e.rank or 0, e.port or 0))
    if not usable:
        raise CliError("no debug endpoint to attach to in the given logs (see 'amldbg find')")
    # Reverse-connect endpoints that share a port need one listening VS Code only.
    seen_listen_ports: set[int] = set()
    chosen = []
    for endpoint in usable:
        if endpoint.mode == "connect":
            if endpoint.port in seen_listen_ports:
                continue
            seen_listen_ports.add(endpoint.port or 0)
        chosen.append(endpoint)

    def base_name(endpoint: Any) -> str:
        verb = "attach to" if endpoint.mode == "listen" else "listen for"
        who = f"rank {endpoint.rank}" if endpoint.rank is not None else "the script"
        if endpoint.worker is not None:
            who += f" worker {endpoint.worker}"
        prefix = args.name or "Azure ML"
        return f"{prefix}: {verb} {who}"

    names = [base_name(e) for e in chosen]
    for index, endpoint in enumerate(chosen):
        if names.count(names[index]) > 1:
            names[index] = f"{names[index]} ({endpoint.address})"
    entries = []
    for name, endpoint in zip(names, chosen):
        remote_root = args.remote_root or endpoint.cwd or "."
        if endpoint.mode == "listen":
            entries.append(
                launch_config.attach_config(
                    str(endpoint.host), int(endpoint.port or 0), remote_root=remote_root, name=name,
                    redirect_output=args.redirect_output, **_entry_options(args),
                )
            )
        else:
            entries.append(
                launch_config.listen_config(
                    int(endpoint.port or 0), remote_root=remote_root, host=args.listen_host,
                    name=name, redirect_output=args.redirect_output, **_entry_options(args),
                )
            )
    compounds = []
    if len(entries) > 1:
        compound_name = f"{args.name or 'Azure ML'}: all endpoints"
        compounds.append(launch_config.compound_config(compound_name, [e["name"] for e in entries]))
    return entries, compounds


def cmd_launch_config(args: argparse.Namespace, out: TextIO) -> int:
    """Print attach configurations, or merge them into a launch.json."""
    from amldbg import launch_config, launch_json

    compounds: list[dict[str, Any]] = []
    if args.from_log is not None:
        entries, compounds = _from_log_entries(args)
    elif args.deployment:
        entry = launch_config.deployment_config(
            args.port, host=args.host or "localhost",
            remote_root=args.remote_root or launch_config.DEPLOYMENT_REMOTE_ROOT,
            redirect_output=args.redirect_output, **_entry_options(args),
            **({"name": args.name} if args.name else {}),
        )
        entries = [entry]
    elif args.listen:
        entries = [
            launch_config.listen_config(
                args.port, remote_root=args.remote_root or ".", host=args.listen_host,
                name=args.name, redirect_output=args.redirect_output, **_entry_options(args),
            )
        ]
    elif args.host:
        entries = [
            launch_config.attach_config(
                args.host, args.port, remote_root=args.remote_root or ".", name=args.name,
                redirect_output=args.redirect_output, **_entry_options(args),
            )
        ]
    else:
        raise CliError("say what to attach to: --host HOST, --listen, --deployment or --from-log LOG")
    if args.write:
        try:
            result = launch_json.merge_into_file(args.write, entries, compounds)
        except launch_json.LaunchJsonError as error:
            raise CliError(f"{error}; nothing was changed") from None
        done = []
        if result.created:
            done.append(f"created {result.path}")
        if result.added and not result.created:
            done.append("added " + ", ".join(repr(n) for n in result.added))
        if result.updated:
            done.append("updated " + ", ".join(repr(n) for n in result.updated))
        out.write(f"amldbg launch-config: {result.path}: {'; '.join(done)}\n")
        return EXIT_OK
    out.write(json.dumps(launch_json.new_document(entries, compounds), indent=4) + "\n")
    return EXIT_OK


# --- env ---------------------------------------------------------------------------------------

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
recorded by name only."""

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
    from amldbg import envsnap

    # The command's own imports are not a script's: leave "imported" empty.
    snapshot = envsnap.env_snapshot(record_imports=False)
    text = json.dumps(snapshot, indent=1, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        out.write(text)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise CliError(f"cannot write {args.output}: {error.strerror or error}") from None
    out.write(f"amldbg env snapshot: {args.output}: {envsnap.summary(snapshot)}\n")
    return EXIT_OK


def cmd_env_diff(args: argparse.Namespace, out: TextIO) -> int:
    """Compare two snapshots; exit 1 when they differ."""
    from amldbg import envsnap

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
    differences = envsnap.diff_snapshots(left, right, imports=modules, ignore=args.ignore, sections=sections)
    if args.json:
        out.write(json.dumps([d.to_dict() for d in differences], indent=2) + "\n")
    else:
        out.write(envsnap.format_diff(differences, args.a, args.b) + "\n")
    return EXIT_NEGATIVE if differences else EXIT_OK


# --- doctor ------------------------------------------------------------------------------------

DOCTOR_EPILOG = """\
examples:
  amldbg doctor                                   # settings from the AMLDBG_* variables
  amldbg doctor --remote_debug --remote_debug_port 5679
  amldbg doctor --json

Run it where the script runs (the compute, the container) with the flags the script gets.
Nothing is contacted: the port check binds the port on this machine and closes it.

exit status: 0 when every check passes, 1 when one fails, 2 for bad input."""


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    """Run the doctor's checks."""
    from amldbg import cli_args, doctor

    overrides = {flag.name: getattr(args, flag.name) for flag in cli_args.FLAGS}
    checks = doctor.run_checks(**{k: v for k, v in overrides.items() if v is not None})
    if args.json:
        out.write(json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks], indent=2) + "\n")
    else:
        out.write(doctor.format_checks(checks) + "\n")
    return EXIT_OK if all(check.ok for check in checks) else EXIT_NEGATIVE


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``amldbg`` argument parser with its subcommands."""
    from amldbg import cli_args

    parser = _Parser(
        prog="amldbg",
        description="The developer's side of amldbg: find debug endpoints in Azure ML logs, "
        "write VS Code launch.json entries, compare environments, check a machine.",
        formatter_class=_formatter,
        epilog="run 'amldbg COMMAND --help' for a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"amldbg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    find = commands.add_parser(
        "find", help="list the debug endpoints announced in driver logs", formatter_class=_formatter,
        description="List every debug endpoint announced in Azure ML logs (70_driver_log.txt, "
        "std_log.txt, ParallelRunStep logs/user/... files): node address, port, rank, mode, "
        "whether a debugger attached, and the timeout.",
        epilog=FIND_EPILOG,
    )
    find.add_argument("logs", nargs="*", metavar="LOG", help="log file or folder; '-' or nothing reads standard input")
    find.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    find.set_defaults(run=cmd_find)

    launch = commands.add_parser(
        "launch-config", help="VS Code attach configurations (print or merge into launch.json)",
        formatter_class=_formatter,
        description="Build VS Code attach configurations (\"type\": \"debugpy\") and print them "
        "as a launch.json, or merge them into one with --write.",
        epilog=LAUNCH_EPILOG,
    )
    what = launch.add_mutually_exclusive_group()
    what.add_argument("--host", type=_host, help="attach to a script listening on HOST (the ip_address in its log)")
    what.add_argument("--listen", action="store_true", help="VS Code listens for a script started with --remote_debug_client_ip")
    what.add_argument("--deployment", action="store_true", help="attach to score.py in a deployment container (remote root /var/azureml-app)")
    what.add_argument("--from-log", nargs="+", metavar="LOG", help="one entry per endpoint found in these logs (as 'amldbg find')")
    launch.add_argument("--port", type=_port, default=5678, help="debug port (default: %(default)s)")
    launch.add_argument("--listen-host", type=_host, default="0.0.0.0", help="where VS Code listens with --listen (default: %(default)s)")
    launch.add_argument("--local-root", default="${workspaceFolder}", help="local folder of the script's code (default: %(default)s)")
    launch.add_argument("--remote-root", help="the script's folder on the compute (default: the cwd in the log, else '.')")
    launch.add_argument("--name", help="entry name (a prefix with --from-log)")
    launch.add_argument("--no-just-my-code", dest="just_my_code", action="store_false", help="also step into library code")
    launch.add_argument("--no-redirect-output", dest="redirect_output", action="store_false", help="do not show the script's output in VS Code")
    launch.add_argument("--write", metavar="LAUNCH_JSON", help="merge into this launch.json (e.g. .vscode/launch.json) instead of printing")
    launch.set_defaults(run=cmd_launch_config)

    env = commands.add_parser(
        "env", help="snapshot and diff Python environments", formatter_class=_formatter,
        description="Snapshot this Python environment, or compare two snapshots.",
        epilog=ENV_EPILOG,
    )
    env_commands = env.add_subparsers(dest="env_command", metavar="ACTION", parser_class=_Parser)
    snapshot = env_commands.add_parser(
        "snapshot", help="snapshot this environment", formatter_class=_formatter,
        description="Record the Python version, platform, installed packages, relevant "
        "environment variables, GPU and CUDA of this environment as JSON.",
        epilog=SNAPSHOT_EPILOG,
    )
    snapshot.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    snapshot.set_defaults(run=cmd_env_snapshot)
    diff = env_commands.add_parser(
        "diff", help="what differs between two snapshots", formatter_class=_formatter,
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

    doc = commands.add_parser(
        "doctor", help="check this machine for remote debugging and logging", formatter_class=_formatter,
        description="Check, where the script will run, what remote debugging and logging "
        "need: one line per check, ok or FAIL.",
        epilog=DOCTOR_EPILOG,
    )
    doc.add_argument("--json", action="store_true", help="print JSON for scripts")
    # The script's own flags, so that doctor checks exactly what the script would do. Their
    # defaults are None here: a flag not given falls back to AMLDBG_* as in the script.
    cli_args.add_args(doc, env={})
    flags = {flag.name: flag for flag in cli_args.FLAGS}
    for action in doc._actions:
        flag = flags.get(action.dest)
        if flag is not None:
            # Show the script's default in --help while the parsed default stays None.
            action.help = (action.help or "").replace("%(default)s", str(flag.default))
            action.default = None
    doc.set_defaults(run=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amldbg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        command = "amldbg env" if args.command == "env" else "amldbg"
        choices = "snapshot, diff" if args.command == "env" else "find, launch-config, env, doctor"
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
