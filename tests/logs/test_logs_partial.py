"""Partial success and ``Retry-After``, end to end, with both Application Insights backends
and MLflow: real exporters and clients in a child process, a real loopback server.

A partial success (206) names, per item, what the service refused for good (400) and what
it asks for again (500, 503, 408, 429): every item asked for again must arrive exactly
once, the refused ones never, and the exit line must count exactly the refused ones, with
the service's reason, safely printed. A ``Retry-After`` paces the requests, and one longer
than the exit grace period ends the exit at once instead of retrying.

Timing assertions are about the pacing of requests (a lower bound the client must keep)
or bound a hang generously; they are not measurements.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from logs_support import start_child, write_child

from harness.ingestion_server import IngestionServer, message
from harness.mlflow_server import MlflowServer

#: What the service says of each refused item here: hostile on purpose (the key, which must
#: be masked, and a terminal escape, which must stay text).
REJECT_MESSAGE = "Field 'time' on type 'Envelope' is required. iKey {key} \x1b]0;owned\x07"
#: How that reason must show in the exit line.
SHOWN_REASON = "HTTP 400: Field 'time' on type 'Envelope' is required. iKey <hidden> \\x1b]0;owned\\x07"

PARTIAL_SCRIPT = """
    from amldbg.logs import flush_logs, get_logger
    log = get_logger("partial", backend=BACKEND)
    for i in range(30):
        log.info("payload %d", i)
    print("FLUSHED", flush_logs(20), flush=True)
"""


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


@pytest.mark.parametrize(("backend", "retry_status"),
                         [("opencensus", 500), ("opencensus", 429), ("otel", 503), ("otel", 408)])
def test_a_partial_success_resends_what_is_asked_for_once_and_counts_the_rejected(
    tmp_path: Path, backend: str, retry_status: int
) -> None:
    script = write_child(tmp_path, PARTIAL_SCRIPT.replace("BACKEND", repr(backend)))
    with IngestionServer(partial=(3, 2, retry_status)) as server:
        server.reject_message = REJECT_MESSAGE.format(key=server.instrumentation_key.upper())
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            assert child.wait(60) == 0, child.output
        time.sleep(0.3)  # a duplicate would arrive now
        arrived = Counter(message(e) for e in server.envelopes)
        asked_again = [message(e) for e in server.asked_again]
        rejected = [message(e) for e in server.rejected]
        statuses = list(server.statuses)
    output = child.output
    assert "FLUSHED True" in output, output
    assert 206 in statuses and len(asked_again) >= 3 and len(rejected) >= 2, (statuses, output)
    expected = Counter(f"payload {i}" for i in range(30)) - Counter(rejected)
    assert arrived == expected, "every record but the rejected ones, each exactly once"
    assert set(asked_again) <= set(arrived)
    # The exit line counts exactly the refused items (not the batch), with the service's
    # reason, key masked and the escape shown as text.
    exit_line = [line for line in child.lines if "were not delivered" in line]
    assert len(exit_line) == 1, output
    assert re.search(rf"\b{len(rejected)} rejected\b", exit_line[0]), exit_line
    assert re.search(rf"\b{len(rejected)} record\(s\) were not delivered\b", exit_line[0]), exit_line
    assert SHOWN_REASON in exit_line[0], exit_line
    assert server.instrumentation_key not in output.lower(), "the instrumentation key was printed"
    assert "\x1b" not in output
    # The exporters' own "Data drop" line (it carries the whole envelope) is never shown.
    assert "Data drop" not in output, output
    assert "NETGUARD" not in output


THROTTLED_SCRIPT = """
    from amldbg.logs import flush_logs, get_logger
    log = get_logger("throttled", backend=BACKEND)
    for i in range(10):
        log.info("paced %d", i)
    print("FLUSHED", flush_logs(30), flush=True)
"""


@pytest.mark.parametrize(("backend", "status"), [("opencensus", 429), ("otel", 429), ("otel", 503)])
def test_retry_after_paces_the_requests_and_every_record_arrives(tmp_path: Path, backend: str, status: int) -> None:
    script = write_child(tmp_path, THROTTLED_SCRIPT.replace("BACKEND", repr(backend)))
    with IngestionServer(fail_first=2, fail_status=status, retry_after="1") as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            assert child.wait(60) == 0, child.output
        time.sleep(0.2)
        arrived = Counter(message(e) for e in server.envelopes)
        statuses = list(server.statuses)
        times = list(server.request_times)
    assert "FLUSHED True" in child.output, child.output
    assert statuses == [status, status, 200], statuses
    assert arrived == Counter(f"paced {i}" for i in range(10))
    # Without Retry-After the first retry comes after 0.5 s of back-off (at once in a flush).
    assert min(_gaps(times)) >= 0.9, _gaps(times)


#: Waits until the ingestion server has answered a request, then ends the script.
WAIT_AND_END_SCRIPT = """
    import json, time, urllib.request
    from amldbg.logs import get_logger
    log = get_logger("throttled", backend=BACKEND)
    for i in range(5):
        log.info("late %d", i)
    for _ in range(600):
        with urllib.request.urlopen(ENDPOINT + "stats", timeout=5) as answer:
            if json.load(answer)["requests"] >= 1:
                break
        time.sleep(0.05)
    time.sleep(0.2)  # the answer reaches the exporter
    print("LAST", flush=True)
"""


@pytest.mark.parametrize(("backend", "form"), [("opencensus", "seconds"), ("otel", "date")])
def test_a_retry_after_beyond_the_grace_period_ends_the_exit_without_another_request(
    tmp_path: Path, backend: str, form: str
) -> None:
    retry_after = "30" if form == "seconds" else email.utils.formatdate(time.time() + 30, usegmt=True)
    with IngestionServer(fail_first=1000, fail_status=429, retry_after=retry_after) as server:
        script = write_child(tmp_path, WAIT_AND_END_SCRIPT.replace("BACKEND", repr(backend))
                             .replace("ENDPOINT", repr(server.endpoint)))
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="1") as child:
            child.wait_for_line("^LAST$", timeout=60)
            last_line_at = child.line_times[child.lines.index("LAST")]
            assert child.wait(30) == 0, child.output
            exited_at = time.monotonic()
        statuses = list(server.statuses)
    assert statuses == [429], "no request before the time the service asked for, the exit included"
    # Grace period 1 s; the rest is interpreter shutdown (generous bound: proves no hang).
    assert exited_at - last_line_at < 1 + 3.0, child.output
    assert ("5 record(s) were not delivered: 5 not sent within the 1 s grace period "
            "(the destination asked to wait: Retry-After)") in child.output, child.output


def test_mlflow_retry_after_paces_the_log_batch_requests(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import amldbg
        amldbg.log_metric("loss", 0.5, step=1)
        print("FLUSHED", amldbg.flush_logs(30), flush=True)
    """)
    with MlflowServer(fail_first=2, fail_status=429, retry_after="1") as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id) as child:
            assert child.wait(90) == 0, child.output
        batches = [(status, at) for (_, endpoint, status), at in zip(server.requests, server.request_times)
                   if endpoint == "runs/log-batch"]
        metrics = list(server.metrics)
    assert "FLUSHED True" in child.output, child.output
    assert [status for status, _ in batches] == [429, 429, 200]
    assert metrics == [(run_id, "loss", 0.5, 1)]
    gaps = _gaps([at for _, at in batches])
    assert min(gaps) >= 0.9, gaps
