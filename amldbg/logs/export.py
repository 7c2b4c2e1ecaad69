"""The background queues: callers append and return at once; each destination has its own thread.

Why queues of amldbg's own instead of the exporters' own threads: both Application
Insights exporters flush at exit without a useful time limit, lose batches on connection
errors when statsbeat is off, and lose records in forked children (their thread does not
survive ``fork``); MLflow's ``log_metric`` blocks for hundreds of milliseconds in Azure ML.
Here:

* :meth:`Channel.put` never blocks and never does I/O: a bounded ``deque``; when it is
  full the **oldest** record is dropped (the records closest to a crash are the ones
  people need) and counted; the count is reported once, at exit or :func:`flush`.
* Each destination (channel) has one daemon thread (``amldbg-export``) that creates its
  sink (constructors can block for seconds, and import heavy packages) and sends
  batches, so a destination that hangs never delays another. Every send is given a
  time limit and every sink keeps to it (MLflow's and azureml-core's own retries and
  waits included, see :mod:`.mlflow_metrics` and :mod:`.run_metrics`). Retryable
  failures (refused connection, timeouts, 429/5xx) keep the batch and retry with
  exponential back-off; permanent ones drop it with one warning.
* At exit, pending records get a bounded grace period (:data:`~amldbg.logs.settings.DEFAULT_GRACE_PERIOD`
  seconds by default); every request made during it is limited to the time left, so the
  process never hangs.
* A burst of logging does not pay for its own export while it lasts (:meth:`Exporter._in_burst`):
  while records keep arriving at :data:`BURST_RATE` per second or faster, a channel made
  with ``defer_bursts=True`` waits instead of building and sending, for at most
  :data:`BURST_MAX_DEFER` seconds and only while what waits is under half the queue and can
  be sent within half the exit grace period at the rate sends were measured to reach. The
  export work is then done after the burst, when the script no longer competes for the GIL;
  a flush and the exit never wait for a burst to end.
* A destination that answers with ``Retry-After`` (seconds or an HTTP date) is not asked
  again before that time, during the exit grace period too (then at most until its end);
  a partial success (Application Insights' 206) re-sends only the items the service asks
  for again and counts the rejected ones (see :meth:`Sink.send`).
* What did not arrive is reported once, at exit, in one line per destination, split by
  reason: dropped when the queue was full, rejected by the destination (with its
  reasons), not sent within the grace period (with the last error).
* ``fork`` waits at most :data:`FORK_WAIT` seconds, and only while a sink is being built
  (imports in progress), never for a request. The child starts from empty queues and
  builds its own sinks on first use; the parent's pending records stay the parent's. The
  child flushes at its exit like the parent, including the ``os._exit`` that
  multiprocessing's fork workers end with (through multiprocessing's own finalizers).
* SIGTERM (a cancelled or pre-empted job, torchrun ending the surviving ranks, an
  eviction): see :func:`arm_sigterm`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator

from amldbg.core import announce, forksafe, threads
from amldbg.core.guard import guard, quietly

OK = "ok"
RETRY = "retry"
DROP = "drop"

#: Longest wait between retries of one batch, in seconds.
MAX_BACKOFF = 30.0
#: Wait between retries during the exit grace period, in seconds.
EXIT_BACKOFF = 0.2
#: Margin for an export thread to notice the exit deadline once its last request returns.
JOIN_MARGIN = 0.25
#: Longest wait a ``Retry-After`` can impose on a channel while the script runs, in seconds
#: (a larger value is taken as this; at exit the grace period bounds it anyway).
MAX_RETRY_AFTER = 300.0
#: Distinct rejection reasons kept per channel; further ones are counted together.
MAX_REASONS = 8

#: Records per second from which arrivals count as a burst whose export waits (a training
#: loop that logs every step stays far below it; logging then costs a large share of the
#: caller's time, and the export thread's share of the GIL would come on top of it).
BURST_RATE = 5_000.0
#: How often the export thread looks at a burst's queue while its export waits, in seconds.
BURST_POLL = 0.02
#: Longest one burst's export waits, in seconds: later records are sent as they come.
BURST_MAX_DEFER = 2.0
#: Share of the queue a burst may fill before its export starts regardless: the rest is
#: headroom for the records that keep coming while the backlog is sent.
BURST_QUEUE_SHARE = 0.5

#: Identities of the threads that send (export threads and their helper calls): the records
#: they make are the exporters' own transport messages, never exported or printed.
_export_idents: set[int] = set()


class Sink:
    """What a channel sends to. Subclasses implement :meth:`send` (and :meth:`close`).

    Both must return within about the ``timeout`` they are given, whatever the destination
    does: a library call that can outlast it goes through :func:`call_within`. A sink that
    delivered part of a batch before failing may remove those items from ``batch`` (the
    channel's pending list, retried as it is left) so they are not sent twice.
    """

    #: A short description of the last failure, safe to print (no secrets).
    last_error: str = ""
    #: Seconds the destination asked to wait before the next request (``Retry-After`` of a
    #: throttling answer), set by :meth:`send` before it returns RETRY; None when not asked.
    retry_after: float | None = None

    def send(self, batch: list[Any], timeout: float) -> str:
        """Send ``batch`` within about ``timeout`` seconds; return OK, RETRY or DROP.

        Partial success: when the destination accepted some items, rejected some and asks
        for others again (Application Insights' 206), :meth:`send` leaves in ``batch`` only
        the items to send again, calls :meth:`reject` for the rejected ones, and returns
        RETRY (OK when nothing is left). DROP means every item still in ``batch`` was
        rejected, for the reason in :attr:`last_error`.
        """
        raise NotImplementedError

    def reject(self, count: int, reason: str) -> None:
        """Note that the destination refused ``count`` items for ``reason`` (key-free text)."""
        if count > 0:
            pending = self.__dict__.setdefault("_rejections", {})
            pending[reason] = pending.get(reason, 0) + count

    def take_rejections(self) -> dict[str, int]:
        """The rejections noted since the last call, by reason (the channel counts them)."""
        return self.__dict__.pop("_rejections", None) or {}

    def close(self, timeout: float) -> None:
        """Flush and release what the sink holds, within ``timeout`` seconds."""


def call_within(function: Callable[[], Any], timeout: float, name: str = "amldbg-export-call") -> tuple[bool, Any]:
    """Run ``function`` on a daemon thread and wait at most ``timeout`` seconds for it.

    Returns ``(True, result)`` when it returned in time, ``(False, None)`` when it did not
    (it carries on in the background, abandoned; at exit it is not waited for). An
    exception it raised is raised here. For library calls whose own limits cannot be set
    (azureml-core's ``Run.flush`` waits up to twice its timeout plus minutes of ingestion).
    """
    def tracked() -> Any:
        ident = threading.get_ident()
        _export_idents.add(ident)
        try:
            return function()
        finally:
            _export_idents.discard(ident)

    return threads.call_within(tracked, timeout, name)


class Channel:
    """One destination's queue, filled by callers and drained by its own export thread."""

    def __init__(
        self,
        exporter: Exporter,
        name: str,
        factory: Callable[[], Sink],
        maxlen: int,
        batch_size: int,
        interval: float,
        request_timeout: float,
        defer_bursts: bool = False,
    ) -> None:
        self.exporter = exporter
        self.generation = exporter.generation
        self.name = name
        self.factory = factory
        self.maxlen = maxlen
        self.items: collections.deque[Any] = collections.deque(maxlen=maxlen)
        self.batch_size = batch_size
        self.interval = interval
        self.request_timeout = request_timeout
        self.sink: Sink | None = None
        self.broken = False
        self.pending: list[Any] | None = None
        self.retry_at = 0.0
        self.backoff = 0.0
        self.dropped_full = 0
        #: Items that could not be sent at all (no sink could be made).
        self.lost = 0
        #: Items the destination refused, by its reason.
        self.rejected: dict[str, int] = {}
        #: Not before this time (monotonic) may the next request go: the destination's
        #: ``Retry-After``.
        self.not_before = 0.0
        self.wakeup = threading.Event()
        self.thread: threading.Thread | None = None
        self.defer_bursts = defer_bursts
        #: Records put so far (approximate under concurrent callers; only rates are read).
        self.arrivals = 0
        #: When the current burst's export began to wait, and the last look at it.
        self.burst_since: float | None = None
        self.burst_seen = (0.0, 0)
        #: Records per second the sink's sends reached (0 until one was measured).
        self.send_rate = 0.0

    def put(self, item: Any) -> None:
        """Queue one item; never blocks. When the queue is full the oldest item is dropped."""
        items = self.items
        if len(items) >= self.maxlen:
            # deque(maxlen) discards the oldest on append; the count is approximate under
            # concurrent callers, which is good enough for a report.
            self.dropped_full += 1
        items.append(item)
        self.arrivals += 1
        # Wake the export thread when a batch becomes full, not on every later record:
        # while it backs off from a failing endpoint, a wake-up per call would cost the
        # callers the GIL hand-over each time.
        if len(items) == self.batch_size:
            self.wakeup.set()

    def idle(self) -> bool:
        """True when nothing waits to be sent."""
        return self.pending is None and not self.items

    def backlog(self) -> int:
        """How many items have not been sent yet."""
        return len(self.items) + (len(self.pending) if self.pending else 0)

    def count_rejected(self, reason: str, count: int) -> None:
        """Count ``count`` items the destination refused for ``reason``."""
        if count <= 0:
            return
        if reason not in self.rejected and len(self.rejected) >= MAX_REASONS:
            reason = "other reasons"
        self.rejected[reason] = self.rejected.get(reason, 0) + count

    def throttled_past(self, deadline: float) -> bool:
        """True when the destination asked not to be sent to again before ``deadline``."""
        return not self.idle() and self.not_before >= deadline

    def losses(self, grace_period: float) -> str:
        """What did not arrive, split by reason, as one line's text ("" when nothing)."""
        parts = []
        late = self.backlog()
        # Items lost because no sink could be made are left out: that was said when it
        # happened ("... is off").
        total = self.dropped_full + late + sum(self.rejected.values())
        if not total:
            return ""
        if late:
            detail = ""
            if self.not_before > time.monotonic():
                detail = " (the destination asked to wait: Retry-After)"
            elif self.sink is not None and self.sink.last_error:
                detail = f" (last error: {self.sink.last_error})"
            parts.append(f"{late} not sent within the {grace_period:g} s grace period{detail}")
        if self.rejected:
            reasons = "; ".join(f"{count} {reason}" for reason, count in self.rejected.items())
            parts.append(f"{sum(self.rejected.values())} rejected by the destination ({reasons})")
        if self.dropped_full:
            parts.append(f"{self.dropped_full} oldest dropped because the queue was full "
                         f"(queue size {self.maxlen})")
        return f"{self.name}: {total} record(s) were not delivered: " + ", ".join(parts)


class Exporter:
    """The per-process channels and their export threads."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pid = os.getpid()
        self.channels: dict[str, Channel] = {}
        self.grace_period = 3.0
        self._lock = threading.Lock()
        self._progress = threading.Condition()
        self._stop_deadline: float | None = None
        #: When the interpreter began to shut down while a sink was still being built.
        self._exit_began: float | None = None
        self._reported = False
        #: Flushes in progress: a flush never waits for a burst to end.
        self._flushing = 0
        # Identities of this exporter's threads while they build a sink (imports in
        # progress); see _before_fork.
        self.building: set[int] = set()
        self._building = threading.Condition()

    # -- callers' side -------------------------------------------------------------
    def channel(
        self,
        key: str,
        name: str,
        factory: Callable[[], Sink],
        maxlen: int,
        batch_size: int = 512,
        interval: float = 0.5,
        request_timeout: float = 10.0,
        defer_bursts: bool = False,
    ) -> Channel:
        """The channel for ``key``, created (and its thread started) on first use.

        ``defer_bursts``: while records arrive in a burst, send them after it (see the
        module's notes); for destinations whose per-record export work is large.
        """
        with self._lock:
            found = self.channels.get(key)
            if found is not None:
                return found
            found = Channel(self, name, factory, maxlen, batch_size, interval, request_timeout,
                            defer_bursts)
            self.channels[key] = found
            # The exporters import concurrent.futures on the export thread; imported there
            # during a fork (which waits for imports, see _before_fork), its fork hooks
            # would run "after" without "before" and print a traceback in the parent.
            import concurrent.futures.thread  # noqa: F401
            _wait_for_sinks_at_exit()
            if self._stop_deadline is None:
                found.thread = threading.Thread(target=self._run, args=(found,),
                                                name="amldbg-export", daemon=True)
                found.thread.start()
        if self is _state.exporter:
            # Records are queued now: a SIGTERM must not lose them (.termination registers).
            for hook in list(_channel_hooks):
                with quietly():  # each hook warns of its own failure (termination.arm does)
                    hook()
        return found

    def wait_while_building(self, timeout: float) -> bool:
        """Wait (bounded) while an export thread builds a sink; True when none does."""
        deadline = time.monotonic() + timeout
        with self._building:
            while self.building:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._building.wait(left)
        return True

    def wake(self) -> None:
        """Ask every export thread to look at its queue now."""
        for ch in list(self.channels.values()):
            ch.wakeup.set()

    def warn_once(self, key: str, message: str) -> None:
        """Write one ``amldbg: warning:`` line per ``key`` for the life of the process."""
        announce.warn_once("export:" + key, message)

    def _alive(self) -> bool:
        return any(ch.thread is not None and ch.thread.is_alive() for ch in list(self.channels.values()))

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every queue is sent; True when all were."""
        deadline = time.monotonic() + max(0.0, timeout)
        for ch in list(self.channels.values()):
            # A flush is a reason to try a failing destination again now (once: the
            # back-off applies again after that attempt), unless it asked to wait.
            ch.retry_at = max(min(ch.retry_at, time.monotonic()), ch.not_before)
        with self._lock:
            self._flushing += 1
        try:
            self.wake()
            with self._progress:
                while True:
                    channels = list(self.channels.values())
                    if all(ch.idle() for ch in channels):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._alive():
                        return False
                    if all(ch.idle() or ch.throttled_past(deadline) for ch in channels):
                        return False  # what is left may not be sent before the deadline
                    self.wake()
                    self._progress.wait(min(left, 0.05))
        finally:
            with self._lock:
                self._flushing -= 1

    def shutdown(self, grace: float | None = None) -> None:
        """Send what is pending within ``grace`` seconds, close the sinks, report losses."""
        start = time.monotonic()
        if grace is None and self._exit_began is not None:
            start = self._exit_began  # the grace period began with the wait for the sinks
        grace = self.grace_period if grace is None else grace
        deadline = start + max(0.0, grace)
        with self._lock:
            if self._stop_deadline is None:
                self._stop_deadline = deadline
            channels = list(self.channels.values())
        self.wake()
        current = threading.current_thread()
        running = [ch.thread for ch in channels if ch.thread is not None and ch.thread is not current]
        if running:
            loading = any(ch.sink is None and not ch.broken for ch in channels)
            with _late_imports_allowed(loading):
                for thread in running:
                    thread.join(max(0.0, deadline - time.monotonic()) + JOIN_MARGIN)
        self.report()

    def report(self) -> None:
        """Write, once, how many records were dropped or could not be delivered."""
        if self._reported:
            return
        self._reported = True
        for ch in list(self.channels.values()):
            line = ch.losses(self.grace_period)
            if line:
                announce.warn(line)

    # -- the export threads ----------------------------------------------------------
    def _run(self, ch: Channel) -> None:
        threads.shield_signals()  # a signal for the script must not land here
        ident = threading.get_ident()
        _export_idents.add(ident)
        try:
            while True:
                deadline = self._stop_deadline
                if deadline is not None:
                    ch.retry_at = max(min(ch.retry_at, time.monotonic() + EXIT_BACKOFF), ch.not_before)
                elif self._in_burst(ch):
                    ch.wakeup.wait(BURST_POLL)
                    ch.wakeup.clear()
                    continue
                did = False
                # Never let the thread die; one warning per channel, whatever the error says.
                with guard(f"{ch.name}: export error", key="export:internal:" + ch.name):
                    did = self._service(ch, deadline)
                with self._progress:
                    self._progress.notify_all()
                now = time.monotonic()
                if deadline is not None:
                    if now >= deadline or ch.idle() or ch.throttled_past(deadline):
                        break
                    if not did:
                        ch.wakeup.wait(min(0.05, max(0.0, deadline - now)))
                        ch.wakeup.clear()
                    continue
                if ch.pending is None and len(ch.items) >= ch.batch_size:
                    continue  # a full batch is waiting: send it without pausing
                wait = ch.interval
                if ch.pending is not None:
                    wait = min(wait, max(0.0, ch.retry_at - now))
                if wait > 0:
                    ch.wakeup.wait(wait)
                ch.wakeup.clear()
            self._close_sink(ch)
        finally:
            _export_idents.discard(ident)
            with self._progress:
                self._progress.notify_all()

    def _in_burst(self, ch: Channel) -> bool:
        """True while ``ch``'s export should wait for the burst of records to end.

        A burst is a full batch waiting and records still arriving at :data:`BURST_RATE`
        or more (measured between two looks of the export thread, which looks every
        :data:`BURST_POLL` seconds while it waits). Its export waits at most
        :data:`BURST_MAX_DEFER` seconds, and only while the backlog is under
        :data:`BURST_QUEUE_SHARE` of the queue and could be sent within half the exit grace
        period at the measured send rate, so that a script that ends right after its burst
        still delivers every record in time. Not during a flush, a retry or the exit.
        """
        backlog = len(ch.items)
        now = time.monotonic()
        arrivals = ch.arrivals
        # The rate is measured between two looks, whatever the export thread did between
        # them (a wait, a poll, a send).
        seen_at, seen = ch.burst_seen
        ch.burst_seen = (now, arrivals)
        if (not ch.defer_bursts or self._flushing or ch.sink is None or ch.pending is not None
                or backlog < ch.batch_size or ch.send_rate <= 0.0):
            ch.burst_since = None
            return False
        if ch.burst_since is None and now - seen_at > 2 * BURST_POLL:
            # Woken by a full batch after a long wait: the rate since the last look says
            # nothing about now, so look again after one poll before sending.
            return True
        if arrivals - seen < BURST_RATE * max(now - seen_at, 1e-3):
            ch.burst_since = None
            return False
        if ch.burst_since is None:
            ch.burst_since = now
        elif now - ch.burst_since > BURST_MAX_DEFER:
            return False  # over for this burst: burst_since stays until the rate drops
        limit = min(ch.maxlen * BURST_QUEUE_SHARE, ch.send_rate * self.grace_period * 0.5)
        return backlog < limit

    def _close_sink(self, ch: Channel) -> None:
        if ch.sink is None:
            return
        deadline = self._stop_deadline or time.monotonic()
        with guard(f"{ch.name}: closing failed", key="export:close:" + ch.name):
            ch.sink.close(max(0.1, deadline - time.monotonic()))

    def _build(self, ch: Channel) -> None:
        # Built as soon as the channel exists, not at the first send: the exporters
        # import packages that cannot be imported once the interpreter shuts down.
        ident = threading.get_ident()
        with self._building:
            self.building.add(ident)
        try:
            try:
                ch.sink = ch.factory()
            except RuntimeError as error:
                # CPython 3.12.0/3.12.1 at exit: the build was caught between the start of
                # finalization and amldbg's exit hook; build again once the hook let the
                # sinks load without new threads (see _late_imports_allowed).
                if "new thread" not in str(error) or not _exit_window.wait(EXIT_WINDOW_WAIT):
                    raise
                ch.sink = ch.factory()
        except Exception as error:  # not the guard: a sink that cannot be built is its channel's state
            ch.broken = True
            reason = str(error)
            if "shutdown" in reason and not threading.main_thread().is_alive():
                reason = (f"the exporter could not be loaded while the script was ending ({error}); "
                          "records are sent once the exporter has loaded, about a second after get_logger()")
            self.warn_once("create:" + ch.name, f"{ch.name} is off: {reason}")
        finally:
            with self._building:
                self.building.discard(ident)
                self._building.notify_all()

    def _service(self, ch: Channel, deadline: float | None) -> bool:
        if ch.sink is None and not ch.broken:
            self._build(ch)
        if ch.pending is None:
            if not ch.items:
                return False
            batch: list[Any] = []
            popleft = ch.items.popleft
            try:
                while len(batch) < ch.batch_size:
                    batch.append(popleft())
            except IndexError:
                pass
            ch.pending = batch
        now = time.monotonic()
        if now < ch.retry_at:
            return False
        sink = ch.sink
        if sink is None:
            # No sink can be made: drop what comes, silently after the one warning.
            ch.lost += len(ch.pending) + len(ch.items)
            ch.items.clear()
            ch.pending = None
            return True
        timeout = ch.request_timeout
        if deadline is not None:
            timeout = max(0.1, min(timeout, deadline - now))
        count = len(ch.pending)
        started = time.monotonic()
        sink.retry_after = None
        try:
            result = sink.send(ch.pending, timeout)
        except Exception as error:  # not the guard: a failed send is a result, told in the loss line
            sink.last_error = f"{type(error).__name__}: {error}"
            result = DROP
        refused = 0
        for reason, number in sink.take_rejections().items():
            ch.count_rejected(reason, number)
            refused += number
        if refused:
            self.warn_once(
                "reject:" + ch.name,
                f"{ch.name}: the destination rejected {refused} record(s) of a batch "
                f"({', '.join(ch.rejected)}); the others are sent",
            )
        if result == RETRY and not ch.pending:
            result = OK  # a partial success whose every item arrived or was rejected
        if result == OK:
            took = time.monotonic() - started
            # Only batches of some size tell the rate: a lone record is all request overhead.
            if took > 0 and count * 2 >= ch.batch_size:
                rate = count / took
                ch.send_rate = rate if ch.send_rate <= 0.0 else 0.7 * ch.send_rate + 0.3 * rate
            ch.pending = None
            ch.backoff = 0.0
            ch.retry_at = 0.0
        elif result == RETRY:
            now = time.monotonic()
            ch.backoff = min(max(0.5, ch.backoff * 2), MAX_BACKOFF)
            ch.retry_at = now + (EXIT_BACKOFF if deadline is not None else ch.backoff)
            asked = sink.retry_after
            if asked is not None and asked > 0:
                # The destination's pace, whatever the back-off would have been.
                ch.not_before = now + min(asked, MAX_RETRY_AFTER)
                ch.retry_at = max(ch.retry_at, ch.not_before)
            if not refused:
                self.warn_once(
                    "retry:" + ch.name,
                    f"{ch.name}: sending failed ({sink.last_error or 'unavailable'}); "
                    "retrying in the background, the script carries on",
                )
        else:
            left = len(ch.pending)
            ch.count_rejected(sink.last_error or "not retryable", left)
            ch.pending = None
            self.warn_once(
                "drop:" + ch.name,
                f"{ch.name}: a batch of {left} record(s) was rejected and dropped "
                f"({sink.last_error or 'not retryable'})",
            )
        return True


@contextlib.contextmanager
def _late_imports_allowed(needed: bool) -> Iterator[None]:
    """Let an exporter still loading on an export thread finish during the exit grace period.

    By the time ``atexit`` hooks run, ``threading`` has set ``_SHUTTING_DOWN`` and
    ``concurrent.futures`` has refused new work; the OpenTelemetry SDK runs its resource
    detectors on a thread pool *at import*, so a script that ends within a second of
    ``get_logger`` could never load it and would lose its records. The two flags are
    lowered only while amldbg waits (bounded by the grace period) and restored after; the
    pool the SDK makes is shut down inside its own call.
    """
    saved: list[tuple[Any, str]] = []
    if needed:
        futures_thread = sys.modules.get("concurrent.futures.thread")
        for owner, flag in ((threading, "_SHUTTING_DOWN"), (futures_thread, "_shutdown")):
            if owner is not None and getattr(owner, flag, False) is True:
                setattr(owner, flag, False)
                saved.append((owner, flag))
    try:
        with _without_new_threads(needed):
            yield
    finally:
        for owner, flag in saved:
            setattr(owner, flag, True)


@contextlib.contextmanager
def _without_new_threads(needed: bool) -> Iterator[None]:
    """Let a sink load at exit on an interpreter that starts no new thread then.

    CPython 3.12.0 and 3.12.1 refuse every new thread once the interpreter began to finalize,
    before threading's and atexit's hooks ("can't create new thread at interpreter
    shutdown"; 3.12.2 moved that after them). While amldbg's exit hooks wait for the sinks,
    the OpenTelemetry SDK's resource detectors then run inline (a thread pool that runs each
    call in the caller's thread), and the OpenCensus sink leaves its handler's worker thread
    unstarted (amldbg never uses it). A build that met the refusal before the hooks began
    waits for this and runs again (see ``Exporter._build``). Elsewhere this does nothing.
    """
    global threads_refused
    if not needed or not _new_threads_refused():
        yield
        return
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor
    concurrent.futures.ThreadPoolExecutor = _InlineExecutor  # type: ignore[misc,assignment]
    threads_refused = True
    _exit_window.set()
    try:
        yield
    finally:
        threads_refused = False
        _exit_window.clear()
        concurrent.futures.ThreadPoolExecutor = pool  # type: ignore[misc]


#: True while the exit grace period runs on an interpreter that starts no new thread: a sink
#: built then must not start one (see :func:`_late_imports_allowed`).
threads_refused = False
#: Set while :data:`threads_refused` is.
_exit_window = threading.Event()
#: How long a sink whose build met a refused thread waits for the exit hook, in seconds (the
#: interpreter is finalizing then, so the hook comes at once).
EXIT_WINDOW_WAIT = 5.0


def _new_threads_refused() -> bool:
    """Whether this interpreter refuses to start a thread now (CPython 3.12.0/3.12.1 at exit)."""
    import _thread

    try:
        _thread.start_new_thread(lambda: None, ())
    except RuntimeError:
        return True
    return False


class _InlineExecutor:
    """A ``ThreadPoolExecutor`` stand-in that runs each call at once in the caller's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def submit(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        import concurrent.futures

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as error:  # not a catch: handed to the future, as a real pool does
            future.set_exception(error)
        return future

    def map(self, function: Callable[..., Any], *iterables: Any, **kwargs: Any) -> Iterator[Any]:
        return iter([function(*args) for args in zip(*iterables)])

    def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


#: Called (in the thread that made it) each time this process's exporter makes a channel.
_channel_hooks: list[Callable[[], Any]] = []


def when_channel_made(hook: Callable[[], Any]) -> None:
    """Call ``hook()`` each time this process's exporter makes a channel (records will queue)."""
    if hook not in _channel_hooks:
        _channel_hooks.append(hook)


@dataclasses.dataclass
class _ProcessState:
    """This process's exporter and what was set up for it; a forked child starts afresh."""

    #: Counts forks: a holder of a channel made in an earlier generation fetches a new one.
    generation: int = 0
    exporter: Exporter | None = None
    atexit_registered: bool = False
    #: Whether :func:`_let_sinks_finish` is among threading's exit hooks.
    sinks_hook_registered: bool = False
    #: Export threads still importing when the last fork happened (see _forget_half_imports).
    importing_at_fork: frozenset[int] = frozenset()


_state = _ProcessState()
_exporter_lock = forksafe.lock()


def get_exporter() -> Exporter:
    """This process's exporter, created on first use."""
    exporter = _state.exporter
    if exporter is not None:
        return exporter
    with _exporter_lock:
        if _state.exporter is None:
            _state.exporter = Exporter(_state.generation)
            if not _state.atexit_registered:
                # Registered after `logging` was imported, so it runs before
                # logging.shutdown (atexit is last-in, first-out).
                atexit.register(_at_exit)
                _state.atexit_registered = True
            if _state.generation:
                _flush_at_worker_exit()
        return _state.exporter


#: Where amldbg's flush runs among multiprocessing's exit finalizers: before the others
#: (higher runs first), so records are sent while the worker is still whole.
WORKER_EXIT_PRIORITY = 100


def _flush_at_worker_exit() -> None:
    """In a forked child: flush at its exit even when it ends with ``os._exit``.

    multiprocessing's fork workers (``Pool``, ``Process``, DataLoader workers) end with
    ``os._exit``, which skips ``atexit``; their own exit finalizers still run just before it
    (``multiprocessing.util._exit_function``), so amldbg's flush is one of them.
    """
    util = sys.modules.get("multiprocessing.util")
    finalize = getattr(util, "Finalize", None)
    if finalize is not None:
        with quietly():  # a multiprocessing that is not as expected: atexit still flushes
            finalize(None, _at_exit, exitpriority=WORKER_EXIT_PRIORITY)


def _wait_for_sinks_at_exit() -> None:
    """Before ``concurrent.futures`` refuses new work at shutdown, let a sink finish building.

    ``threading`` calls its exit hooks (last registered first) before ``atexit``; the one of
    ``concurrent.futures`` makes every thread pool refuse work, and the OpenTelemetry SDK
    needs one while it is imported. A script (or a forked child) that ends right after its
    first record would lose the exporter, so amldbg's hook, registered after it, waits for
    the sinks being built first; the wait counts against the exit grace period.
    """
    register = getattr(threading, "_register_atexit", None)
    if _state.sinks_hook_registered or register is None:
        return
    with quietly():  # threading refuses exit hooks once it shuts down: nothing to wait for
        register(_let_sinks_finish)
        _state.sinks_hook_registered = True


def _let_sinks_finish() -> None:
    exporter = _state.exporter
    if exporter is None or exporter.pid != os.getpid():
        return
    with quietly():  # an exit hook must not turn a clean exit into a traceback
        exporter._exit_began = time.monotonic()
        deadline = exporter._exit_began + max(0.0, exporter.grace_period)

        def loading() -> bool:
            return any(ch.sink is None and not ch.broken for ch in list(exporter.channels.values()))

        with _without_new_threads(loading()):
            while time.monotonic() < deadline and loading():
                time.sleep(0.01)


def current_generation() -> int:
    """Changes in a forked child, so holders of a channel know to fetch a new one."""
    return _state.generation


def is_export_thread(thread_ident: int | None) -> bool:
    """True for the identity of one of this process's export threads (records they make
    must not be exported or printed: they are the exporters' own transport messages)."""
    return thread_ident is not None and thread_ident in _export_idents


def existing_exporter() -> Exporter | None:
    """The exporter if one was created in this process, else None (no thread is started)."""
    return _state.exporter


def _at_exit() -> None:
    exporter = _state.exporter
    if exporter is not None and exporter.pid == os.getpid():
        with quietly():  # an exit hook must not turn a clean exit into a traceback
            exporter.shutdown()


#: Longest a fork waits for an export thread that is building a sink (importing), in seconds.
#: A fork never waits for a request.
FORK_WAIT = 0.2

#: The exporter libraries' module-level locks that the send paths take; a fork while an
#: export thread holds one would deadlock the child, so the child gets fresh ones. (MLflow
#: keeps one HTTP session per process id, and every other exporter object is built anew in
#: the child.) amldbg's own locks are not listed: each is made with
#: :mod:`amldbg.core.forksafe` where it is defined, and is free in every child.
_SEND_PATH_LOCKS = (
    ("opencensus.ext.azure.common.transport", "_requests_lock"),
    ("opencensus.ext.azure.statsbeat.state", "_STATSBEAT_STATE_LOCK"),
    ("azure.monitor.opentelemetry.exporter.statsbeat._state", "_REQUESTS_MAP_LOCK"),
    ("azure.monitor.opentelemetry.exporter.statsbeat._state", "_STATSBEAT_STATE_LOCK"),
    ("azure.monitor.opentelemetry.exporter._utils", "_INSTRUMENTATIONS_BIT_MASK_LOCK"),
)


def _before_fork() -> None:
    # Forks are common right after start-up (gunicorn workers, DataLoader workers), when
    # the export threads import the exporters. A fork in the middle of an import leaves
    # the child a half-initialised module whose import lock nobody will release, so the
    # fork waits for the import to finish, but only FORK_WAIT seconds: after that the
    # child repairs its import state (_after_fork_in_child). Requests in flight are not
    # waited for: the child replaces the locks they hold and builds its own sinks.
    _state.importing_at_fork = frozenset()
    exporter = _state.exporter
    if exporter is not None and exporter.building and exporter.pid == os.getpid():
        with quietly():  # a fork hook must never stop the fork
            if not exporter.wait_while_building(FORK_WAIT):
                _state.importing_at_fork = frozenset(exporter.building)


def _forget_half_imports(owner: int) -> None:
    """In a child forked while thread ``owner`` was importing: undo its unfinished imports.

    The parent's thread does not exist here, so its module locks would never be released
    and ``import`` of those modules would wait forever (in the child's own code as well as
    in its exporter). Each module that thread was still initialising is removed from
    ``sys.modules`` and its lock forgotten, as Python does for an import that failed, so
    the next ``import`` runs it afresh. This reads importlib's bootstrap state (the only
    place it is kept); when that is not as expected nothing is changed.
    """
    bootstrap = sys.modules.get("importlib._bootstrap")
    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return
    for name, ref in list(locks.items()):
        lock = None
        with quietly():  # importlib's entry is not the weak reference expected: left alone
            lock = ref()
        if lock is None or getattr(lock, "owner", None) != owner:
            continue
        module = sys.modules.get(name)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
            sys.modules.pop(name, None)
        locks.pop(name, None)


def _after_fork_in_child() -> None:
    # The parent's threads do not exist here and their locks may be held: start afresh
    # (forksafe has freed amldbg's own locks, _exporter_lock among them).
    _state.generation += 1
    _state.exporter = None
    _export_idents.clear()
    for module_name, attribute in _SEND_PATH_LOCKS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            setattr(module, attribute, threading.Lock())
    for owner in _state.importing_at_fork:
        with quietly():  # a fork hook must never stop the child
            _forget_half_imports(owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
