"""amldbg's hooks in a ParallelRunStep entry script: the sample entry script under its
local driver (real worker processes, real debugpy, a real DAP client over loopback).

The real ParallelRunStep runtime (azureml-dataset-runtime and the step's driver, which
provide ``azureml_user.parallel_run.EntryScript``) only runs on Azure ML compute and cannot
be installed here. Where a test needs the runtime's logger, it puts a stand-in
``EntryScript`` on the path, shaped like the runtime's class (a singleton with ``logger``,
``log_dir``, ``working_dir``, ``output_dir``, ``agent_name``) and writing, as the runtime
does, to ``logs/user/<ip>/Process-*.txt``. Everything else is real.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import free_port
from harness.dap_client import DAPClient
from harness.debug_adapters import reap_debug_adapters
from processes import SAMPLES, Running, child_env

ENTRY = str(SAMPLES / "parallel_entry.py")
DRIVER = str(SAMPLES / "parallel_driver.py")
DATA = SAMPLES / "parallel_data"
RUN_LINE = next(
    n for n, line in enumerate(Path(ENTRY).read_text().splitlines(), 1) if "above = sum" in line
)
# What the six sample files give (name, readings, readings above 5.0), whatever the order.
EXPECTED = {
    "readings_1.txt,5,2", "readings_2.txt,5,3", "readings_3.txt,5,3",
    "readings_4.txt,5,0", "readings_5.txt,5,5", "readings_6.txt,5,2",
}

STANDIN = '''
"""Stand-in for the ParallelRunStep runtime's EntryScript (see tests/test_parallel.py)."""
import logging
import os
import socket


class _Singleton(type):
    _instances = {}

    def __call__(cls, *args, **kwargs):
        if cls not in cls._instances:
            cls._instances[cls] = super().__call__(*args, **kwargs)
        return cls._instances[cls]


class EntryScript(metaclass=_Singleton):
    def __init__(self):
        self._logger = None

    @property
    def log_dir(self):
        return os.path.join(os.getcwd(), "logs", "user", socket.gethostbyname("localhost"))

    @property
    def working_dir(self):
        return os.getcwd()

    @property
    def output_dir(self):
        return os.path.join(os.getcwd(), "output")

    @property
    def agent_name(self):
        return "agent%03d" % int(os.environ.get("STANDIN_AGENT", "0"))

    @property
    def logger(self):
        if self._logger is None:
            os.makedirs(self.log_dir, exist_ok=True)
            logger = logging.getLogger("ParallelRunStep.user")
            logger.setLevel(logging.DEBUG)
            handler = logging.FileHandler(
                os.path.join(self.log_dir, "Process-%d.txt" % os.getpid()))
            handler.setFormatter(logging.Formatter("%(asctime)s|%(levelname)s|%(message)s"))
            logger.addHandler(handler)
            self._logger = logger
        return self._logger
'''


def runtime_standin(tmp_path: Path) -> Path:
    root = tmp_path / "runtime"
    package = root / "azureml_user"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "parallel_run.py").write_text(STANDIN)
    return root


class Driver(Running):
    """The local driver as a subprocess. On exit its worker processes (announced as
    ``driver: process I has pid N``) are killed by PID first, then the driver, then the
    detached debugpy adapters of the announced debug ports."""

    def __exit__(self, *exc: Any) -> None:
        for found in re.finditer(r"^driver: process \d+ has pid (\d+)$", self.output, re.M):
            with contextlib.suppress(OSError):
                os.kill(int(found.group(1)), signal.SIGKILL)
        super().__exit__(*exc)
        reap_debug_adapters([int(p) for p in re.findall(r"^port: (\d+)$", self.output, re.M)])


def driver(tmp_path: Path, *extra: str, **env: str) -> Driver:
    argv = [DRIVER, "--input", str(DATA), "--output", str(tmp_path / "out"),
            "--processes", "2", "--mini_batch_size", "2", "--timeout", "120", *extra]
    return Driver(argv, env=child_env(**env), cwd=tmp_path)


def results(tmp_path: Path) -> set[str]:
    return set((tmp_path / "out" / "parallel_run_step.txt").read_text().split())


def process_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((tmp_path / "logs" / "user").glob("*/Process-*.txt")))


def test_one_of_two_processes_debugs_on_base_port_plus_index(tmp_path: Path) -> None:
    base = free_port()
    env = {"AMLDBG_REMOTE_DEBUG": "1", "AMLDBG_REMOTE_DEBUG_PROCESSES": "1",
           "AMLDBG_REMOTE_DEBUG_PORT": str(base), "AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "127.0.0.1",
           "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "60",
           "PYTHONPATH": str(runtime_standin(tmp_path))}
    with driver(tmp_path, **env) as run:
        announced = int(run.wait_for_line(r"^port: (\d+)$", 60).group(1))
        assert announced == base + 1
        run.wait_for_line(r"^amldbg: parallel job process 0 \(pid \d+\) does not debug "
                          r"\(AMLDBG_REMOTE_DEBUG_PROCESSES=1\)$")
        client = DAPClient.connect("127.0.0.1", announced)
        try:
            client.attach(breakpoints={ENTRY: [RUN_LINE]})
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == RUN_LINE
            local_vars = client.locals_of(frame["id"])
            # Mini-batch k goes to process k mod 2: process 1 gets files 3 and 4.
            assert local_vars["path"].endswith("readings_3.txt'")
            assert local_vars["values"] == "[2.38, 5.44, 3.7, 6.04, 6.26]"
            assert client.evaluate("len(mini_batch)", frame["id"]) == "2"
            client.request("setBreakpoints", {"source": {"path": ENTRY}, "breakpoints": []})
            client.continue_(stop["threadId"])
        finally:
            client.disconnect()
        assert run.wait(60) == 0
    assert "Debugger attached = True" in run.lines
    assert run.output.count("Timeout for debug connection") == 1  # process 0 never listened
    assert results(tmp_path) == EXPECTED
    # Per-mini-batch lines go through the runtime's EntryScript().logger, not stdout.
    logs = process_logs(tmp_path)
    assert len(re.findall(r"amldbg: run\(\) on a mini-batch of 2 items -> 2 results took "
                          r"\d+\.\d ms \(process [01]\)", logs)) == 3
    assert "mini-batch of" not in run.output


def test_default_selects_process_0_which_runs_on_after_the_timeout(tmp_path: Path) -> None:
    base = free_port()
    env = {"AMLDBG_REMOTE_DEBUG": "1", "AMLDBG_REMOTE_DEBUG_PORT": str(base),
           "AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "127.0.0.1",
           "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "1"}
    with driver(tmp_path, **env) as run:
        assert run.wait(60) == 0
    assert re.findall(r"^port: (\d+)$", run.output, re.M) == [str(base)]
    assert "parallel job process 1 (pid" in run.output
    assert "Debugger attached = False" in run.lines
    assert results(tmp_path) == EXPECTED
    # Without the runtime, the per-mini-batch lines go to stdout.
    assert len(re.findall(r" INFO amldbg\.scoring: run\(\) on a mini-batch of \d items? -> "
                          r"\d results? took \d+\.\d ms \(process [01]\)$", run.output, re.M)) == 3


def test_failing_mini_batch_logged_with_traceback_and_reraised(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, text in (("a.txt", "1\n7\n"), ("b.txt", "6\nn/a"), ("c.txt", "9\n")):
        (data / name).write_text(text)
    argv = [DRIVER, "--input", str(data), "--output", str(tmp_path / "out"),
            "--processes", "1", "--mini_batch_size", "2", "--timeout", "60"]
    env = child_env(PYTHONPATH=str(runtime_standin(tmp_path)))
    with Driver(argv, env=env, cwd=tmp_path) as run:
        assert run.wait(60) == 1
    # The driver saw the user's own exception (re-raised unchanged) and carried on.
    assert "driver: process 0: mini-batch failed: ValueError: could not convert string to " \
           "float: 'n/a'" in run.output
    assert results(tmp_path) == {"c.txt,1,1"}
    logs = process_logs(tmp_path)
    assert "ERROR|amldbg: run() on a mini-batch of 2 items failed (after " in logs
    assert "process 0):" in logs
    assert re.search(r'parallel_entry\.py", line \d+, in run', logs)
    assert "ValueError: could not convert string to float: 'n/a'" in logs


# -- in-process checks of the runtime detection, with the same stand-in -------------------


@pytest.fixture()
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from amldbg.core import runtime as parallel
    from amldbg.hooks import scoring

    monkeypatch.syspath_prepend(str(runtime_standin(tmp_path)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AMLDBG_PROCESS_INDEX", raising=False)
    monkeypatch.setattr(parallel, "_entry_script_class", parallel._NOT_LOOKED_UP)
    monkeypatch.setattr(scoring, "_sink", None)
    yield parallel
    for name in ("azureml_user.parallel_run", "azureml_user"):
        sys.modules.pop(name, None)


def test_process_index_from_agent_name_and_dataframe_rows(
    standin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amldbg.hooks.scoring import debug_run

    monkeypatch.setenv("STANDIN_AGENT", "3")
    assert standin.in_parallel_run()
    assert standin.process_index() == 3
    monkeypatch.setenv("AMLDBG_PROCESS_INDEX", "1")
    assert standin.process_index() == 1  # an explicit index wins

    @debug_run
    def run(mini_batch: pd.DataFrame) -> pd.DataFrame:
        """Double the rows."""
        return mini_batch.assign(y=mini_batch["x"] * 2)

    frame = pd.DataFrame({"x": [1, 2, 3]})
    assert run(frame)["y"].tolist() == [2, 4, 6]
    assert run.__name__ == "run" and run.__doc__ == "Double the rows."
    assert re.search(r"mini-batch of 3 items -> 3 results took \d+\.\d ms \(process 1\)",
                     process_logs(tmp_path))


def test_the_users_exception_object_and_traceback_come_through(standin: Any, tmp_path: Path) -> None:
    from amldbg.hooks.scoring import debug_run

    raised = KeyError("missing column")

    @debug_run
    def run(mini_batch: list[str]) -> list[str]:
        raise raised

    with pytest.raises(KeyError) as caught:
        run(["a", "b"])
    assert caught.value is raised
    assert caught.traceback[-1].name == "run"  # the user's frame is still the innermost one
    assert "KeyError: 'missing column'" in process_logs(tmp_path)


def test_without_runtime_or_index_it_is_not_a_parallel_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from amldbg.core import runtime
    from amldbg.hooks import parallel

    monkeypatch.delenv("AMLDBG_PROCESS_INDEX", raising=False)
    monkeypatch.setattr(runtime, "_entry_script_class", runtime._NOT_LOOKED_UP)
    assert not runtime.in_parallel_run()
    assert runtime.process_index() == 0
    assert parallel.selected_processes({}) == (0,)
    assert parallel.selected_processes({"AMLDBG_REMOTE_DEBUG_PROCESSES": "all"}) is None
    with pytest.raises(ValueError):
        parallel.selected_processes({"AMLDBG_REMOTE_DEBUG_PROCESSES": "first"})


def test_process_selection_says_who_does_not_debug_and_warns_once_about_a_bad_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from amldbg.hooks import parallel

    def chosen(index: int, processes: str | None = None) -> int | None:
        env = {"AMLDBG_PROCESS_INDEX": str(index)}
        if processes is not None:
            env["AMLDBG_REMOTE_DEBUG_PROCESSES"] = processes
        return parallel.debugging_process(env)

    assert chosen(0) == 0
    assert chosen(3, "all") == 3
    assert chosen(2, "0,2") == 2
    assert chosen(1) is None
    assert capsys.readouterr().out.splitlines() == [
        f"amldbg: parallel job process 1 (pid {os.getpid()}) does not debug "
        f"(AMLDBG_REMOTE_DEBUG_PROCESSES=0)"
    ]
    assert chosen(0, "first") == 0
    assert chosen(2, "first") is None
    warning, *rest = capsys.readouterr().out.splitlines()  # the bad value is warned about once
    assert warning.startswith("amldbg: warning: ignoring AMLDBG_REMOTE_DEBUG_PROCESSES: ")
    assert warning.endswith("; only process 0 debugs")
    assert rest == [
        f"amldbg: parallel job process 2 (pid {os.getpid()}) does not debug "
        f"(AMLDBG_REMOTE_DEBUG_PROCESSES=0)"
    ]
