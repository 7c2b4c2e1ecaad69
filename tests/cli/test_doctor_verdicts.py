"""Doctor walks the settings tables and takes the parser's verdict: for every flag and every
log setting, an invalid value fails doctor's line exactly when the script warns about it,
and doctor lands on the value the script uses."""

from __future__ import annotations

import pytest

from amldbg.cli import doctor
from amldbg.core import settings as core_settings
from amldbg.logs import settings as log_settings

# Text no parser of a setting accepts (the host parsers refuse blanks inside).
INVALID = "not a value"


@pytest.mark.parametrize("flag", core_settings.FLAGS, ids=lambda flag: flag.name)
def test_every_invalid_flag_variable_fails_the_settings_line(flag: core_settings.Flag) -> None:
    env = {flag.env_var: INVALID}
    checks, resolved = doctor.settings_checks(env, {})
    assert resolved == core_settings.resolve_settings(None, env=env)
    assert not checks[0].ok and f"{flag.env_var}: " in checks[0].detail
    assert f"the script warns and uses {core_settings.describe_value(flag.default)}" in checks[0].detail


@pytest.mark.parametrize("flag", core_settings.FLAGS, ids=lambda flag: flag.name)
def test_a_valid_flag_variable_passes(flag: core_settings.Flag) -> None:
    text = "1" if flag.is_switch else core_settings.describe_value(flag.default)
    if flag.default is None:
        text = "10.1.2.3"
    checks, _ = doctor.settings_checks({flag.env_var: text}, {})
    assert checks[0].ok, checks[0].detail


@pytest.mark.parametrize(
    "row", [row for row in log_settings.ENV_SETTINGS if row.parse is not None], ids=lambda row: row.name
)
def test_every_invalid_log_variable_is_reported(row: log_settings.LogSetting) -> None:
    env = {str(row.env_var): INVALID}
    delivery = doctor.check_delivery(env)
    assert delivery is not None and not delivery.ok
    assert f"{row.env_var}: " in delivery.detail
    assert f"the script warns and uses {core_settings.describe_value(row.default)}" in delivery.detail
