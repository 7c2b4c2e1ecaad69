"""The background queue: callers append and return at once; one thread per process exports.

Why a queue of amldbg's own instead of the exporters' own threads: both Application
Insights exporters flush at exit without a useful time limit, lose batches on connection
errors when statsbeat is off, and lose records in forked children (their thread does not
survive ``fork``); MLflow's ``log_metric`` blocks for hundreds of milliseconds in Azure ML.
Here:

* :meth:`Channel.put` never blocks and never does I/O: a bounded ``deque``; when it is
  full the **oldest** record is dropped (the records closest to a crash are the ones
  people need) and counted; the count is reported once, at exit or :func:`flush`.
* One daemon thread per process (``amldbg-export``) creates the sinks (their
  constructors can block for seconds, and import heavy packages) and sends batches.
  Retryable failures (refused connection, timeouts, 429/5xx) keep the batch and retry
  with exponential back-off; permanent ones drop it with one warning.
* At exit, pending records get a bounded grace period (:data:`~amldbg.logs.settings.DEFAULT_GRACE_PERIOD`
  seconds by default); every request made during it is limited to the time left, so the
  process never hangs.
* After ``fork`` the child starts from an empty queue and builds its own sinks on first
  use (``os.register_at_fork``); the parent's pending records stay the parent's.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator

from amldbg.core import announce

OK = "ok"
RETRY = "retry"
DROP = "drop"

#: Longest wait between retries of one batch, in seconds.
MAX_BACKOFF = 30.0
#: Wait between retries during the exit grace period, in seconds.
EXIT_BACKOFF = 0.2


class Sink:
    """What a channel sends to. Subclasses implement :meth:`send` (and :meth:`close`)."""

    #: A short description of the last failure, safe to print (no secrets).
    last_error: str = ""

    def send(self, batch: list[Any], timeout: float) -> str:
        """Send ``batch`` within about ``timeout`` seconds; return OK, RETRY or DROP."""
        raise NotImplementedError

    def close(self, timeout: float) -> None:
        """Flush and release what the sink holds, within ``timeout`` seconds."""


class Channel:
    """One destination's queue, filled by callers and drained by the export thread."""

    def __init__(
        self,
        exporter: Exporter,
        name: str,
        factory: Callable[[], Sink],
        maxlen: int,
        batch_size: int,
        interval: float,
        request_timeout: float,
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
        self.lost = 0

    def put(self, item: Any) -> None:
        """Queue one item; never blocks. When the queue is full the oldest item is dropped."""
        items = self.items
        if len(items) >= self.maxlen:
            # deque(maxlen) discards the oldest on append; the count is approximate under
            # concurrent callers, which is good enough for a report.
            self.dropped_full += 1
        items.append(item)
        # Wake the export thread when a batch becomes full, not on every later record:
        # while it backs off from a failing endpoint, a wake-up per call would cost the
        # callers the GIL hand-over each time.
        if len(items) == self.batch_size:
            self.exporter.wake()

    def idle(self) -> bool:
        """True when nothing waits to be sent."""
        return self.pending is None and not self.items

    def backlog(self) -> int:
        """How many items have not been sent yet."""
        return len(self.items) + (len(self.pending) if self.pending else 0)


class Exporter:
    """The per-process export thread and its channels."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.pid = os.getpid()
        self.channels: dict[str, Channel] = {}
        self.grace_period = 3.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._reported = False
        self.thread_ident: int | None = None
        # True while a sink is being built (imports in progress) or a batch is being
        # sent (third-party locks held); see _before_fork.
        self.busy = False
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
    ) -> Channel:
        """The channel for ``key``, created (and the thread started) on first use."""
        with self._lock:
            found = self.channels.get(key)
            if found is None:
                found = Channel(self, name, factory, maxlen, batch_size, interval, request_timeout)
                self.channels[key] = found
                self._wake.set()  # build its sink now
            if self._thread is None and self._stop_deadline is None:
                self._thread = threading.Thread(target=self._run, name="amldbg-export", daemon=True)
                self._thread.start()
            return found

    def _not_busy(self) -> None:
        with self._building:
            self.busy = False
            self._building.notify_all()

    def wait_until_idle(self, timeout: float) -> None:
        """Wait (bounded) while the export thread is building a sink or sending a batch."""
        deadline = time.monotonic() + timeout
        with self._building:
            while self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._building.wait(left)

    def wake(self) -> None:
        """Ask the export thread to look at the queues now."""
        self._wake.set()

    def warn_once(self, key: str, message: str) -> None:
        """Write one ``amldbg: warning:`` line per ``key`` for the life of the process."""
        announce.warn_once("export:" + key, message)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until every queue is sent; True when all were."""
        deadline = time.monotonic() + max(0.0, timeout)
        for ch in list(self.channels.values()):
            # A flush is a reason to try a failing destination again now (once: the
            # back-off applies again after that attempt).
            ch.retry_at = min(ch.retry_at, time.monotonic())
        self._wake.set()
        with self._progress:
            while True:
                channels = list(self.channels.values())
                if all(ch.idle() for ch in channels):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._progress.wait(min(left, 0.05))

    def shutdown(self, grace: float | None = None) -> None:
        """Send what is pending within ``grace`` seconds, close the sinks, report losses."""
        grace = self.grace_period if grace is None else grace
        deadline = time.monotonic() + max(0.0, grace)
        thread = self._thread
        with self._lock:
            if self._stop_deadline is None:
                self._stop_deadline = deadline
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            loading = any(ch.sink is None and not ch.broken for ch in list(self.channels.values()))
            with _late_imports_allowed(loading):
                # Margin for the thread to notice the deadline once its last request returns.
                thread.join(max(0.0, deadline - time.monotonic()) + 0.25)
        self.report()

    def report(self) -> None:
        """Write, once, how many records were dropped or could not be delivered."""
        if self._reported:
            return
        self._reported = True
        for ch in list(self.channels.values()):
            if ch.dropped_full:
                announce.warn(
                    f"{ch.name}: the queue was full; {ch.dropped_full} oldest record(s) were "
                    f"dropped (queue size {ch.maxlen})"
                )
            undelivered = ch.backlog() + ch.lost
            if undelivered and not ch.broken:
                detail = f" (last error: {ch.sink.last_error})" if ch.sink and ch.sink.last_error else ""
                announce.warn(
                    f"{ch.name}: {undelivered} record(s) were not delivered within the "
                    f"{self.grace_period:g} s grace period{detail}"
                )

    # -- the export thread -----------------------------------------------------------
    def _run(self) -> None:
        self.thread_ident = threading.get_ident()
        try:
            while True:
                deadline = self._stop_deadline
                if deadline is not None:
                    for ch in list(self.channels.values()):
                        ch.retry_at = min(ch.retry_at, time.monotonic() + EXIT_BACKOFF)
                did = False
                for ch in list(self.channels.values()):
                    try:
                        did = self._service(ch, deadline) or did
                    except Exception as error:  # never let the thread die
                        self.warn_once("internal:" + ch.name, f"{ch.name}: export error {type(error).__name__}: {error}")
                with self._progress:
                    self._progress.notify_all()
                channels = list(self.channels.values())
                now = time.monotonic()
                if deadline is not None:
                    if now >= deadline or all(ch.idle() for ch in channels):
                        break
                    if not did:
                        self._wake.wait(min(0.05, max(0.0, deadline - now)))
                        self._wake.clear()
                    continue
                if any(ch.pending is None and len(ch.items) >= ch.batch_size for ch in channels):
                    continue  # a full batch is waiting: send it without pausing
                wait = min((ch.interval for ch in channels), default=0.5)
                for ch in channels:
                    if ch.pending is not None:
                        wait = min(wait, max(0.0, ch.retry_at - now))
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
            self._close_sinks()
        finally:
            self._finished.set()
            with self._progress:
                self._progress.notify_all()

    def _close_sinks(self) -> None:
        deadline = self._stop_deadline or time.monotonic()
        for ch in list(self.channels.values()):
            if ch.sink is not None:
                try:
                    ch.sink.close(max(0.1, deadline - time.monotonic()))
                except Exception as error:
                    self.warn_once("close:" + ch.name, f"{ch.name}: closing failed: {type(error).__name__}: {error}")

    def _service(self, ch: Channel, deadline: float | None) -> bool:
        if ch.sink is None and not ch.broken:
            # Built as soon as the channel exists, not at the first send: the exporters
            # import packages that cannot be imported once the interpreter shuts down.
            with self._building:
                self.busy = True
            try:
                ch.sink = ch.factory()
            except Exception as error:
                ch.broken = True
                reason = str(error)
                if "shutdown" in reason and not threading.main_thread().is_alive():
                    reason = (f"the exporter could not be loaded while the script was ending ({error}); "
                              "records are sent once the exporter has loaded, about a second after get_logger()")
                self.warn_once("create:" + ch.name, f"{ch.name} is off: {reason}")
            finally:
                self._not_busy()
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
        if ch.sink is None:
            # No sink can be made: drop what comes, silently after the one warning.
            ch.lost += len(ch.pending) + len(ch.items)
            ch.items.clear()
            ch.pending = None
            return True
        timeout = ch.request_timeout
        if deadline is not None:
            timeout = max(0.1, min(timeout, deadline - now))
        count = len(ch.pending)
        with self._building:
            self.busy = True
        try:
            result = ch.sink.send(ch.pending, timeout)
        except Exception as error:
            ch.sink.last_error = f"{type(error).__name__}: {error}"
            result = DROP
        finally:
            self._not_busy()
        if result == OK:
            ch.pending = None
            ch.backoff = 0.0
            ch.retry_at = 0.0
        elif result == RETRY:
            ch.backoff = min(max(0.5, ch.backoff * 2), MAX_BACKOFF)
            ch.retry_at = time.monotonic() + (EXIT_BACKOFF if deadline is not None else ch.backoff)
            self.warn_once(
                "retry:" + ch.name,
                f"{ch.name}: sending failed ({ch.sink.last_error or 'unavailable'}); "
                "retrying in the background, the script carries on",
            )
        else:
            ch.lost += count
            ch.pending = None
            self.warn_once(
                "drop:" + ch.name,
                f"{ch.name}: a batch of {count} record(s) was rejected and dropped "
                f"({ch.sink.last_error or 'not retryable'})",
            )
        return True


@contextlib.contextmanager
def _late_imports_allowed(needed: bool) -> Iterator[None]:
    """Let an exporter still loading on the export thread finish during the exit grace period.

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
        yield
    finally:
        for owner, flag in saved:
            setattr(owner, flag, True)


_generation = 0
_exporter: Exporter | None = None
_exporter_lock = threading.Lock()
_atexit_registered = False


def get_exporter() -> Exporter:
    """This process's exporter, created on first use."""
    global _exporter, _atexit_registered
    exporter = _exporter
    if exporter is not None:
        return exporter
    with _exporter_lock:
        if _exporter is None:
            _exporter = Exporter(_generation)
            if not _atexit_registered:
                # Registered after `logging` was imported, so it runs before
                # logging.shutdown (atexit is last-in, first-out).
                atexit.register(_at_exit)
                _atexit_registered = True
        return _exporter


def current_generation() -> int:
    """Changes in a forked child, so holders of a channel know to fetch a new one."""
    return _generation


def is_export_thread(thread_ident: int | None) -> bool:
    """True for the identity of this process's export thread (records it makes must not
    be exported or printed: they are the exporters' own transport messages)."""
    exporter = _exporter
    return exporter is not None and thread_ident is not None and thread_ident == exporter.thread_ident


def existing_exporter() -> Exporter | None:
    """The exporter if one was created in this process, else None (no thread is started)."""
    return _exporter


def _at_exit() -> None:
    exporter = _exporter
    if exporter is not None and exporter.pid == os.getpid():
        # An exit hook must not turn a clean exit into a traceback.
        with contextlib.suppress(Exception):
            exporter.shutdown()


#: Longest a fork waits for the export thread to finish what it is doing, in seconds.
FORK_WAIT = 5.0

#: Module-level locks of the exporters that their send path takes; a fork while the
#: parent's export thread holds one would deadlock the child's export thread.
_THIRD_PARTY_LOCKS = (
    ("opencensus.ext.azure.common.transport", "_requests_lock"),
    ("opencensus.ext.azure.statsbeat.state", "_STATSBEAT_STATE_LOCK"),
    ("azure.monitor.opentelemetry.exporter.statsbeat._state", "_REQUESTS_MAP_LOCK"),
    ("azure.monitor.opentelemetry.exporter.statsbeat._state", "_STATSBEAT_STATE_LOCK"),
    ("azure.monitor.opentelemetry.exporter._utils", "_INSTRUMENTATIONS_BIT_MASK_LOCK"),
    ("amldbg.logs.context", "_lock"),
    ("amldbg.logs.metrics", "_lock"),
)


def _before_fork() -> None:
    # A fork while the export thread is importing an exporter leaves the child with
    # half-initialised modules ("partially initialized module"), and one while it sends
    # leaves locks held that nobody will release. Forks right after start-up are common
    # (gunicorn workers, DataLoader workers), so the fork waits for the export thread to
    # finish its current step, at most FORK_WAIT seconds (a hanging endpoint).
    exporter = _exporter
    if exporter is not None and exporter.busy and exporter.pid == os.getpid():
        with contextlib.suppress(Exception):
            exporter.wait_until_idle(FORK_WAIT)


def _after_fork_in_child() -> None:
    global _exporter, _generation, _exporter_lock
    # The parent's thread does not exist here and its locks may be held: start afresh.
    _generation += 1
    _exporter = None
    _exporter_lock = threading.Lock()
    # In case the fork did not wait long enough: fresh locks for the exporters' send path.
    for module_name, attribute in _THIRD_PARTY_LOCKS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            setattr(module, attribute, threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
