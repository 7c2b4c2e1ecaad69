"""Process-wide logging settings, the environment variables behind them, and connection strings.

Everything here is standard library only. The connection string is parsed and checked by
amldbg itself before any exporter sees it, because both exporters fail on details that are
easy to get wrong by hand (an upper-case instrumentation key, a trailing ``;``), and
because their own error messages may echo the key. Only :func:`mask` output is ever printed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

#: Environment variables amldbg reads for logging (the first is the exporters' own).
CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
BACKEND_ENV = "AMLDBG_APPINSIGHTS_BACKEND"
GRACE_ENV = "AMLDBG_LOG_GRACE_PERIOD"
QUEUE_ENV = "AMLDBG_LOG_QUEUE_SIZE"
ALL_RANKS_ENV = "AMLDBG_LOG_ALL_RANKS"
METRICS_ENV = "AMLDBG_METRICS"

BACKENDS = ("opencensus", "otel")
METRIC_DESTINATIONS = ("auto", "azureml", "mlflow", "driver-log")

#: Defaults, documented in the README.
DEFAULT_GRACE_PERIOD = 3.0
DEFAULT_QUEUE_SIZE = 20_000
DEFAULT_BACKEND = "opencensus"
#: Where ingestion goes when the connection string names no endpoint (the service default).
DEFAULT_INGESTION_ENDPOINT = "https://dc.services.visualstudio.com"

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ConnectionStringError(ValueError):
    """A connection string amldbg cannot use; the message never contains the key."""


@dataclasses.dataclass(frozen=True)
class ConnectionString:
    """A checked Application Insights connection string.

    ``value`` is the normalised string handed to the exporters (key lower-cased, empty
    segments removed); :meth:`masked` is what may be printed.
    """

    instrumentation_key: str
    ingestion_endpoint: str
    value: str

    def masked(self) -> str:
        """The connection string with the instrumentation key hidden."""
        return f"InstrumentationKey={mask(self.instrumentation_key)};IngestionEndpoint={self.ingestion_endpoint}"

    def __repr__(self) -> str:  # dataclass repr would print the key
        return f"ConnectionString({self.masked()!r})"


def mask(secret: str) -> str:
    """Hide a secret entirely except its length class: ``"****"`` for anything non-empty."""
    return "****" if secret else "(empty)"


def parse_connection_string(text: str) -> ConnectionString:
    """Check and normalise an Application Insights connection string.

    Accepts ``InstrumentationKey=<guid>;IngestionEndpoint=<url>[;...]`` in any key case,
    with surrounding blanks or a trailing ``;``. Raises :class:`ConnectionStringError`
    (whose message does not contain the key) when it cannot be used.
    """
    fields: dict[str, str] = {}
    for segment in text.strip().split(";"):
        segment = segment.strip()
        if not segment:
            continue  # a trailing or doubled ';' breaks OpenCensus' own parser
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise ConnectionStringError(f"segment without 'key=value' (segment {len(fields) + 1})")
        fields[key.strip().lower()] = value.strip()
    ikey = fields.get("instrumentationkey", "").lower()
    if not ikey:
        raise ConnectionStringError("no InstrumentationKey")
    if not _GUID.match(ikey):
        raise ConnectionStringError("InstrumentationKey is not a GUID")
    auth = fields.get("authorization")
    if auth is not None and auth.lower() != "ikey":
        raise ConnectionStringError(f"Authorization={auth} is not supported by amldbg")
    endpoint = fields.get("ingestionendpoint", "")
    if not endpoint:
        suffix = fields.get("endpointsuffix")
        if suffix:
            location = fields.get("location")
            endpoint = "https://" + (location + "." if location else "") + "dc." + suffix
        else:
            endpoint = DEFAULT_INGESTION_ENDPOINT
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ConnectionStringError("IngestionEndpoint is not an http(s) URL")
    endpoint = endpoint.rstrip("/")
    # No trailing '/': OpenCensus appends "/v2.1/track" as is (a '//' path).
    value = f"InstrumentationKey={ikey};IngestionEndpoint={endpoint}"
    return ConnectionString(instrumentation_key=ikey, ingestion_endpoint=endpoint, value=value)


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value >= 0 else default


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


@dataclasses.dataclass
class LogSettings:
    """Process-wide choices for amldbg's logging and metrics, filled from the environment.

    ``connection_string`` is the raw text (``None``: no Application Insights);
    ``backend`` is ``"opencensus"`` (default) or ``"otel"``; ``grace_period`` bounds the
    flush at exit in seconds; ``queue_size`` bounds each background queue (when full, the
    oldest record is dropped); ``all_ranks`` lets every rank of a distributed job send
    metrics and Application Insights records (default: rank 0 only);
    ``metrics_to_appinsights`` also sends each metric as a trace; ``metrics`` picks the
    metric destination (``"auto"``, ``"azureml"``, ``"mlflow"``, ``"driver-log"``);
    ``run`` is an explicit azureml-core ``Run`` to log metrics to.
    """

    connection_string: str | None = None
    backend: str = DEFAULT_BACKEND
    grace_period: float = DEFAULT_GRACE_PERIOD
    queue_size: int = DEFAULT_QUEUE_SIZE
    all_ranks: bool = False
    metrics_to_appinsights: bool = False
    metrics: str = "auto"
    run: Any = None

    def __repr__(self) -> str:  # never show the connection string
        shown = dataclasses.replace(self, connection_string="****" if self.connection_string else None)
        fields = ", ".join(f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(shown))
        return f"LogSettings({fields})"


def from_environment(env: Mapping[str, str] | None = None) -> LogSettings:
    """Settings as the environment variables give them (documented in the README)."""
    env = os.environ if env is None else env
    backend = env.get(BACKEND_ENV, "").strip().lower() or DEFAULT_BACKEND
    metrics = env.get(METRICS_ENV, "").strip().lower() or "auto"
    return LogSettings(
        connection_string=env.get(CONNECTION_STRING_ENV, "").strip() or None,
        backend=backend if backend in BACKENDS else DEFAULT_BACKEND,
        grace_period=_env_float(env, GRACE_ENV, DEFAULT_GRACE_PERIOD),
        queue_size=_env_int(env, QUEUE_ENV, DEFAULT_QUEUE_SIZE),
        all_ranks=_env_bool(env, ALL_RANKS_ENV, False),
        metrics=metrics if metrics in METRIC_DESTINATIONS else "auto",
    )


_settings: LogSettings | None = None


def current() -> LogSettings:
    """The settings in force: those of :func:`update`, else the environment's."""
    global _settings
    if _settings is None:
        _settings = from_environment()
    return _settings


def update(**changes: Any) -> LogSettings:
    """Change some settings (``None`` values keep the current ones) and return them."""
    global _settings
    base = current()
    given = {k: v for k, v in changes.items() if v is not None}
    if "backend" in given:
        given["backend"] = str(given["backend"]).lower()
        if given["backend"] not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {changes['backend']!r}")
    if "metrics" in given and given["metrics"] not in METRIC_DESTINATIONS:
        raise ValueError(f"metrics must be one of {METRIC_DESTINATIONS}")
    _settings = dataclasses.replace(base, **given)
    return _settings
