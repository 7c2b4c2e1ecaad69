"""``amldbg launch-config``: VS Code attach configurations, printed or merged into launch.json."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from amldbg.cli import find, launch_json
from amldbg.cli.common import EXIT_OK, CliError, Commands, formatter, host, port, printable
from amldbg.core import settings, vscode

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


def _attachable(endpoint: Any) -> bool:
    """Whether an endpoint read from a log may become a launch.json entry.

    The log is untrusted: the port must be a real TCP port (1..65535) and the host a valid
    host name or address, whatever the scanner let through.
    """
    port = endpoint.port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return False
    try:
        settings.parse_host(endpoint.host)
    except ValueError:
        return False
    if not endpoint.host or printable(endpoint.host) != endpoint.host:
        return False
    # A listener that failed has no address to attach to; a reverse connect that failed is
    # exactly the case where VS Code needs the listening entry for the next run.
    if endpoint.mode == "connect":
        return True
    return bool(endpoint.mode == "listen" and endpoint.state != "failed")


def _from_log_entries(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    usable = [
        e for e in find.scan(args.from_log, sys.stdin, prog="amldbg launch-config")
        if _attachable(e)
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
            who += f" worker {printable(endpoint.worker)}"  # read from the log
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
                vscode.attach_config(
                    str(endpoint.host), int(endpoint.port or 0), remote_root=remote_root, name=name,
                    redirect_output=args.redirect_output, **_entry_options(args),
                )
            )
        else:
            entries.append(
                vscode.listen_config(
                    int(endpoint.port or 0), remote_root=remote_root, host=args.listen_host,
                    name=name, redirect_output=args.redirect_output, **_entry_options(args),
                )
            )
    compounds = []
    if len(entries) > 1:
        compound_name = f"{args.name or 'Azure ML'}: all endpoints"
        compounds.append(vscode.compound_config(compound_name, [e["name"] for e in entries]))
    return entries, compounds


def cmd_launch_config(args: argparse.Namespace, out: TextIO) -> int:
    """Print attach configurations, or merge them into a launch.json."""
    compounds: list[dict[str, Any]] = []
    if args.from_log is not None:
        entries, compounds = _from_log_entries(args)
    elif args.deployment:
        entry = vscode.deployment_config(
            args.port, host=args.host or "localhost",
            remote_root=args.remote_root or vscode.DEPLOYMENT_REMOTE_ROOT,
            redirect_output=args.redirect_output, **_entry_options(args),
            **({"name": args.name} if args.name else {}),
        )
        entries = [entry]
    elif args.listen:
        entries = [
            vscode.listen_config(
                args.port, remote_root=args.remote_root or ".", host=args.listen_host,
                name=args.name, redirect_output=args.redirect_output, **_entry_options(args),
            )
        ]
    elif args.host:
        entries = [
            vscode.attach_config(
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
        out.write(printable(f"amldbg launch-config: {result.path}: {'; '.join(done)}") + "\n")
        return EXIT_OK
    out.write(json.dumps(launch_json.new_document(entries, compounds), indent=4) + "\n")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``amldbg launch-config`` to the subcommands of the ``amldbg`` parser."""
    parser = commands.add_parser(
        "launch-config", help="VS Code attach configurations (print or merge into launch.json)",
        formatter_class=formatter,
        description="Build VS Code attach configurations (\"type\": \"debugpy\") and print them "
        "as a launch.json, or merge them into one with --write.",
        epilog=LAUNCH_EPILOG,
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--host", type=host, help="attach to a script listening on HOST (the ip_address in its log)")
    what.add_argument("--listen", action="store_true", help="VS Code listens for a script started with --remote_debug_client_ip")
    what.add_argument("--deployment", action="store_true", help="attach to score.py in a deployment container (remote root /var/azureml-app)")
    what.add_argument("--from-log", nargs="+", metavar="LOG", help="one entry per endpoint found in these logs (as 'amldbg find')")
    parser.add_argument("--port", type=port, default=5678, help="debug port (default: %(default)s)")
    parser.add_argument("--listen-host", type=host, default="0.0.0.0", help="where VS Code listens with --listen (default: %(default)s)")
    parser.add_argument("--local-root", default="${workspaceFolder}", help="local folder of the script's code (default: %(default)s)")
    parser.add_argument("--remote-root", help="the script's folder on the compute (default: the cwd in the log, else '.')")
    parser.add_argument("--name", help="entry name (a prefix with --from-log)")
    parser.add_argument("--no-just-my-code", dest="just_my_code", action="store_false", help="also step into library code")
    parser.add_argument("--no-redirect-output", dest="redirect_output", action="store_false", help="do not show the script's output in VS Code")
    parser.add_argument("--write", metavar="LAUNCH_JSON", help="merge into this launch.json (e.g. .vscode/launch.json) instead of printing")
    parser.set_defaults(run=cmd_launch_config)
