"""What ``amldbg doctor`` and its send test share: the check line, what it may not show, the
packages it looks up, and the Application Insights set-up as the script would read it.

Packages are looked up with ``importlib.util.find_spec`` and ``importlib.metadata``, so
debugpy, azureml-core and the exporters are never imported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from importlib import metadata
from typing import Any, Iterable, Mapping

from amldbg.core import safetext, secrets
from amldbg.core import settings as core_settings
from amldbg.logs import connection
from amldbg.logs import settings as log_settings

#: Instrumentation-key variables people set instead of a connection string (the classic SDK's,
#: and the Azure ML inference server's, which it reads only with AML_APP_INSIGHTS_ENABLED=true).
IKEY_ENV = "APPINSIGHTS_INSTRUMENTATIONKEY"
INFERENCE_SERVER_IKEY_ENV = "AML_APP_INSIGHTS_KEY"
INFERENCE_SERVER_ENABLED_ENV = "AML_APP_INSIGHTS_ENABLED"

# Each backend -> (distribution, importable module, amldbg extra).
_BACKEND_DISTRIBUTIONS = {
    "opencensus": ("opencensus-ext-azure", "opencensus.ext.azure", "appinsights"),
    "otel": ("azure-monitor-opentelemetry-exporter", "azure.monitor.opentelemetry.exporter", "otel"),
}

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


def masked(checks: list[Check], env: Mapping[str, str]) -> list[Check]:
    """``checks`` with every detail passed through :func:`scrub` (nothing secret is printed)."""
    known = _secret_values(env)
    return [dataclasses.replace(check, detail=scrub(check.detail, known)) for check in checks]


def shown(value: str) -> str:
    """A value read from the environment or a service, shortened for one line."""
    value = str(value)
    return value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "..."


def env_problem(verdict: core_settings.Verdict) -> str | None:
    """What doctor says of a variable whose text the script rejects (``None`` when it
    accepts it): the parser's reason and the value the script warns about and uses instead."""
    if verdict.error is None:
        return None
    used = core_settings.describe_value(verdict.value)
    return f"{verdict.name}: {shown(verdict.error)}; the script warns and uses {used}"


# -- packages --------------------------------------------------------------------------------
def version_of(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def importable(module: str) -> bool:
    """True when ``module`` can be found (it is not imported)."""
    # find_spec of a dotted name imports the parents (namespace packages here, which are
    # cheap); a broken parent counts as "not importable".
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- the Application Insights set-up -----------------------------------------------------------
def resolve_backend(env: Mapping[str, str]) -> tuple[str, str | None]:
    """The backend the script would use, and what is wrong with ``AMLDBG_APPINSIGHTS_BACKEND``
    (``None`` when nothing): an invalid value means the default, as in the script."""
    verdict = log_settings.SETTINGS_BY_NAME["backend"].verdict(env)
    return str(verdict.value), env_problem(verdict)


def backend_missing(backend: str) -> str | None:
    """Why the exporter of ``backend`` cannot be used (its package is missing), else ``None``."""
    distribution, module, extra = _BACKEND_DISTRIBUTIONS[backend]
    if version_of(distribution) is None or not importable(module.split(".", 1)[0]):
        return (f"the {backend} exporter ({distribution}) is not installed: "
                f"pip install 'amldbg[{extra}]'")
    return None


def ikey_without_connection_string(env: Mapping[str, str]) -> str | None:
    """The instrumentation-key variable set in ``env`` that amldbg does not read, else ``None``."""
    if env.get(IKEY_ENV, "").strip():
        return IKEY_ENV
    if env.get(INFERENCE_SERVER_IKEY_ENV, "").strip() and \
            env.get(INFERENCE_SERVER_ENABLED_ENV, "").strip().lower() == "true":
        return INFERENCE_SERVER_IKEY_ENV
    return None
