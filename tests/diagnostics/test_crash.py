"""The crash-hook chain: one pair of hooks per process, the steps around the crash report in
their order, the previous hook always last and given the user's exception unchanged."""

from __future__ import annotations

import json
import string
import sys
import textwrap
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import pytest

from amldbg.diagnostics import crash, stacks
from conftest import free_port
from processes import Running, child_env

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[Any, ...]]]:
    """A process with no crash hooks yet, whose previous hooks record what they were given,
    and whose reports go to ``tmp_path/reports``."""
    monkeypatch.setattr(crash, "_chain", crash._Chain())
    fixed = stacks._Fixed()
    fixed.output_dir = str(tmp_path / "reports")
    monkeypatch.setattr(stacks, "_fixed", fixed)
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: seen.append(("previous", *info)))
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(("previous thread", args)))
    yield seen


def raised(exc: BaseException) -> ExcInfo:
    try:
        raise exc
    except BaseException as error:
        assert error.__traceback__ is not None
        return type(error), error, error.__traceback__


def reports(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "reports").glob("crash-*.json"))]


def recording(calls: list[tuple[Any, ...]], name: str, error: BaseException | None = None) -> Any:
    def step(uncaught: crash.Uncaught) -> None:
        calls.append((name, uncaught.where, uncaught.exc))
        if error is not None:
            raise error

    return step


def test_the_steps_run_around_the_report_and_the_previous_hook_gets_the_exception_last(
    calls: list[tuple[Any, ...]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def report_on_disk(uncaught: crash.Uncaught) -> None:
        calls.append(("after", len(reports(tmp_path))))

    crash.install()
    crash.install()  # once: the hook chains to the previous one, not to itself
    assert crash.add_handler(crash.Handler("x failed", recording(calls, "before"), report_on_disk))
    info = raised(ValueError("bad shard"))
    sys.excepthook(*info)
    exc = info[1]
    assert calls == [("before", crash.MAIN_THREAD, exc), ("after", 1), ("previous", *info)]
    [report] = reports(tmp_path)
    assert report["exception"] == "ValueError: bad shard" and report["where"] == "the main thread"
    assert f'"file": "{tmp_path / "reports"}' in capsys.readouterr().out


def test_a_handler_is_added_once_and_an_exception_gets_one_report(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    crash.install()
    handler = crash.Handler("x failed", after_report=recording(calls, "after"))
    assert crash.add_handler(handler) and not crash.add_handler(handler)
    info = raised(RuntimeError("once"))
    sys.excepthook(*info)
    sys.excepthook(*info)  # a hook chained twice by the script: the steps act once
    assert [c[0] for c in calls] == ["after", "previous", "previous"]
    assert len(reports(tmp_path)) == 1


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(3)])
def test_stopping_on_purpose_goes_straight_to_the_previous_hook(
    calls: list[tuple[Any, ...]], tmp_path: Path, stop: BaseException
) -> None:
    crash.install()
    crash.add_handler(crash.Handler("x failed", recording(calls, "before")))
    info = raised(stop)
    sys.excepthook(*info)
    assert calls == [("previous", *info)]
    assert reports(tmp_path) == []


def test_a_handlers_not_crashes_have_no_report_and_no_step(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    crash.install()
    crash.add_handler(crash.Handler(
        "x failed", recording(calls, "before"), not_crashes=frozenset({"LookupError"})
    ))
    info = raised(LookupError("quit"))
    sys.excepthook(*info)
    assert calls == [("previous", *info)] and reports(tmp_path) == []


def test_a_failing_step_is_one_warning_and_a_ctrl_c_in_a_step_ends_amldbgs_part(
    calls: list[tuple[Any, ...]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crash.install()
    crash.add_handler(crash.Handler(
        "first failed", recording(calls, "before 1", RuntimeError("own bug")),
        recording(calls, "after 1", KeyboardInterrupt()),
    ))
    crash.add_handler(
        crash.Handler("second failed", recording(calls, "before 2"), recording(calls, "after 2"))
    )
    info = raised(ValueError("user"))
    sys.excepthook(*info)
    # The second handler's after step is not reached; the previous hook still runs.
    assert [c[0] for c in calls] == ["before 1", "before 2", "after 1", "previous"]
    assert calls[-1] == ("previous", *info)
    assert len(reports(tmp_path)) == 1
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        "amldbg: warning: first failed: RuntimeError: own bug",
        "amldbg: warning: first failed: KeyboardInterrupt",
    ]


def test_a_thread_is_reported_by_its_name_and_the_previous_threading_hook_runs(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    crash.install()
    crash.add_handler(crash.Handler("x failed", after_report=recording(calls, "after")))
    exc_type, exc, tb = raised(OSError("mount gone"))
    worker = threading.Thread(name="loader")
    args = threading.ExceptHookArgs([exc_type, exc, tb, worker])
    threading.excepthook(args)
    assert calls == [("after", "thread 'loader'", exc), ("previous thread", args)]
    [report] = reports(tmp_path)
    assert report["where"] == "thread 'loader'"


def test_hooks_the_script_put_in_later_decide_whether_amldbg_acts(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    crash.install()
    crash.add_handler(crash.Handler("x failed", after_report=recording(calls, "after")))
    ours = sys.excepthook
    replaced: list[BaseException] = []
    sys.excepthook = lambda exc_type, exc, tb: replaced.append(exc)
    crash.install()  # armed again later: the script's hook stays in front, amldbg's is not re-chained
    info = raised(ValueError("theirs"))
    sys.excepthook(*info)
    assert replaced == [info[1]] and calls == [] and reports(tmp_path) == []
    # A script hook that chains to the one it replaced reaches amldbg's, which ends the chain.
    ours(*info)
    assert [c[0] for c in calls] == ["after", "previous"] and len(reports(tmp_path)) == 1


SCRIPT = textwrap.dedent("""
    import sys, threading, amldbg
    from amldbg.diagnostics import crash

    original = sys.excepthook
    amldbg.enable_remote_debug(post_mortem=True, timeout=0, listen_host="127.0.0.1", port=$port)
    amldbg.enable_post_mortem(timeout=0, listen_host="127.0.0.1", port=$port)
    print("one chain:", sys.excepthook is crash._excepthook,
          crash._chain.previous_excepthook is original, len(crash._chain.handlers), flush=True)
    raise ValueError("bad batch")
""")


def test_post_mortem_plugs_into_the_one_chain_and_the_report_comes_before_the_debugger(
    tmp_path: Path,
) -> None:
    script = tmp_path / "job.py"
    script.write_text(string.Template(SCRIPT).substitute(port=free_port()))
    env = child_env(AMLDBG_DIAGNOSTICS_DIR=str(tmp_path / "reports"))
    with Running([str(script)], cwd=tmp_path, env=env) as run:
        assert run.wait(60) == 1, run.output
    assert "one chain: True True 1" in run.lines, run.output
    lines = run.lines
    crash_line = next(i for i, line in enumerate(lines) if line.startswith("amldbg crash: "))
    uncaught = next(i for i, line in enumerate(lines) if "post-mortem: uncaught ValueError" in line)
    traceback = lines.index("Traceback (most recent call last):")
    assert crash_line < uncaught < traceback < lines.index("ValueError: bad batch")
    assert run.output.count("post-mortem debugging is armed") == 1
    assert len(list((tmp_path / "reports").glob("crash-rank0-pid*.json"))) == 1


def test_a_handler_added_after_the_script_replaced_the_hooks_still_runs(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    # Crash reports armed first (a rank that does not debug), then the script's own hook that
    # does not chain, then post-mortem armed late: post-mortem and the report still happen,
    # and the script's hook still runs after them.
    crash.install()
    sys.excepthook = lambda exc_type, exc, tb: calls.append(("script's hook", exc))
    assert crash.add_handler(crash.Handler("late failed", after_report=recording(calls, "late")))
    info = raised(ValueError("late"))
    sys.excepthook(*info)
    assert [c[0] for c in calls] == ["late", "script's hook"] and len(reports(tmp_path)) == 1


def test_a_script_hook_that_chains_to_amldbgs_gives_each_step_once(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    # The script's hook calls the one it replaced (amldbg's), and post-mortem is armed after
    # it: the exception meets amldbg's steps twice on its way down, and they act once.
    crash.install()
    replaced = sys.excepthook

    def script_hook(*info: Any) -> None:
        calls.append(("script's hook",))
        replaced(*info)

    sys.excepthook = script_hook
    crash.add_handler(crash.Handler(
        "late failed", before_report=recording(calls, "before"), after_report=recording(calls, "after"),
    ))
    sys.excepthook(*raised(ValueError("chained")))
    assert [c[0] for c in calls] == ["before", "after", "script's hook", "previous"]
    assert len(reports(tmp_path)) == 1


def test_the_crash_path_runs_no_method_of_the_scripts_hook_object(
    calls: list[tuple[Any, ...]], tmp_path: Path
) -> None:
    # A hook object of the script's is only called: its __eq__ (is it amldbg's?) and its
    # __bool__ (is there a hook below?) are script code, and a crash must not run them.
    ran: list[str] = []

    class ScriptHook:
        def __call__(self, *info: Any) -> None:
            calls.append(("script's hook",))

        def __eq__(self, other: object) -> bool:
            ran.append("__eq__")
            return False

        __hash__ = object.__hash__

        def __bool__(self) -> bool:
            ran.append("__bool__")
            return True

    crash.install()
    sys.excepthook = ScriptHook()
    threading.excepthook = ScriptHook()
    crash.add_handler(crash.Handler("late failed", after_report=recording(calls, "late")))
    sys.excepthook(*raised(ValueError("hook object")))
    assert [c[0] for c in calls] == ["late", "script's hook"] and ran == []
