"""``amldbg doctor``: check, on the machine where the script will run, what remote debugging
and logging need.

Each check gives one line, ``ok`` or ``FAIL``. Without ``--send-test`` nothing here contacts
another machine: the port and listen-address checks bind a socket on this machine and close
it at once, and the reverse-connect client is only checked for form. Packages are looked up
without being imported (:mod:`.checks`).

``--send-test`` (:mod:`.send_test`) sends one marked trace through amldbg's own Application
Insights sink (the backend and connection string the script would use) and reports, in one
line, whether the ingestion endpoint accepted it, rejected it (with the service's reason),
could not be reached, or whether the connection string is malformed.

What doctor resolves agrees with what the script does: it walks the tables of settings
(:data:`amldbg.core.settings.FLAGS`, :data:`amldbg.logs.settings.LOG_SETTINGS`) and takes
the parser's verdict on each variable (:func:`amldbg.core.settings.judge_env`), so an
invalid ``AMLDBG_*`` value is reported and replaced by the default the script falls back to
(off, for every switch); the fallback port is looked for among the ports the script tries,
and every line is masked (instrumentation keys, URL user info, ``Authorization=`` values)
before it is printed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import sys
from typing import Any, Mapping, TextIO

from amldbg.cli.checks import (
    Check,
    backend_missing,
    env_problem,
    ikey_without_connection_string,
    importable,
    masked,
    resolve_backend,
    version_of,
)
from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, Commands, formatter
from amldbg.cli.send_test import DEFAULT_SEND_TIMEOUT, send_test
from amldbg.core import args as core_args
from amldbg.core import environment
from amldbg.core import settings as core_settings
from amldbg.debugger.start import PORT_ATTEMPTS
from amldbg.diagnostics import envsnap
from amldbg.logs import connection
from amldbg.logs import settings as log_settings

#: The oldest debugpy amldbg's debug extra accepts.
MIN_DEBUGPY = (1, 8, 1)

# Optional sinks: what the user sees -> (distribution, importable module).
OPTIONAL_SINKS = (
    ("azureml-core (run metrics)", "azureml-core", "azureml.core"),
    ("opencensus-ext-azure (Application Insights)", "opencensus-ext-azure", "opencensus.ext.azure"),
    ("azure-monitor-opentelemetry-exporter (Application Insights)",
     "azure-monitor-opentelemetry-exporter", "azure.monitor.opentelemetry.exporter"),
    ("mlflow (run metrics)", "mlflow-skinny", "mlflow"),
)
# -- packages --------------------------------------------------------------------------------
def check_python() -> Check:
    """The interpreter that runs amldbg (always passes; says which)."""
    return Check("python", True, f"{platform.python_version()} at {sys.executable}")


def check_debugpy() -> Check:
    """debugpy importable, and recent enough for amldbg's timed wait."""
    if not importable("debugpy"):
        return Check("debugpy", False, "not installed: pip install 'amldbg[debug]' (or debugpy)")
    version = version_of("debugpy") or "unknown version"
    release = envsnap.release(version)
    if release and release < MIN_DEBUGPY:
        wanted = ".".join(map(str, MIN_DEBUGPY))
        return Check("debugpy", False, f"{version} is older than {wanted}: pip install -U debugpy")
    return Check("debugpy", True, f"{version} importable")


# -- remote-debug settings ---------------------------------------------------------------------
def settings_checks(
    env: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[list[Check], core_settings.DebugSettings]:
    """The ``AMLDBG_*`` variables parse, and the settings the script would resolve.

    An invalid value resolves exactly as in the script (``read_env``): its default, which is
    off for every switch that opens a port or waits. The line fails and names the variable.
    """
    problems: list[str] = []
    clean = dict(env)
    for flag in core_settings.FLAGS:
        problem = env_problem(flag.verdict(env))
        if problem is not None:
            problems.append(problem)
            del clean[flag.env_var]  # resolves to the default, without a warning line here
    settings = core_settings.resolve_settings(None, env=clean, **dict(overrides))
    mode = (
        f"reverse connect to {settings.remote_debug_client_ip}:{settings.port}"
        if settings.remote_debug_client_ip
        else f"listen on {settings.remote_debug_listen_host}:{settings.port}"
    )
    state = "on" if settings.enabled else "off (enable with --remote_debug or AMLDBG_REMOTE_DEBUG=1)"
    summary = f"remote debugging {state}; {mode}; timeout {settings.timeout:g} s"
    if problems:
        return [Check("settings", False, "; ".join(problems) + f"; so: {summary}")], settings
    return [Check("settings", True, summary)], settings


def check_listen_address(host: str) -> Check:
    """The listen address can be bound on this machine (a client's IP cannot)."""
    if not environment.port_available(host, 0):
        return Check(
            "listen address",
            False,
            f"{host} is not an address of this machine; listen on 0.0.0.0 and give the VS Code "
            f"machine's address as --remote_debug_client_ip only for reverse connect",
        )
    if environment.is_loopback(host):
        return Check("listen address", True, f"{host} (only clients on this machine can attach)")
    return Check("listen address", True, f"{host} can be bound")


def fallback_ports(port: int) -> range:
    """The ports the script tries after ``port`` when ``port`` is taken (the script tries
    :data:`~amldbg.debugger.start.PORT_ATTEMPTS` ports in all, ``port`` included)."""
    return range(port + 1, min(port + PORT_ATTEMPTS, 65536))


def check_port(host: str, port: int) -> Check:
    """The debug port this process would use is free on the listen address, and if not,
    which port the script would move to (among the same ports the script tries)."""
    if port == 0:
        return Check("port", True, "0: the system picks a free port")
    if environment.port_available(host, port):
        return Check("port", True, f"{port} is free on {host}")
    candidates = fallback_ports(port)
    fallback = next((p for p in candidates if environment.port_available(host, p)), None)
    if fallback is not None:
        then = f"; the script would move to port {fallback}"
    else:
        last = candidates[-1] if len(candidates) else port
        then = (f"; ports {port}-{last} are all taken: the script would continue without a "
                f"debugger")
    return Check("port", False, f"{port} is in use on {host}{then}")


def check_client(client: str, env: Mapping[str, str]) -> Check:
    """A reverse-connect client address is well formed (it is not contacted)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return Check("client", True, f"{client} (a host name; not contacted)")
    if address.is_loopback and environment.run_context(env).in_job:
        return Check("client", False, f"{client} is this node itself, not the VS Code machine")
    return Check("client", True, f"VS Code must listen on {client} (not contacted)")


def check_node_address(env: Mapping[str, str]) -> Check:
    """The address amldbg would announce for this node."""
    address, how = environment.node_address(env)
    override = core_settings.NODE_ADDRESS
    if environment.is_loopback(address) and not override.verdict(env).raw:
        return Check(
            "node address", False,
            f"{address} ({how}): only reachable from this machine; set {override.env_var}",
        )
    return Check("node address", True, f"{address} (chosen by {how})")


# -- Application Insights ---------------------------------------------------------------------
def check_connection_string(env: Mapping[str, str]) -> Check:
    """The Application Insights connection string, when set, is well formed (key masked),
    and the backend the script would use is installed."""
    raw = env.get(connection.CONNECTION_STRING_ENV, "").strip()
    if not raw:
        ikey = ikey_without_connection_string(env)
        if ikey is not None:
            return Check(
                "app insights", False,
                f"{ikey} is set but {connection.CONNECTION_STRING_ENV} is not: amldbg and both "
                f"exporters need the connection string; copy it from the Application Insights "
                f"resource's Overview page into {connection.CONNECTION_STRING_ENV}",
            )
        return Check("app insights", True, f"{connection.CONNECTION_STRING_ENV} not set: logs go to the driver log only")
    try:
        parsed = connection.parse_connection_string(raw)
    except ValueError as error:
        # The parser's messages never contain the key; the value itself is never shown.
        return Check("app insights", False, f"{connection.CONNECTION_STRING_ENV} is malformed: {error}")
    backend, problem = resolve_backend(env)
    missing = backend_missing(backend)
    shown = parsed.masked()
    if problem is not None:
        return Check("app insights", False, f"{problem}; {shown}" + (f"; {missing}" if missing else ""))
    if missing is not None:
        return Check("app insights", False, f"{shown} is well formed, but {missing}")
    aad = ""
    if getattr(parsed, "aad", False):
        aad = (
            "; Entra ID (AAD) asked: amldbg sends with the instrumentation key only (no "
            "credential), which a resource with local authentication disabled refuses"
        )
    return Check("app insights", True, f"{shown} ({backend} exporter){aad}")


# Judged on the "app insights" line when a connection string is set.
_JUDGED_WITH_THE_CONNECTION = ("connection_string", "backend")


def check_delivery(env: Mapping[str, str]) -> Check | None:
    """What stops records from reaching Application Insights that can be seen from here:
    invalid ``AMLDBG_LOG_*`` values, a rank that does not send, no grace period at exit.

    ``None`` when there is nothing to say (no connection string and valid variables).
    Logger levels and handlers set in the script's code cannot be seen from another
    process; the line says which records amldbg sends.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for row in log_settings.ENV_SETTINGS:
        if row.name in _JUDGED_WITH_THE_CONNECTION:
            continue
        verdict = row.verdict(env)
        values[row.name] = verdict.value
        problem = env_problem(verdict)
        if problem is not None:
            problems.append(problem)
    configured = bool(env.get(connection.CONNECTION_STRING_ENV, "").strip())
    if not configured:
        # With a connection string the backend is judged on the "app insights" line.
        backend_problem = resolve_backend(env)[1]
        if backend_problem is not None:
            problems.append(backend_problem)
        return Check("delivery", False, "; ".join(problems)) if problems else None
    topology = environment.topology(env)
    all_ranks = bool(values["all_ranks"])
    if topology.rank != 0 and not all_ranks:
        problems.append(
            f"this process is rank {topology.rank} of {topology.world_size}: only rank 0 sends to "
            f"Application Insights (set {log_settings.ALL_RANKS_ENV}=1 to send from every rank)"
        )
    grace = float(values["grace_period"])
    notes = []
    if grace == 0:
        notes.append(f"{log_settings.GRACE_ENV}=0: records still queued when the script ends are dropped")
    sender = "every rank sends" if all_ranks else f"rank {topology.rank} sends"
    notes.append(
        "amldbg.get_logger() loggers send INFO and above, plain logging calls only after "
        "amldbg.configure_logging(); levels and handlers set in the script cannot be seen from here"
    )
    if problems:
        return Check("delivery", False, "; ".join(problems + notes))
    return Check("delivery", True, f"{sender}; " + "; ".join(notes))


def check_sinks() -> Check:
    """Which optional sinks are installed (informational: always passes)."""
    found = []
    missing = []
    for label, distribution, module in OPTIONAL_SINKS:
        version = version_of(distribution)
        if version is not None and importable(module.split(".", 1)[0]):
            found.append(f"{label.split(' ', 1)[0]} {version}")
        else:
            missing.append(label.split(" ", 1)[0])
    detail = "available: " + (", ".join(found) if found else "none (driver log only)")
    if missing:
        detail += "; not installed: " + ", ".join(missing)
    return Check("sinks", True, detail)


def check_job(env: Mapping[str, str]) -> Check:
    """Whether this looks like an Azure ML job, and which rank this process is."""
    run = environment.run_context(env)
    topology = environment.topology(env)
    where = (
        f"rank {topology.rank} of {topology.world_size} (local rank {topology.local_rank}, "
        f"{topology.launcher})"
    )
    if run.in_job:
        job = f"Azure ML job: run {run.run_id}"
        if run.experiment:
            job += f" in experiment {run.experiment}"
    elif run.run_id:
        job = f"Azure ML run {run.run_id}, but without the token/endpoint an online run needs"
    else:
        job = "not an Azure ML job (metrics go to an offline run / the driver log)"
    return Check("azure ml", True, f"{job}; {where}")


# -- running the checks ----------------------------------------------------------------------
def run_checks(env: Mapping[str, str] | None = None, **overrides: Any) -> list[Check]:
    """Run every check (details masked); ``overrides`` are remote-debug settings as for
    ``resolve_settings``."""
    env = dict(os.environ if env is None else env)
    checks = [check_python(), check_debugpy()]
    setting_checks, settings = settings_checks(env, overrides)
    checks.extend(setting_checks)
    topology = environment.topology(env)
    if settings.remote_debug_client_ip:
        checks.append(check_client(settings.remote_debug_client_ip, env))
    else:
        host = settings.remote_debug_listen_host
        address = check_listen_address(host)
        checks.append(address)
        if address.ok:
            # Each local rank listens on a port of its own, as the script does.
            port = environment.debug_port(settings.port, topology.local_rank)
            checks.append(check_port(host, port))
    checks.append(check_node_address(env))
    checks.extend(telemetry_checks(env))
    checks.append(check_sinks())
    checks.append(check_job(env))
    return masked(checks, env)


def telemetry_checks(env: Mapping[str, str] | None = None) -> list[Check]:
    """The Application Insights checks (masked): connection string and backend, then delivery."""
    env = dict(os.environ if env is None else env)
    checks = [check_connection_string(env)]
    delivery = check_delivery(env)
    if delivery is not None:
        checks.append(delivery)
    return masked(checks, env)


def format_checks(checks: list[Check]) -> str:
    """One line per check, then a verdict line."""
    width = max(len(check.name) for check in checks)
    lines = [check.line(width) for check in checks]
    failed = sum(1 for check in checks if not check.ok)
    lines.append(f"{failed} check{'s' if failed != 1 else ''} failed" if failed else "all checks passed")
    return "\n".join(lines)


DOCTOR_EPILOG = """\
examples:
  amldbg doctor                                   # settings from the AMLDBG_* variables
  amldbg doctor --remote_debug --remote_debug_port 5679
  amldbg doctor --json
  amldbg doctor --send-test                       # one test trace to Application Insights

Run it where the script runs (the compute, the container) with the flags the script gets.
Without --send-test nothing is contacted: the port check binds the port on this machine and
closes it. --send-test sends one trace marked amldbg_send_test=true through the backend and
connection string the script would use (AMLDBG_APPINSIGHTS_BACKEND,
APPLICATIONINSIGHTS_CONNECTION_STRING) and shows only the Application Insights checks.

exit status: 0 when every check passes (with --send-test: when the trace was accepted),
1 when one fails, 2 for bad input."""


def _send_timeout(text: str) -> float:
    """An argparse type: seconds above 0 for ``--timeout``."""
    try:
        value = core_settings.parse_timeout(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def register(commands: Commands) -> None:
    """Add ``amldbg doctor`` to the subcommands of the ``amldbg`` parser: its own options
    (``--json``, ``--send-test``, ``--timeout``) and the script's ``--remote_debug*`` flags."""
    parser = commands.add_parser(
        "doctor", help="check this machine for remote debugging and logging", formatter_class=formatter,
        description="Check, where the script will run, what remote debugging and logging "
        "need: one line per check, ok or FAIL. --send-test sends one test trace to "
        "Application Insights and reports the answer.",
        epilog=DOCTOR_EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--send-test", action="store_true",
        help="send one marked trace to Application Insights and report the ingestion answer",
    )
    parser.add_argument(
        "--timeout", type=_send_timeout, default=DEFAULT_SEND_TIMEOUT, metavar="SECONDS",
        help="with --send-test: seconds to wait for the exporter and the answer (default: %(default)g)",
    )
    # The script's own flags, so that doctor checks exactly what the script would do. Their
    # defaults are None here: a flag not given falls back to AMLDBG_* as in the script.
    core_args.add_args(parser, env={})
    flags = {flag.name: flag for flag in core_settings.FLAGS}
    for action in parser._actions:
        flag = flags.get(action.dest)
        if flag is not None:
            # Show the script's default in --help while the parsed default stays None.
            action.help = (action.help or "").replace("%(default)s", str(flag.default))
            action.default = None
    parser.set_defaults(run=cmd_doctor)


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    """Run the doctor's checks (with ``--send-test``: the telemetry checks and the send)."""
    env = dict(os.environ)
    if getattr(args, "send_test", False):
        timeout = getattr(args, "timeout", DEFAULT_SEND_TIMEOUT) or DEFAULT_SEND_TIMEOUT
        sent = send_test(env, timeout)
        checks = telemetry_checks(env) + [sent]
        status = EXIT_OK if sent.ok else EXIT_NEGATIVE
    else:
        overrides = {flag.name: getattr(args, flag.name, None) for flag in core_settings.FLAGS}
        checks = run_checks(env, **{k: v for k, v in overrides.items() if v is not None})
        status = EXIT_OK if all(check.ok for check in checks) else EXIT_NEGATIVE
    checks = masked(checks, env)
    if args.json:
        out.write(json.dumps([check.to_dict() for check in checks], indent=2) + "\n")
    else:
        out.write(format_checks(checks) + "\n")
    return status
