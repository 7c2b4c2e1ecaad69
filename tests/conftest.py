"""Shared test set-up: loopback only, no statsbeat, and reaping of every process a test starts."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Generator, Iterator

# The Azure exporters otherwise phone Microsoft's statsbeat endpoint and the cloud metadata
# address; subprocesses inherit this environment.
os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
os.environ.setdefault("PYTHONUNBUFFERED", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


import pytest  # noqa: E402

from harness.venvs import VenvError  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A venv that cannot be built (:class:`harness.venvs.VenvError`) fails its test with the
    reason alone, as ``pytest.fail(reason, pytrace=False)`` does: a traceback adds nothing."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(VenvError):
        report.longrepr = str(call.excinfo.value)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    """Each in-process test starts with no amldbg warning given yet (they are once per process)."""
    from amldbg.core import announce

    announce.forget_warnings()


@pytest.fixture(autouse=True)
def _no_flight_recorder_leak() -> Iterator[None]:
    """An in-process arm turns PyTorch's Flight Recorder on through the environment: put it
    back, so that later tests and their children start as the user's job would."""
    from amldbg.diagnostics import collectives

    before = {name: os.environ.get(name) for name in collectives.BUFFER_VARIABLES}
    yield
    collectives.forget()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
