"""Application Insights, end to end: real exporters posting to a real HTTP server on 127.0.0.1.

Every test runs a child Python process that uses amldbg like a training script would,
with the real OpenCensus ``AzureLogHandler`` or the real Azure Monitor OpenTelemetry
exporter, and checks what arrived at the ingestion server and what the child printed.
The children import ``netguard`` first: any connection beyond loopback fails loudly.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from logs_support import start_child, write_child

from harness.ingestion_server import (
    IngestionServer,
    base_data,
    kind,
    message,
    properties,
    refused_endpoint,
)

BACKENDS = ["opencensus", "otel"]


@pytest.fixture
def ingestion() -> Iterator[IngestionServer]:
    """A healthy ingestion server on 127.0.0.1."""
    with IngestionServer() as server:
        yield server


#: The dimensions every record carries, whichever the backend.
CONTEXT_KEYS = {
    "run_id", "experiment", "parent_run_id", "step_name", "node_address", "rank", "local_rank",
    "world_size", "pid", "process", "logger_name", "module", "fileName", "lineNumber", "level",
}

JOB_ENV = {
    "AZUREML_RUN_ID": "train_run_123",
    "AZUREML_ARM_PROJECT_NAME": "mnist-experiment",
    "AZUREML_PARENT_RUN_ID": "pipeline_run_9",
    "AZUREML_STEP_NAME": "train_step",
}

TRAIN_SCRIPT = """
    import os, sys, time
    from amldbg.logs import get_logger

    log = get_logger("train", backend=sys.argv[1] if len(sys.argv) > 1 else None)
    print("PID", os.getpid(), flush=True)
    # No pause: the script ends within milliseconds, while the exporter may still be
    # loading on the export thread; everything must still arrive.
    for i in range(20):
        log.info("record %d", i)
    log.warning("epoch done", extra={"custom_dimensions": {"epoch": 3, "split": "valid"}})

    def failing_function():
        raise ValueError("bad input 42")

    try:
        failing_function()
    except ValueError:
        log.exception("training step failed")
    log.debug("below the level: not sent")
    log.info("last record before exit")
"""


def _no_leaks(output: str, server_key: str) -> None:
    assert "NETGUARD" not in output, output
    assert server_key not in output.lower(), "the instrumentation key was printed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_record_arrives_once_with_context_and_user_dimensions(tmp_path: Path, backend: str) -> None:
    script = write_child(tmp_path, TRAIN_SCRIPT.replace("sys.argv[1] if len(sys.argv) > 1 else None", repr(backend)))
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string, **JOB_ENV) as child:
            assert child.wait(60) == 0, child.output
        pid = re.search(r"PID (\d+)", child.output).group(1)  # type: ignore[union-attr]
        envelopes = server.wait_for(23, timeout=5)
        time.sleep(0.3)  # a duplicate would arrive now
        envelopes = list(server.envelopes)
    _no_leaks(child.output, server.instrumentation_key)
    # The driver log got the lines too.
    assert re.search(r"INFO train: record 0$", child.output, re.M), child.output

    messages = Counter(message(e).splitlines()[0] for e in envelopes)
    expected = [f"record {i}" for i in range(20)] + ["epoch done", "training step failed",
                                                     "last record before exit"]
    assert sorted(messages) == sorted(expected), messages
    assert set(messages.values()) == {1}, "a record arrived twice"
    assert all(e["iKey"] == server.instrumentation_key for e in envelopes)

    by_message = {message(e).splitlines()[0]: e for e in envelopes}
    for envelope in envelopes:
        props = properties(envelope)
        assert set(props) >= CONTEXT_KEYS, (backend, sorted(props))
        assert props["run_id"] == "train_run_123"
        assert props["experiment"] == "mnist-experiment"
        assert props["parent_run_id"] == "pipeline_run_9"
        assert props["step_name"] == "train_step"
        assert props["node_address"] == "10.0.0.7"
        assert props["rank"] == "0"
        assert props["pid"] == pid
        assert props["logger_name"] == "train"

    info = by_message["record 7"]
    assert kind(info) == "MessageData" and base_data(info)["severityLevel"] == 1
    assert set(properties(info)) == CONTEXT_KEYS, "same dimensions on either backend"
    warning = by_message["epoch done"]
    assert base_data(warning)["severityLevel"] == 2
    assert properties(warning)["epoch"] == "3" and properties(warning)["split"] == "valid"

    failure = by_message["training step failed"]
    assert kind(failure) == "ExceptionData"
    assert base_data(failure)["severityLevel"] == 3
    details = base_data(failure)["exceptions"][0]
    assert details["typeName"] == "ValueError"
    assert details["hasFullStack"] is True
    assert "failing_function" in json.dumps(details), details  # the stack came along


@pytest.mark.parametrize(("backend", "status"), [("opencensus", 503), ("otel", 503), ("opencensus", 429), ("otel", 500)])
def test_after_transient_failures_all_records_arrive(tmp_path: Path, backend: str, status: int) -> None:
    script = write_child(tmp_path, f"""
        from amldbg.logs import get_logger, flush_logs
        log = get_logger("retry", backend={backend!r})
        for i in range(30):
            log.info("payload %d", i)
        print("FLUSHED", flush_logs(20), flush=True)
    """)
    with IngestionServer(fail_first=3, fail_status=status) as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            assert child.wait(60) == 0, child.output
        time.sleep(0.2)
        envelopes = list(server.envelopes)
        statuses = list(server.statuses)
    _no_leaks(child.output, server.instrumentation_key)
    assert "FLUSHED True" in child.output, child.output
    assert statuses[:3] == [status] * 3 and statuses[-1] == 200, statuses
    assert Counter(message(e) for e in envelopes) == Counter(f"payload {i}" for i in range(30))
    # One line says the endpoint failed; the exporters' own retry chatter is not shown.
    assert child.output.count("retrying in the background") == 1, child.output
    chatter = [line for line in child.lines if not line.startswith("amldbg: ")
               and ("Transient" in line or "Retry" in line)]
    assert chatter == [], child.output


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trouble", ["refused", "hanging"])
def test_endpoint_down_does_not_hold_the_process_beyond_the_grace_period(
    tmp_path: Path, backend: str, trouble: str
) -> None:
    script = write_child(tmp_path, f"""
        import time
        from amldbg.logs import get_logger
        log = get_logger("down", backend={backend!r})
        start = time.perf_counter()
        for i in range(200):
            log.info("record %d", i)
        elapsed = time.perf_counter() - start
        print("LOGGED 200 in %.3f s" % elapsed, flush=True)
        print("LAST", flush=True)
    """)
    server = IngestionServer(hang=True).start() if trouble == "hanging" else None
    try:
        connection = server.connection_string if server else refused_endpoint()
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
                         AMLDBG_LOG_GRACE_PERIOD="1") as child:
            child.wait_for_line("^LAST$", timeout=60)
            last_line_at = child.line_times[child.lines.index("LAST")]
            assert child.wait(30) == 0, child.output
            exited_at = time.monotonic()
    finally:
        if server:
            server.stop()
    assert "NETGUARD" not in child.output
    # The script ran at full speed: 200 calls well under a second even with the endpoint down.
    logged = float(re.search(r"LOGGED 200 in ([\d.]+) s", child.output).group(1))  # type: ignore[union-attr]
    assert logged < 1.0, child.output
    # Grace period 1 s; the rest is interpreter shutdown (generous bound: proves no hang).
    assert exited_at - last_line_at < 1 + 3.0, child.output
    assert "not sent within the 1 s grace period" in child.output, child.output
    key = re.search(r"InstrumentationKey=([^;]+)", connection).group(1)  # type: ignore[union-attr]
    assert key not in child.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_forked_child_keeps_logging_and_does_not_resend_the_parents_records(tmp_path: Path, backend: str) -> None:
    script = write_child(tmp_path, f"""
        import os, sys
        from amldbg.logs import get_logger, flush_logs
        log = get_logger("forky", backend={backend!r})
        log.info("parent before fork")
        for i in range(5):
            log.info("queued before fork %d", i)
        # The exporter has loaded (the parent's first records are out) before the fork: a
        # fork in the middle of the exporter's import can still leave the child's import
        # stuck (open: a lock of a thread that does not exist in the child), not tested here.
        flush_logs(10)
        log.info("queued before fork 5")
        pid = os.fork()
        if pid == 0:
            log.info("from the forked child")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        log.info("parent after fork")
        print("CHILD STATUS", status, flush=True)
    """)
    with IngestionServer() as server:
        # A fork does not wait for the exporter to finish loading (export.FORK_WAIT), so the
        # child may load it again before its record can go: a grace period that covers
        # that on a busy machine (the grace bound itself is tested above).
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="20") as child:
            assert child.wait(60) == 0, child.output
        server.wait_for(9, timeout=5)
        time.sleep(0.3)
        envelopes = list(server.envelopes)
    assert "CHILD STATUS 0" in child.output
    counts = Counter(message(e) for e in envelopes)
    expected = ["parent before fork", "from the forked child", "parent after fork"] + [
        f"queued before fork {i}" for i in range(6)]
    assert counts == Counter(expected), counts
    pids = {properties(e)["pid"] for e in envelopes}
    assert len(pids) == 2, "the forked child's record carries its own pid"


def test_malformed_connection_string_warns_once_with_the_key_masked(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        from amldbg.logs import get_logger
        a = get_logger("one")
        b = get_logger("two")
        a.info("driver log still works")
        b.info("and here")
        print("STILL RUNNING", flush=True)
    """)
    secret = "Zz9-SECRET-not-a-guid"
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=f"InstrumentationKey={secret};IngestionEndpoint=http://127.0.0.1:9/") as child:
        assert child.wait(30) == 0, child.output
    warnings = [line for line in child.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1 and "Application Insights is off" in warnings[0], child.output
    assert "SECRET" not in child.output
    assert "INFO one: driver log still works" in child.output
    assert "STILL RUNNING" in child.output


def test_hand_typed_connection_string_upper_case_key_and_trailing_semicolon_works(
    tmp_path: Path, ingestion: IngestionServer
) -> None:
    script = write_child(tmp_path, """
        from amldbg.logs import get_logger
        get_logger("typed").info("hand typed")
    """)
    typed = f"  InstrumentationKey={ingestion.instrumentation_key.upper()};IngestionEndpoint={ingestion.endpoint};  "
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=typed) as child:
        assert child.wait(30) == 0, child.output
    envelopes = ingestion.wait_for(1, timeout=5)
    assert [message(e) for e in envelopes] == ["hand typed"]
    assert envelopes[0]["iKey"] == ingestion.instrumentation_key
    assert "warning" not in child.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_aad_connection_string_is_accepted_with_one_warning_saying_what_aad_needs(
    tmp_path: Path, ingestion: IngestionServer, backend: str
) -> None:
    script = write_child(tmp_path, f"""
        from amldbg.logs import get_logger, flush_logs
        a = get_logger("aad.one", backend={backend!r})
        b = get_logger("aad.two", backend={backend!r})
        a.info("sent with AAD in the string")
        b.info("second logger")
        print("FLUSHED", flush_logs(20), flush=True)
    """)
    connection = f"{ingestion.connection_string};Authorization=AAD"
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=connection) as child:
        assert child.wait(60) == 0, child.output
    envelopes = ingestion.wait_for(2, timeout=5)
    _no_leaks(child.output, ingestion.instrumentation_key)
    assert "FLUSHED True" in child.output, child.output
    assert sorted(message(e) for e in envelopes) == ["second logger", "sent with AAD in the string"]
    warnings = [line for line in child.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1, child.output
    assert "(AAD)" in warnings[0] and "credential" in warnings[0], warnings
    assert "is off" not in child.output and "Invalid authorization" not in child.output


def test_missing_exporter_package_is_one_warning_and_the_script_continues(
    tmp_path: Path, ingestion: IngestionServer
) -> None:
    script = write_child(tmp_path, """
        import sys
        sys.modules["opencensus"] = None  # as if opencensus-ext-azure were not installed
        from amldbg.logs import get_logger
        log = get_logger("nopkg")
        for i in range(3):
            log.info("line %d", i)
        print("STILL RUNNING", flush=True)
    """)
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string) as child:
        assert child.wait(30) == 0, child.output
    warnings = [line for line in child.lines if line.startswith("amldbg: warning:")]
    assert len(warnings) == 1, child.output
    assert "amldbg[appinsights]" in warnings[0]
    assert "STILL RUNNING" in child.output and "INFO nopkg: line 2" in child.output
    assert ingestion.envelopes == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_root_routing_sends_the_users_records_but_never_the_exporters_own(tmp_path: Path, backend: str) -> None:
    script = write_child(tmp_path, f"""
        import logging
        import amldbg.logs as logs
        logs.configure_logging(level=logging.DEBUG, backend={backend!r})
        for i in range(10):
            logging.getLogger("user.module").info("user record %d", i)
        print("FLUSHED", logs.flush_logs(20), flush=True)
    """)
    with IngestionServer(fail_first=2) as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            assert child.wait(60) == 0, child.output
        time.sleep(0.3)
        envelopes = list(server.envelopes)
    assert "FLUSHED True" in child.output, child.output
    names = Counter(properties(e)["logger_name"] for e in envelopes)
    assert names == Counter({"user.module": 10}), names
    # The exporters' transport logs (urllib3, azure.core, opencensus) did not reach the driver log.
    assert "Starting new HTTP connection" not in child.output
    assert "Request URL" not in child.output
    assert "INFO user.module: user record 9" in child.output


def test_only_rank_zero_sends_unless_all_ranks_is_set(tmp_path: Path, ingestion: IngestionServer) -> None:
    script = write_child(tmp_path, """
        from amldbg.logs import get_logger, flush_logs
        get_logger("dist").info("hello from a worker")
        flush_logs(10)
    """)
    ranks = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string, **ranks) as child:
        assert child.wait(30) == 0, child.output
    assert "[rank 1] INFO dist: hello from a worker" in child.output
    time.sleep(0.3)
    assert ingestion.envelopes == []
    with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string,
                     AMLDBG_LOG_ALL_RANKS="true", **ranks) as child:
        assert child.wait(30) == 0, child.output
    envelopes = ingestion.wait_for(1, timeout=5)
    assert [properties(e)["rank"] for e in envelopes] == ["1"]
    assert properties(envelopes[0])["world_size"] == "2"


def test_opencensus_envelopes_built_directly_are_the_handlers_own_and_fail_over_on_a_difference() -> None:
    # The opencensus sink builds message envelopes without the handler (cheaper on the export
    # thread); what reaches the service must be exactly what AzureLogHandler would send.
    import logging

    from amldbg.logs import appinsights
    from amldbg.logs import envelopes as sink_envelopes
    from amldbg.logs.connection import parse_connection_string
    from amldbg.logs.settings import LogSettings

    connection = parse_connection_string(
        "InstrumentationKey=0f8fad5b-d9cb-469f-a165-70867728950e;IngestionEndpoint=http://127.0.0.1:9/")
    sink = appinsights.create_sink("opencensus", connection, LogSettings())
    try:
        items = []
        for i in range(40):
            level = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)[i % 5]
            record = logging.LogRecord("direct", level, __file__, 7 + i, "msg %s", (i,), None, "fn")
            user = {"epoch": i, "lineNumber": "user's"} if i % 3 == 0 else None
            if i == 5:
                try:
                    raise KeyError("inside")
                except KeyError:
                    import sys
                    record.exc_info = sys.exc_info()
            items.append(sink_envelopes.snapshot(record, record.getMessage(), user))
        handler = sink.handler  # type: ignore[attr-defined]
        official = [json.loads(json.dumps(handler.log_record_to_envelope(sink._record(item)), default=str))  # type: ignore[attr-defined]
                    for item in items]
        built = sink._build(items)  # type: ignore[attr-defined]
        assert sink._fast_ok  # type: ignore[attr-defined]
        assert sum(1 for e in built if type(e) is dict) == 38, "the fast path was used"
        assert [json.loads(json.dumps(e, default=str)) for e in built] == official

        # The same call sites again with other messages and dimensions: the properties kept
        # per call site must not carry the first records' user dimensions along.
        again = []
        for i in range(40):
            level = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)[i % 5]
            record = logging.LogRecord("direct", level, __file__, 7 + i, "again %s", (i,), None, "fn")
            user = {"split": "valid", "level": "user's"} if i % 3 == 1 else None
            again.append(sink_envelopes.snapshot(record, record.getMessage(), user))
        official = [json.loads(json.dumps(handler.log_record_to_envelope(sink._record(item)), default=str))  # type: ignore[attr-defined]
                    for item in again]
        assert [json.loads(json.dumps(e, default=str)) for e in sink._build(again)] == official  # type: ignore[attr-defined]
        assert sink._fast_ok  # type: ignore[attr-defined]

        # A handler whose envelopes differ (another opencensus release): the next batch
        # notices on its first record and every envelope comes from the handler from then on.
        original = handler.log_record_to_envelope

        def changed(record: logging.LogRecord) -> object:
            envelope = original(record)
            envelope["sampleRate"] = 50.0
            return envelope

        handler.log_record_to_envelope = changed
        rebuilt = sink._build(list(items))  # type: ignore[attr-defined]
        assert not sink._fast_ok  # type: ignore[attr-defined]
        assert all(json.loads(json.dumps(e, default=str))["sampleRate"] == 50.0 for e in rebuilt)
    finally:
        sink.close(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resource_refusing_the_key_is_reported_at_exit_with_what_it_needs(tmp_path: Path, backend: str) -> None:
    # A resource with local authentication disabled answers 401 to a key-only request
    # (amldbg creates no Entra ID credential): the exit warning says why nothing arrived.
    script = write_child(tmp_path, f"""
        from amldbg.logs import get_logger
        log = get_logger("unauthorized", backend={backend!r})
        for i in range(3):
            log.info("refused %d", i)
        print("LAST", flush=True)
    """)
    with IngestionServer(fail_first=1000, fail_status=401) as server:
        connection = f"{server.connection_string};Authorization=AAD"
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
                         AMLDBG_LOG_GRACE_PERIOD="1") as child:
            assert child.wait(60) == 0, child.output
        statuses = list(server.statuses)
    _no_leaks(child.output, server.instrumentation_key)
    assert statuses and set(statuses) == {401}, statuses
    assert "3 record(s) were not delivered: 3 not sent within the 1 s grace period" in child.output, child.output
    if backend == "otel":
        assert "HTTP 401" in child.output and "Entra ID" in child.output, child.output


BURST_SCRIPT = """
    import time
    from amldbg.logs import flush_logs, get_logger

    log = get_logger("train", backend=BACKEND)
    for i in range(600):  # start-up lines: the exporter loads and sends a first full batch
        log.info("setup %d", i)
    flush_logs(30)
    started = time.monotonic()
    for i in range(COUNT):  # then a burst, and the script ends at once
        log.info("burst %d", i)
    print("BURST", started, time.monotonic(), flush=True)
"""


@pytest.mark.parametrize(("backend", "count"), [("opencensus", 15_000), ("otel", 6_000)])
def test_a_burst_right_before_exit_is_sent_after_it_every_record_once(
    tmp_path: Path, backend: str, count: int
) -> None:
    script = write_child(tmp_path, BURST_SCRIPT.replace("BACKEND", repr(backend)).replace("COUNT", str(count)))
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="10") as child:
            assert child.wait(60) == 0, child.output
        envelopes = server.wait_for(600 + count, timeout=5)
        arrivals = list(server.arrival_times)
    _no_leaks(child.output, server.instrumentation_key)
    assert "amldbg: warning" not in child.output, child.output
    burst = [(message(e), at) for e, at in zip(envelopes, arrivals) if message(e).startswith("burst ")]
    assert Counter(m for m, _ in burst) == Counter(f"burst {i}" for i in range(count)), "every record, once"
    started, ended = map(float, re.search(r"BURST (\S+) (\S+)", child.output).groups())  # type: ignore[union-attr]
    during = [m for m, at in burst if started + 0.05 < at < ended]
    # At most the first batch, sent before the export saw that a burst was on.
    assert len(during) <= 512, f"{len(during)} records were sent while the burst lasted"


FILTERED_SCRIPT = """
    from amldbg.logs import get_logger
    from amldbg.logs.appinsights import AppInsightsHandler

    log = get_logger("train", backend="opencensus")
    telemetry = next(h for h in log.handlers if isinstance(h, AppInsightsHandler))
    telemetry.addFilter(lambda record: "private" not in record.getMessage())
    for text in ("public 1", "private 2", "public 3"):
        log.info(text)
"""


def test_a_filter_on_the_application_insights_handler_keeps_its_records_out(tmp_path: Path) -> None:
    script = write_child(tmp_path, FILTERED_SCRIPT)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string) as child:
            assert child.wait(60) == 0, child.output
        server.wait_for(2, timeout=5)
        time.sleep(0.3)  # a filtered record would arrive now
        sent = sorted(message(e) for e in server.envelopes)
    assert sent == ["public 1", "public 3"]
    assert "INFO train: private 2" in child.output, "the driver log has no such filter"
