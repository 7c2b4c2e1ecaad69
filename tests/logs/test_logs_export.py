"""The background queue on its own: drop-oldest when full, counted and reported once; bounded exit."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from amldbg.logs import export as _queue


class GateSink(_queue.Sink):
    """A destination of the test's own that records batches and can be held shut."""

    def __init__(self, results: list[str] | None = None) -> None:
        self.open = threading.Event()
        self.batches: list[list[Any]] = []
        self.results = results or []
        self.closed_with: float | None = None

    def send(self, batch: list[Any], timeout: float) -> str:
        self.open.wait(30)
        self.batches.append(list(batch))
        if self.results:
            result = self.results.pop(0)
            if result != _queue.OK:
                self.last_error = "HTTP 503"
            return result
        return _queue.OK

    def close(self, timeout: float) -> None:
        self.closed_with = timeout


def delivered(sink: GateSink) -> list[Any]:
    return [item for batch in sink.batches for item in batch]


def test_a_full_queue_drops_the_oldest_and_reports_the_count_once(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    sink = GateSink()
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=10, batch_size=5, interval=0.05)
    channel.put("first")
    deadline = time.monotonic() + 5
    while channel.items and time.monotonic() < deadline:  # until "first" is being sent
        time.sleep(0.01)
    start = time.perf_counter()
    for i in range(25):
        channel.put(i)
    assert time.perf_counter() - start < 0.05, "put never waits for the destination"
    sink.open.set()
    assert exporter.flush(5)
    assert delivered(sink) == ["first", *range(15, 25)], "the 15 oldest were dropped"
    exporter.shutdown(1)
    exporter.shutdown(1)
    out = capsys.readouterr().out
    assert out.count("Test sink: the queue was full; 15 oldest record(s) were dropped (queue size 10)") == 1


def test_retryable_failures_keep_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    sink = GateSink(results=[_queue.RETRY, _queue.RETRY, _queue.OK])
    sink.open.set()
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=100, batch_size=10, interval=0.05)
    for i in range(3):
        channel.put(i)
    assert exporter.flush(10)
    assert sink.batches == [[0, 1, 2]] * 3
    out = capsys.readouterr().out
    assert out.count("retrying in the background") == 1 and "HTTP 503" in out
    exporter.shutdown(1)


def test_shutdown_is_bounded_by_the_grace_period_and_reports_losses(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    exporter.grace_period = 0.5
    sink = GateSink()  # never opens: a hanging endpoint
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=100, batch_size=10, interval=0.05)
    for i in range(7):
        channel.put(i)
    start = time.monotonic()
    exporter.shutdown()
    took = time.monotonic() - start
    sink.open.set()
    assert took < 0.5 + 1.0, took
    assert "Test sink: 7 record(s) were not delivered within the 0.5 s grace period" in capsys.readouterr().out


def test_a_sink_that_cannot_be_built_is_one_warning(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)

    def broken() -> _queue.Sink:
        raise RuntimeError("package missing; python -m pip install 'amldbg[x]'")

    channel = exporter.channel("t", "Test sink", broken, maxlen=100, batch_size=10, interval=0.05)
    for i in range(30):
        channel.put(i)
    exporter.flush(2)
    exporter.shutdown(1)
    out = capsys.readouterr().out.splitlines()
    assert out == ["amldbg: warning: Test sink is off: package missing; python -m pip install 'amldbg[x]'"]
