"""The driver log: stdout lines that arrive while the job runs, with the rank, in the right place."""

from __future__ import annotations

import contextlib
import io
import logging
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
from logs_support import start_child, write_child

from amldbg.logs import configure_logging, get_logger
from amldbg.logs import driver_log as driver_log_module


@pytest.fixture
def clean_logger() -> Iterator[str]:
    """A logger name used by one test; its handlers are removed afterwards."""
    name = f"amldbg-test-{time.monotonic_ns()}"
    yield name
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


def test_lines_of_a_piped_child_arrive_while_it_still_runs(tmp_path: Path) -> None:
    # stdout is a pipe and PYTHONUNBUFFERED is not set: block-buffered unless amldbg fixes it.
    go_on = tmp_path / "go-on"
    script = write_child(tmp_path, f"""
        import os, time
        from amldbg.logs import get_logger
        log = get_logger("train")
        log.info("waiting for the debugger at 10.0.0.7:5678")
        print("a plain print after get_logger")
        deadline = time.monotonic() + 30
        while not os.path.exists({str(go_on)!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("released")
    """)
    with start_child(script, unbuffered=False) as child:
        child.wait_for_line(r"INFO train: waiting for the debugger at 10\.0\.0\.7:5678$", timeout=20)
        child.wait_for_line(r"^a plain print after get_logger$", timeout=5)
        assert child.proc.poll() is None, "the lines must arrive before the process ends"
        go_on.touch()
        assert child.wait(30) == 0
    assert child.lines[-1] == "released"


def test_distributed_lines_carry_the_rank(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        from amldbg.logs import get_logger
        get_logger("dist").warning("loss is nan")
    """)
    with start_child(script, RANK="3", LOCAL_RANK="1", WORLD_SIZE="4") as child:
        assert child.wait(30) == 0
    assert "[rank 3] WARNING dist: loss is nan" in child.output
    with start_child(script) as child:
        assert child.wait(30) == 0
    assert "WARNING dist: loss is nan" in child.output and "[rank" not in child.output


def test_stdout_is_looked_up_at_each_record_so_redirection_applies(clean_logger: str) -> None:
    log = get_logger(clean_logger, appinsights=False)
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(first):
        log.info("into the first stream")
    with contextlib.redirect_stdout(second):
        log.info("into the second stream")
    assert first.getvalue().rstrip().endswith(f"INFO {clean_logger}: into the first stream")
    assert "second" not in first.getvalue()
    assert second.getvalue().rstrip().endswith("into the second stream")


def test_get_logger_twice_does_not_double_lines_and_leaves_the_root_alone(clean_logger: str) -> None:
    root_handlers = list(logging.getLogger().handlers)
    get_logger(clean_logger, appinsights=False)
    log = get_logger(clean_logger, appinsights=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        log.info("once")
    assert out.getvalue().count("once") == 1
    assert logging.getLogger().handlers == root_handlers
    assert isinstance(log, logging.Logger) and log.name == clean_logger


def test_default_name_is_the_calling_module(clean_logger: str) -> None:
    log = get_logger(appinsights=False)
    try:
        assert log.name == __name__
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)


def test_configure_logging_routes_existing_logging_calls(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import logging
        import amldbg.logs
        amldbg.logs.configure_logging(level=logging.DEBUG)
        logging.getLogger("some.library").debug("library detail")
        logging.info("root call")
    """)
    with start_child(script) as child:
        assert child.wait(30) == 0
    assert "DEBUG some.library: library detail" in child.output
    assert "INFO root: root call" in child.output


@pytest.mark.parametrize("module", ["azureml_user/parallel_run/__init__.py", "entry_script.py"])
def test_parallel_jobs_route_through_entry_script_logger(tmp_path: Path, module: str) -> None:
    # Stand-in for the parallel job runtime's module (it ships only inside Azure ML's image,
    # not on PyPI): `azureml_user.parallel_run` in SDK v2 parallel jobs and current
    # ParallelRunStep images, `entry_script` in older ones. Shaped as documented: EntryScript()
    # is a singleton-like object whose .logger is a logging.Logger writing to logs/user/...
    runtime = tmp_path / "prs_runtime"
    (runtime / module).parent.mkdir(parents=True, exist_ok=True)
    if module.startswith("azureml_user/"):
        (runtime / "azureml_user" / "__init__.py").write_text("")
    process_log = str(tmp_path / "Process-1.txt")
    (runtime / module).write_text(textwrap.dedent(f"""
        import logging
        class EntryScript:
            _logger = None
            @property
            def logger(self):
                if EntryScript._logger is None:
                    log = logging.getLogger("ParallelRunStep.EntryScript")
                    handler = logging.FileHandler({process_log!r})
                    handler.setFormatter(logging.Formatter("PRS %(levelname)s %(message)s"))
                    log.addHandler(handler)
                    log.setLevel(logging.INFO)
                    EntryScript._logger = log
                return EntryScript._logger
    """))
    script = write_child(tmp_path, """
        from amldbg.logs import get_logger
        log = get_logger("score")
        log.info("mini batch of %d files", 4)
        log.debug("not at this level")
        print("DONE")
    """)
    with start_child(script, PYTHONPATH=str(runtime)) as child:
        assert child.wait(30) == 0, child.output
    assert (tmp_path / "Process-1.txt").read_text().splitlines() == ["PRS INFO mini batch of 4 files"]
    assert "mini batch" not in child.output, "not written twice (stdout lands in the same file)"


def test_metric_line_format() -> None:
    assert driver_log_module.metric_line("loss", 0.25, 3) == "amldbg metric: loss = 0.25 (step 3)"
    assert driver_log_module.metric_line("acc", 1.0, None) == "amldbg metric: acc = 1"


def test_configure_logging_rejects_an_unknown_backend_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    before = configure_logging(root=False).backend
    settings = configure_logging(backend="nonsense", root=False)
    assert settings.backend == before  # the previous settings are kept
    out = capsys.readouterr().out
    assert "amldbg: warning: configure_logging: expected one of opencensus, otel, got 'nonsense'" in out
