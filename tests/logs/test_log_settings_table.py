"""One declaration per log setting: LogSettings' fields are the table that
from_environment, update and doctor read."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import pytest

from amldbg.logs import settings as log_settings
from amldbg.logs.settings import LOG_SETTINGS, LogSettings


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    log_settings.reset()
    yield
    log_settings.reset()


def test_the_rows_are_the_fields() -> None:
    assert [row.name for row in LOG_SETTINGS] == [field.name for field in dataclasses.fields(LogSettings)]
    assert [row.default for row in LOG_SETTINGS] == [field.default for field in dataclasses.fields(LogSettings)]
    names = [row.env_var for row in log_settings.ENV_SETTINGS]
    assert len(set(names)) == len(names)
    assert {log_settings.BACKEND_ENV, log_settings.GRACE_ENV, log_settings.QUEUE_ENV,
            log_settings.ALL_RANKS_ENV, log_settings.METRICS_ENV} <= set(names)


def test_from_environment_reads_every_row_with_a_variable() -> None:
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": " InstrumentationKey=x ",
           log_settings.BACKEND_ENV: "otel", log_settings.GRACE_ENV: "0",
           log_settings.QUEUE_ENV: "5", log_settings.ALL_RANKS_ENV: "on",
           log_settings.METRICS_ENV: "MLflow"}
    settings = log_settings.from_environment(env)
    assert (settings.connection_string, settings.backend, settings.grace_period, settings.queue_size,
            settings.all_ranks, settings.metrics) == ("InstrumentationKey=x", "otel", 0.0, 5, True, "mlflow")
    assert log_settings.from_environment({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}).connection_string is None


def test_update_parses_with_each_rows_parser_and_keeps_free_values_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for row in log_settings.ENV_SETTINGS:
        monkeypatch.delenv(str(row.env_var), raising=False)
    run = object()
    settings = log_settings.update(backend="OTEL", grace_period="2", queue_size="7", all_ranks="yes",
                                   metrics_to_appinsights="1", metrics="driver-log",
                                   connection_string=" as given ", run=run)
    assert (settings.backend, settings.grace_period, settings.queue_size, settings.all_ranks,
            settings.metrics_to_appinsights, settings.metrics) == ("otel", 2.0, 7, True, True, "driver-log")
    assert settings.connection_string == " as given " and settings.run is run
    for bad in ({"backend": "carrier-pigeon"}, {"queue_size": "0"}, {"all_ranks": "maybe"}):
        with pytest.raises(ValueError):
            log_settings.update(**bad)
    with pytest.raises(TypeError):
        log_settings.update(colour="blue")


def test_the_verdict_of_a_row_names_its_variable() -> None:
    row = log_settings.SETTINGS_BY_NAME["queue_size"]
    verdict = row.verdict({log_settings.QUEUE_ENV: "many"})
    assert (verdict.name, verdict.value) == (log_settings.QUEUE_ENV, log_settings.DEFAULT_QUEUE_SIZE)
    assert verdict.error is not None and "expected a number" in verdict.error
