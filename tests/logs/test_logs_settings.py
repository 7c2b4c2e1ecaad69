"""Connection strings and settings: normalised, checked, and never printed with the key."""

from __future__ import annotations

import pytest

from amldbg.logs.connection import ConnectionStringError, parse_connection_string
from amldbg.logs.settings import LogSettings, from_environment

KEY = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_hand_typed_connection_string_is_normalised() -> None:
    parsed = parse_connection_string(f" instrumentationkey={KEY.upper()} ; IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/ ; ")
    assert parsed.instrumentation_key == KEY
    assert parsed.value == f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com"
    assert KEY not in repr(parsed) and KEY not in parsed.masked()


def test_endpoint_defaults_follow_the_service_rules() -> None:
    assert parse_connection_string(f"InstrumentationKey={KEY}").ingestion_endpoint == "https://dc.services.visualstudio.com"
    suffixed = parse_connection_string(f"InstrumentationKey={KEY};EndpointSuffix=applicationinsights.azure.cn;Location=chinaeast2")
    assert suffixed.ingestion_endpoint == "https://chinaeast2.dc.applicationinsights.azure.cn"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no InstrumentationKey"),
        ("IngestionEndpoint=https://x/", "no InstrumentationKey"),
        ("InstrumentationKey=secret-not-a-guid", "not a GUID"),
        (f"InstrumentationKey={KEY};IngestionEndpoint=ftp://x", "not an http(s) URL"),
        (f"InstrumentationKey={KEY};garbage", "without 'key=value'"),
        (f"InstrumentationKey={KEY};Authorization=SharedSecret-xyz", "must be ikey or AAD"),
    ],
)
def test_malformed_connection_strings_are_rejected_without_echoing_the_key(text: str, why: str) -> None:
    with pytest.raises(ConnectionStringError) as raised:
        parse_connection_string(text)
    assert why in str(raised.value)
    assert "secret" not in str(raised.value).lower() and KEY not in str(raised.value)


@pytest.mark.parametrize("spelling", ["AAD", "aad", " Aad "])
def test_aad_connection_strings_are_accepted_and_the_exporters_get_them_without_the_segment(spelling: str) -> None:
    # Both exporters' own parsers reject Authorization=AAD ("Invalid authorization
    # mechanism"): the string they are handed has no Authorization segment.
    parsed = parse_connection_string(
        f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;"
        f"Authorization={spelling};AADAudience=https://monitor.azure.com/"
    )
    assert parsed.aad and parsed.authorization == "aad"
    assert parsed.value == f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com"
    assert parsed.masked().endswith(";Authorization=AAD") and KEY not in parsed.masked()
    assert not parse_connection_string(f"InstrumentationKey={KEY};Authorization=ikey").aad
    assert not parse_connection_string(f"InstrumentationKey={KEY}").aad


def test_aad_value_is_accepted_by_both_exporters_parsers() -> None:
    # The exporters parse the string amldbg hands them (and the environment variable,
    # which amldbg replaces by the same value while they are built).
    from azure.monitor.opentelemetry.exporter._connection_string_parser import (
        ConnectionStringParser,
    )
    from opencensus.ext.azure.common import parse_connection_string as opencensus_parse

    text = f"InstrumentationKey={KEY};IngestionEndpoint=https://dc.example.com/;Authorization=AAD"
    with pytest.raises(ValueError, match="authorization"):
        opencensus_parse(text)  # what happened before amldbg dropped the segment
    value = parse_connection_string(text).value
    assert opencensus_parse(value)["instrumentationkey"] == KEY
    assert ConnectionStringParser(value).instrumentation_key == KEY


def test_settings_from_environment_and_their_repr_hides_the_connection_string() -> None:
    settings = from_environment({
        "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={KEY}",
        "AMLDBG_APPINSIGHTS_BACKEND": "OTEL",
        "AMLDBG_LOG_GRACE_PERIOD": "1.5",
        "AMLDBG_LOG_QUEUE_SIZE": "oops",
        "AMLDBG_LOG_ALL_RANKS": "yes",
    })
    assert (settings.backend, settings.grace_period, settings.queue_size, settings.all_ranks) == ("otel", 1.5, 40_000, True)
    assert KEY not in repr(settings)
    assert from_environment({}) == LogSettings()
