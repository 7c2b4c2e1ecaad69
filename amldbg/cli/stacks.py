"""``amldbg stacks PATH...``: compare the stacks every rank dumped (stall reports, ``kill -USR1``)
and list the crash reports, from a downloaded job.

Reads ``stacks-rank*.json`` / ``crash-rank*.json`` files and the ``amldbg stacks: {json}`` /
``amldbg crash: {json}`` lines of driver logs (with any prefix a launcher adds), in files,
folders or standard input, through :mod:`amldbg.core.joblogs` (the reader ``amldbg find``
uses: logs streamed whatever their size, dump files read whole up to a bound, link loops
ended, FIFOs below a folder never opened). Takes each process's latest dump, groups the
processes whose main threads are at the same frames (file, line, function), largest group
first, and names the ones outside the largest group (the outliers) with their innermost
user frame: in a hung job, the rank the others wait for. Processes that claim the same rank
(``torch.multiprocessing.spawn`` without ``RANK``) are kept apart and named by pid and host.

The dumps' ``"collectives"`` sections (PyTorch's Flight Recorder, written by
:mod:`amldbg.diagnostics.collectives`) give the collective verdict first
(:mod:`amldbg.cli.collectives`): per process group, the first collective at which the ranks
diverge, the ranks that never entered it (with their innermost user frame) and those that
entered it with another op, sizes or dtypes. ``--html FILE`` also writes one page of the whole
job (:mod:`amldbg.cli.stacks_html`) from ``analyse(..., detail=True)``, which keeps every
thread's frames with their code and values; frames, stacks and records that ranks share are
kept once, so 4,096 ranks' dumps fit in little memory (``benchmarks/bench_stacks_scale.py``).

Input is hostile: a damaged, truncated or unreadable line or file, and a record whose rank
is not a non-negative integer, is skipped with a note on stderr, never a traceback and never
read as rank 0; a damaged collectives section drops only the collectives, with a note;
everything printed is escaped to one line by :mod:`amldbg.core.safetext`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from typing import Any, Collection, Iterable, Mapping, Sequence, TextIO

from amldbg.cli import collectives
from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, EXIT_USAGE, CliError, Commands, formatter
from amldbg.core import joblogs, safetext, secrets
from amldbg.diagnostics.stacks import CRASH_MARKER, STACKS_MARKER

STACKS_EPILOG = """\
examples:
  amldbg stacks outputs/amldbg/            # the dump files a job wrote (Azure ML uploads outputs/)
  amldbg stacks user_logs/ outputs/ --json # driver logs and dump files of a downloaded job
  az ml job stream -n JOB | amldbg stacks  # or read standard input
  amldbg stacks outputs/ --html job.html   # and one page of the whole job, to open in a browser

Dumps come from --remote_debug_stall_timeout (when a rank stops making progress) and
--remote_debug_on_demand (kill -USR1 PID); crash reports from --remote_debug_post_mortem.

exit status: 0 when dumps or crash reports were found, 1 when none, 2 for unreadable input."""

# Files worth reading below a folder: dumps and crash reports, and logs.
_SUFFIXES = (".json", ".txt", ".log", ".out", ".err")
_LIBRARY = re.compile(r"(site|dist)-packages|[/\\]lib[/\\]python\d|[/\\]amldbg[/\\]|^<frozen ")
# A frame of torch.distributed: a main thread in it is inside a collective (or a barrier).
_TORCH_DISTRIBUTED = re.compile(r"[/\\]torch[/\\]distributed[/\\]")
# A file amldbg writes a dump or a crash report to (stacks-rank0-pid42-1.json, crash-rank0-pid42.json).
_DUMP_FILE = re.compile(r"^(stacks|crash)-.*\.json$", re.IGNORECASE)
# Ranks, pids and world sizes beyond this are not real.
_MAX_NUMBER = 10**9
# Notes on stderr named one by one; the rest are counted.
_MAX_NOTES = 20


def clean(value: Any, limit: int = 300) -> str:
    """``value`` as one safe line (:func:`amldbg.core.safetext.escape`: control, bidi and
    line-separator characters escaped), cut to ``limit`` characters."""
    return safetext.shorten(safetext.escape(value), limit)


def _int(value: Any, default: int = -1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return default


def _count(value: Any) -> int | None:
    """A non-negative integer up to :data:`_MAX_NUMBER` (an int, or a string of its digits),
    else ``None``: ``1e400`` (inf), ``-1``, ``2.0``, ``true`` and ``"abc"`` are none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _MAX_NUMBER else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= _MAX_NUMBER:
            return int(text)
    return None


class InvalidRank(ValueError):
    """A dump or crash report whose rank is no rank: it is rejected, never read as rank 0."""


def _rank(value: Any) -> int:
    rank = _count(value)
    if rank is None:
        raise InvalidRank(f"invalid rank {clean(value, 40)}")
    return rank


def _who(rank: int, pid: int | None, host: str) -> str:
    """``rank 0 (pid 4242 on node-1)``: one process among several that claim a rank."""
    pid_text = "?" if pid is None else str(pid)
    return f"rank {rank} (pid {pid_text}{f' on {host}' if host else ''})"


# Bounds of what is kept of one dump, whatever it holds (amldbg writes 24 frames per thread,
# 24 values per frame, 16 process groups of 8 entries).
_MAX_THREADS = 64
_MAX_FRAMES = 128
_MAX_LOCALS = 32
_MAX_GROUPS = 64
_MAX_ENTRIES = 16
_MAX_MEMBERS = 100_000
_MAX_TENSORS = 64
# isinstance(x, Mapping) runs typing's ABC check for every value; a dict (what JSON gives)
# is found first.
_MAPPING = (dict, Mapping)
# Characters of a text kept before it is escaped and cut (to 300 at most): the same text is
# shown, and a hostile megabyte is not kept.
_KEY_TEXT = 1000
# A tensor dimension: any size a real tensor has (an int64), not just a rank-sized number.
_MAX_DIM = 2**63 - 1


class Frame:
    """One frame of a dump: file, line, function, and whether it is library code; with
    ``detail``, its source line and local values (escaped and cut, as ``(name, value)``).

    Frames are shared between dumps (:class:`Shared`): 4,096 ranks at the same frames hold
    one object per frame, not 4,096.
    """

    __slots__ = ("file", "line", "function", "library", "code", "values")

    def __init__(
        self, file: str, line: int, function: str, library: bool | None = None,
        code: str | None = None, values: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.file = file
        self.line = line
        self.function = function
        self.library = bool(_LIBRARY.search(file)) if library is None else library
        self.code = code
        self.values = values

    @property
    def key(self) -> tuple[str, int, str]:
        """What two ranks must share to be at the same frame."""
        return (self.file, self.line, self.function)

    def label(self) -> str:
        """``train.py:88 in step``, escaped to one safe line."""
        name = self.file.replace("\\", "/").rsplit("/", 1)[-1]
        return clean(f"{name}:{self.line} in {self.function}")

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``ranks_detail``: file, line, function, library, and code and locals
        when the dump had them; every text escaped and cut."""
        found: dict[str, Any] = {
            "file": clean(self.file, 300), "line": self.line,
            "function": clean(self.function, 200), "library": self.library,
        }
        if self.code:
            found["code"] = self.code
        if self.values:
            found["locals"] = dict(self.values)
        return found


class Shared:
    """What the dumps of one job share: identical frames, stacks, member lists and
    collective records are kept once (a job's ranks are mostly at the same frames)."""

    def __init__(self) -> None:
        self.frames: dict[tuple[Any, ...], Frame] = {}
        self.values: dict[Any, Any] = {}

    def one(self, value: Any) -> Any:
        """``value``, or the equal value already kept."""
        return self.values.setdefault(value, value)

    def clean(self, value: str, limit: int) -> str:
        """:func:`clean` of a text met before (an op, a dtype, a thread name) made once."""
        key = ("clean", value, limit)
        known = self.values.get(key)
        if known is None:
            known = self.values[key] = clean(value, limit)
        return known


def _clean(value: str, limit: int, shared: Shared | None) -> str:
    return shared.clean(value, limit) if shared is not None else clean(value, limit)


def _locals_key(raw: Any) -> tuple[tuple[Any, Any], ...]:
    if not isinstance(raw, _MAPPING):
        return ()
    items = []
    for number, (name, value) in enumerate(raw.items()):
        if number >= _MAX_LOCALS:
            break
        # Hostile values (lists, numbers) become text now: the key must be hashable. Texts
        # are cut (not escaped yet) past what is shown: a key holds no megabyte of a value.
        items.append((name[:_KEY_TEXT] if isinstance(name, str) else clean(name, 100),
                      value[:_KEY_TEXT] if isinstance(value, str) else clean(value, 300)))
    return tuple(items)


def _frame(raw: Any, shared: Shared | None = None, detail: bool = False) -> Frame | None:
    code: Any = None
    values: Any = None
    if isinstance(raw, _MAPPING):
        get = raw.get
        file, line, function, library = get("file"), get("line"), get("function"), get("library")
        if detail:
            code, values = get("code"), get("locals")
    elif isinstance(raw, (list, tuple)) and len(raw) >= 3:
        file, line, function = raw[0], raw[1], raw[2]
        library = bool(raw[3]) if len(raw) > 3 else None
    else:
        return None
    if not isinstance(file, str) or not isinstance(function, str):
        return None
    file, function = file[:_KEY_TEXT], function[:_KEY_TEXT]
    number = line if type(line) is int else _int(line, 0)
    flag = library if library is True or library is False else None
    source = code[:_KEY_TEXT] if isinstance(code, str) and code else None
    pairs = _locals_key(values) if values else ()
    key = (file, number, function, flag, source, pairs)
    if shared is not None:
        known = shared.frames.get(key)
        if known is not None:
            return known
    frame = Frame(
        file, number, function, flag, clean(source, 300) if source else None,
        tuple((clean(name, 100), clean(value, 300)) for name, value in pairs),
    )
    if shared is not None:
        shared.frames[key] = frame
    return frame


def _frames(raw: Any, shared: Shared | None, detail: bool) -> tuple[Frame, ...]:
    """A thread's frames (outermost first), its innermost :data:`_MAX_FRAMES` at most."""
    if not isinstance(raw, list):
        return ()
    frames = tuple(f for f in (_frame(item, shared, detail) for item in raw[-_MAX_FRAMES:]) if f is not None)
    return shared.one(frames) if shared is not None else frames


def _host(raw: Mapping[str, Any]) -> str:
    host = raw.get("host", "")
    return host if isinstance(host, str) else str(host)


class DamagedCollectives(ValueError):
    """A ``"collectives"`` section that is not the schema: dropped, the stacks kept."""


def _seq(value: Any, what: str) -> int | None:
    if value is None:
        return None
    found = _count(value)
    if found is None:
        raise DamagedCollectives(f"invalid {what}")
    return found


def _text(value: Any, what: str, limit: int, shared: Shared | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DamagedCollectives(f"invalid {what}")
    return _clean(value, limit, shared)


def _dimension(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_DIM:
        raise DamagedCollectives("invalid sizes")
    return value


def _sizes(value: Any) -> tuple[Any, ...] | None:
    """``[[4], [2, 3]]`` as nested tuples: a list of at most :data:`_MAX_TENSORS` shapes,
    each a dimension or a list of at most that many dimensions (nothing deeper)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > _MAX_TENSORS:
        raise DamagedCollectives("invalid sizes")
    shapes: list[Any] = []
    for shape in value:
        if isinstance(shape, list):
            if len(shape) > _MAX_TENSORS:
                raise DamagedCollectives("invalid sizes")
            shapes.append(tuple(_dimension(d) for d in shape))
        else:
            shapes.append(_dimension(shape))
    return tuple(shapes)


def _dtypes(value: Any, shared: Shared | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > _MAX_TENSORS or not all(isinstance(d, str) for d in value):
        raise DamagedCollectives("invalid dtypes")
    return tuple(_clean(d, 30, shared).lower() for d in value)


def _entry(raw: Any, shared: Shared | None = None) -> collectives.Entry:
    if not isinstance(raw, _MAPPING):
        raise DamagedCollectives("an entry is not an object")
    seq = _seq(raw.get("seq"), "sequence number")
    if seq is None:
        raise DamagedCollectives("an entry without a sequence number")
    state = raw.get("state")
    return collectives.Entry(
        seq, _text(raw.get("op"), "op", 60, shared), _sizes(raw.get("sizes")),
        _dtypes(raw.get("dtypes"), shared),
        _clean(state, 20, shared) if isinstance(state, str) else None, raw.get("p2p") is True,
    )


def _members(value: Any, shared: Shared | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DamagedCollectives("invalid ranks")
    if len(value) > _MAX_MEMBERS:
        return None  # no real group: its members are the ranks that report it
    # The default group lists every rank, in every rank's dump: 4,096 lists of 4,096 ranks
    # are checked once, with C loops, and kept once. A list equal to one already checked
    # holds the same numbers (a hostile 1.0 or true for 1 reads as the 1 it equals).
    key: Any = None
    if shared is not None:
        with contextlib.suppress(TypeError):  # a list in the list: checked below
            key = ("members", tuple(value))
            known = shared.values.get(key)
            if known is not None:
                return known
    if value and set(map(type, value)) == {int} and min(value) >= 0 and max(value) <= _MAX_NUMBER:
        found = tuple(sorted(set(value)))
        if key is not None and shared is not None:
            found = shared.values[key] = shared.one(found)
        return found
    ranks = set()
    for rank in value:
        number = _count(rank)
        if number is None:
            raise DamagedCollectives("invalid ranks")
        ranks.add(number)
    return tuple(sorted(ranks))


def _group(raw: Any, shared: Shared | None) -> collectives.Group:
    if not isinstance(raw, _MAPPING):
        raise DamagedCollectives("a process group is not an object")
    pg = raw.get("pg")
    if isinstance(pg, int) and not isinstance(pg, bool):
        pg = str(pg)
    if not isinstance(pg, str) or not pg:
        raise DamagedCollectives("a process group without its name")
    pg = clean(pg, 100)
    entries = _list_field(raw, "entries")
    group = collectives.Group(
        _text(raw.get("process_group"), "process group", 100) or pg, pg,
        _members(raw.get("ranks"), shared),
        _seq(raw.get("last_enqueued"), "sequence number"),
        _seq(raw.get("last_started"), "sequence number"),
        _seq(raw.get("last_completed"), "sequence number"),
        tuple(_entry(entry, shared) for entry in entries[-_MAX_ENTRIES:]),
    )
    return shared.one(group) if shared is not None else group


def _list_field(raw: Mapping[str, Any], key: str) -> list[Any]:
    """``raw[key]``: a list, or none (absent or null); :class:`DamagedCollectives` else."""
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DamagedCollectives(f"invalid {key}")
    return value


def parse_collectives(raw: Any, shared: Shared | None = None) -> collectives.Record:
    """A dump's ``"collectives"`` section (schema: :mod:`amldbg.diagnostics.collectives`),
    read as hostile input: the first :data:`_MAX_GROUPS` groups and the newest
    :data:`_MAX_ENTRIES` entries of each, sequence numbers non-negative integers, texts
    escaped and cut. :class:`DamagedCollectives` when it is not the schema (a record read
    in part could name a rank that did nothing wrong)."""
    if not isinstance(raw, _MAPPING):
        raise DamagedCollectives("not an object")
    recorder = raw.get("recorder")
    if not isinstance(recorder, str):
        raise DamagedCollectives("no recorder state")
    groups = _list_field(raw, "groups")
    record = collectives.Record(
        clean(recorder, 20), _text(raw.get("note"), "note", 300) or "",
        _text(raw.get("backend"), "backend", 40) or "",
        tuple(_group(group, shared) for group in groups[:_MAX_GROUPS]),
    )
    return shared.one(record) if shared is not None else record


class Dump:
    """One process's dump: who, when, why, its main thread's frames (outermost first), and
    its collectives (:attr:`collectives`, ``None`` without a section).

    With ``detail``, every thread's frames with their code and values are kept too
    (:attr:`detail_threads`: ``(name, main, frames)``). :class:`InvalidRank` when the rank
    is not a non-negative integer; ``ValueError`` when the dump's stacks are damaged. A
    damaged collectives section only drops the collectives (:attr:`collectives_problem`
    says why).
    """

    def __init__(
        self, raw: Mapping[str, Any], source: str, shared: Shared | None = None, detail: bool = False
    ) -> None:
        self.rank = _rank(raw.get("rank"))
        self.pid = _count(raw.get("pid"))
        self.host_key = _host(raw)
        self.host = clean(self.host_key, 100)
        self.time = clean(raw.get("time", ""), 40)
        self.seq = _int(raw.get("seq"), 0)
        self.reason = safetext.safe(raw.get("reason", ""), 40)
        self.world_size = max(1, _count(raw.get("world_size")) or 1)
        # A forked child of the rank's process (a data loader worker) that was signalled too.
        self.child = raw.get("forked_from") is not None
        self.source = source
        self.main: tuple[Frame, ...] = ()
        self.detail_threads: tuple[tuple[str, bool, tuple[Frame, ...]], ...] = ()
        threads = raw.get("threads")
        if not isinstance(threads, list):
            raise ValueError("no threads")
        found_main = False
        kept: list[tuple[str, bool, tuple[Frame, ...]]] = []
        for thread in threads:
            if not isinstance(thread, _MAPPING):
                continue
            main = bool(thread.get("main")) and not found_main
            if not main and (not detail or len(kept) >= _MAX_THREADS):
                continue
            frames = _frames(thread.get("frames"), shared, detail)
            if main:
                found_main = True
                self.main = frames
            if detail and len(kept) < _MAX_THREADS:
                name = thread.get("name", "?")
                name = _clean(name, 100, shared) if isinstance(name, str) else clean(name, 100)
                kept.append((name, main, frames))
            if found_main and not detail:
                break
        self.detail_threads = tuple(kept)
        self.threads = len(threads)
        self.collectives: collectives.Record | None = None
        self.collectives_problem: str | None = None
        section = raw.get("collectives")
        if section is not None:  # absent or null: a process without torch.distributed
            try:
                self.collectives = parse_collectives(section, shared)
            except (DamagedCollectives, TypeError, RecursionError) as error:
                self.collectives_problem = str(error) if isinstance(error, DamagedCollectives) else "damaged"

    @property
    def identity(self) -> tuple[str, int | None, int]:
        """The same dump read from the log line and from its file counts once."""
        return (self.host_key, self.pid, self.seq)

    @property
    def process(self) -> tuple[int, str, int | None]:
        """The process that wrote the dump: its rank, host and pid."""
        return (self.rank, self.host_key, self.pid)

    @property
    def order(self) -> tuple[str, int]:
        """Later dumps sort last."""
        return (self.time, self.seq)

    def signature(self) -> tuple[tuple[str, int, str], ...]:
        """The main thread's frames, compared between ranks."""
        return tuple(frame.key for frame in self.main)

    def user_frame(self) -> Frame | None:
        """The innermost frame of user code of the main thread (else the innermost frame)."""
        for frame in reversed(self.main):
            if not frame.library:
                return frame
        return self.main[-1] if self.main else None


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


class Crash:
    """One crash report (``--remote_debug_post_mortem``).

    ``report`` is the name of its file (``crash-rank0-pid42-2.json``) when known: the
    report's own ``file`` field (the log line has it), or the file it was read from.
    """

    def __init__(self, raw: Mapping[str, Any], source: str, from_file: bool = False) -> None:
        self.rank = _rank(raw.get("rank"))
        self.pid = _count(raw.get("pid"))
        self.host_key = _host(raw)
        self.host = clean(self.host_key, 100)
        time, where = raw.get("time", ""), raw.get("where", "")
        self.time_key = time if isinstance(time, str) else str(time)
        self.where_key = where if isinstance(where, str) else str(where)
        self.time = clean(self.time_key, 40)
        self.exception = safetext.safe(raw.get("exception", "?"), 300)
        self.where = clean(self.where_key, 100)
        frame = raw.get("frame")
        if isinstance(frame, str):
            self.frame = clean(frame, 200)
        else:
            frames = [f for f in map(_frame, raw.get("frames") or []) if f is not None]
            user = [f for f in frames if not f.library] or frames
            self.frame = user[-1].label() if user else "?"
        file = raw.get("file")
        named = file if isinstance(file, str) and file else source if from_file else ""
        self.report = _basename(named) or None
        self.file = clean(named or source, 300)
        self.from_file = from_file

    @property
    def moment(self) -> tuple[str, int | None, str, str]:
        """Who crashed when and where: the identity of a report whose file is not known."""
        return (self.host_key, self.pid, self.time_key, self.where_key)

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json``."""
        return {
            "rank": self.rank, "pid": self.pid, "host": self.host, "time": self.time,
            "exception": self.exception, "frame": self.frame, "where": self.where,
            "file": self.file,
        }


class Collector:
    """Gathers dumps and crash reports from files and lines, and the notes about what could
    not be read (:attr:`notes`, for stderr)."""

    def __init__(self, detail: bool = True) -> None:
        #: Keep every thread's frames with their code and values (``analyse(detail=True)``,
        #: the HTML page); without it only the main thread's frames are kept.
        self.detail = detail
        #: What the dumps share (frames, stacks, collectives), kept once.
        self.shared = Shared()
        self.dumps: dict[tuple[str, int | None, int], Dump] = {}
        self.crashes: list[Crash] = []
        self._by_file: dict[tuple[str, int | None, str], int] = {}
        self._by_moment: dict[tuple[str, int | None, str, str], int] = {}
        #: What stderr says about the input: damaged, truncated, rejected or unreadable.
        self.notes: list[str] = []
        #: The files and folders that could not be read at all.
        self.unreadable: list[joblogs.Unreadable] = []
        #: How many files (or standard input) were read.
        self.read = 0
        #: How many lines were too long to read whole.
        self.cut_lines = 0

    def note(self, message: str) -> None:
        """Keep a note for stderr (one line, escaped when printed)."""
        self.notes.append(message)

    def add(self, raw: Any, source: str, from_file: bool = False) -> bool:
        """Add one parsed object; False when it is neither a dump nor a crash report."""
        if not isinstance(raw, _MAPPING):
            return False
        if "amldbg_stacks" in raw:
            kind = "dump"
        elif "amldbg_crash" in raw:
            kind = "crash report"
        else:
            return False
        try:
            if kind == "dump":
                dump = Dump(raw, source, self.shared, self.detail)
                if dump.collectives_problem is not None:
                    self.note(
                        f"dropped the damaged collectives of a dump at {source} "
                        f"({dump.collectives_problem}); its stacks are kept"
                    )
                self._add_dump(dump, from_file)
            else:
                self._add_crash(Crash(raw, source, from_file))
        except InvalidRank:
            self.note(f"ignored a {kind} with an invalid rank at {source}")
        except (ValueError, TypeError, AttributeError, RecursionError):
            self.note(f"skipped a damaged {kind} at {source}")
        return True

    def _add_dump(self, dump: Dump, from_file: bool) -> None:
        known = self.dumps.get(dump.identity)
        # Keep the file's version when both are read: it names itself as the source.
        if known is None or from_file:
            self.dumps[dump.identity] = dump

    def _add_crash(self, crash: Crash) -> None:
        # One report read from its log line and from its file counts once; two reports of
        # one process (a thread's crash and the main thread's, in the same second) are two.
        at: int | None = None
        if crash.report is not None:
            at = self._by_file.get((crash.host_key, crash.pid, crash.report))
            if at is None:
                same = self._by_moment.get(crash.moment)
                if same is not None and self.crashes[same].report is None:
                    at = same
        else:
            at = self._by_moment.get(crash.moment)
        if at is None:
            at = len(self.crashes)
            self.crashes.append(crash)
        elif crash.from_file or not self.crashes[at].from_file:
            self.crashes[at] = crash
        else:
            return
        if crash.report is not None:
            self._by_file[(crash.host_key, crash.pid, crash.report)] = at
        self._by_moment[crash.moment] = at

    def feed_lines(self, source: str, lines: Iterable[str]) -> None:
        """Read ``amldbg stacks:`` and ``amldbg crash:`` lines from a log."""
        for number, line in enumerate(lines, 1):
            for marker, kind in ((STACKS_MARKER, "dump"), (CRASH_MARKER, "crash report")):
                at = line.find(marker)
                if at < 0:
                    continue
                payload = line[at + len(marker):].strip()
                try:
                    raw, _ = json.JSONDecoder().raw_decode(payload)
                except (ValueError, RecursionError):
                    self.note(f"skipped a damaged {kind} at {source}:{number}")
                    continue
                if not self.add(raw, f"{source}:{number}"):
                    self.note(f"skipped a damaged {kind} at {source}:{number}")

    def feed_file(self, item: joblogs.JobFile, stdin: TextIO | None = None) -> None:
        """Read a dump or crash file (JSON, read whole up to :data:`joblogs.MAX_JSON`), else
        a log (streamed, whatever its size). Raises :class:`OSError` when it cannot be read."""
        if not item.has_suffix(".json"):
            with joblogs.open_lines(item, stdin) as reader:
                try:
                    self.feed_lines(item.name, reader)
                finally:
                    self.cut_lines += reader.cut
            return
        text = joblogs.read_text(item)
        document = text.strip()
        try:
            raw = json.loads(document)
        except (ValueError, RecursionError):
            pass
        else:
            # Any other JSON document (a config, metrics) holds no dump: nothing to say.
            self.add(raw, item.name, from_file=True)
            return
        kind = _dump_kind(item, document)
        if kind is None:
            # Not a dump: maybe a log with the lines (JSON lines, a log named .json).
            reader = joblogs.LineReader(io.StringIO(text))
            self.feed_lines(item.name, reader)
            self.cut_lines += reader.cut
        elif not document.endswith("}"):
            self.note(f"skipped a truncated {kind} at {item.name} (the file ends before the {kind} does)")
        else:
            self.note(f"skipped a damaged {kind} at {item.name}")


def _dump_kind(item: joblogs.JobFile, document: str) -> str | None:
    """What a JSON file that does not parse was meant to be: a dump, a crash report, or
    neither (``None``), by its name or its first characters."""
    named = _DUMP_FILE.match(item.path.name) if item.path is not None else None
    if named:
        return "dump" if named.group(1).lower() == "stacks" else "crash report"
    head = document[:4096]
    if document.startswith("{") and '"amldbg_stacks"' in head:
        return "dump"
    if document.startswith("{") and '"amldbg_crash"' in head:
        return "crash report"
    return None


def collect(paths: Sequence[str], stdin: TextIO, detail: bool = True) -> Collector:
    """Read every path (file, folder, ``-`` for ``stdin``); ``detail``: keep every thread's
    frames, code and values (see :class:`Collector`).

    A file or folder that cannot be read is noted and skipped; :class:`CliError` when a named
    path does not exist, or when nothing at all could be read.
    """
    collector = Collector(detail)
    sources = list(paths) or ["-"]
    if sources == ["-"] and stdin.isatty():
        raise CliError("give dump files, log files or folders, or pipe a log into standard input")
    for source in sources:
        if source != "-" and not os.path.exists(source):
            raise CliError(f"{clean(source)}: no such file or folder")
    for item in joblogs.walk(sources, _SUFFIXES):
        if isinstance(item, joblogs.Unreadable):
            problem = item
        else:
            try:
                collector.feed_file(item, stdin)
            except OSError as error:
                problem = joblogs.Unreadable(item.name, joblogs.reason(error))
            else:
                collector.read += 1
                continue
        collector.unreadable.append(problem)
        collector.note(f"cannot read {problem.path}: {problem.reason}; skipped")
    if collector.unreadable and not collector.read:
        first = collector.unreadable[0]
        raise CliError(f"cannot read {first.path}: {first.reason}")
    return collector


#: ``0-2,5`` (:func:`amldbg.cli.collectives.ranks_text`).
_ranks_text = collectives.ranks_text


def _latest(collector: Collector) -> list[Dump]:
    """The latest dump of each process, in rank order.

    Processes are told apart by host and pid, so that processes that all claim one rank
    (``torch.multiprocessing.spawn`` without ``RANK``) stay apart. A forked child (a data
    loader worker signalled with its parent) stands for its rank only when no process of
    the rank dumped itself.
    """
    own: dict[tuple[int, str, int | None], Dump] = {}
    children: dict[int, Dump] = {}
    for dump in collector.dumps.values():
        if dump.child:
            known = children.get(dump.rank)
            if known is None or dump.order > known.order:
                children[dump.rank] = dump
            continue
        known = own.get(dump.process)
        if known is None or dump.order > known.order:
            own[dump.process] = dump
    ranks = {rank for rank, _, _ in own}
    latest = list(own.values()) + [d for rank, d in children.items() if rank not in ranks]
    return sorted(latest, key=lambda d: (d.rank, d.host_key, -1 if d.pid is None else d.pid))


def _collective_verdict(latest: Sequence[Dump]) -> dict[str, Any]:
    """The collective verdict (:mod:`amldbg.cli.collectives`) of the latest dumps."""
    # Each rank's latest own dump that has a section. A forked child's section would be
    # its parent's at the fork (it never asks torch), so children are left out.
    chosen: dict[int, Dump] = {}
    for dump in sorted(latest, key=lambda d: d.order):
        if not dump.child and dump.collectives is not None:
            chosen[dump.rank] = dump
    records = {rank: dump.collectives for rank, dump in chosen.items() if dump.collectives is not None}
    for dump in latest:
        # A damaged section was dropped: said as such, not as "no record".
        if dump.collectives_problem is not None and dump.rank not in records and not dump.child:
            records[dump.rank] = collectives.Record(collectives.DAMAGED, dump.collectives_problem, "", ())
    dumped = {d.rank for d in latest}

    def where(rank: int) -> str | None:
        dump = chosen.get(rank)
        frame = dump.user_frame() if dump is not None else None
        return frame.label() if frame is not None else None

    def in_collective(rank: int) -> bool:
        dump = chosen.get(rank)
        return dump is not None and any(_TORCH_DISTRIBUTED.search(f.file) for f in dump.main)

    world = max((d.world_size for d in latest), default=0)
    findings = collectives.verdict(records, dumped, where, in_collective, world)
    summary = collectives.recorder_summary(records, dumped)
    lines = collectives.verdict_lines(findings, summary, collectives.compared_groups(records))
    return {"collectives": findings, "recorder": summary, "collective_lines": lines}


class _Shown:
    """The JSON of frames, stacks and process groups met before, made once: 4,096 ranks at
    the same frames share one object per frame (the page's data stays small)."""

    def __init__(self) -> None:
        self.frames: dict[Frame, dict[str, Any]] = {}
        self.stacks: dict[tuple[Frame, ...], list[dict[str, Any]]] = {}
        # Keyed by identity: the groups are shared (Shared.one) and live as long as this.
        self.groups: dict[int, tuple[collectives.Group, dict[str, Any]]] = {}

    def group(self, group: collectives.Group) -> dict[str, Any]:
        known = self.groups.get(id(group))
        if known is None:
            known = self.groups[id(group)] = (group, collectives.group_dict(group))
        return known[1]


def _rank_detail(dump: Dump, group: int, made: _Shown) -> dict[str, Any]:
    """One process for ``ranks_detail``."""
    frames, stacks = made.frames, made.stacks
    threads = []
    for name, main, thread_frames in dump.detail_threads or (("MainThread", True, dump.main),):
        shown = stacks.get(thread_frames)
        if shown is None:
            shown = []
            for frame in thread_frames:
                known = frames.get(frame)
                if known is None:
                    known = frames[frame] = frame.to_dict()
                shown.append(known)
            stacks[thread_frames] = shown
        threads.append({"name": name, "main": main, "frames": shown})
    record = dump.collectives
    return {
        "rank": dump.rank, "pid": dump.pid, "host": dump.host, "reason": dump.reason,
        "time": dump.time, "group": group, "threads": threads,
        "recorder": record.recorder if record is not None else None,
        "collectives": [made.group(g) for g in record.groups] if record is not None else [],
    }


def analyse(collector: Collector, detail: bool = False) -> dict[str, Any]:
    """Latest dump per process, grouped by main-thread frames, largest group first, and the
    collective verdict (``collectives``, ``recorder``, ``collective_lines``).

    ``detail`` adds ``ranks_detail``: per process in rank order, its threads with their
    frames (code and locals when the collector kept them), the index of its group in
    ``groups``, and its parsed collectives (for the HTML page; ``--json`` leaves it out).
    """
    latest = _latest(collector)
    claims: dict[int, int] = {}
    for dump in latest:
        claims[dump.rank] = claims.get(dump.rank, 0) + 1
    groups: dict[tuple[Any, ...], list[Dump]] = {}
    for dump in latest:
        groups.setdefault(dump.signature(), []).append(dump)
    ordered = sorted(groups.values(), key=lambda members: (-len(members), members[0].rank))
    world = max((d.world_size for d in latest), default=0)
    result_groups: list[dict[str, Any]] = []
    group_of: dict[int, int] = {}
    for number, members in enumerate(ordered):
        first = members[0]
        frame = first.user_frame()
        for d in members:
            group_of[id(d)] = number
        result_groups.append({
            "ranks": sorted({d.rank for d in members}),
            "processes": [{"rank": d.rank, "pid": d.pid, "host": d.host} for d in members],
            "frame": frame.label() if frame else "(no main-thread frames)",
            "stack": [f.label() for f in first.main],
            "reasons": sorted({d.reason for d in members}),
            "dumps": [
                {"rank": d.rank, "pid": d.pid, "host": d.host, "time": d.time,
                 "reason": d.reason, "source": clean(d.source)}
                for d in members
            ],
        })
    outliers = [
        {"rank": process["rank"], "pid": process["pid"], "host": process["host"],
         "frame": group["frame"]}
        for group in result_groups[1:] for process in group["processes"]
    ]
    dumped = {d.rank for d in latest}
    # A world size read from a hostile file may be absurd: list missing ranks of real jobs only.
    missing = sorted(set(range(world)) - dumped) if 1 < world <= 100_000 else []
    result: dict[str, Any] = {
        **_collective_verdict(latest),
        "groups": result_groups,
        "outliers": sorted({o["rank"] for o in outliers}),
        "outlier_processes": outliers,
        "shared_ranks": sorted(rank for rank, count in claims.items() if count > 1),
        "missing": missing,
        "world_size": world,
        "crashes": [
            c.to_dict() for c in sorted(
                collector.crashes,
                key=lambda c: (c.rank, c.time, -1 if c.pid is None else c.pid, c.file),
            )
        ],
    }
    if detail:
        shown = _Shown()
        result["ranks_detail"] = [_rank_detail(d, group_of[id(d)], shown) for d in latest]
    return result


def _plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def _label(process: Mapping[str, Any], shared: Collection[int]) -> str:
    """``rank 3``, or ``rank 0 (pid 4242 on node-1)`` when other processes claim the rank."""
    if process["rank"] in shared:
        return _who(process["rank"], process["pid"], process["host"])
    return f"rank {process['rank']}"


def _members_text(group: Mapping[str, Any], shared: Collection[int]) -> str:
    """``ranks 0-2``, or ``rank 1, rank 0 (pid 4242 on node-1)`` when ranks are shared."""
    alone = [p["rank"] for p in group["processes"] if p["rank"] not in shared]
    parts = [f"rank{'s' if len(alone) != 1 else ''} {_ranks_text(alone)}"] if alone else []
    parts += [_label(p, shared) for p in group["processes"] if p["rank"] in shared]
    return ", ".join(parts)


def report_lines(result: Mapping[str, Any]) -> list[str]:
    """The report for people, one escaped line each: the collective verdict first."""
    lines = list(result.get("collective_lines") or [])
    if lines:
        lines.append("")
    groups = result["groups"]
    shared = set(result["shared_ranks"])
    if groups:
        processes = sum(len(g["processes"]) for g in groups)
        ranks = len({rank for g in groups for rank in g["ranks"]})
        world = result.get("world_size") or ranks
        who = (
            _plural(ranks, "rank") if processes == ranks
            else f"{_plural(processes, 'process', 'processes')} of {_plural(ranks, 'rank')}"
        )
        lines.append(
            f"{who} dumped stacks (latest dump of each{' process' if processes != ranks else ''}; "
            f"world size {world}); {_plural(len(groups), 'distinct main-thread stack')}, "
            "largest group first:"
        )
        for number, group in enumerate(groups, 1):
            lines.append("")
            lines.append(
                f"group {number}: {_members_text(group, shared)} ({len(group['processes'])}), "
                f"{'/'.join(group['reasons'])}: at {group['frame']}"
            )
            for frame in group["stack"][-12:]:
                lines.append(f"    {frame}")
        lines.append("")
        if result["outlier_processes"]:
            for group in groups[1:]:
                for process in group["processes"]:
                    lines.append(f"outlier: {_label(process, shared)} at {group['frame']}")
        elif len(groups) == 1:
            lines.append("no outlier: every rank that dumped is at the same frames")
        if result["missing"]:
            lines.append(
                f"no dump from rank{'s' if len(result['missing']) != 1 else ''} "
                f"{_ranks_text(result['missing'])} (still making progress, or its log was not given)"
            )
        for rank in result["shared_ranks"]:
            count = sum(p["rank"] == rank for g in groups for p in g["processes"])
            lines.append(
                f"{count} processes claim rank {rank} (torch.multiprocessing.spawn without RANK, "
                "or a restarted process): each is shown with its pid and host"
            )
    crashes = result["crashes"]
    if crashes:
        if lines:
            lines.append("")
        lines.append(f"{_plural(len(crashes), 'crash report')}:")
        for crash in crashes:
            pid = "?" if crash["pid"] is None else crash["pid"]
            lines.append(
                f"  rank {crash['rank']} (pid {pid}): {crash['exception']} at "
                f"{crash['frame']}  [{crash['file']}]"
            )
    # Every field was escaped when it was read; escaping each line again costs nothing and
    # keeps any one line from ever holding a raw line break or control character.
    return [safetext.escape(line) for line in lines]


def format_report(result: Mapping[str, Any]) -> str:
    """The report for people (:func:`report_lines` joined)."""
    return "\n".join(report_lines(result))


def _say(message: str) -> None:
    print(f"amldbg stacks: {safetext.escape(message)}", file=sys.stderr)


def write_html(path: str, result: Mapping[str, Any]) -> None:
    """Write the HTML page of ``result`` (``analyse(..., detail=True)``) to ``path``: mode
    0600 (it shows the ranks' local values), replaced whole so that no reader ever sees half
    a page. Raises ``OSError``."""
    from amldbg.cli import stacks_html

    page = stacks_html.render(result)
    temporary = os.path.join(
        os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp"
    )
    try:
        secrets.write_private(temporary, page)
        os.replace(temporary, path)
    except BaseException:  # whatever stopped the write, remove the temporary file; re-raised
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def cmd_stacks(args: argparse.Namespace, out: TextIO) -> int:
    """Compare the ranks' stack dumps and their collectives, list the crash reports, and
    with ``--html FILE`` write the page of the whole job."""
    html = getattr(args, "html", None)
    collector = collect(getattr(args, "paths", []) or [], sys.stdin, detail=bool(html))
    for message in collector.notes[:_MAX_NOTES]:
        _say(message)
    if len(collector.notes) > _MAX_NOTES:
        _say(f"{len(collector.notes) - _MAX_NOTES} more damaged, rejected or unreadable inputs not listed")
    if collector.cut_lines:
        _say(
            f"{_plural(collector.cut_lines, 'line')} longer than {joblogs.MAX_LINE // 1024} KiB "
            "read only in part"
        )
    result = analyse(collector, detail=bool(html))
    found = bool(result["groups"] or result["crashes"])
    if getattr(args, "json", False):
        # ensure_ascii: every control, bidi or separator character is written as an escape.
        plain = {key: value for key, value in result.items() if key != "ranks_detail"}
        out.write(json.dumps(plain, indent=2, ensure_ascii=True) + "\n")
    elif found:
        out.write(format_report(result) + "\n")
    else:
        _say("no stack dump or crash report in the given input")
    if not found:
        return EXIT_NEGATIVE
    if html:
        out.flush()
        try:
            write_html(html, result)
        except OSError as error:
            _say(f"error: cannot write {html}: {joblogs.reason(error)}")
            return EXIT_USAGE
        _say(f"wrote {html}")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``amldbg stacks`` to the subcommands of the ``amldbg`` parser."""
    parser = commands.add_parser(
        "stacks", help="compare the stacks ranks dumped in a hung job; list crash reports",
        formatter_class=formatter,
        description="Read stack dumps (stall reports, kill -USR1) and crash reports from dump "
        "files, driver logs or folders of a downloaded job; group the ranks whose main threads "
        "are at the same frames, largest group first, and name the ranks outside it.",
        epilog=STACKS_EPILOG,
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATH",
        help="dump file, log file or folder; '-' or nothing reads standard input",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--html", metavar="FILE",
        help="also write one self-contained HTML page of the whole job (verdict, ranks, call "
        "tree, each rank's threads and values) to FILE, mode 0600",
    )
    parser.set_defaults(run=cmd_stacks)
