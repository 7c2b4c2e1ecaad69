"""The one reader of Application Insights' track answers and of ``Retry-After`` (amldbg.logs.ingestion).

What the service sends is treated as hostile: every function here is fed garbage, huge and
contradictory answers, and must neither raise nor let a key or a control character through.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest

from amldbg.logs import ingestion

KEY = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def answer(errors: list[Any], received: Any = 5, accepted: Any = None, status: int = 206) -> ingestion.TrackAnswer:
    body = {"itemsReceived": received, "itemsAccepted": 5 - len(errors) if accepted is None else accepted,
            "errors": errors}
    return ingestion.parse_track_answer(status, json.dumps(body), KEY)


def settle(batch: list[Any], parsed: ingestion.TrackAnswer, sent: int | None = None) -> tuple[bool, dict[str, int]]:
    rejected: dict[str, int] = {}

    def reject(count: int, reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + count

    return ingestion.settle_partial(batch, parsed, reject, sent=sent), rejected


def test_a_partial_answer_keeps_the_retryable_items_in_order_and_counts_the_rejected_by_reason() -> None:
    parsed = answer([
        {"index": 4, "statusCode": 503, "message": "Service unavailable"},
        {"index": 0, "statusCode": 400, "message": "Field 'time' on type 'Envelope' is required."},
        {"index": 1, "statusCode": 500, "message": "Internal Server Error"},
        {"index": 3, "statusCode": 400, "message": "Field 'time' on type 'Envelope' is required."},
    ])
    assert parsed.readable and (parsed.received, parsed.accepted) == (5, 1)
    batch = ["a", "b", "c", "d", "e"]
    again, rejected = settle(batch, parsed)
    assert again and batch == ["b", "e"]
    assert rejected == {"HTTP 400: Field 'time' on type 'Envelope' is required.": 2}
    assert parsed.summary().startswith("HTTP 206: Service unavailable; Field 'time'")


@pytest.mark.parametrize(("status", "retried"), [
    (408, True), (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (439, False),
])
def test_which_item_statuses_are_sent_again(status: int, retried: bool) -> None:
    parsed = answer([{"index": 2, "statusCode": status, "message": "m"}])
    assert parsed.retryable_indices(5) == ([2] if retried else [])
    assert parsed.rejections(5) == ({} if retried else {f"HTTP {status}: m": 1})


def test_an_item_sampled_out_is_never_sent_again() -> None:
    parsed = answer([{"index": 0, "statusCode": 500, "message": "Telemetry sampled out."}])
    assert parsed.retryable_indices(5) == []
    assert parsed.rejections(5) == {"HTTP 500: Telemetry sampled out.": 1}


def test_everything_accepted_or_rejected_leaves_nothing_to_send() -> None:
    batch = list(range(5))
    again, rejected = settle(batch, answer([{"index": 1, "statusCode": 400, "message": "bad"}]))
    assert not again and batch == [] and rejected == {"HTTP 400: bad": 1}
    batch = list(range(5))
    assert settle(batch, answer([])) == (False, {})


def test_out_of_range_duplicate_and_non_integer_indexes_are_ignored() -> None:
    parsed = answer([
        {"index": 1, "statusCode": 500, "message": "first"},
        {"index": 1, "statusCode": 400, "message": "a duplicate: the first entry wins"},
        {"index": 5, "statusCode": 400, "message": "past the end"},
        {"index": -1, "statusCode": 400, "message": "negative"},
        {"index": True, "statusCode": 400, "message": "a boolean"},
        {"index": 2.5, "statusCode": 400, "message": "a fraction"},
        {"index": "3", "statusCode": 400, "message": "digits are a number"},
        {"index": None, "statusCode": 400},
        {"statusCode": 400},
        "not an object",
        ["nor", "this"],
    ], accepted=3)
    batch = list("abcde")
    again, rejected = settle(batch, parsed)
    assert again and batch == ["b"]
    assert rejected == {"HTTP 400: digits are a number": 1}


def test_an_unreadable_item_status_is_a_rejection_not_a_retry() -> None:
    parsed = answer([{"index": 0, "statusCode": "five hundred", "message": "odd"},
                     {"index": 1, "statusCode": 500.0, "message": "a whole float"},
                     {"index": 2, "statusCode": [500]}])
    assert parsed.retryable_indices(5) == [1]
    assert parsed.rejections(5) == {"an unreadable item status: odd": 1, "an unreadable item status": 1}


@pytest.mark.parametrize("body", [
    "", "not json", "[]", "null", "42", '"text"', '{"errors": "none"}', '{"itemsReceived": 5}',
    "[" * 100_000, '{"errors": [' + "[" * 50_000 + "]}", b"\xff\xfe binary",
])
def test_a_body_that_is_not_the_services_answer_is_unreadable_and_never_raises(body: Any) -> None:
    parsed = ingestion.parse_track_answer(206, body, KEY)
    assert not parsed.readable and parsed.errors == ()
    batch = list(range(4))
    again, rejected = settle(batch, parsed)
    # Which items arrived is unknown: the ones not accepted are counted, none is sent twice.
    assert not again and batch == [] and rejected == {ingestion.UNMATCHED_REASON: 4}


def test_an_answer_about_another_number_of_items_is_not_mapped() -> None:
    parsed = answer([{"index": 0, "statusCode": 500, "message": "m"}], received=7, accepted=6)
    batch = list(range(7))
    # The sink posted 5 envelopes for 7 items: the indexes cannot be the batch's.
    again, rejected = settle(batch, parsed, sent=5)
    assert not again and batch == [] and rejected == {ingestion.UNMATCHED_REASON: 1}
    batch = list(range(5))
    again, rejected = settle(batch, parsed)  # the answer says 7 were received, 5 were sent
    assert not again and rejected == {ingestion.UNMATCHED_REASON: 5}


@pytest.mark.parametrize("value", [None, True, -3, 1.5, "x", "99999999999", [1]])
def test_counts_that_are_not_counts_are_none(value: Any) -> None:
    parsed = ingestion.parse_track_answer(206, json.dumps({"itemsReceived": value, "errors": []}))
    assert parsed.received is None and parsed.readable


def test_a_huge_answer_is_not_parsed() -> None:
    errors = [{"index": 0, "statusCode": 500, "message": "x" * 1000}] * 3000
    text = json.dumps({"itemsReceived": 1, "itemsAccepted": 0, "errors": errors})
    assert len(text) > ingestion.MAX_ANSWER_CHARS
    started = time.perf_counter()
    parsed = ingestion.parse_track_answer(206, text)
    assert not parsed.readable
    assert time.perf_counter() - started < 1.0


def test_messages_are_masked_escaped_and_shortened() -> None:
    hostile = (f"bad key {KEY.upper()} InstrumentationKey={KEY};\x1b[2J\u202e\nforged line "
               + "y" * 5000)
    parsed = answer([{"index": 0, "statusCode": 400, "message": hostile},
                     {"index": 1, "statusCode": 400, "message": {"nested": KEY}}])
    [reason_1, reason_2] = parsed.rejections(5)
    for text in (reason_1, reason_2, parsed.summary()):
        assert KEY not in text.lower(), text
        assert not any(ord(c) < 0x20 or c == "\u202e" for c in text), repr(text)
    assert reason_1.startswith("HTTP 400: bad key <hidden> InstrumentationKey=<hidden>;\\x1b[2J\\u202e\\x0aforged")
    assert len(reason_1) <= len("HTTP 400: ") + ingestion.MESSAGE_LIMIT
    assert len(parsed.summary()) <= ingestion.SUMMARY_LIMIT
    assert reason_2 == 'HTTP 400: {"nested": "<hidden>"}'


def test_many_distinct_messages_stay_bounded() -> None:
    errors = [{"index": i, "statusCode": 400, "message": f"reason {i} " + "z" * 150} for i in range(512)]
    parsed = ingestion.parse_track_answer(206, json.dumps({"itemsReceived": 512, "itemsAccepted": 0,
                                                          "errors": errors}))
    assert sum(parsed.rejections(512).values()) == 512
    assert len(parsed.summary()) <= ingestion.SUMMARY_LIMIT


# -- Retry-After ---------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 30.0), (" 1 ", 1.0), ("0", 0.0), ("2.5", 2.5), (b"7", 7.0), ("120", 120.0),
])
def test_retry_after_in_seconds(value: Any, seconds: float) -> None:
    assert ingestion.retry_after_seconds(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert ingestion.retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert ingestion.retry_after_seconds("Tue, 14 Nov 2023 22:13:50 -0000", now=now) == 30.0
    assert ingestion.retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    wait = ingestion.retry_after_seconds(email.utils.formatdate(time.time() + 10, usegmt=True))
    assert wait is not None and 8.0 <= wait <= 10.0


@pytest.mark.parametrize("value", [
    None, "", "  ", "-1", "-0.5", "soon", "1e3", "inf", "nan", "0x10", "1,5", "٣", "3 s",
    "Mon, 99 Foo 2023 99:99:99 GMT", "Mon, 01 Jan 10000 00:00:00 GMT", "9" * 13, "1" * 100,
    "Wed, 21 Oct 2015 07:28:00 GMT" + " " * 100 + "x", 30, 1.5, ["30"], b"\xff\xfe",
])
def test_retry_after_that_is_not_valid_is_none(value: Any) -> None:
    assert ingestion.retry_after_seconds(value) is None
