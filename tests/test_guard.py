"""One guard: amldbg's own failures reach the host only as a warning line, through
:mod:`amldbg.core.guard`, and every broad catch left elsewhere says why it is not the guard.

``guard(what)`` turns amldbg's own ``Exception`` into one ``amldbg: warning:`` line;
``quietly()`` drops it without a word where a warning would be wrong (crash, fork and exit
paths, probes whose failure only means "not there"). A hand-written ``except Exception``,
``except BaseException``, bare ``except:`` (or a tuple holding one of them) or
``contextlib.suppress(Exception)`` is left only where it is something else: parsing a hostile
value, reading a user's object without running its code, a library's failure handed on as a
result, cleanup that re-raises, or the layer below the guard itself. Each such place is in
:data:`REASONS`, keyed by the enclosing function's qualified name, so that lines may move.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from amldbg.core import announce
from amldbg.core.guard import guard, quietly

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amldbg"
#: The guard itself is where amldbg's own failures are meant to be caught.
GUARD = "amldbg/core/guard.py"
BROAD = {"Exception", "BaseException"}

_READS_USER_OBJECT = "reads a user's object through C-level descriptors, which may raise anything"

#: Every broad catch outside the guard: file -> enclosing function -> why it is not the guard.
REASONS: dict[str, dict[str, str]] = {
    "amldbg/cli/launch_json.py": {
        "merge_text": "parsing: json5 raises assorted types for a bad document (turned into LaunchJsonError)",
        "_write_atomically": "cleanup: removes the temporary file, then re-raises",
    },
    "amldbg/cli/send_test.py": {
        "_TransportCapture._take": "parsing: an exporter's record whose arguments do not format",
        "_send": "the send test reports the exporter library's failure as its verdict",
    },
    "amldbg/cli/stacks.py": {
        "write_html": "cleanup: removes the temporary file, then re-raises",
    },
    "amldbg/core/announce.py": {
        "say": "below the guard: the guard's own warning is written here",
        "warn": "below the guard: masking must never cost the warning itself",
    },
    "amldbg/core/environment.py": {
        "_spawn_index": "reads multiprocessing's state, which may be damaged: no spawn index",
        "_from_process_group": "torch half imported or a group being torn down: the variables stand",
    },
    "amldbg/core/forksafe.py": {
        "_after_fork_in_child": "below the guard (whose warning takes these locks): a lock that cannot be reset must not stop the child",
    },
    "amldbg/core/joblogs.py": {
        "_open": "cleanup: closes the descriptor, then re-raises",
    },
    "amldbg/core/safetext.py": {
        "mask": "parsing hostile text: what cannot be masked is withheld",
    },
    "amldbg/core/threads.py": {
        "call_within.target": "not a catch: the exception is handed to the caller and raised there",
    },
    "amldbg/debugger/idle.py": {
        "go_idle": "a fallback follows the warning (untracing this thread only)",
        "_uses_sys_monitoring": "pydevd's layout moved: judged by the Python version instead",
        "_watch_for_late_attach": "falls back to re-tracing one thread; the host's interpreter may be ending",
    },
    "amldbg/debugger/postmortem.py": {
        "_stop_stall_watchdog": "the crash report and the debugger come first",
        "_client_stops_on_uncaught": "a pydevd without these internals: amldbg stops on the exception itself",
    },
    "amldbg/debugger/remote.py": {
        "enable_with": "a failed session is returned, and each call warns",
    },
    "amldbg/debugger/session.py": {
        "_global_debugger": "pydevd half set up counts as no debugger",
        "wait_for_client": "debugpy torn down means nobody; pydevd's internals moved: polling still works",
    },
    "amldbg/debugger/start.py": {
        "_connect": "a refused or silent peer is an expected outcome with its own warning and failed session",
        "_connect_within.connect": "not a catch: the exception is handed to the waiting thread",
    },
    "amldbg/diagnostics/collectives.py": {
        "snapshot": "the failure is told in the dump's own collectives section",
    },
    "amldbg/diagnostics/crash.py": {
        "_run_step": "a crash step's failure must not change how the script fails (also Ctrl+C while it waits)",
        "_report_child_exit": "the child is ending: a failure here must not change how it ends",
        "_environment_summary": "the report is still written, with the failure in this section",
        "_exception_field": _READS_USER_OBJECT,
        "write_report": "a report must never change how the script fails",
    },
    "amldbg/diagnostics/registry.py": {
        "_write": "cleanup: removes the half-written file, then re-raises",
    },
    "amldbg/diagnostics/stacks.py": {
        "frame_locals": "locals that cannot be read: the frame is shown without values",
        "_roots": "a scheme without this path: the others still count",
        "_frame_record": "the frame is shown without its source line",
        "write_json": "one warning per folder, never the script's failure",
        "write_dump": "a dump must never stop the script it describes",
    },
    "amldbg/diagnostics/values.py": {
        name: _READS_USER_OBJECT
        for name in (
            "_mro", "_class_dict", "_lookup", "type_name", "_short_name", "_module_root",
            "_c_attribute", "_Formatter._exception", "_Formatter._module",
            "_Formatter._function_name", "instance_dict", "_instance_fields", "_array_summary",
            "_c_text", "describe", "exception_text", "_os_error_text",
        )
    },
    "amldbg/hooks/scoring.py": {
        "_resolve_sink": "amldbg.logs missing or broken: plain lines on stdout still work",
        "_emit": "one warning for all lines, then plain stdout",
        "debug_run": "the runtime's probe failing means no runtime",
        "_wrap_run.run_wrapper": "the user's exception: logged, then re-raised as it is",
        "_size": "len() of a user's batch: a count is an extra",
        "request_ids": "no request context: the headers are tried instead",
    },
    "amldbg/logs/driver_log.py": {
        "DriverLogHandler.emit": "RecursionError must pass (logging's contract); the rest is best effort",
    },
    "amldbg/logs/envelopes.py": {
        "_ExportThreadFilter.filter": "parsing: an exporter's record whose arguments do not format",
    },
    "amldbg/logs/export.py": {
        "Exporter._build": "a sink that cannot be built is its channel's state, with its own warning",
        "Exporter._service": "a failed send is a result, told in the loss line",
        "_InlineExecutor.submit": "not a catch: handed to the future, as a real thread pool does",
    },
    "amldbg/logs/ingestion.py": {
        "parse_track_answer": "parsing the service's answer",
        "retry_after_seconds": "parsing a Retry-After header",
    },
    "amldbg/logs/metrics.py": {
        "to_number": "a user's value refused .item(): the caller warns with why",
        "log_metrics": "a user's mapping refused .items(): its own warning",
    },
    "amldbg/logs/mlflow_metrics.py": {
        "RestTracking.call": "MLflow's failure handed on as RequestFailed",
        "MlflowSink.send": "MLflow's failure is the sink's send result",
    },
    "amldbg/logs/opencensus_sink.py": {
        "_read": "parsing a response, whatever it holds",
    },
    "amldbg/logs/otel_sink.py": {
        "Outcome.note": "parsing: an unreadable body, the status says enough",
        "_transport_class._Transport.send": "not a catch: noted for the outcome, then raised on",
    },
    "amldbg/logs/run_metrics.py": {
        "AzureMLRunSink.send": "azureml's failure is the sink's result, with one warning per name",
    },
}


def _caught(node: ast.expr | None) -> set[str]:
    """The names an ``except`` clause (or a ``suppress`` argument) catches; bare is ``except:``."""
    if node is None:
        return {"<bare>"}
    if isinstance(node, ast.Tuple):
        return set().union(*(_caught(item) for item in node.elts))
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


class _BroadCatches(ast.NodeVisitor):
    """Each broad catch of a module as (enclosing function's qualified name, line)."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.found: list[tuple[str, int]] = []

    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def _here(self, line: int) -> None:
        self.found.append((".".join(self.scope) or "<module>", line))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if _caught(node.type) & (BROAD | {"<bare>"}):
            self._here(node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name == "suppress" and any(_caught(argument) & BROAD for argument in node.args):
            self._here(node.lineno)
        self.generic_visit(node)


def _broad_catches() -> dict[str, dict[str, list[int]]]:
    found: dict[str, dict[str, list[int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == GUARD:
            continue
        visitor = _BroadCatches()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=relative))
        for function, line in visitor.found:
            found.setdefault(relative, {}).setdefault(function, []).append(line)
    return found


def test_every_broad_catch_outside_the_guard_has_a_reason() -> None:
    unexplained = [
        f"  {path}:{lines[0]} in {function}"
        for path, functions in _broad_catches().items()
        for function, lines in functions.items()
        if not REASONS.get(path, {}).get(function)
    ]
    assert not unexplained, (
        "A broad catch (except Exception/BaseException, bare except, suppress(Exception)) "
        "outside amldbg/core/guard.py:\n" + "\n".join(unexplained) + "\n"
        "Where amldbg's own failure must not reach the host, use amldbg.core.guard.guard(what) "
        "(one warning) or quietly() (no word, for crash/fork/exit paths and probes). If the "
        "catch is something else (parsing, reading a user's object, a library's failure handed "
        "on as a result, cleanup that re-raises), add it with its reason to REASONS in "
        "tests/test_guard.py."
    )


def test_the_table_of_reasons_has_no_stale_entries() -> None:
    found = _broad_catches()
    stale = [
        f"  {path}: {function}"
        for path, functions in REASONS.items()
        for function in functions
        if function not in found.get(path, {})
    ]
    assert not stale, (
        "REASONS in tests/test_guard.py lists places that no longer hold a broad catch "
        "(remove them):\n" + "\n".join(stale)
    )


# -- the guard's own behaviour ----------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    announce.forget_warnings()


def _fail(text: str) -> None:
    raise ValueError(text)


def test_guard_turns_an_exception_into_one_warning_line_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        with guard("the thing is off"):
            _fail("boom")
    with guard("the thing is off"):
        _fail("other")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "amldbg: warning: the thing is off: ValueError: boom",
        "amldbg: warning: the thing is off: ValueError: other",
    ]


def test_guard_with_a_key_warns_once_whatever_the_error_says(capsys: pytest.CaptureFixture[str]) -> None:
    for number in range(3):
        with guard("the loop failed", key="test-guard:loop"):
            _fail(f"count {number}")
    assert capsys.readouterr().out.splitlines() == ["amldbg: warning: the loop failed: ValueError: count 0"]


def test_guard_not_once_warns_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        with guard("the step failed", once=False):
            _fail("boom")
    assert capsys.readouterr().out.splitlines() == ["amldbg: warning: the step failed: ValueError: boom"] * 2


def test_quietly_drops_an_exception_without_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    def probe() -> str:
        with quietly():
            _fail("boom")
            return "found"
        return "fallback"

    assert probe() == "fallback"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("make", [lambda: guard("never"), quietly], ids=["guard", "quietly"])
def test_neither_swallows_keyboard_interrupt_or_system_exit(make: object) -> None:
    for error in (KeyboardInterrupt, SystemExit):
        with pytest.raises(error), make():  # type: ignore[operator]
            raise error()
