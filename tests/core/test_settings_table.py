"""One declaration per setting: the flag table, the aliases and the process variables agree,
and every ``AMLDBG_*`` name in the code is declared in a settings table."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from amldbg.core import settings
from amldbg.logs import settings as log_settings

PACKAGE = Path(settings.__file__).resolve().parent.parent
VARIABLE_NAME = re.compile(r"AMLDBG_[A-Z][A-Z0-9_]*")


def test_the_flags_are_the_fields_of_debug_settings() -> None:
    fields = dataclasses.fields(settings.DebugSettings)
    assert [flag.name for flag in settings.FLAGS] == [field.name for field in fields]
    assert [flag.default for flag in settings.FLAGS] == [field.default for field in fields]
    assert settings.DebugSettings() == settings.resolve_settings(None, env={})


def test_every_default_is_a_value_its_parser_accepts() -> None:
    for flag in settings.FLAGS:
        if flag.default is not None:
            assert flag.parse(flag.default) == flag.default, flag.name


def test_aliases_drop_the_prefix_except_where_the_row_says() -> None:
    exceptions = {flag.alias: flag.name for flag in settings.FLAGS if flag.keyword}
    assert exceptions == {"enabled": "remote_debug", "timeout": "remote_debug_connection_timeout"}
    for alias, name in settings.ALIASES.items():
        assert alias in exceptions or alias == name.removeprefix("remote_debug_")
    assert len(settings.ALIASES) == len(settings.FLAGS)


def test_add_args_has_one_option_per_row() -> None:
    import argparse

    import amldbg

    parser = argparse.ArgumentParser()
    amldbg.add_args(parser, env={})
    options = {option for action in parser._actions for option in action.option_strings}
    assert options - {"-h", "--help"} == {flag.option for flag in settings.FLAGS}


def _declared() -> set[str]:
    names = {flag.env_var for flag in settings.FLAGS}
    names |= {variable.env_var for variable in settings.VARIABLES}
    names |= {str(row.env_var) for row in log_settings.ENV_SETTINGS}
    return names


def test_every_amldbg_variable_in_the_code_is_declared_in_a_settings_table() -> None:
    # A string that is exactly an AMLDBG_* name is a variable read somewhere; it must be one
    # of the tables' (core.settings' flags and process variables, logs.settings' rows).
    declared = _declared()
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and VARIABLE_NAME.fullmatch(node.value):
                found.setdefault(node.value, str(path.relative_to(PACKAGE)))
    undeclared = {name: where for name, where in found.items() if name not in declared}
    assert not undeclared
    assert set(found) <= declared


#: The modules that hold a settings table, and so read their variables themselves.
SCHEMA_MODULES = {"core/settings.py", "logs/settings.py"}


def _lookup_key(node: ast.AST) -> ast.AST | None:
    """The key of a mapping look-up: ``m[key]``, ``m.get(key)``, ``key in m``."""
    if isinstance(node, ast.Subscript):
        return node.slice
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in {"get", "pop", "setdefault"} and node.args:
        return node.args[0]
    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return node.left
    return None


def _names_a_variable(key: ast.AST, aliases: set[str]) -> bool:
    if isinstance(key, ast.Attribute) and key.attr == "env_var":
        return True
    if isinstance(key, ast.Call):  # settings.env_var("remote_debug")
        return getattr(key.func, "attr", getattr(key.func, "id", None)) == "env_var"
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return bool(VARIABLE_NAME.fullmatch(key.value))
    return isinstance(key, ast.Name) and key.id in aliases


def test_only_the_settings_tables_look_an_amldbg_variable_up() -> None:
    # Everything else asks core.settings (env_value, resolve_settings, env_text), so how a
    # variable is read (blank, invalid, the warning) is decided in one place.
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where in SCHEMA_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Module names bound to a variable's name (OUTPUT_DIR_ENV = settings.X.env_var).
        aliases = {
            target.id
            for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and _names_a_variable(node.value, set())
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            key = _lookup_key(node)
            if key is not None and _names_a_variable(key, aliases):
                found.append(f"{where}:{node.lineno}")
    # doctor takes a flag's variable out of its own copy, to resolve it to the default.
    assert [hit for hit in found if not hit.startswith("cli/doctor.py:")] == []
    assert len(found) == 1


def test_the_process_variables_are_named_once() -> None:
    names = [variable.env_var for variable in settings.VARIABLES]
    assert len(set(names)) == len(names)
    assert not set(names) & {flag.env_var for flag in settings.FLAGS}


# -- how each process variable is read -------------------------------------------------------
def test_an_invalid_warning_variable_warns_once_and_gives_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"AMLDBG_LOG_CALLS": "sometimes"}
    assert settings.env_value(settings.LOG_CALLS, env) is None
    assert settings.env_value(settings.LOG_CALLS, env) is None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "ignoring AMLDBG_LOG_CALLS='sometimes'" in out[0]
    assert settings.env_value(settings.LOG_CALLS, {"AMLDBG_LOG_CALLS": "0"}) is False


def test_a_raising_variable_leaves_the_wording_to_its_reader(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="comma-separated list of ranks"):
        settings.env_value(settings.REMOTE_DEBUG_PROCESSES, {"AMLDBG_REMOTE_DEBUG_PROCESSES": "first"})
    assert capsys.readouterr().out == ""
    assert settings.env_value(settings.REMOTE_DEBUG_PROCESSES, {"AMLDBG_REMOTE_DEBUG_PROCESSES": " "}) == (0,)
    assert settings.env_value(settings.REMOTE_DEBUG_PROCESSES, {"AMLDBG_REMOTE_DEBUG_PROCESSES": "all"}) is None


def test_an_ignored_variable_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    for text in ("-1", "two", "1.5"):
        assert settings.env_value(settings.PROCESS_INDEX, {"AMLDBG_PROCESS_INDEX": text}) is None
    assert capsys.readouterr().out == ""
    assert settings.env_value(settings.PROCESS_INDEX, {"AMLDBG_PROCESS_INDEX": " 3 "}) == 3


def test_text_variables_keep_what_was_given() -> None:
    assert settings.env_value(settings.NODE_ADDRESS, {"AMLDBG_NODE_ADDRESS": " 10.0.0.5 "}) == "10.0.0.5"
    assert settings.env_value(settings.NODE_ADDRESS, {"AMLDBG_NODE_ADDRESS": "  "}) is None
    assert settings.env_value(settings.REGISTRY_DIR, {}) is None
    # The diagnostics folder's name is taken as given, blanks included.
    assert settings.env_value(settings.DIAGNOSTICS_DIR, {"AMLDBG_DIAGNOSTICS_DIR": " out "}) == " out "
    assert settings.env_value(settings.DIAGNOSTICS_DIR, {"AMLDBG_DIAGNOSTICS_DIR": ""}) == ""


# -- the one judgement -------------------------------------------------------------------------
def test_the_verdict_is_what_read_env_uses(capsys: pytest.CaptureFixture[str]) -> None:
    port = settings.FLAGS_BY_NAME["remote_debug_port"]
    verdict = port.verdict({"AMLDBG_REMOTE_DEBUG_PORT": "http"})
    assert verdict == ("AMLDBG_REMOTE_DEBUG_PORT", 5678, "expected a port number, got 'http'", "http")
    assert capsys.readouterr().out == ""  # judging never warns
    assert settings.env_default(port, {"AMLDBG_REMOTE_DEBUG_PORT": "http"}) == verdict.value
    assert f": {verdict.error}; using 5678" in capsys.readouterr().out


def test_a_blank_switch_is_off_and_a_blank_value_is_unset() -> None:
    switch = settings.FLAGS_BY_NAME["remote_debug"].verdict({"AMLDBG_REMOTE_DEBUG": ""})
    assert (switch.value, switch.error) == (False, None)
    timeout = settings.FLAGS_BY_NAME["remote_debug_connection_timeout"].verdict(
        {"AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": " "}
    )
    assert (timeout.value, timeout.error) == (300.0, None)


@pytest.mark.parametrize(("value", "shown"), [(True, "on"), (False, "off"), ((0, 3), "0,3"),
                                             (300.0, "300"), (2.5, "2.5"), (None, "all")])
def test_values_are_described_once(value: object, shown: str) -> None:
    assert settings.describe_value(value) == shown


def test_env_text_is_the_unparsed_text_of_a_flag_or_a_variable() -> None:
    switch = settings.FLAGS_BY_NAME["remote_debug"]
    assert settings.env_text(switch, {}) is None
    assert settings.env_text(switch, {"AMLDBG_REMOTE_DEBUG": ""}) == ""  # set, though off
    assert settings.env_text(settings.PROCESS_INDEX, {"AMLDBG_PROCESS_INDEX": "two"}) == "two"
