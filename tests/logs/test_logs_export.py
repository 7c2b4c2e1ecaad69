"""The background queue on its own: drop-oldest when full, counted and reported once; bounded exit."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
from logs_support import start_group, write_child

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
    assert out.count("Test sink: 15 record(s) were not delivered: 15 oldest dropped because the queue was "
                     "full (queue size 10)") == 1


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


class PacedSink(_queue.Sink):
    """Answers like a throttling destination: ``Retry-After`` seconds, then success."""

    def __init__(self, throttled: int, retry_after: float) -> None:
        self.throttled = throttled
        self.asked = retry_after
        self.sent_at: list[float] = []

    def send(self, batch: list[Any], timeout: float) -> str:
        self.sent_at.append(time.monotonic())
        if len(self.sent_at) <= self.throttled:
            self.last_error = "HTTP 429"
            self.retry_after = self.asked
            return _queue.RETRY
        return _queue.OK


def test_retry_after_paces_the_retries_of_a_channel() -> None:
    exporter = _queue.Exporter(generation=-1)
    sink = PacedSink(throttled=2, retry_after=0.6)
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=100, batch_size=10, interval=0.05)
    channel.put("one")
    assert exporter.flush(10)
    gaps = [later - earlier for earlier, later in zip(sink.sent_at, sink.sent_at[1:])]
    # Without Retry-After the back-off is 0.5 s, and a flush retries at once.
    assert len(gaps) == 2 and min(gaps) >= 0.55, gaps
    exporter.shutdown(1)


def test_retry_after_beyond_the_grace_period_ends_the_exit_early(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    exporter.grace_period = 2.0
    sink = PacedSink(throttled=100, retry_after=30.0)
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=100, batch_size=10, interval=0.05)
    for i in range(4):
        channel.put(i)
    deadline = time.monotonic() + 5
    while not sink.sent_at and time.monotonic() < deadline:
        time.sleep(0.01)
    exporter.shutdown()
    assert len(sink.sent_at) == 1, "no request before the time the destination asked for"
    out = capsys.readouterr().out
    assert ("Test sink: 4 record(s) were not delivered: 4 not sent within the 2 s grace period "
            "(the destination asked to wait: Retry-After)") in out


class PartialSink(_queue.Sink):
    """Accepts part of each batch, rejects ``rejected`` items and asks for ``again`` again."""

    def __init__(self, rejected: int, again: int) -> None:
        self.rejected_per_batch = rejected
        self.again = again
        self.batches: list[list[Any]] = []
        self.arrived: list[Any] = []

    def send(self, batch: list[Any], timeout: float) -> str:
        self.batches.append(list(batch))
        if len(self.batches) > 1:  # the retry: everything arrives
            self.arrived.extend(batch)
            return _queue.OK
        refused, retry = batch[:self.rejected_per_batch], batch[-self.again:]
        self.arrived.extend(batch[self.rejected_per_batch:-self.again])
        self.reject(len(refused), "HTTP 400: Field 'time' on type 'Envelope' is required")
        batch[:] = retry
        return _queue.RETRY


def test_a_partial_success_resends_only_what_the_destination_asks_for(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    sink = PartialSink(rejected=3, again=2)
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=100, batch_size=10, interval=0.05)
    for i in range(10):
        channel.put(i)
    assert exporter.flush(10)
    assert sink.batches == [list(range(10)), [8, 9]]
    assert sorted(sink.arrived) == list(range(3, 10))
    exporter.shutdown(1)
    out = capsys.readouterr().out
    assert out.count("Test sink: 3 record(s) were not delivered: 3 rejected by the destination "
                     "(3 HTTP 400: Field 'time' on type 'Envelope' is required)") == 1, out


def test_the_loss_line_adds_up_every_reason(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = _queue.Exporter(generation=-1)
    exporter.grace_period = 0.3
    sink = GateSink(results=[_queue.DROP])
    channel = exporter.channel("t", "Test sink", lambda: sink, maxlen=5, batch_size=2, interval=0.05)
    channel.put("refused-1")
    channel.put("refused-2")
    sink.open.set()
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.open.clear()  # a hanging destination from now on
    for i in range(9):
        channel.put(i)  # 5 fit, 4 oldest dropped; 2 of them wait in the sink, 3 in the queue
    exporter.shutdown()
    sink.open.set()
    out = capsys.readouterr().out
    assert ("Test sink: 11 record(s) were not delivered: 5 not sent within the 0.3 s grace period "
            "(last error: HTTP 503), 2 rejected by the destination (2 HTTP 503), 4 oldest dropped "
            "because the queue was full (queue size 5)") in out, out


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
    assert "Test sink: 7 record(s) were not delivered: 7 not sent within the 0.5 s grace period" in capsys.readouterr().out


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


SLOW_MODULE = """
import os, time
# Slow only in the process that started the test (an exporter's import taking long).
if str(os.getpid()) == os.environ.get("SLOW_IMPORT_PID"):
    time.sleep(120)
VALUE = 42
"""

FORK_DURING_IMPORT = """
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["SLOW_IMPORT_PID"] = str(os.getpid())
from amldbg.logs import export


class PrintSink(export.Sink):
    def send(self, batch, timeout):
        print("SENT", "child" if os.environ.get("IN_CHILD") else "parent", batch, flush=True)
        return export.OK


def factory():
    import slowexporter  # an exporter package whose import takes long
    return PrintSink()


def channel():
    return export.get_exporter().channel("t", "Test sink", factory, maxlen=100, batch_size=10,
                                         interval=0.05)


channel().put("from the parent")
while "slowexporter" not in sys.modules:  # the export thread is inside the import now
    time.sleep(0.01)
forks = 0
for _ in range(10):  # forks never wait for the import (each used to wait 5 s)
    pid = os.fork()
    if pid == 0:
        os.environ["IN_CHILD"] = "1"
        import slowexporter  # the child's own code imports the same module
        print("CHILD IMPORTED", slowexporter.VALUE, flush=True)
        channel().put("from the child")
        print("CHILD FLUSHED", export.get_exporter().flush(20), flush=True)
        os._exit(0)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print("CHILD EXIT", code, flush=True)
    forks += 1
print("PARENT DONE", forks, flush=True)
os._exit(0)  # the parent's import is still sleeping; its exit is another test's business
"""


def test_a_fork_during_an_exporters_import_neither_waits_nor_deadlocks_the_child(tmp_path: Path) -> None:
    (tmp_path / "slowexporter.py").write_text(SLOW_MODULE)
    script = write_child(tmp_path, FORK_DURING_IMPORT)
    with start_group(script) as child:
        assert child.wait(40) == 0, child.output  # ten forks; each child imports afresh
    lines = child.lines
    assert lines.count("CHILD IMPORTED 42") == 10, child.output
    assert lines.count("SENT child ['from the child']") == 10, child.output
    assert lines.count("CHILD FLUSHED True") == 10 and lines.count("CHILD EXIT 0") == 10
    assert "PARENT DONE 10" in lines
    assert not any(line.startswith("SENT parent") for line in lines)


class TimedSink(_queue.Sink):
    """Records when each batch was sent and how many records were still queued then."""

    def __init__(self) -> None:
        self.channel: _queue.Channel | None = None
        self.sends: list[tuple[float, int]] = []
        self.items: list[Any] = []

    def send(self, batch: list[Any], timeout: float) -> str:
        queued = len(self.channel.items) if self.channel is not None else 0
        self.sends.append((time.monotonic(), queued + len(batch)))
        self.items.extend(batch)
        return _queue.OK


Burst = Tuple[_queue.Exporter, TimedSink]


@pytest.fixture
def burst() -> Iterator[Burst]:
    """An exporter of the test's own and a sink for it; the exporter is shut down at the end."""
    exporter = _queue.Exporter(generation=-1)
    try:
        yield exporter, TimedSink()
    finally:
        exporter.shutdown(1)


def burst_channel(exporter: _queue.Exporter, sink: TimedSink, maxlen: int = 100_000,
                  batch_size: int = 100) -> _queue.Channel:
    """A channel as App Insights makes it, after one full batch was sent (so the send rate is known)."""
    channel = exporter.channel("burst", "Burst sink", lambda: sink, maxlen=maxlen,
                               batch_size=batch_size, interval=0.05, defer_bursts=True)
    sink.channel = channel
    for i in range(batch_size):
        channel.put(("warm-up", i))
    assert exporter.flush(10)
    sink.sends.clear()
    sink.items.clear()
    return channel


def put_records(channel: _queue.Channel, count: int, per_second: float) -> tuple[float, float]:
    """Put ``count`` records at about ``per_second``; return when it started and ended."""
    start = time.monotonic()
    for index in range(count):
        channel.put(index)
        if index % 100 == 99:
            ahead = start + (index + 1) / per_second - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return start, time.monotonic()


def wait_for_items(sink: TimedSink, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.items) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_bursts_export_waits_until_it_ends_then_every_record_is_sent_in_order(burst: Burst) -> None:
    exporter, sink = burst
    channel = burst_channel(exporter, sink)
    start, end = put_records(channel, 20_000, per_second=50_000)  # 0.4 s, well over BURST_RATE
    wait_for_items(sink, 20_000)
    during = [at for at, _ in sink.sends if start + 0.1 < at < end]
    assert during == [], f"{len(during)} batches were sent while the burst lasted"
    assert sink.items == list(range(20_000)), "every record, once, in order, after the burst"
    assert channel.dropped_full == 0


def test_records_at_an_ordinary_rate_are_sent_as_they_come(burst: Burst) -> None:
    exporter, sink = burst
    channel = burst_channel(exporter, sink, batch_size=50)
    start, end = put_records(channel, 1_000, per_second=1_000)  # a training loop's pace
    assert [at for at, _ in sink.sends if at < end - 0.2], "nothing was sent while records came"
    assert exporter.flush(10) and sink.items == list(range(1_000))


def test_a_burst_filling_half_the_queue_is_sent_while_it_lasts_and_nothing_is_dropped(burst: Burst) -> None:
    exporter, sink = burst
    channel = burst_channel(exporter, sink, maxlen=4_000)
    start, end = put_records(channel, 12_000, per_second=20_000)  # 0.6 s, three queues' worth
    assert exporter.flush(10)
    assert [at for at, _ in sink.sends if start + 0.1 < at < end], "the export waited past half the queue"
    assert max(queued for _, queued in sink.sends) < 4_000
    assert channel.dropped_full == 0 and sink.items == list(range(12_000))


def test_a_long_burst_waits_at_most_the_deferral_limit(monkeypatch: pytest.MonkeyPatch, burst: Burst) -> None:
    monkeypatch.setattr(_queue, "BURST_MAX_DEFER", 0.2)
    exporter, sink = burst
    channel = burst_channel(exporter, sink)
    start, end = put_records(channel, 30_000, per_second=30_000)  # 1 s
    first = min((at for at, _ in sink.sends), default=end)
    assert first < end - 0.3, f"first batch {first - start:.2f} s into a {end - start:.2f} s burst"
    assert exporter.flush(10) and sink.items == list(range(30_000))


def test_a_flush_or_the_exit_never_waits_for_a_burst_to_end(monkeypatch: pytest.MonkeyPatch, burst: Burst) -> None:
    monkeypatch.setattr(_queue, "BURST_MAX_DEFER", 120.0)
    exporter, sink = burst
    channel = burst_channel(exporter, sink)
    put_records(channel, 5_000, per_second=100_000)
    assert exporter.flush(10), "the flush waited for the deferred burst"
    assert sink.items == list(range(5_000))
    put_records(channel, 5_000, per_second=100_000)
    exporter.shutdown(10)
    assert sink.items == list(range(5_000)) * 2, "the exit sent the deferred burst"
