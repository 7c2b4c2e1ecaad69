"""``amldbg doctor``: check, on the machine where the script will run, what remote debugging
and logging need.

Each check gives one line, ``ok`` or ``FAIL``. Nothing here contacts another machine: the
port and listen-address checks bind a socket on this machine and close it at once, and the
reverse-connect client is only checked for form. Packages are looked up with
``importlib.util.find_spec`` and ``importlib.metadata``, so debugpy, azureml-core and the
exporters are never imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import json
import os
import platform
import sys
from importlib import metadata
from typing import Any, Mapping, TextIO

from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK
from amldbg.core import environment
from amldbg.core import settings as core_settings
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
_BACKEND_DISTRIBUTIONS = {
    "opencensus": "opencensus-ext-azure",
    "otel": "azure-monitor-opentelemetry-exporter",
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One doctor check: a short name, whether it passed, and a one-line detail."""

    name: str
    ok: bool
    detail: str

    def line(self, width: int = 0) -> str:
        """``ok    name  detail`` or ``FAIL  name  detail``."""
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name.ljust(width)}  {self.detail}"


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    # find_spec of a dotted name imports the parents (namespace packages here, which are
    # cheap); a broken parent counts as "not importable".
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_python() -> Check:
    """The interpreter that runs amldbg (always passes; says which)."""
    return Check("python", True, f"{platform.python_version()} at {sys.executable}")


def check_debugpy() -> Check:
    """debugpy importable, and recent enough for amldbg's timed wait."""
    if not _importable("debugpy"):
        return Check("debugpy", False, "not installed: pip install 'amldbg[debug]' (or debugpy)")
    version = _version_of("debugpy") or "unknown version"
    release = _release(version)
    if release and release < MIN_DEBUGPY:
        wanted = ".".join(map(str, MIN_DEBUGPY))
        return Check("debugpy", False, f"{version} is older than {wanted}: pip install -U debugpy")
    return Check("debugpy", True, f"{version} importable")


def settings_checks(
    env: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[list[Check], core_settings.DebugSettings]:
    """The ``AMLDBG_*`` variables parse, and the settings the script would resolve."""
    checks: list[Check] = []
    clean = dict(env)
    for flag in core_settings.FLAGS:
        raw = env.get(flag.env_var)
        if raw is None:
            continue
        try:
            flag.parse(raw)
        except ValueError as error:
            # The script would warn and use the default; doctor says so and fails.
            checks.append(Check("settings", False, f"{flag.env_var}: {error}; the script would use {flag.default!r}"))
            del clean[flag.env_var]
    settings = core_settings.resolve_settings(None, env=clean, **dict(overrides))
    if not checks:
        mode = (
            f"reverse connect to {settings.remote_debug_client_ip}:{settings.port}"
            if settings.remote_debug_client_ip
            else f"listen on {settings.remote_debug_listen_host}:{settings.port}"
        )
        state = "on" if settings.enabled else "off (enable with --remote_debug or AMLDBG_REMOTE_DEBUG=1)"
        checks.append(Check("settings", True, f"remote debugging {state}; {mode}; timeout {settings.timeout:g} s"))
    return checks, settings


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


def check_port(host: str, port: int) -> Check:
    """The debug port this process would use is free on the listen address."""
    if port == 0:
        return Check("port", True, "0: the system picks a free port")
    if environment.port_available(host, port):
        return Check("port", True, f"{port} is free on {host}")
    fallback = next((p for p in range(port + 1, min(port + 100, 65536)) if environment.port_available(host, p)), None)
    then = f"; the script would move to port {fallback}" if fallback else ""
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
    if environment.is_loopback(address) and not env.get(environment.NODE_ADDRESS_OVERRIDE):
        return Check(
            "node address", False,
            f"{address} ({how}): only reachable from this machine; set {environment.NODE_ADDRESS_OVERRIDE}",
        )
    return Check("node address", True, f"{address} (chosen by {how})")


def check_connection_string(env: Mapping[str, str]) -> Check:
    """The Application Insights connection string, when set, is well formed (key masked)."""
    raw = env.get(connection.CONNECTION_STRING_ENV, "").strip()
    if not raw:
        return Check("app insights", True, f"{connection.CONNECTION_STRING_ENV} not set: logs go to the driver log only")
    try:
        parsed = connection.parse_connection_string(raw)
    except ValueError as error:
        # The parser's messages never contain the key; the value itself is never shown.
        return Check("app insights", False, f"{connection.CONNECTION_STRING_ENV} is malformed: {error}")
    backend = env.get(log_settings.BACKEND_ENV, "").strip().lower() or log_settings.DEFAULT_BACKEND
    distribution = _BACKEND_DISTRIBUTIONS.get(backend)
    if distribution is None:
        return Check("app insights", False, f"{log_settings.BACKEND_ENV}={backend!r} is not one of {', '.join(_BACKEND_DISTRIBUTIONS)}")
    if _version_of(distribution) is None:
        return Check(
            "app insights", False,
            f"{parsed.masked()} is well formed, but the {backend} exporter ({distribution}) is not installed",
        )
    return Check("app insights", True, f"{parsed.masked()} ({backend} exporter)")


def check_sinks() -> Check:
    """Which optional sinks are installed (informational: always passes)."""
    found = []
    missing = []
    for label, distribution, module in OPTIONAL_SINKS:
        version = _version_of(distribution)
        if version is not None and _importable(module.split(".", 1)[0]):
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


def run_checks(env: Mapping[str, str] | None = None, **overrides: Any) -> list[Check]:
    """Run every check; ``overrides`` are remote-debug settings as for ``resolve_settings``."""
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
            # Each local rank listens on the base port plus its local rank, as the script does.
            port = settings.port + topology.local_rank if settings.port else 0
            checks.append(check_port(host, port))
    checks.append(check_node_address(env))
    checks.append(check_connection_string(env))
    checks.append(check_sinks())
    checks.append(check_job(env))
    return checks


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

Run it where the script runs (the compute, the container) with the flags the script gets.
Nothing is contacted: the port check binds the port on this machine and closes it.

exit status: 0 when every check passes, 1 when one fails, 2 for bad input."""


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    """Run the doctor's checks."""
    overrides = {flag.name: getattr(args, flag.name) for flag in core_settings.FLAGS}
    checks = run_checks(**{k: v for k, v in overrides.items() if v is not None})
    if args.json:
        out.write(json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks], indent=2) + "\n")
    else:
        out.write(format_checks(checks) + "\n")
    return EXIT_OK if all(check.ok for check in checks) else EXIT_NEGATIVE
