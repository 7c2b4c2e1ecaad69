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
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from amldbg.core.announce import ENDPOINT_MARKER

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


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _rank_tag(line: str) -> tuple[str, int | None]:
    for pattern, kind in _RANK_TAGS:
        found = pattern.search(line)
        if found:
            return f"{kind}{found.group(1)}", int(found.group(1))
    return "", None


class Scanner:
    """Collects endpoints from lines fed one source at a time; :meth:`endpoints` reports them.

    Use :func:`scan_paths` or :func:`scan_text` unless you feed lines yourself.
    """

    def __init__(self) -> None:
        self._found: list[Endpoint] = []
        # (source number, line) of each endpoint's first line, for reporting in log order.
        self._order: dict[int, tuple[int, int]] = {}
        self._sources = 0
        self._by_identity: dict[tuple[Any, ...], Endpoint] = {}
        self.skipped: list[str] = []

    def feed(self, source: str, lines: Iterable[str]) -> None:
        """Read the lines of one source (a file name, or ``<stdin>``)."""
        self._sources += 1
        streams: dict[str, _Stream] = {}
        for number, raw in enumerate(lines, start=1):
            line = _ANSI.sub("", raw.rstrip("\r\n"))
            tag, tag_rank = _rank_tag(line)
            stream = streams.get(tag)
            if stream is None:
                stream = streams[tag] = _Stream(rank=tag_rank)
            marker = line.find(ENDPOINT_MARKER)
            if marker >= 0:
                self._amldbg_line(source, number, line[marker + len(ENDPOINT_MARKER):], stream)
                continue
            self._guide_line(source, number, line, stream)
        for stream in streams.values():
            self._flush(stream)

    def _amldbg_line(self, source: str, number: int, text: str, stream: _Stream) -> None:
        try:
            fields, _ = json.JSONDecoder().raw_decode(text.strip())
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            self.skipped.append(f"{source}:{number}")
            return
        # The guide lines printed just before belong to this endpoint: fold them in.
        pending, stream.pending = stream.pending, None
        rank = _int(fields.get("rank"))
        if rank is None:
            rank = stream.rank
        mode = str(fields.get("mode") or "listen")
        host = fields.get("host")
        port = _int(fields.get("port"))
        identity: tuple[Any, ...] = (
            fields.get("pid"), mode, host, port, rank, json.dumps(fields.get("worker"))
        )
        if fields.get("pid") is None:
            # Without a pid, only lines of the same stream can be the same endpoint.
            identity = (source, id(stream), *identity)
        endpoint = self._by_identity.get(identity)
        if endpoint is None:
            endpoint = Endpoint(source=source, line=number, mode=mode)
            self._by_identity[identity] = endpoint
            self._add(endpoint)
        elif endpoint.source != source and endpoint.state not in _WAITING_STATES:
            # The same process's lines in a second copy of the log (70_driver_log.txt and
            # std_log.txt of one run): the first file's final state already stands.
            return
        endpoint.host = None if host is None else str(host)
        endpoint.port = port
        endpoint.rank = rank
        endpoint.local_rank = _int(fields.get("local_rank"))
        endpoint.world_size = _int(fields.get("world_size"))
        endpoint.pid = _int(fields.get("pid"))
        endpoint.worker = fields.get("worker")
        endpoint.bind = fields.get("bind")
        endpoint.cwd = fields.get("cwd")
        endpoint.timeout = _number(fields.get("timeout"))
        state = str(fields.get("state") or "waiting")
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
            pending.timeout = float(found.group(1))
            return
        found = _IP_ADDRESS.search(line)
        if found:
            pending = self._pending_for(stream, source, number, "host")
            pending.host = found.group(1).strip("[]")
            return
        found = _PORT.search(line)
        if found and stream.pending is not None and stream.pending.host is not None:
            if stream.pending.port is None:
                stream.pending.port = int(found.group(1))
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


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log files to read for ``path``: the file itself, or a folder's log files.

    A downloaded job folder holds ``azureml-logs/70_driver_log.txt``, ``user_logs/std_log.txt``
    or ParallelRunStep's ``logs/user/...`` files; every ``*.txt``/``*.log`` below it is read,
    in name order.
    """
    root = Path(path)
    if root.is_dir():
        return sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LOG_SUFFIXES
        )
    return [root]


def scan_paths(paths: Iterable[str | os.PathLike[str]]) -> Scanner:
    """Scan log files and folders; raises ``OSError`` for one that cannot be read."""
    scanner = Scanner()
    for path in paths:
        for file in log_files(path):
            with open(file, encoding="utf-8", errors="replace") as handle:
                scanner.feed(str(file), handle)
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
    rows = [header]
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
