"""Running scripts under test as real subprocesses, reading their output as it comes, and
always reaping them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def debug_base_port() -> int:
    """Two free consecutive ports below the ephemeral range, where the debug adapters' own
    connections (which take ephemeral ports) cannot take the second one meanwhile."""
    low = 20_000
    with contextlib.suppress(OSError, ValueError):
        low = min(low, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 2_000)
    for _ in range(100):
        base = random.randrange(max(1_024, low - 8_000), low)
        if all(port_free(port) for port in (base, base + 1)):
            return base
    raise RuntimeError("no two consecutive free ports")


def child_env(**extra: str) -> dict[str, str]:
    """The test environment for a child: unbuffered, no statsbeat, no inherited AMLDBG_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMLDBG_")}
    env["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    env.update(extra)
    return env


def run_amldbg(
    *args: str,
    input: str | bytes | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    text: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[Any]:
    """Run the real command, ``python -m amldbg ARGS``, to its end and capture what it printed.

    ``input`` is its standard input (none: /dev/null, as under a job); ``text=False`` gives and
    takes bytes, as a terminal would; ``env`` defaults to :func:`child_env`.
    """
    return subprocess.run(
        [python, "-m", "amldbg", *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=text,
        cwd=str(cwd) if cwd is not None else None,
        env=env if env is not None else child_env(),
        timeout=timeout,
    )


def dumps(output: str) -> list[dict[str, Any]]:
    """The stack dumps a process printed (its ``amldbg stacks: {...}`` lines), parsed."""
    return [json.loads(found) for found in re.findall(r"^amldbg stacks: (\{.*\})$", output, re.M)]


def dumps_after_any_prefix(output: str) -> list[dict[str, Any]]:
    """As :func:`dumps`, for output several processes share (a launcher's ranks): a dump
    line may follow a launcher's prefix or another process's unfinished line."""
    return [json.loads(found) for found in re.findall(r"amldbg stacks: (\{.*\})$", output, re.M)]


def line_of(path: str | Path, marker: str) -> int:
    """The number (from 1) of the first line of the file ``path`` that contains ``marker``."""
    lines = Path(path).read_text().splitlines()
    return next(number for number, text in enumerate(lines, 1) if marker in text)


class Running:
    """A subprocess whose merged stdout/stderr is collected line by line in the background.

    Use as a context manager: on exit the process is killed if it still runs, and reaped.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        python_args: Sequence[str] = (),
    ) -> None:
        self.argv = [sys.executable, *python_args, *argv]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else child_env(),
            cwd=str(cwd) if cwd is not None else None,
        )
        self.lines: list[str] = []
        self.line_times: list[float] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.line_times.append(time.monotonic())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for a line matching the regular expression ``pattern`` and return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s; output:\n{self.output}"
                    )
                self._changed.wait(min(left, 0.2))

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit and for its output to be read; return the exit code."""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)


def announced_port(run: Running, timeout: float = 30.0) -> int:
    """The debug port amldbg announced (its ``port: N`` line), once ``run`` printed it."""
    return int(run.wait_for_line(r"^port: (\d+)$", timeout).group(1))


class RunningGroup(Running):
    """Like :class:`Running`, for a launcher (torchrun) whose workers must be reaped too.

    torchrun starts each worker in a session of its own, and workers outlive a launcher that
    was killed. So the child gets a unique ``TEST_REAP_TOKEN`` in its environment, which
    every descendant inherits; on exit each process still carrying it is killed by its pid
    (found through ``/proc``), then the launcher is reaped as :class:`Running` does.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        python_args: Sequence[str] = (),
    ) -> None:
        import uuid

        self.token = uuid.uuid4().hex
        env = dict(env if env is not None else child_env())
        env["TEST_REAP_TOKEN"] = self.token
        super().__init__(argv, env=env, cwd=cwd, python_args=python_args)

    def _token_pids(self) -> list[int]:
        marker = f"TEST_REAP_TOKEN={self.token}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def __exit__(self, *exc: Any) -> None:
        for pid in self._token_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        super().__exit__(*exc)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound right now."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def acquired_after_fork(lock: Any, child_lock: Callable[[], Any]) -> bool:
    """Fork while another thread holds ``lock``; whether the child could take ``child_lock()``
    (the lock as the child sees it) within 2 s. The child has only the forking thread, so a
    lock copied held would stay held for ever. The parent's lock stays its thread's until
    the child has answered (a child hung for 20 s fails the test). ``lock`` has ``locked()``
    (amldbg's :mod:`amldbg.core.forksafe` locks)."""
    import pytest

    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the holder does not exist here
            code = 8  # child_lock() raised: never back into the test session
            try:
                code = 0 if child_lock().acquire(timeout=2) else 7
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the child hung on the lock")
            time.sleep(0.05)
        assert lock.locked(), "the parent's lock is still its thread's"
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        thread.join(5)
