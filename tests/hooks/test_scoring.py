"""amldbg.scoring under the real Azure ML inference server (azmlinfsrv, gunicorn workers),
with real debugpy, a real DAP client over a loopback socket and real HTTP requests.

The server has no option for its bind address (it always binds 0.0.0.0), so the tests start
its own entry point, ``amlserver.run()``, with that one constant set to 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from harness.dap_client import DAPClient, listening_adapter
from harness.debug_adapters import reap_debug_adapters
from processes import SAMPLES, Running, child_env

pytestmark = pytest.mark.slow

SCORE = str(SAMPLES / "score.py")
SCORE_LINE = next(
    n for n, line in enumerate(Path(SCORE).read_text().splitlines(), 1) if "predictions =" in line
)
SERVER = [
    "-c",
    "import sys\n"
    "from azureml_inference_server_http import amlserver\n"
    "amlserver.DEFAULT_HOST = '127.0.0.1'\n"
    "sys.argv[0] = 'azmlinfsrv'\n"
    "amlserver.run()\n",
]
READY = r"Worker with pid (\d+) ready for serving traffic"
LOOPBACK_DEBUG = {"AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "127.0.0.1"}


class Server(Running):
    """The inference server as a subprocess; on exit its gunicorn master is asked to stop
    (SIGTERM, which stops the workers too), and every worker still alive is then killed by
    its PID: killing only the master would orphan the workers, which keep the output pipe
    open. The detached debugpy adapters of the announced debug ports are reaped last."""

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        for found in re.finditer(r"Booting worker with pid: (\d+)", self.output):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(found.group(1)), signal.SIGKILL)
        super().__exit__(*exc)
        reap_debug_adapters([int(p) for p in re.findall(r"^port: (\d+)$", self.output, re.M)])


def start_server(entry: str | Path, tmp_path: Path, workers: int = 1, **env: str) -> tuple[Server, int]:
    port = free_port()
    argv = [*SERVER, "--entry_script", str(entry), "--port", str(port),
            "--worker_count", str(workers)]
    return Server(argv, env=child_env(**env), cwd=tmp_path), port


def post(port: int, body: Any, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/score",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_lines(run: Running, pattern: str, count: int, timeout: float = 60) -> list[re.Match[str]]:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in map(regex.search, list(run.lines)) if m]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline or run.proc.poll() is not None:
            raise AssertionError(f"{count} x {pattern!r} not seen; output:\n{run.output}")
        time.sleep(0.1)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_attach_stop_in_run_read_local_and_answer(tmp_path: Path) -> None:
    debug_port = free_port()
    run, port = start_server(SCORE, tmp_path, AMLDBG_REMOTE_DEBUG="1",
                             AMLDBG_REMOTE_DEBUG_PORT=str(debug_port),
                             AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60", **LOOPBACK_DEBUG)
    with run, concurrent.futures.ThreadPoolExecutor(1) as pool:
        run.wait_for_line(r"^Timeout for debug connection: 60$", 60)
        assert int(run.wait_for_line(r"^port: (\d+)$").group(1)) == debug_port
        client = DAPClient.connect("127.0.0.1", debug_port)
        try:
            client.attach(breakpoints={SCORE: [SCORE_LINE]})
            run.wait_for_line(READY, 60)
            answer = pool.submit(post, port, {"data": [[1.0, 2.0, 3.0]]})
            stop = client.wait_for_stop()
            frame = client.top_frame(stop["threadId"])
            assert frame["line"] == SCORE_LINE
            assert Path(frame["source"]["path"]).resolve() == Path(SCORE).resolve()
            assert client.locals_of(frame["id"])["scores"] == "array([4.75])"
            assert client.evaluate("data.shape", frame["id"]) == "(1, 3)"
            assert not answer.done()  # the request waits for the paused run()
            client.request("setBreakpoints", {"source": {"path": SCORE}, "breakpoints": []})
            client.continue_(stop["threadId"])
            assert answer.result(60) == (200, [4.75])
        finally:
            client.disconnect()
        lines = run.lines
    # amldbg's lines reach the server's log, and the debugger started before the user's init.
    order = [lines.index(text) for text in (
        "Debugger attached = True",
    )] + [next(i for i, line in enumerate(lines) if line.endswith("model loaded: 3 weights"))]
    assert order == sorted(order)
    assert any("Invoking user's init function" in line for line in lines[: order[0]])


def test_debugging_off_no_listener_no_debugpy_normal_answers(tmp_path: Path) -> None:
    probe = write(tmp_path / "probe.py", """
        import sys
        from amldbg.hooks.scoring import debug_init, debug_run

        @debug_init
        def init():
            pass

        @debug_run
        def run(raw_data):
            return {"debugpy": sorted(m for m in sys.modules if m.startswith(("debugpy", "pydevd")))}
        """)
    debug_port = free_port()
    for entry, body, expected in ((SCORE, {"data": [[1.0, 0.0, 1.0]]}, [2.75]),
                                  (probe, {}, {"debugpy": []})):
        run, port = start_server(entry, tmp_path, AMLDBG_REMOTE_DEBUG_PORT=str(debug_port))
        with run:
            run.wait_for_line(READY, 60)
            assert post(port, body) == (200, expected)
            assert not listening(debug_port)
        assert "amldbg" not in run.output
        assert "Timeout for debug connection" not in run.output


def test_init_raising_fails_the_server_with_the_traceback_logged(tmp_path: Path) -> None:
    entry = write(tmp_path / "bad_init.py", """
        from amldbg.hooks.scoring import debug_init, debug_run

        @debug_init
        def init():
            model_path = "/nonexistent/model.pkl"
            raise FileNotFoundError(f"model not found: {model_path}")

        @debug_run
        def run(raw_data):
            return raw_data
        """)
    run, _ = start_server(entry, tmp_path, AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0",
                          AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="0", **LOOPBACK_DEBUG)
    with run:
        code = run.wait(90)
    assert code != 0
    output = run.output
    assert "User's init function failed" in output
    assert "FileNotFoundError: model not found: /nonexistent/model.pkl" in output
    assert 'bad_init.py", line 7, in init' in output  # the user's frame, not only amldbg's
    assert "ready for serving traffic" not in output
    assert "amldbg: warning" not in output


RUN_RAISES = """
    {imports}

    def init():
        pass

    {decorator}
    def run(raw_data):
        rows = __import__("json").loads(raw_data)["rows"]
        return sum(rows) / len(rows)
    """


def test_run_raising_answers_500_as_without_amldbg_and_logs_the_traceback(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.py", RUN_RAISES.format(imports="", decorator=""))
    hooked = write(tmp_path / "hooked.py", RUN_RAISES.format(
        imports="from amldbg.hooks.scoring import debug_run", decorator="@debug_run"))
    headers = {"x-request-id": "req-42", "x-ms-client-request-id": "client-7"}
    answers = {}
    outputs = {}
    servers = [start_server(entry, tmp_path) for entry in (plain, hooked)]
    try:
        for (run, port), name in zip(servers, ("plain", "hooked")):
            run.wait_for_line(READY, 60)
            answers[name] = (post(port, {"rows": [1, 3]}), post(port, {"rows": []}, headers))
        for (run, _), name in zip(servers, ("plain", "hooked")):
            run.wait_for_line(r"POST /score 500", 30)
            outputs[name] = run.output
    finally:
        for run, _ in servers:
            run.__exit__(None, None, None)
    assert answers["hooked"] == answers["plain"]
    ok, failed = answers["hooked"]
    assert ok == (200, 2.0)
    assert failed[0] == 500
    hooked_log = outputs["hooked"]
    start = re.search(r"^.*amldbg\.scoring: run\(\) failed \(after \d+\.\d ms, .*$", hooked_log, re.M)
    assert start, hooked_log
    report = hooked_log[start.start():]
    assert start.group(0).endswith("request id req-42, client request id client-7):")
    assert 'hooked.py", line 10, in run' in report
    assert "ZeroDivisionError: division by zero" in report
    # The server still logs the exception itself, as without amldbg.
    assert "Encountered Exception" in hooked_log and "Encountered Exception" in outputs["plain"]


def test_nobody_attaches_server_serves_after_the_timeout(tmp_path: Path) -> None:
    run, port = start_server(SCORE, tmp_path, AMLDBG_REMOTE_DEBUG="1",
                             AMLDBG_REMOTE_DEBUG_PORT="0",
                             AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="2", **LOOPBACK_DEBUG)
    with run:
        run.wait_for_line(r"waiting up to 2 s for a debugger", 60)
        started = run.line_times[-1]
        run.wait_for_line(READY, 60)
        assert post(port, {"data": [[0.0, 0.0, 0.0]]}) == (200, [0.25])
    finished = run.line_times[run.lines.index("Debugger attached = False")]
    assert 1.5 <= finished - started <= 8


def test_default_timeout_is_30_seconds_for_an_entry_script(tmp_path: Path) -> None:
    # Without AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT the guides' 30 s applies (not 300).
    run, _ = start_server(SCORE, tmp_path, AMLDBG_REMOTE_DEBUG="1",
                          AMLDBG_REMOTE_DEBUG_PORT="0", **LOOPBACK_DEBUG)
    with run:
        run.wait_for_line(r"^Timeout for debug connection: 30$", 60)


def test_two_workers_listen_on_separate_ports(tmp_path: Path) -> None:
    base = free_port()
    while not all(not listening(p) for p in (base, base + 1)):
        base = free_port()
    run, port = start_server(SCORE, tmp_path, workers=2, AMLDBG_REMOTE_DEBUG="1",
                             AMLDBG_REMOTE_DEBUG_PORT=str(base),
                             AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="1", **LOOPBACK_DEBUG)
    with run:
        where = wait_for_lines(
            run, r"^amldbg: inference server worker (\d) of 2 \(pid (\d+)\): debugger listen on "
                 r"127\.0\.0\.1:(\d+)", 2)
        ready = wait_for_lines(run, READY, 2)
        for _ in range(4):
            assert post(port, {"data": [[1.0, 2.0, 3.0]]}) == (200, [4.75])
    workers = {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in where}
    assert sorted(workers) == [1, 2]
    assert workers[1][1] == base and workers[2][1] == base + 1
    assert {pid for pid, _ in workers.values()} == {int(m.group(1)) for m in ready}
    assert "in use" not in run.output and "amldbg: warning" not in run.output


SCHEMA_IMPORTS = """
    import functools
    import logging
    import numpy as np
    from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
    from inference_schema.schema_decorators import input_schema
    from amldbg.hooks.scoring import debug_init, debug_run

    def naive(func):
        # The trap: this wrapper's closure holds a logger besides the function.
        logger = logging.getLogger(func.__name__)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            logger.debug("call")
            return func(*args, **kwargs)
        return wrapper

    @debug_init(timeout=5)
    def init():
        pass
    """
SCHEMA = 'input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))'
ORDERS = {
    "debug_run_outside": f"@debug_run\n@{SCHEMA}",
    "debug_run_inside": f"@{SCHEMA}\n@debug_run",
    "debug_run_with_options": f"@debug_run(log_calls=True)\n@{SCHEMA}",
    "naive_wrapper_control": f"@naive\n@{SCHEMA}",
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_inference_schema_composes_in_either_order(tmp_path: Path, order: str) -> None:
    source = textwrap.dedent(SCHEMA_IMPORTS) + ORDERS[order] + (
        "\ndef run(data):\n    return {'type': type(data).__name__, 'sum': float(np.sum(data))}\n")
    entry = tmp_path / "schema_score.py"
    entry.write_text(source)
    run, port = start_server(entry, tmp_path)
    with run:
        run.wait_for_line(READY, 60)
        status, body = post(port, {"data": [[1.0, 2.0, 3.0]]})
        swagger = urllib.request.urlopen(f"http://127.0.0.1:{port}/swagger.json", timeout=30)
        spec = json.loads(swagger.read())
    if order == "naive_wrapper_control":
        # Proves the check can fail: the server silently passes the raw JSON string.
        assert "run() is not decorated" in run.output
        assert status == 500
        return
    assert "run() is decorated with @input_schema. Server will invoke it with the following " \
           "arguments: data." in run.output
    assert (status, body) == (200, {"type": "ndarray", "sum": 6.0})
    assert "data" in json.dumps(spec["definitions"]["ServiceInput"])
    if order == "debug_run_with_options":
        assert re.search(r" INFO amldbg\.scoring: run\(\) took \d+\.\d ms$", run.output, re.M)


def test_request_headers_and_rawhttp_keep_working_through_the_wrapper(tmp_path: Path) -> None:
    entry = write(tmp_path / "headers_score.py", """
        from azureml_inference_server_http.api.aml_request import rawhttp
        from amldbg.hooks.scoring import debug_init, debug_run

        @debug_init
        def init():
            pass

        @rawhttp
        @debug_run
        def run(request, request_headers):
            return {"method": request.method, "body": request.get_json(),
                    "client": request_headers.get("X-Ms-Client-Request-Id")}
        """)
    run, port = start_server(entry, tmp_path)
    with run:
        run.wait_for_line(READY, 60)
        answer = post(port, {"x": 1}, {"x-ms-client-request-id": "abc"})
    assert "run() is decorated with @rawhttp" in run.output
    assert answer == (200, {"method": "POST", "body": {"x": 1}, "client": "abc"})


def test_server_debug_mode_is_reused_not_doubled(tmp_path: Path) -> None:
    # AZUREML_DEBUG_PORT: the server's own entry module connects out to a listening VS Code
    # before loading score.py; debug_init must see that debugger and start no second one.
    debug_port = free_port()
    servers: list[tuple[Server, int]] = []
    env = {"AZUREML_DEBUG_PORT": str(debug_port), "AMLDBG_REMOTE_DEBUG": "1",
           "AMLDBG_REMOTE_DEBUG_PORT": "0", **LOOPBACK_DEBUG}
    try:
        with listening_adapter("127.0.0.1", debug_port) as client:
            client.attach(
                attach_arguments={"listen": {"host": "127.0.0.1", "port": debug_port}},
                breakpoints={SCORE: [SCORE_LINE]},
                on_attach_sent=lambda: servers.append(start_server(SCORE, tmp_path, **env)),
            )
            run, port = servers[0]
            run.wait_for_line(READY, 60)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                answer = pool.submit(post, port, {"data": [[1.0, 2.0, 3.0]]})
                stop = client.wait_for_stop()
                frame = client.top_frame(stop["threadId"])
                assert client.locals_of(frame["id"])["scores"] == "array([4.75])"
                client.request("setBreakpoints", {"source": {"path": SCORE}, "breakpoints": []})
                client.continue_(stop["threadId"])
                assert answer.result(60) == (200, [4.75])
    finally:
        for server, _ in servers:
            server.__exit__(None, None, None)
    output = servers[0][0].output
    assert "a debugger is already active in this process" in output
    assert re.search(r"^amldbg: inference server worker 1 of 1 \(pid \d+\): reuses the debugger "
                     r"already active in this process, attached=True$", output, re.M)
    assert "Debugger attached = True" in output
    assert not re.search(r"^port: \d+$", output, re.M)  # no second listener was started


def test_timeout_precedence_option_over_environment_over_30(tmp_path: Path) -> None:
    script = write(tmp_path / "direct.py", """
        import sys
        from amldbg.hooks.scoring import debug_init

        @debug_init(timeout=float(sys.argv[1])) if len(sys.argv) > 1 else debug_init
        def init():
            print("init ran", flush=True)

        init()
        """)
    cases = (([], {}, "30"), ([], {"AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "0.5"}, "0.5"),
             (["0.2"], {"AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "60"}, "0.2"))
    for args, extra, expected in cases:
        env = child_env(AMLDBG_REMOTE_DEBUG="1", AMLDBG_REMOTE_DEBUG_PORT="0", **LOOPBACK_DEBUG,
                        **extra)
        with Server([str(script), *args], env=env, cwd=tmp_path) as run:
            run.wait_for_line(rf"^Timeout for debug connection: {re.escape(expected)}$", 30)
            if expected != "30":
                assert run.wait(30) == 0
                assert run.lines[-1] == "init ran"


def test_sample_launch_json_is_the_deployment_entry() -> None:
    from amldbg.core import vscode as launch_config

    document = json.loads((SAMPLES / "launch.json").read_text())
    first, second = document["configurations"]
    assert first == launch_config.deployment_config(
        5678, name=first["name"], local_root="${workspaceFolder}/samples")
    assert first["pathMappings"][0]["remoteRoot"] == "/var/azureml-app"
    assert second["connect"]["port"] == 5679  # worker 2 listens on base port + 1
    assert document["compounds"][0]["configurations"] == [first["name"], second["name"]]


def test_preloaded_server_warns_once_and_serves(tmp_path: Path) -> None:
    run, port = start_server(SCORE, tmp_path, WORKER_PRELOAD="true", AMLDBG_REMOTE_DEBUG="1",
                             AMLDBG_REMOTE_DEBUG_PORT="0", **LOOPBACK_DEBUG)
    with run:
        run.wait_for_line(READY, 60)  # logged by the master, before gunicorn listens
        run.wait_for_line(r"Booting worker with pid", 60)
        deadline = time.monotonic() + 30
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert post(port, {"data": [[1.0, 2.0, 3.0]]}) == (200, [4.75])
    warnings = [line for line in run.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1 and "WORKER_PRELOAD=true" in warnings[0]
    assert "Timeout for debug connection" not in run.output


def test_wrappers_keep_metadata_and_close_over_the_function_only() -> None:
    import inspect

    from inference_schema.parameter_types.standard_py_parameter_type import (
        StandardPythonParameterType,
    )
    from inference_schema.schema_decorators import input_schema
    from inference_schema.schema_util import is_schema_decorated

    from amldbg.hooks.scoring import debug_init, debug_run

    def run(data: list, request_headers: dict) -> list:  # type: ignore[type-arg]
        """Score."""
        return data

    run.custom = "kept"  # type: ignore[attr-defined]
    for wrapped in (debug_run(run), debug_run(log_calls=True)(run), debug_init(run),
                    debug_init(timeout=3)(run)):
        assert wrapped.__name__ == "run" and wrapped.__doc__ == "Score."
        assert wrapped.custom == "kept"  # type: ignore[attr-defined]
        assert inspect.signature(wrapped) == inspect.signature(run)
        assert [c.cell_contents for c in wrapped.__closure__] == [run]  # type: ignore[union-attr]
    schema = input_schema("data", StandardPythonParameterType([1]))
    assert is_schema_decorated(debug_run(schema(run)))
    assert is_schema_decorated(schema(debug_run(run)))


def test_post_mortem_stops_at_the_raising_frame_then_answers_500(tmp_path: Path) -> None:
    entry = write(tmp_path / "pm_score.py", RUN_RAISES.format(
        imports="from amldbg.hooks.scoring import debug_run", decorator="@debug_run"))
    debug_port = free_port()
    run, port = start_server(entry, tmp_path, AMLDBG_REMOTE_DEBUG_POST_MORTEM="1",
                             AMLDBG_REMOTE_DEBUG_PORT=str(debug_port),
                             AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT="60", **LOOPBACK_DEBUG)
    with run, concurrent.futures.ThreadPoolExecutor(1) as pool:
        run.wait_for_line(READY, 60)
        # Debugging is off until run() fails: then amldbg listens and waits for a client.
        answer = pool.submit(post, port, {"rows": []})
        assert int(run.wait_for_line(r"^port: (\d+)$", 60).group(1)) == debug_port
        assert not answer.done()
        client = DAPClient.connect("127.0.0.1", debug_port)
        try:
            client.attach()
            stop = client.wait_for_stop()
            assert stop["reason"] == "exception"
            frame = client.top_frame(stop["threadId"])
            assert Path(frame["source"]["path"]).resolve() == entry.resolve()
            assert client.locals_of(frame["id"])["rows"] == "[]"
            client.continue_(stop["threadId"])
            assert answer.result(60)[0] == 500
        finally:
            client.disconnect()
        run.wait_for_line(r"Encountered Exception", 30)
    assert "post-mortem: stopping at" in run.output
