"""Stack dumps and crash reports: what lands in the driver log and in outputs/amldbg/."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from amldbg.diagnostics import stacks
from processes import Running, child_env


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Huge:
    def __repr__(self) -> str:
        return "H" * 1_000_000


def _dump_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"^amldbg stacks: (\{.*\})$", output, re.M)]


def test_dump_shows_every_thread_with_bounded_masked_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = threading.Event()
    release = threading.Event()

    def worker_waits(batch_size: int) -> None:
        api_token = "tok-1234567890abcdef"  # noqa: F841 - read by the dump
        conn = "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=s3cr3tvalue=="  # noqa: F841
        settings = {"password": "hunter2", "lr": 0.1}  # noqa: F841
        hostile = Hostile()  # noqa: F841
        huge = Huge()  # noqa: F841
        escape = "bell\x07 and \x1b[31mred"  # noqa: F841
        ready.set()
        release.wait(30)

    thread = threading.Thread(target=worker_waits, args=(32,), name="loader-7", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        path = stacks.write_dump("request", "from a test", directory=str(tmp_path))
    finally:
        release.set()
        thread.join(10)
    out = capsys.readouterr().out
    assert path is not None and Path(path).parent == tmp_path
    assert re.fullmatch(r"stacks-rank0-pid\d+-\d+\.json", Path(path).name)
    dump = json.loads(Path(path).read_text())
    names = [t["name"] for t in dump["threads"]]
    assert names[0] == "MainThread" and dump["threads"][0]["main"]
    loader = next(t for t in dump["threads"] if t["name"] == "loader-7")
    frame = next(f for f in loader["frames"] if f["function"].endswith("worker_waits"))
    values = frame["locals"]
    assert values["batch_size"] == "32"
    assert values["api_token"] == "<hidden>"
    assert "s3cr3tvalue" not in values["conn"] and "<hidden>" in values["conn"]
    assert "hunter2" not in values["settings"] and "'lr': 0.1" in values["settings"]
    # Neither __repr__ is run: an object is shown by its type (and fields, none here).
    assert values["hostile"] == "<test_stacks.Hostile object>"
    assert values["huge"] == "<test_stacks.Huge object>"
    assert "\x07" not in values["escape"] and "\\x07" in values["escape"]
    assert frame["code"].startswith("release.wait")
    # The driver log: one machine line with the file, then readable lines, never a secret.
    [line] = _dump_lines(out)
    assert line["file"] == path and line["reason"] == "request" and line["rank"] == 0
    assert any(t["name"] == "loader-7" for t in line["threads"])
    assert "amldbg: [rank 0] thread loader-7 (daemon), most recent call last:" in out
    for secret in ("tok-1234567890abcdef", "hunter2", "s3cr3tvalue", "\x1b"):
        assert secret not in out and secret not in Path(path).read_text()


def test_tensors_are_described_without_their_repr() -> None:
    import torch  # the test extra installs it: missing is a failure, not a skip

    text = stacks.safe_repr(torch.zeros(3, 4))
    assert text == "<Tensor shape=(3, 4) dtype=torch.float32 device=cpu>"


def test_a_capture_stops_reading_values_when_its_budget_is_spent() -> None:
    dump = stacks.capture("request", budget=0.0)
    main = dump["threads"][0]
    assert main["frames"], "frames are recorded even without values"
    assert all(
        set(f.get("locals", {})) <= {"..."} for f in main["frames"]
    ), "no value is read past the budget"


CRASHING = textwrap.dedent(
    """
    import argparse, amldbg

    def load(path):
        storage_key = "AccountKey=abcdefghijklmnop1234"
        rows = list(range(1000))
        raise ValueError(f"cannot parse {path}")

    parser = argparse.ArgumentParser()
    amldbg.add_args(parser)
    amldbg.enable_remote_debug(parser.parse_known_args()[0])
    print("started", flush=True)
    load("data/part-7.csv")
    """
)


def _traceback(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index("Traceback (most recent call last):")
    return [line for line in lines[start:] if not line.startswith("amldbg")]


@pytest.mark.parametrize("env", [{}, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}],
                         ids=["debugged-rank", "other-rank"])
def test_crash_report_leaves_traceback_and_exit_code_unchanged(
    tmp_path: Path, env: dict[str, str]
) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASHING)
    with Running([str(script)], cwd=tmp_path, env=child_env(**env)) as plain:
        plain_code = plain.wait(60)
    flags = ["--remote_debug_post_mortem", "--remote_debug_connection_timeout", "0",
             "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", "0"]
    flags += ["--api_key", "sk-live-0123456789"]
    with Running([str(script), *flags], cwd=tmp_path, env=child_env(**env)) as run:
        code = run.wait(90)
    assert code == plain_code == 1
    assert _traceback(run.output) == _traceback(plain.output)
    rank = env.get("RANK", "0")
    [report_path] = list((tmp_path / "outputs" / "amldbg").glob(f"crash-rank{rank}-pid*.json"))
    report = json.loads(report_path.read_text())
    assert report["exception"] == "ValueError: cannot parse data/part-7.csv"
    assert report["rank"] == int(rank) and report["world_size"] == int(env.get("WORLD_SIZE", 1))
    top = report["frames"][-1]
    assert (top["function"], top["locals"]["path"]) == ("load", "'data/part-7.csv'")
    assert top["locals"]["storage_key"] == "<hidden>"
    assert "abcdefghijklmnop1234" not in report_path.read_text()
    assert report["argv"][-2:] == ["--api_key", "<hidden>"]
    assert "sk-live-0123456789" not in report_path.read_text()
    assert "Python 3" in report["environment"]["summary"]
    line = json.loads(run.wait_for_line(r"^amldbg crash: (\{.*\})$").group(1))
    assert line["file"].endswith(report_path.name) and line["frame"] == f"crash.py:{7} in load"


def test_the_log_line_fits_in_one_pipe_write_however_many_threads() -> None:
    frame = {"file": "/very/long/path/" + "x" * 80 + ".py", "line": 1, "function": "f"}
    threads = [{"name": f"t{i}", "main": i == 0, "frames": [frame] * stacks.MAX_FRAMES}
               for i in range(60)]
    line = stacks.summary_line({"amldbg_stacks": 1, "rank": 0, "threads": threads})
    assert len(line.encode()) <= stacks.LINE_LIMIT
    parsed = json.loads(line[len(stacks.STACKS_MARKER):])
    assert parsed["threads"][0]["main"] and parsed["threads"][0]["frames"]
    assert len(parsed["threads"]) == 60


def test_a_dump_taken_inside_amldbgs_own_handler_shows_the_interrupted_frame() -> None:
    # A signal that interrupts a blocking call runs amldbg's Python handler on the main
    # thread; a dump taken then must show the user's frame, not the handler's.
    from amldbg.diagnostics import stacks

    def handler() -> dict:
        # Here the capture runs on the interrupted thread itself, so its own frame is
        # skipped too; on_demand captures from its reader thread, which is left out.
        return stacks.capture("signal", skip_code=(handler.__code__, stacks.capture.__code__))

    def wait_for_go() -> dict:
        return handler()

    dump = wait_for_go()
    main = next(thread for thread in dump["threads"] if thread["main"])
    assert main["frames"][-1]["function"].endswith("wait_for_go")
    # Without skip_code the innermost frame is where the capture was taken.
    assert stacks.capture("signal")["threads"][0]["frames"][-1]["function"] == "capture"


def _main_frames_while_blocked(enter: Any, skip_code: tuple[Any, ...]) -> list[str]:
    """Run ``enter(gate)`` on the main thread until it blocks in amldbg's lock ``gate``; the
    functions of the main thread's stack as another thread's capture then shows them."""
    from amldbg.core import forksafe

    gate = forksafe.lock()
    gate.acquire()
    main = threading.main_thread().ident
    assert threading.get_ident() == main  # the main thread is the one a signal interrupts
    acquire = type(gate).acquire.__code__
    taken: dict[str, Any] = {}

    def take() -> None:
        try:
            for _ in range(2000):  # until the main thread waits in the lock (10 s at most)
                frame = sys._current_frames().get(main)
                if frame is not None and frame.f_code is acquire:
                    break
                time.sleep(0.005)
            taken["dump"] = stacks.capture("signal", skip_code=skip_code)
        finally:
            gate.release()

    thread = threading.Thread(target=take)
    thread.start()
    enter(gate)
    thread.join()
    main_thread = next(record for record in taken["dump"]["threads"] if record["main"])
    return [record["function"].rsplit(".", 1)[-1] for record in main_thread["frames"]]


def test_a_dump_taken_while_the_handler_is_in_one_of_amldbgs_helpers_shows_the_interrupted_frame() -> None:
    # The signal thread may take its dump while the main thread's handler is inside a helper
    # of amldbg's it calls (the ownership check, the wakeup-fd check): the frames from the
    # handler inward are amldbg's, so the innermost frame shown is still the user's.
    def handler(gate: Any) -> None:
        gate.acquire()  # amldbg's lock: an amldbg frame on top of the handler

    def wait_for_go(gate: Any) -> None:
        handler(gate)

    functions = _main_frames_while_blocked(wait_for_go, (handler.__code__,))
    assert functions[-1] == "wait_for_go"


def test_a_scripts_frame_running_on_top_of_amldbgs_handler_is_shown() -> None:
    # A script's own signal handler that Python runs while the main thread is inside
    # amldbg's handler is what the thread is doing: the stack is shown whole.
    def user_signal_handler(gate: Any) -> None:
        gate.acquire()

    def handler(gate: Any) -> None:
        user_signal_handler(gate)

    def wait_for_go(gate: Any) -> None:
        handler(gate)

    functions = _main_frames_while_blocked(wait_for_go, (handler.__code__,))
    assert functions[-3:] == ["handler", "user_signal_handler", "acquire"]


def test_a_frameworks_handler_on_top_of_amldbgs_is_shown_though_site_packages_is_in_the_stdlib_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under pyenv, conda and the python Docker images, site-packages lies inside the standard
    # library's folder: a framework's signal handler (Lightning's, submitit's) run on top of
    # amldbg's is still what the thread was doing.
    import importlib.util

    stdlib = tmp_path / "lib" / "python3"
    framework = stdlib / "site-packages" / "framework_signals.py"
    framework.parent.mkdir(parents=True)
    framework.write_text("def on_signal(gate):\n    gate.acquire()\n")
    spec = importlib.util.spec_from_file_location("framework_signals", framework)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(stacks._fixed, "own_roots", (os.path.normcase(str(stdlib)),))

    def handler(gate: Any) -> None:
        module.on_signal(gate)

    def wait_for_go(gate: Any) -> None:
        handler(gate)

    functions = _main_frames_while_blocked(wait_for_go, (handler.__code__,))
    assert functions[-3:] == ["handler", "on_signal", "acquire"]


def test_a_capture_runs_no_class_body_mapping_and_no_loader_of_a_lazy_source(tmp_path: Path) -> None:
    import linecache
    import sys

    ran: list[str] = []

    class Namespace(dict):  # type: ignore[type-arg]
        def keys(self) -> Any:
            ran.append("keys")
            return super().keys()

        def __getitem__(self, key: Any) -> Any:
            ran.append("__getitem__")
            return super().__getitem__(key)

    class Meta(type):
        @classmethod
        def __prepare__(mcs, name: str, bases: Any, **kwargs: Any) -> Any:
            return Namespace()

    class Loader:
        def get_source(self, name: str) -> str:
            ran.append("get_source")
            return "x = 1\n"

    lazy_file = str(tmp_path / "remote_module.py")  # not on disk: only its loader knows it
    linecache.lazycache(lazy_file, {"__name__": "remote_module", "__loader__": Loader()})
    code = compile("def body(capture):\n    return capture()\n", lazy_file, "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    holder: dict[str, Any] = {}

    def capture() -> tuple[dict[str, Any], list[str]]:
        del ran[:]  # the class body's own name lookups use its mapping; the capture must not
        dump = stacks.capture("request")
        return dump, list(ran)

    def capture_in_class_body() -> None:
        class Model(metaclass=Meta):  # noqa: F841
            holder["dump"], holder["ran"] = namespace["body"](capture)

    capture_in_class_body()
    assert holder["ran"] == []
    frames = holder["dump"]["threads"][0]["frames"]
    assert any(f["function"] == "body" and "code" not in f for f in frames)
    assert any(f["function"].endswith("Model") and f.get("locals") == {} for f in frames)
    linecache.clearcache()
    assert "remote_module" not in sys.modules
