"""``amldbg doctor``: check, on the machine where the script will run, what remote debugging
and logging need.

Each check gives one line, ``ok`` or ``FAIL``. Without ``--send-test`` nothing here contacts
another machine: the port and listen-address checks bind a socket on this machine and close
it at once, and the reverse-connect client is only checked for form. Packages are looked up
with ``importlib.util.find_spec`` and ``importlib.metadata``, so debugpy, azureml-core and
the exporters are never imported.

``--send-test`` sends one marked trace through amldbg's own Application Insights sink (the
backend and connection string the script would use) and reports, in one line, whether the
ingestion endpoint accepted it, rejected it (with the service's reason), could not be
reached, or whether the connection string is malformed.

What doctor resolves agrees with what the script does: an invalid ``AMLDBG_*`` value is
reported and replaced by the default the script falls back to (off, for every switch), the
fallback port is looked for among the ports the script tries, and every line is masked
(instrumentation keys, URL user info, ``Authorization=`` values) before it is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http
import importlib.util
import ipaddress
import json
import logging
import os
import platform
import re
import sys
import threading
import time
import uuid
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping, TextIO

from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK
from amldbg.core import environment, safetext, secrets
from amldbg.core import settings as core_settings
from amldbg.core.guard import describe
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
_BACKEND_DISTRIBUTIONS = {
    "opencensus": ("opencensus-ext-azure", "opencensus.ext.azure", "appinsights"),
    "otel": ("azure-monitor-opentelemetry-exporter", "azure.monitor.opentelemetry.exporter", "otel"),
}

#: Instrumentation-key variables people set instead of a connection string (the classic SDK's,
#: and the Azure ML inference server's, which it reads only with AML_APP_INSIGHTS_ENABLED=true).
IKEY_ENV = "APPINSIGHTS_INSTRUMENTATIONKEY"
INFERENCE_SERVER_IKEY_ENV = "AML_APP_INSIGHTS_KEY"
INFERENCE_SERVER_ENABLED_ENV = "AML_APP_INSIGHTS_ENABLED"

#: ``--timeout`` of ``--send-test``: seconds for loading the exporter and the ingestion answer.
DEFAULT_SEND_TIMEOUT = 10.0
#: The logger name and the custom dimension that mark the test trace.
SEND_TEST_LOGGER = "amldbg.doctor"
SEND_TEST_DIMENSION = "amldbg_send_test"
SEND_TEST_ID_DIMENSION = "amldbg_send_test_id"
#: Slack after ``--timeout`` for the sending thread to return (a request may overrun its
#: own timeout by a scheduling delay).
_JOIN_MARGIN = 1.0

#: Longest detail shown for a value or a message read from elsewhere.
_MAX_SHOWN = 300


# -- what is printed -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    """One doctor check: a short name, whether it passed, and a one-line detail.

    ``outcome`` is set for the send test only: ``accepted``, ``rejected``, ``unreachable``,
    ``malformed``, ``not-configured``, ``backend-missing`` or ``backend-error``.
    """

    name: str
    ok: bool
    detail: str
    outcome: str | None = None

    def line(self, width: int = 0) -> str:
        """``ok    name  detail`` or ``FAIL  name  detail``."""
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name.ljust(width)}  {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON-ready data (``outcome`` only when set)."""
        data: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail}
        if self.outcome is not None:
            data["outcome"] = self.outcome
        return data


def _secret_values(env: Mapping[str, str]) -> list[str]:
    """Values in ``env`` that must never be printed, longest first: those of secret-looking
    names (:func:`amldbg.core.secrets.is_secret_name`), the instrumentation-key variables,
    and the key and ``Authorization`` of the connection string."""
    found: set[str] = set()
    for name, value in env.items():
        value = str(value).strip()
        # Keys and tokens are long; a short value ("true", "1") must stay readable elsewhere.
        if len(value) >= 8 and (secrets.is_secret_name(name) or name in (IKEY_ENV, INFERENCE_SERVER_IKEY_ENV)):
            found.add(value)
    for segment in env.get(connection.CONNECTION_STRING_ENV, "").split(";"):
        key, _, value = segment.partition("=")
        if key.strip().lower() in ("instrumentationkey", "authorization") and len(value.strip()) >= 4:
            found.update((value.strip(), value.strip().lower()))
    return sorted(found, key=len, reverse=True)


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """``text`` safe to print on one line: the ``known`` secret values and whatever
    :func:`amldbg.core.secrets.mask_value` recognises (URL user info, ``Authorization=``,
    ``InstrumentationKey=`` and other credential shapes) masked, then control, bidi and
    line-separator characters escaped (:func:`amldbg.core.safetext.safe`)."""
    for secret in known:
        if secret:
            text = text.replace(secret, secrets.MASK)
    return safetext.safe(text)


def _shown(value: str) -> str:
    """A value read from the environment or a service, shortened for one line."""
    value = str(value)
    return value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "..."


# -- packages --------------------------------------------------------------------------------
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


def check_python() -> Check:
    """The interpreter that runs amldbg (always passes; says which)."""
    return Check("python", True, f"{platform.python_version()} at {sys.executable}")


def check_debugpy() -> Check:
    """debugpy importable, and recent enough for amldbg's timed wait."""
    if not _importable("debugpy"):
        return Check("debugpy", False, "not installed: pip install 'amldbg[debug]' (or debugpy)")
    version = _version_of("debugpy") or "unknown version"
    release = envsnap.release(version)
    if release and release < MIN_DEBUGPY:
        wanted = ".".join(map(str, MIN_DEBUGPY))
        return Check("debugpy", False, f"{version} is older than {wanted}: pip install -U debugpy")
    return Check("debugpy", True, f"{version} importable")


# -- remote-debug settings ---------------------------------------------------------------------
def _describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return "off" if not value else "on"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "all" if value is None else str(value)


def _invalid_env(name: str, raw: str, parse: Callable[[Any], Any], default: Any,
                 blank_is_default: bool = True) -> str | None:
    """What is wrong with ``name=raw`` as ``core_settings.read_env`` sees it, else ``None``.

    Mirrors ``read_env``: a blank value is the default (for switches, blank is off and
    parsed as such), an unparsable one warns in the script and gives ``default``.
    """
    if blank_is_default and not str(raw).strip():
        return None
    try:
        parse(raw)
    except ValueError as error:
        return f"{name}: {_shown(str(error))}; the script warns and uses {_describe_value(default)}"
    return None


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
        raw = env.get(flag.env_var)
        if raw is None:
            continue
        problem = _invalid_env(flag.env_var, raw, flag.parse, flag.default, blank_is_default=not flag.is_switch)
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
    if environment.is_loopback(address) and not env.get(environment.NODE_ADDRESS_OVERRIDE):
        return Check(
            "node address", False,
            f"{address} ({how}): only reachable from this machine; set {environment.NODE_ADDRESS_OVERRIDE}",
        )
    return Check("node address", True, f"{address} (chosen by {how})")


# -- Application Insights ---------------------------------------------------------------------
_parse_backend = core_settings.parse_choice(log_settings.BACKENDS)


def resolve_backend(env: Mapping[str, str]) -> tuple[str, str | None]:
    """The backend the script would use, and what is wrong with ``AMLDBG_APPINSIGHTS_BACKEND``
    (``None`` when nothing): an invalid value means the default, as in the script."""
    raw = env.get(log_settings.BACKEND_ENV)
    if raw is None or not raw.strip():
        return log_settings.DEFAULT_BACKEND, None
    problem = _invalid_env(log_settings.BACKEND_ENV, raw, _parse_backend, log_settings.DEFAULT_BACKEND)
    if problem is not None:
        return log_settings.DEFAULT_BACKEND, problem
    return str(_parse_backend(raw)), None


def _backend_missing(backend: str) -> str | None:
    distribution, module, extra = _BACKEND_DISTRIBUTIONS[backend]
    if _version_of(distribution) is None or not _importable(module.split(".", 1)[0]):
        return (f"the {backend} exporter ({distribution}) is not installed: "
                f"pip install 'amldbg[{extra}]'")
    return None


def _ikey_without_connection_string(env: Mapping[str, str]) -> str | None:
    if env.get(IKEY_ENV, "").strip():
        return IKEY_ENV
    if env.get(INFERENCE_SERVER_IKEY_ENV, "").strip() and \
            env.get(INFERENCE_SERVER_ENABLED_ENV, "").strip().lower() == "true":
        return INFERENCE_SERVER_IKEY_ENV
    return None


def check_connection_string(env: Mapping[str, str]) -> Check:
    """The Application Insights connection string, when set, is well formed (key masked),
    and the backend the script would use is installed."""
    raw = env.get(connection.CONNECTION_STRING_ENV, "").strip()
    if not raw:
        ikey = _ikey_without_connection_string(env)
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
    missing = _backend_missing(backend)
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


_LOG_VARIABLES: tuple[tuple[str, Callable[[Any], Any], Any], ...] = (
    (log_settings.ALL_RANKS_ENV, core_settings.parse_bool, False),
    (log_settings.GRACE_ENV, core_settings.parse_timeout, log_settings.DEFAULT_GRACE_PERIOD),
    (log_settings.QUEUE_ENV, core_settings.parse_positive_int, log_settings.DEFAULT_QUEUE_SIZE),
    (log_settings.METRICS_ENV, core_settings.parse_choice(log_settings.METRIC_DESTINATIONS), "auto"),
)


def _log_value(env: Mapping[str, str], name: str, parse: Callable[[Any], Any], default: Any) -> tuple[Any, str | None]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default, None
    problem = _invalid_env(name, raw, parse, default)
    return (default, problem) if problem is not None else (parse(raw), None)


def check_delivery(env: Mapping[str, str]) -> Check | None:
    """What stops records from reaching Application Insights that can be seen from here:
    invalid ``AMLDBG_LOG_*`` values, a rank that does not send, no grace period at exit.

    ``None`` when there is nothing to say (no connection string and valid variables).
    Logger levels and handlers set in the script's code cannot be seen from another
    process; the line says which records amldbg sends.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, parse, default in _LOG_VARIABLES:
        values[name], problem = _log_value(env, name, parse, default)
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
    all_ranks = bool(values[log_settings.ALL_RANKS_ENV])
    if topology.rank != 0 and not all_ranks:
        problems.append(
            f"this process is rank {topology.rank} of {topology.world_size}: only rank 0 sends to "
            f"Application Insights (set {log_settings.ALL_RANKS_ENV}=1 to send from every rank)"
        )
    grace = float(values[log_settings.GRACE_ENV])
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


# -- the send test ---------------------------------------------------------------------------
class _TransportCapture(logging.Handler):
    """Keeps the exporters' messages made on the sending thread, and keeps them from printing.

    A filter on each of the exporters' transport loggers
    (:data:`amldbg.logs.envelopes.TRANSPORT_LOGGERS`) takes the sending thread's records and
    stops them there, so no handler of the script's (or ``logging.lastResort``) prints them;
    as a handler on the exporters' parent loggers it takes what other loggers of theirs say
    on that thread. ``urllib3.connectionpool`` is lowered to DEBUG meanwhile, for its
    ``"POST /v2.1/track HTTP/1.1" 400`` line: the one place both backends show the HTTP
    status of the ingestion answer.
    """

    PARENTS = ("opencensus", "azure", "urllib3", "requests")
    LOUDER = {"urllib3.connectionpool": logging.DEBUG}

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread: int | None = None
        self.messages: list[str] = []
        self.keep = False
        self._levels: dict[str, int] = {}
        self._filtered: list[logging.Logger] = []

    def _take(self, record: logging.LogRecord) -> bool:
        """True (and the message kept) for a record made on the sending thread."""
        if self.thread is None or record.thread != self.thread:
            return False
        try:
            self.messages.append(record.getMessage())
        except Exception:
            self.messages.append(str(record.msg))
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logger filter: the sending thread's records stop here, the others go on."""
        return not self._take(record)

    def emit(self, record: logging.LogRecord) -> None:
        """As a handler on the parent loggers: keep what the sending thread says."""
        self._take(record)

    def handle(self, record: logging.LogRecord) -> bool:
        """Emit without the handler's own filtering (``filter`` is the loggers' side)."""
        self.emit(record)
        return True

    def __enter__(self) -> _TransportCapture:
        from amldbg.logs import envelopes

        for name in envelopes.TRANSPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._filtered.append(logger)
        for name in self.PARENTS:
            logging.getLogger(name).addHandler(self)
        for name, level in self.LOUDER.items():
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(level)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self.keep:
            # The sending thread still runs (a hanging endpoint): its late messages must
            # not be printed either (they may echo the envelope).
            return
        for logger in self._filtered:
            logger.removeFilter(self)
        for name in self.PARENTS:
            logging.getLogger(name).removeHandler(self)


@dataclasses.dataclass
class _Attempt:
    """What happened to the test trace (filled by the sending thread)."""

    loaded: bool = False
    result: str | None = None  # export.OK / RETRY / DROP
    load_error: str = ""
    send_error: str = ""
    last_error: str = ""
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_HTTP_LINE = re.compile(r'"(?:POST|PUT) [^"]*" (\d{3})\b')
_STATUS_PATTERNS = (
    re.compile(r"\bserver side error (\d{3})\b"),  # OpenCensus
    re.compile(r"\bResponse status: (\d{3})\b"),  # azure-core's HTTP logging policy
    re.compile(r"\bHTTP (\d{3})\b"),  # a sink's last_error
)
_OTEL_REASON = re.compile(r"invalid status '([^']*)'")
_DATA_DROP = re.compile(r"Data drop (\d{3}): (.*?)(?: [\[{(<]|\.?$)")


def _http_status(messages: list[str]) -> int | None:
    status = None
    for message in messages:
        for pattern in (_HTTP_LINE,) + _STATUS_PATTERNS:
            for match in pattern.finditer(message):
                status = int(match.group(1))
    return status


_SINK_REASON = re.compile(r"^HTTP \d{3}: (.+)$")


def _service_reason(messages: list[str]) -> str:
    """The ingestion service's own words: ``errors[].message`` of its JSON answer."""
    reasons: list[str] = []
    for message in messages:
        start = message.find("{")
        while start != -1:
            try:
                body, _ = json.JSONDecoder().raw_decode(message[start:])
            except ValueError:
                start = message.find("{", start + 1)
                continue
            if isinstance(body, dict):
                for error in body.get("errors") or []:
                    if isinstance(error, dict) and error.get("message"):
                        reasons.append(str(error["message"]))
            break
        for match in _DATA_DROP.finditer(message):
            reasons.append(match.group(2))
        sink_said = _SINK_REASON.search(message)
        if sink_said and "{" not in sink_said.group(1):
            reasons.append(sink_said.group(1))  # a sink's last_error: "HTTP 400: <reason>"
    unique = list(dict.fromkeys(reason.strip().rstrip(".") for reason in reasons if reason.strip()))
    return "; ".join(unique)


def _unreachable_cause(messages: list[str], timeout: float) -> str:
    text = " ".join(messages)
    lowered = text.lower()
    if "connection refused" in lowered or "errno 111" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname", "getaddrinfo",
                                  "failed to resolve", "nameresolutionerror", "temporary failure in name")):
        return "the endpoint's host name does not resolve"
    if "certificate" in lowered or "ssl" in lowered:
        return "the TLS handshake failed: " + _shown(messages[-1])
    if any(s in lowered for s in ("timed out", "time out", "timeout")):
        return f"no answer within {timeout:g} s"
    if messages:
        return _shown(messages[-1])
    return "no answer"


def _test_record(test_id: str) -> tuple[Any, ...]:
    from amldbg.logs import context, envelopes

    dims = context.context_dimensions()
    where = f"{dims.get('node_address', 'unknown')} rank {dims.get('rank', '0')} pid {os.getpid()}"
    message = (f"amldbg doctor --send-test: test record {test_id} from {where}; "
               "safe to ignore")
    record = logging.LogRecord(SEND_TEST_LOGGER, logging.INFO, __file__, 0, message, None, None, "send_test")
    user = {SEND_TEST_DIMENSION: "true", SEND_TEST_ID_DIMENSION: test_id}
    return envelopes.snapshot(record, message, user)


def _send(backend: str, parsed: connection.ConnectionString, timeout: float, test_id: str,
          attempt: _Attempt, capture: _TransportCapture) -> None:
    """On the sending thread: build the real sink, send the one record within the time left."""
    deadline = time.monotonic() + timeout
    capture.thread = threading.get_ident()
    try:
        from amldbg.logs import appinsights

        settings = log_settings.LogSettings(connection_string=parsed.value, backend=backend)
        sink = appinsights.create_sink(backend, parsed, settings)
    except Exception as error:
        attempt.load_error = describe(error)
        attempt.done.set()
        return
    attempt.loaded = True
    try:
        attempt.result = sink.send([_test_record(test_id)], max(0.1, deadline - time.monotonic()))
    except Exception as error:
        attempt.send_error = describe(error)
    attempt.last_error = str(getattr(sink, "last_error", "") or "")
    with contextlib.suppress(Exception):
        sink.close(0.5)
    attempt.done.set()


def send_test(env: Mapping[str, str] | None = None, timeout: float = DEFAULT_SEND_TIMEOUT) -> Check:
    """Send one marked trace through the Application Insights sink the script would use.

    The backend and connection string come from ``env`` as in the script
    (``AMLDBG_APPINSIGHTS_BACKEND``, ``APPLICATIONINSIGHTS_CONNECTION_STRING``); the record
    carries the run-context dimensions plus ``amldbg_send_test=true`` and a test id.
    Loading the exporter and the ingestion answer together take at most ``timeout``
    seconds. Returns the ``send test`` check, masked; its ``outcome`` is ``accepted``,
    ``rejected`` (with the service's reason), ``unreachable``, ``malformed``,
    ``not-configured``, ``backend-missing`` (the backend's package) or ``backend-error``
    (the exporter failed to load). Never raises for what it finds.
    """
    env = dict(os.environ if env is None else env)
    return masked([_send_test(env, timeout)], env)[0]


def _send_test(env: Mapping[str, str], timeout: float) -> Check:
    from amldbg.logs import export

    name = "send test"
    raw = env.get(connection.CONNECTION_STRING_ENV, "").strip()
    if not raw:
        ikey = _ikey_without_connection_string(env)
        hint = f" ({ikey} alone is not enough)" if ikey else ""
        return Check(name, False, f"not sent: {connection.CONNECTION_STRING_ENV} is not set{hint}",
                     outcome="not-configured")
    try:
        parsed = connection.parse_connection_string(raw)
    except ValueError as error:
        return Check(name, False, f"not sent: malformed connection string: {error}", outcome="malformed")
    backend, _ = resolve_backend(env)
    missing = _backend_missing(backend)
    if missing is not None:
        return Check(name, False, f"not sent: {missing}", outcome="backend-missing")
    endpoint = parsed.ingestion_endpoint
    test_id = uuid.uuid4().hex[:16]
    attempt = _Attempt()
    started = time.monotonic()
    with _TransportCapture() as capture:
        thread = threading.Thread(
            target=_send, args=(backend, parsed, timeout, test_id, attempt, capture),
            name="amldbg-doctor-send", daemon=True,
        )
        thread.start()
        attempt.done.wait(timeout + _JOIN_MARGIN)
        capture.keep = not attempt.done.is_set()
        messages = list(capture.messages)
    took = time.monotonic() - started
    if attempt.last_error:
        messages.append(attempt.last_error)
    via = f"{backend} exporter"
    if not attempt.done.is_set():
        if not attempt.loaded:
            return Check(name, False, f"not sent: the {via} did not load within {timeout:g} s "
                         "(try a longer --timeout)", outcome="backend-error")
        return Check(name, False, f"unreachable: {endpoint} gave no answer within {timeout:g} s ({via})",
                     outcome="unreachable")
    if attempt.load_error:
        return Check(name, False, f"not sent: the {via} could not be loaded: {_shown(attempt.load_error)}",
                     outcome="backend-error")
    if attempt.result == export.OK:
        return Check(
            name, True,
            f"accepted by {endpoint} in {took:.1f} s ({via}); find it with: traces | where "
            f"customDimensions.{SEND_TEST_ID_DIMENSION} == '{test_id}'",
            outcome="accepted",
        )
    status = _http_status(messages)
    if status is not None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            otel = [m.group(1) for text in messages for m in _OTEL_REASON.finditer(text)]
            phrase = otel[-1] if otel else ""
        reason = _service_reason(messages)
        retry = ("a temporary error: the script keeps such records and retries"
                 if attempt.result == export.RETRY else "the script drops such records")
        said = f": {_shown(reason)}" if reason else " (the service gave no reason)"
        return Check(name, False, f"rejected by {endpoint}: HTTP {status} {phrase}{said}; {retry} ({via})",
                     outcome="rejected")
    cause = _unreachable_cause(messages + ([attempt.send_error] if attempt.send_error else []), timeout)
    return Check(name, False, f"unreachable: {endpoint}: {cause} ({via})", outcome="unreachable")


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
            # Each local rank listens on the base port plus its local rank, as the script does.
            port = settings.port + topology.local_rank if settings.port else 0
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


def masked(checks: list[Check], env: Mapping[str, str]) -> list[Check]:
    """``checks`` with every detail passed through :func:`scrub` (nothing secret is printed)."""
    known = _secret_values(env)
    return [dataclasses.replace(check, detail=scrub(check.detail, known)) for check in checks]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Doctor's own options: ``--json``, ``--send-test`` and ``--timeout``."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--send-test", action="store_true",
        help="send one marked trace to Application Insights and report the ingestion answer",
    )
    parser.add_argument(
        "--timeout", type=_send_timeout, default=DEFAULT_SEND_TIMEOUT, metavar="SECONDS",
        help="with --send-test: seconds to wait for the exporter and the answer (default: %(default)g)",
    )


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
