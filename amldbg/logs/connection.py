"""Application Insights connection strings, checked by amldbg before any exporter sees one.

Both exporters fail on details that are easy to get wrong by hand (an upper-case
instrumentation key, a trailing ``;``), and their own error messages may echo the key.
Only :meth:`ConnectionString.masked` output is ever printed.

``Authorization=AAD`` (Microsoft Entra ID) is accepted and remembered, but left out of the
string handed to the exporters: both exporters' parsers (opencensus-ext-azure 1.1.x and
azure-monitor-opentelemetry-exporter up to 1.0.0b58) raise "Invalid authorization
mechanism" for anything but ``ikey`` there. Either exporter authenticates with Entra ID
only when it is given a credential object (``credential=``); amldbg creates none, so
records go with the instrumentation key, which a resource with local authentication
disabled refuses (401); :mod:`amldbg.logs.appinsights` says so once.
"""

from __future__ import annotations

import dataclasses
import re

#: The exporters' own variable.
CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
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
    #: ``"ikey"`` (the default) or ``"aad"`` when the string says ``Authorization=AAD``.
    authorization: str = "ikey"

    @property
    def aad(self) -> bool:
        """True when the connection string asks for Microsoft Entra ID (AAD) authentication."""
        return self.authorization == "aad"

    def masked(self) -> str:
        """The connection string with the instrumentation key hidden."""
        shown = f"InstrumentationKey={mask(self.instrumentation_key)};IngestionEndpoint={self.ingestion_endpoint}"
        return shown + (";Authorization=AAD" if self.aad else "")

    def __repr__(self) -> str:  # dataclass repr would print the key
        return f"ConnectionString({self.masked()!r})"


def mask(secret: str) -> str:
    """Hide a secret entirely except its length class: ``"****"`` for anything non-empty."""
    return "****" if secret else "(empty)"


def parse_connection_string(text: str) -> ConnectionString:
    """Check and normalise an Application Insights connection string.

    Accepts ``InstrumentationKey=<guid>;IngestionEndpoint=<url>[;...]`` in any key case,
    with surrounding blanks or a trailing ``;``, and ``Authorization=ikey`` or
    ``Authorization=AAD`` (remembered in ``authorization``, left out of ``value``). Raises :class:`ConnectionStringError`
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
    authorization = fields.get("authorization", "ikey").lower()
    if authorization not in ("ikey", "aad"):
        # Not echoed: an unknown value may be a pasted secret.
        raise ConnectionStringError("Authorization must be ikey or AAD")
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
    # No Authorization segment in `value`: both exporters reject anything but ikey there.
    return ConnectionString(instrumentation_key=ikey, ingestion_endpoint=endpoint, value=value,
                            authorization=authorization)
