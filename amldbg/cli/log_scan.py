"""Finding the debug endpoints announced in downloaded Azure ML logs (``amldbg find``).

Two kinds of announcement are recognised:

* amldbg's machine-readable ``amldbg endpoint: {json}`` lines (see :mod:`amldbg.core.announce`),
  written once per state change of an endpoint (``waiting`` then ``attached``...);
* the hand-written guide's lines, ``Timeout for debug connection: 300``,
  ``ip_address: 10.3.0.5`` and ``Debugger attached = True``, plus amldbg's ``port: N``.
  The guide printed no port, so 5678 (the guide's default) is assumed then.

Lines may carry any prefix the services add: timestamps, ``[stdout]``, mpirun's
``[1,0]<stdout>:`` or torchrun's ``[default0]:``. The rank prefixes also tell interleaved
ranks apart, so that each rank's guide lines are grouped together. amldbg prints both kinds
for one endpoint; the guide lines that precede an ``amldbg endpoint:`` line of the same
stream are folded into it rather than reported twice.

Logs come from remote machines and are read as hostile input: lines are read in bounded
pieces (:class:`amldbg.core.joblogs.LineReader`), a record whose fields have the
wrong type or range (a port outside 1..65535, a host that is not a string, JSON nested too
deeply) is skipped and counted rather than trusted, and everything shown is escaped by the
caller (:func:`amldbg.cli.common.printable`).

Where a log's lines carry no rank, the file name may: Azure ML v2 writes one
``user_logs/std_log_process_<rank>.txt`` per process of a distributed job (SDK v1:
``azureml-logs/70_driver_log_<rank>.txt``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from amldbg.cli.common import printable
from amldbg.core import joblogs
from amldbg.core.announce import ENDPOINT_MARKER
from amldbg.core.joblogs import LineReader
from amldbg.diagnostics.stacks import CRASH_MARKER

#: The guide's default debug port, assumed when a log names none.
GUIDE_DEFAULT_PORT = 5678

# Log files inside a downloaded job folder worth reading; anything else (models, data) is not.
LOG_SUFFIXES = (".txt", ".log", ".out", ".err")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TIMEOUT = re.compile(r"\bTimeout for debug connection:\s*([0-9]+(?:\.[0-9]+)?)")
_IP_ADDRESS = re.compile(r"\bip_address:\s*([0-9A-Za-z_.:\[\]%-]+)")
# "port:" is a common word, so only a line that is nothing but "port: N" after a prefix
# counts, and only right after an ip_address line of the same stream (see _Stream).
_PORT = re.compile(r"(?:^|[\s\]>:|])port:\s*([0-9]{1,5})\s*$")
_ATTACHED = re.compile(r"\bDebugger attached = (True|False)\b")
# Prefixes that launchers put in front of each rank's output.
_RANK_TAGS = (
    (re.compile(r"\[\d+,(\d+)\]<std(?:out|err)>:"), "mpi"),  # mpirun --tag-output
    (re.compile(r"\[default(\d+)\]:"), "torchrun"),  # torchrun --tee / --log-dir prefixes
    (re.compile(r"\[rank(\d+)\]:"), "rank"),
)

_WAITING_STATES = {"waiting", "listening", "connecting"}

# Bounds that keep a hostile log from costing unbounded memory or time.
#: The longest line read whole; the rest of a longer line is skipped (and counted).
MAX_LINE = joblogs.MAX_LINE
MAX_ENDPOINTS = 10_000
_MAX_STREAMS = 4096
_MAX_TEXT = 4096  # longest cwd, bind, mode, state or worker name kept
_MAX_NUMBER = 10**9  # ranks, pids and world sizes beyond this are not real
_MAX_PLACES = 5  # damaged lines named one by one; the rest are counted

# Log file names that tell the rank of the process that wrote them (Azure ML v2
# user_logs/std_log_process_03.txt, v1 azureml-logs/70_driver_log_3.txt).
_RANK_FILE = re.compile(r"^(?:std_log_process_|70_driver_log_)0*(\d+)\.txt$", re.IGNORECASE)


@dataclasses.dataclass
class Endpoint:
    """One debug endpoint announced in a log.

    ``attached`` is ``True``/``False`` once the log says so, ``None`` while the log ends
    with the script still waiting (or listening with timeout 0). ``origin`` is ``"amldbg"``
    for endpoints from ``amldbg endpoint:`` lines and ``"guide"`` for the hand-written
    guide's lines; ``port_assumed`` is true when the log named no port.
    """

    source: str
    line: int
    host: str | None = None
    port: int | None = None
    mode: str = "listen"
    state: str = "waiting"
    attached: bool | None = None
    timeout: float | None = None
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    worker: Any = None
    bind: str | None = None
    cwd: str | None = None
    node_address: str | None = None
    origin: str = "amldbg"
    port_assumed: bool = False

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for IPv6 literals), ``?`` for an unknown part."""
        host = self.host or "?"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port if self.port is not None else '?'}"

    def to_dict(self) -> dict[str, Any]:
        """The endpoint as a JSON-ready dictionary (the ``--json`` output of ``amldbg find``)."""
        data = dataclasses.asdict(self)
        data["address"] = self.address
        return data


@dataclasses.dataclass(frozen=True)
class Crash:
    """A crash report announced in a log (``amldbg crash: {json}``, written with
    ``--remote_debug_post_mortem``)."""

    rank: int | None
    pid: int | None
    exception: str
    frame: str
    report: str
    source: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        """The crash as a JSON-ready mapping."""
        return dataclasses.asdict(self)


def format_crashes(crashes: list[Crash]) -> str:
    """One line per crash report: rank, pid, exception, innermost user frame, report file."""
    lines = ["crash reports:"]
    for crash in crashes:
        who = f"rank {crash.rank}" if crash.rank is not None else "a process"
        pid = f" (pid {crash.pid})" if crash.pid is not None else ""
        where = f" at {crash.frame}" if crash.frame else ""
        lines.append(f"  {who}{pid}: {crash.exception}{where}: {crash.report or '(no file)'}"
                     f"  [{crash.source}:{crash.line}]")
    return "\n".join(lines)


@dataclasses.dataclass
class _Pending:
    """Guide lines seen in one stream that no ``amldbg endpoint:`` line has claimed yet."""

    source: str
    line: int
    timeout: float | None = None
    host: str | None = None
    port: int | None = None

    def empty(self) -> bool:
        return self.timeout is None and self.host is None


@dataclasses.dataclass
class _Stream:
    """What one process's output (one file, or one rank prefix within a file) has said so far."""

    rank: int | None
    pending: _Pending | None = None
    # The amldbg endpoint this stream announced last, to give a late "Debugger attached ="
    # line (printed without a JSON line when a debugger was already active) somewhere to go.
    last_amldbg: Endpoint | None = None


class _Damaged(ValueError):
    """A record whose fields cannot be trusted: skipped and counted."""


def _number(value: Any) -> float | None:
    # A timeout: a finite, non-negative number ("1e400" parses as inf and means nothing).
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _int(value: Any) -> int | None:
    # A rank, pid or world size: a whole number in a range real processes have.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value) if isinstance(value, (float, str)) else value
        if isinstance(number, float):
            if not number.is_integer():
                return None
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number <= _MAX_NUMBER else None


def _text(value: Any) -> str | None:
    # A free-text field (cwd, bind): a string, bounded; anything else is dropped.
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    return None


def _port(value: Any) -> int | None:
    """A port read from a log: ``None`` when absent; a damaged record unless 1..65535."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Damaged("port")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise _Damaged("port") from None
    if not 1 <= port <= 65535:
        raise _Damaged("port")
    return port


_HOST_CHARACTERS = re.compile(r"^[0-9A-Za-z_.:%-]{1,253}$")


def _host(value: Any) -> str | None:
    """A host read from a log: ``None`` when absent; a damaged record unless it is a string
    that can be a host name or an IP address (no spaces, no control characters)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Damaged("host")
    host = value.strip().strip("[]")
    if not _HOST_CHARACTERS.match(host):
        raise _Damaged("host")
    return host


def _worker(value: Any) -> Any:
    # Which worker of a runtime (a gunicorn index, a parallel-job process): a number or a
    # short name; anything nested would only be a way to cost memory and time.
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        return value[:64]
    raise _Damaged("worker")


def _word(value: Any, default: str) -> str:
    # mode and state: short strings.
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise _Damaged("mode/state")
    return value[:64]


def _rank_tag(line: str) -> tuple[str, int | None]:
    for pattern, kind in _RANK_TAGS:
        found = pattern.search(line)
        if found:
            rank = _int(found.group(1))
            if rank is None:
                return "", None
            return f"{kind}{rank}", rank
    return "", None


def rank_from_name(source: str | os.PathLike[str]) -> int | None:
    """The rank a log file's name says it holds, or ``None``.

    ``std_log_process_03.txt`` (Azure ML v2, one file per process of a distributed job)
    and ``70_driver_log_3.txt`` (SDK v1) hold rank 3's output; ``std_log.txt``,
    ``70_driver_log.txt`` and the parallel job's per-process files name no rank.
    """
    found = _RANK_FILE.match(Path(source).name)
    return _int(found.group(1)) if found else None


class Scanner:
    """Collects endpoints from lines fed one source at a time; :meth:`endpoints` reports them.

    Use :func:`scan_paths` or :func:`scan_text` unless you feed lines yourself. Damaged
    ``amldbg endpoint:`` records are skipped: :attr:`damaged` counts them and
    :attr:`skipped` names the first few (``source:line``).
    """

    def __init__(self) -> None:
        self._found: list[Endpoint] = []
        # (source number, line) of each endpoint's first line, for reporting in log order.
        self._order: dict[int, tuple[int, int]] = {}
        self._sources = 0
        self._by_identity: dict[tuple[Any, ...], Endpoint] = {}
        self.skipped: list[str] = []
        #: How many damaged records were skipped (``skipped`` names the first few).
        self.damaged = 0
        #: How many endpoints were left out beyond :data:`MAX_ENDPOINTS`.
        self.dropped = 0
        #: How many lines were too long to read whole (see ``LineReader``).
        self.cut_lines = 0
        #: Crash reports announced by ``amldbg crash: {json}`` lines (see :class:`Crash`).
        self.crashes: list[Crash] = []

    def feed(self, source: str, lines: Iterable[str], rank: int | None = None) -> None:
        """Read the lines of one source (a file name, or ``<stdin>``).

        ``rank`` is the rank of every line that does not say its own; by default it comes
        from the file name (:func:`rank_from_name`).
        """
        self._sources += 1
        if rank is None:
            rank = rank_from_name(source)
        streams: dict[str, _Stream] = {}
        for number, raw in enumerate(lines, start=1):
            line = _ANSI.sub("", raw.rstrip("\r\n"))
            tag, tag_rank = _rank_tag(line)
            stream = streams.get(tag)
            if stream is None:
                if len(streams) >= _MAX_STREAMS:
                    tag, tag_rank = "", None
                    stream = streams.get(tag)
                if stream is None:
                    stream = streams[tag] = _Stream(rank=tag_rank if tag_rank is not None else rank)
            marker = line.find(ENDPOINT_MARKER)
            if marker >= 0:
                self._amldbg_line(source, number, line[marker + len(ENDPOINT_MARKER):], stream)
                continue
            marker = line.find(CRASH_MARKER)
            if marker >= 0:
                self._crash_line(source, number, line[marker + len(CRASH_MARKER):], stream)
                continue
            self._guide_line(source, number, line, stream)
        for stream in streams.values():
            self._flush(stream)

    def _crash_line(self, source: str, number: int, text: str, stream: _Stream) -> None:
        try:
            fields, _ = json.JSONDecoder().raw_decode(text.strip())
        except (ValueError, RecursionError):
            fields = None
        if not isinstance(fields, dict) or len(self.crashes) >= MAX_ENDPOINTS:
            self._skip(source, number)
            return
        try:
            rank = _int(fields.get("rank"))
            crash = Crash(
                rank=rank if rank is not None else stream.rank,
                pid=_int(fields.get("pid")),
                exception=_text(fields.get("exception")) or "",
                frame=_text(fields.get("frame")) or "",
                report=_text(fields.get("file")) or "",
                source=source,
                line=number,
            )
        except _Damaged:
            self._skip(source, number)
            return
        self.crashes.append(crash)

    def _skip(self, source: str, number: int) -> None:
        self.damaged += 1
        if len(self.skipped) < _MAX_PLACES:
            self.skipped.append(f"{source}:{number}")

    def _amldbg_line(self, source: str, number: int, text: str, stream: _Stream) -> None:
        try:
            fields, _ = json.JSONDecoder().raw_decode(text.strip())
        except (ValueError, RecursionError):
            # RecursionError: "[[[[..." nested deeper than the parser goes.
            fields = None
        if not isinstance(fields, dict):
            self._skip(source, number)
            return
        try:
            host = _host(fields.get("host"))
            port = _port(fields.get("port"))
            mode = _word(fields.get("mode"), "listen")
            state = _word(fields.get("state"), "waiting")
            worker = _worker(fields.get("worker"))
        except _Damaged:
            self._skip(source, number)
            return
        # The guide lines printed just before belong to this endpoint: fold them in.
        pending, stream.pending = stream.pending, None
        rank = _int(fields.get("rank"))
        if rank is None:
            rank = stream.rank
        pid = _int(fields.get("pid"))
        identity: tuple[Any, ...] = (pid, mode, host, port, rank, worker)
        if pid is None:
            # Without a pid, only lines of the same stream can be the same endpoint.
            identity = (source, id(stream), *identity)
        endpoint = self._by_identity.get(identity)
        if endpoint is None:
            if len(self._found) >= MAX_ENDPOINTS:
                self.dropped += 1
                return
            endpoint = Endpoint(source=source, line=number, mode=mode)
            self._by_identity[identity] = endpoint
            self._add(endpoint)
        elif endpoint.source != source and endpoint.state not in _WAITING_STATES:
            # The same process's lines in a second copy of the log (70_driver_log.txt and
            # std_log.txt of one run): the first file's final state already stands.
            return
        endpoint.host = host
        endpoint.port = port
        endpoint.rank = rank
        endpoint.local_rank = _int(fields.get("local_rank"))
        endpoint.world_size = _int(fields.get("world_size"))
        endpoint.pid = pid
        endpoint.worker = worker
        endpoint.bind = _text(fields.get("bind"))
        endpoint.cwd = _text(fields.get("cwd"))
        endpoint.timeout = _number(fields.get("timeout"))
        endpoint.state = state
        endpoint.attached = True if state == "attached" else None if state in _WAITING_STATES else False
        if pending is not None and pending.host and pending.host != endpoint.host:
            # In reverse-connect mode ip_address names the node, host the VS Code client.
            endpoint.node_address = pending.host
        stream.last_amldbg = endpoint

    def _guide_line(self, source: str, number: int, line: str, stream: _Stream) -> None:
        found = _TIMEOUT.search(line)
        if found:
            pending = self._pending_for(stream, source, number, "timeout")
            pending.timeout = _number(found.group(1))
            return
        found = _IP_ADDRESS.search(line)
        if found:
            try:
                host = _host(found.group(1))
            except _Damaged:
                return
            pending = self._pending_for(stream, source, number, "host")
            pending.host = host
            return
        found = _PORT.search(line)
        if found and stream.pending is not None and stream.pending.host is not None:
            if stream.pending.port is None:
                # "port: 0" or "port: 99999" is no port to attach to: keep the default.
                with contextlib.suppress(_Damaged):
                    stream.pending.port = _port(found.group(1))
            return
        found = _ATTACHED.search(line)
        if found:
            attached = found.group(1) == "True"
            if stream.pending is not None and not stream.pending.empty():
                self._flush(stream, attached=attached)
            elif stream.last_amldbg is not None and stream.last_amldbg.state in _WAITING_STATES:
                # amldbg prints this line just before the endpoint's final JSON line; if the
                # log was cut there, the guide line is the best news there is.
                stream.last_amldbg.attached = attached
                stream.last_amldbg.state = "attached" if attached else "not-attached"

    def _pending_for(self, stream: _Stream, source: str, number: int, field: str) -> _Pending:
        pending = stream.pending
        if pending is not None and getattr(pending, field) is not None:
            # A second Timeout/ip_address line in one stream starts a new endpoint.
            self._flush(stream)
            pending = None
        if pending is None:
            pending = stream.pending = _Pending(source=source, line=number)
        return pending

    def _flush(self, stream: _Stream, attached: bool | None = None) -> None:
        pending, stream.pending = stream.pending, None
        if pending is None or pending.empty():
            return
        if len(self._found) >= MAX_ENDPOINTS:
            self.dropped += 1
            return
        self._add(
            Endpoint(
                source=pending.source,
                line=pending.line,
                host=pending.host,
                port=pending.port if pending.port is not None else GUIDE_DEFAULT_PORT,
                port_assumed=pending.port is None,
                mode="listen",
                state="waiting" if attached is None else "attached" if attached else "not-attached",
                attached=attached,
                timeout=pending.timeout,
                rank=stream.rank,
                origin="guide",
            )
        )

    def _add(self, endpoint: Endpoint) -> None:
        self._order[id(endpoint)] = (self._sources, endpoint.line)
        self._found.append(endpoint)

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint found so far, in the order the logs first announced them."""
        return sorted(self._found, key=lambda endpoint: self._order[id(endpoint)])

    def read(self, source: str, stream: Any) -> None:
        """Feed a binary (or text) stream, read in bounded chunks (see ``LineReader``)."""
        self.read_lines(source, LineReader(stream))

    def read_lines(self, source: str, reader: LineReader) -> None:
        """Feed the lines of ``reader``, counting the lines it had to cut."""
        try:
            self.feed(source, reader)
        finally:
            self.cut_lines += reader.cut


def walk_logs(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> Iterator[joblogs.JobFile | joblogs.Unreadable]:
    """The log files to read for ``paths`` (files, folders, ``-``), and the files or folders
    below them that cannot be read (:func:`amldbg.core.joblogs.walk`).

    A downloaded job folder holds ``azureml-logs/70_driver_log*.txt`` (SDK v1),
    ``user_logs/std_log.txt`` or one ``user_logs/std_log_process_<rank>.txt`` per process
    (v2), or a parallel job's ``logs/user/stdout/<node>/process<N>.stdout.txt``,
    ``logs/user/stderr/...`` and ``logs/user/entry_script_log/<node>/...`` files; every
    ``*.txt``/``*.log``/``*.out``/``*.err`` below it is read, in path order. A link loop
    ends; FIFOs and devices below a folder are never opened.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return joblogs.walk([os.fspath(path) for path in paths], LOG_SUFFIXES)


def scan_paths(paths: Iterable[str | os.PathLike[str]]) -> Scanner:
    """Scan log files and folders; raises ``OSError`` for one that cannot be read."""
    scanner = Scanner()
    for item in walk_logs(paths):
        if isinstance(item, joblogs.Unreadable):
            raise OSError(f"cannot read {item.path}: {item.reason}")
        with joblogs.open_lines(item) as reader:
            scanner.read_lines(item.name, reader)
    return scanner


def scan_text(text: str, source: str = "<text>") -> list[Endpoint]:
    """The endpoints announced in ``text`` (a whole log as one string)."""
    scanner = Scanner()
    scanner.feed(source, text.splitlines())
    return scanner.endpoints()


def attached_label(endpoint: Endpoint) -> str:
    """How the ``ATTACHED`` column reads: yes, no, failed, or what it was still doing."""
    if endpoint.state == "failed":
        return "failed"
    if endpoint.attached is True:
        return "yes"
    if endpoint.attached is False:
        return "no"
    return endpoint.state if endpoint.state in _WAITING_STATES else "unknown"


def format_table(endpoints: list[Endpoint]) -> str:
    """The endpoints as an aligned text table for people."""
    header = ("RANK", "PID", "MODE", "ADDRESS", "ATTACHED", "TIMEOUT", "SOURCE")
    rows: list[tuple[str, ...]] = [header]
    for endpoint in endpoints:
        timeout = "-" if endpoint.timeout is None else f"{endpoint.timeout:g} s"
        address = endpoint.address + (" (assumed port)" if endpoint.port_assumed else "")
        rank = "-" if endpoint.rank is None else str(endpoint.rank)
        if endpoint.worker is not None:
            rank += f"/w{endpoint.worker}"
        mode = endpoint.mode if endpoint.origin == "amldbg" else f"{endpoint.mode} (guide)"
        rows.append(
            (
                rank,
                "-" if endpoint.pid is None else str(endpoint.pid),
                mode,
                address,
                attached_label(endpoint),
                timeout,
                f"{endpoint.source}:{endpoint.line}",
            )
        )
    # Everything in a row came from a log or a file name: escape it before it is printed.
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
