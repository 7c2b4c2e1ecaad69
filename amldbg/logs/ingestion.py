"""The Application Insights ingestion service's answers, read once for both sinks.

The track endpoint (``POST /v2.1/track``) answers ``{"itemsReceived": n, "itemsAccepted": m,
"errors": [{"index": i, "statusCode": s, "message": "..."}]}``; a 206 (partial success)
names, per item, what went wrong. :func:`parse_track_answer` reads that answer and
:func:`settle_partial` applies a 206 to the batch that was sent: the items the service asks
for again stay in the batch, the others are counted as rejected, by reason.
:func:`retry_after_seconds` reads a ``Retry-After`` header (also used for MLflow).

Which per-item statuses are sent again (:data:`RETRYABLE_ITEM_STATUSES`): the service
documents 408, 429, 500 and 503 as the retryable ones; 502 and 504 are added because both
exporters retry them and they say "later" in every HTTP sense (a wasted retry costs one
item in one more request). 401 and 403, which both exporters also retry, are left out:
authentication is decided per request, never per item, and amldbg holds no credential a
retry could refresh (it sends with the instrumentation key), so the same item would be
refused again and again. An item the service sampled out ("Telemetry sampled out.") is
never sent again, whatever its status, as the OpenTelemetry exporter does.

Everything read from the wire is treated as hostile: nothing here raises on any input, an
answer longer than :data:`MAX_ANSWER_CHARS` is not parsed, item messages are masked (the
instrumentation key and any credential shape), escaped to one line and shortened
(:func:`amldbg.core.safetext.safe`), and indexes that are out of range, duplicated or not
integers are ignored. Only the standard library and :mod:`amldbg.core` are imported.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import math
import re
import time
from typing import Any, Callable

from amldbg.core import safetext

#: Per-item statuses of a 206 whose items are sent again (see the module's docstring).
RETRYABLE_ITEM_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Longest answer body that is parsed, in characters: the errors of a full batch (512
#: items, each with a message of a few hundred characters) take well under this.
MAX_ANSWER_CHARS = 2_000_000
#: Longest item message kept, after masking and escaping.
MESSAGE_LIMIT = 160
#: Longest text :meth:`TrackAnswer.summary` gives (a sink's ``last_error``).
SUMMARY_LIMIT = 240
#: The message the service gives an item it dropped by ingestion sampling.
SAMPLED_OUT = "telemetry sampled out."
#: Longest ``Retry-After`` value read (an HTTP date is 29 characters).
MAX_RETRY_AFTER_CHARS = 64

_DELTA_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


@dataclasses.dataclass(frozen=True)
class ItemError:
    """One entry of the answer's ``errors``; ``index`` and ``status`` are None when unreadable."""

    index: int | None
    status: int | None
    #: The service's message, safe to print (masked, one line, at most :data:`MESSAGE_LIMIT`).
    message: str

    @property
    def retryable(self) -> bool:
        """True when the service asks for this item again."""
        return self.status in RETRYABLE_ITEM_STATUSES and self.message.lower() != SAMPLED_OUT

    @property
    def reason(self) -> str:
        """Why the item was refused, key-free: ``"HTTP 400: <the service's message>"``."""
        head = f"HTTP {self.status}" if self.status is not None else "an unreadable item status"
        return f"{head}: {self.message}" if self.message else head


@dataclasses.dataclass(frozen=True)
class TrackAnswer:
    """What the track endpoint answered: the HTTP status and its JSON body, as far as readable."""

    status: int
    #: ``itemsReceived`` and ``itemsAccepted``, None when absent or not counts.
    received: int | None
    accepted: int | None
    errors: tuple[ItemError, ...]
    #: True when the body was the service's JSON object with an ``errors`` list.
    readable: bool

    def summary(self) -> str:
        """``"HTTP <status>"`` and the service's distinct messages: a safe ``last_error``."""
        messages = "; ".join(dict.fromkeys(error.message for error in self.errors if error.message))
        text = f"HTTP {self.status}" + (f": {messages}" if messages else "")
        return safetext.shorten(text, SUMMARY_LIMIT)

    def matches(self, sent: int) -> bool:
        """True when the answer can be about a request of ``sent`` envelopes (its indexes can
        be mapped onto them): readable, and ``itemsReceived`` (when given) equal to ``sent``."""
        return self.readable and (self.received is None or self.received == sent)

    def item_errors(self, sent: int) -> dict[int, ItemError]:
        """The errors by index, for indexes within ``sent`` items; the first entry of an index wins."""
        found: dict[int, ItemError] = {}
        for error in self.errors:
            if error.index is not None and 0 <= error.index < sent and error.index not in found:
                found[error.index] = error
        return found

    def retryable_indices(self, sent: int) -> list[int]:
        """Indexes (ascending, within ``sent``) of the items the service asks for again."""
        return sorted(index for index, error in self.item_errors(sent).items() if error.retryable)

    def rejections(self, sent: int) -> dict[str, int]:
        """How many of the ``sent`` items were refused for good, by :attr:`ItemError.reason`."""
        counts: dict[str, int] = {}
        for error in self.item_errors(sent).values():
            if not error.retryable:
                counts[error.reason] = counts.get(error.reason, 0) + 1
        return counts


def _count(value: Any) -> int | None:
    """``value`` as a non-negative integer, or None (booleans, floats with a fraction, text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and 0 < len(value) <= 9 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _mask_key(text: str, secret: str) -> str:
    # The service may echo the key in any case; amldbg's copy is lower-cased.
    if secret and len(secret) >= 4:
        return re.sub(re.escape(secret), safetext.MASK, text, flags=re.IGNORECASE)
    return text


def _message(value: Any, secret: str) -> str:
    if value is None:
        return ""
    raw = value if isinstance(value, str) else json.dumps(value, default=str)[: MESSAGE_LIMIT * 4]
    # The key is masked before the cut: half a key would no longer be recognised.
    raw = _mask_key(raw[: MESSAGE_LIMIT + safetext.MASK_WINDOW], secret)
    return safetext.safe(raw, MESSAGE_LIMIT)


def parse_track_answer(status: int, text: str | bytes | None, secret: str = "") -> TrackAnswer:
    """Read the track endpoint's answer (HTTP ``status`` and body ``text``); never raises.

    ``secret`` (the instrumentation key) is masked in the item messages. A body that is not
    the service's JSON (too long, not JSON, not an object with an ``errors`` list) gives an
    answer with ``readable=False`` and whatever counts could be read.
    """
    unreadable = TrackAnswer(status, None, None, (), False)
    try:
        if isinstance(text, bytes):
            text = text[: MAX_ANSWER_CHARS + 1].decode("utf-8", "replace")
        if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS:
            return unreadable
        data = json.loads(text)
        if not isinstance(data, dict):
            return unreadable
        received, accepted = _count(data.get("itemsReceived")), _count(data.get("itemsAccepted"))
        entries = data.get("errors")
        if not isinstance(entries, list):
            return TrackAnswer(status, received, accepted, (), False)
        errors = tuple(
            ItemError(_count(entry.get("index")), _count(entry.get("statusCode")),
                      _message(entry.get("message"), secret))
            for entry in entries if isinstance(entry, dict)
        )
        return TrackAnswer(status, received, accepted, errors, True)
    except Exception:  # parsing: RecursionError from deep nesting, odd numbers: not the service's JSON
        return unreadable


#: Why items were counted as rejected when a 206 cannot be matched to the batch sent.
UNMATCHED_REASON = ("HTTP 206: an answer amldbg could not match to the records sent "
                    "(some of them may have arrived)")


def settle_partial(batch: list[Any], answer: TrackAnswer, reject: Callable[[int, str], None],
                   sent: int | None = None) -> bool:
    """Apply a partial success to ``batch``; True when items are left to send again.

    ``batch`` is the list that was sent, one envelope per item (``sent`` envelopes when the
    sink posted another number: then no index can be trusted). It is changed in place to
    hold only the items the service asks for again, in their order; ``reject(count, reason)``
    is called for the refused ones. Items the answer does not name were accepted. An answer
    that cannot be matched to the batch counts the items it did not accept as rejected
    (which ones is unknown, and sending all again would duplicate the accepted ones).
    """
    count = len(batch) if sent is None else sent
    if count != len(batch) or not answer.matches(count):
        accepted = answer.accepted if answer.accepted is not None and answer.accepted <= len(batch) else 0
        reject(len(batch) - accepted, UNMATCHED_REASON)
        batch.clear()
        return False
    for reason, number in answer.rejections(count).items():
        reject(number, reason)
    batch[:] = [batch[index] for index in answer.retryable_indices(count)]
    return bool(batch)


def retry_after_seconds(value: str | bytes | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait, or None when absent or not valid.

    Both forms of RFC 9110 are read: delta-seconds (``"30"``; a fraction is accepted) and an
    HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, compared with ``now``, a ``time.time()``
    value, by default the current time; a date already past gives 0.0). A negative number,
    text that is neither form or an over-long value gives None. Never raises.
    """
    try:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return None
        value = value.strip()
        if not value or len(value) > MAX_RETRY_AFTER_CHARS:
            return None
        if _DELTA_SECONDS.fullmatch(value):
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" dates: UTC, as RFC 5322 means them
            when = when.replace(tzinfo=datetime.timezone.utc)
        wait = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, wait) if math.isfinite(wait) else None
    except Exception:  # parsing: not a date (parsedate_to_datetime raises TypeError or ValueError)
        return None
