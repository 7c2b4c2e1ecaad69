"""The --remote_debug flags: parsing from strings, environment defaults, precedence, errors."""

from __future__ import annotations

import argparse

import pytest

import amldbg
from amldbg.core.settings import DebugSettings, resolve_settings


def parse(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input_data")
    amldbg.add_args(parser, env=env or {})
    return parser.parse_args(argv)


def test_defaults_are_the_guides_defaults() -> None:
    args = parse([])
    assert args.remote_debug is False
    assert args.remote_debug_connection_timeout == 300
    assert args.remote_debug_client_ip is None
    assert args.remote_debug_port == 5678
    assert args.remote_debug_listen_host == "0.0.0.0"
    assert args.remote_debug_ranks == (0,)


def test_pipeline_step_arguments_arrive_as_strings() -> None:
    # What a PythonScriptStep passes: numbers as str() of ints, mixed with the user's args.
    argv = [str(a) for a in ["--input_data", "data", "--remote_debug",
                             "--remote_debug_connection_timeout", 300,
                             "--remote_debug_client_ip", "10.0.0.4", "--remote_debug_port", 5678]]
    args = parse(argv)
    assert args.input_data == "data"
    assert args.remote_debug is True
    assert args.remote_debug_connection_timeout == 300.0
    assert args.remote_debug_client_ip == "10.0.0.4"
    assert args.remote_debug_port == 5678
    settings = resolve_settings(args, env={})
    assert settings == DebugSettings(
        remote_debug=True, remote_debug_connection_timeout=300.0,
        remote_debug_client_ip="10.0.0.4", remote_debug_port=5678,
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--remote_debug_port", "65536"], "--remote_debug_port"),
        (["--remote_debug_port", "56.5"], "--remote_debug_port"),
        (["--remote_debug_port", "five"], "--remote_debug_port"),
        (["--remote_debug_connection_timeout", "-5"], "--remote_debug_connection_timeout"),
        (["--remote_debug_connection_timeout", "nan"], "--remote_debug_connection_timeout"),
        (["--remote_debug_ranks", "0,x"], "--remote_debug_ranks"),
    ],
)
def test_invalid_values_are_argparse_errors_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_environment_sets_defaults_and_an_explicit_flag_wins() -> None:
    env = {"AMLDBG_REMOTE_DEBUG": "1", "AMLDBG_REMOTE_DEBUG_PORT": "5679",
           "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "45", "AMLDBG_REMOTE_DEBUG_RANKS": "all"}
    args = parse([], env)
    assert (args.remote_debug, args.remote_debug_port) == (True, 5679)
    assert args.remote_debug_connection_timeout == 45
    assert args.remote_debug_ranks is None
    args = parse(["--remote_debug_port", "6000"], env)
    assert args.remote_debug_port == 6000


def test_bad_environment_value_warns_once_and_uses_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse([], {"AMLDBG_REMOTE_DEBUG_PORT": "http"})
    assert args.remote_debug_port == 5678
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("amldbg: warning: ignoring AMLDBG_REMOTE_DEBUG_PORT='http'")


def test_resolve_without_args_reads_the_environment() -> None:
    settings = resolve_settings(None, env={"AMLDBG_REMOTE_DEBUG": "true",
                                           "AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "[::1]"})
    assert settings.enabled and settings.remote_debug_listen_host == "::1"
    assert resolve_settings(None, env={}).enabled is False


def test_overrides_win_over_args_and_environment() -> None:
    args = parse(["--remote_debug_port", "6000"])
    settings = resolve_settings(args, env={"AMLDBG_REMOTE_DEBUG_PORT": "7000"}, port="8000",
                                timeout=30)
    assert settings.port == 8000 and settings.timeout == 30
    with pytest.raises(TypeError):
        resolve_settings(None, env={}, colour="blue")


def test_mapping_args_are_accepted_and_validated() -> None:
    settings = resolve_settings({"remote_debug": "yes", "remote_debug_port": "5680"}, env={})
    assert settings.enabled and settings.port == 5680
    with pytest.raises(ValueError, match="port"):
        resolve_settings({"remote_debug_port": "-1"}, env={})


def test_add_args_twice_returns_the_same_group() -> None:
    parser = argparse.ArgumentParser()
    group = amldbg.add_args(parser)
    assert amldbg.add_args(parser) is group
    assert "--remote_debug_port" in parser.format_help()


def test_mixin_gives_a_parser_subclass_the_flags() -> None:
    class TrainParser(amldbg.RemoteDebugArgsMixin, argparse.ArgumentParser):
        pass

    parser = TrainParser(prog="train")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(["--epochs", "3", "--remote_debug", "--remote_debug_port", "5690"])
    assert (args.epochs, args.remote_debug, args.remote_debug_port) == (3, True, 5690)


def test_help_names_each_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    amldbg.add_args(parser, env={})
    text = parser.format_help()
    for name in ("AMLDBG_REMOTE_DEBUG]", "AMLDBG_REMOTE_DEBUG_PORT", "AMLDBG_REMOTE_DEBUG_CLIENT_IP"):
        assert name in text
