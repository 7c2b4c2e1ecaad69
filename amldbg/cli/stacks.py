"""``amldbg stacks PATH...``: compare the stacks every rank dumped (stall reports, ``kill -USR1``)
and list the crash reports, from a downloaded job.

Reads ``stacks-rank*.json`` / ``crash-rank*.json`` files and the ``amldbg stacks: {json}`` /
``amldbg crash: {json}`` lines of driver logs (with any prefix a launcher adds), in files,
folders or standard input. Takes each rank's latest dump, groups ranks whose main threads
are at the same frames (file, line, function), largest group first, and names the ranks
outside the largest group (the outliers) with their innermost user frame: in a hung job,
the rank the others wait for.

Input is hostile: a damaged line or file is skipped with a note on stderr, never a
traceback, and control characters are escaped before printing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

from amldbg.cli.common import EXIT_NEGATIVE, EXIT_OK, CliError

STACKS_MARKER = "amldbg stacks: "
CRASH_MARKER = "amldbg crash: "

STACKS_EPILOG = """\
examples:
  amldbg stacks outputs/amldbg/            # the dump files a job wrote (Azure ML uploads outputs/)
  amldbg stacks user_logs/ outputs/ --json # driver logs and dump files of a downloaded job
  az ml job stream -n JOB | amldbg stacks  # or read standard input

Dumps come from --remote_debug_stall_timeout (when a rank stops making progress) and
--remote_debug_on_demand (kill -USR1 PID); crash reports from --remote_debug_post_mortem.

exit status: 0 when dumps or crash reports were found, 1 when none, 2 for unreadable input."""

# Files worth reading below a folder: dumps and crash reports, and logs.
_SUFFIXES = (".json", ".txt", ".log", ".out", ".err")
_MAX_FILE = 256 * 1024 * 1024
_MAX_LINE = 16 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LIBRARY = re.compile(r"(site|dist)-packages|[/\\]lib[/\\]python\d|[/\\]amldbg[/\\]|^<frozen ")


def clean(value: Any, limit: int = 300) -> str:
    """``value`` as text with control characters escaped and cut to ``limit`` characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(value: Any, default: int = -1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return default


class Frame:
    """One frame of a dump: file, line, function, and whether it is library code."""

    def __init__(self, file: str, line: int, function: str, library: bool | None = None) -> None:
        self.file = file
        self.line = line
        self.function = function
        self.library = bool(_LIBRARY.search(file)) if library is None else library

    @property
    def key(self) -> tuple[str, int, str]:
        """What two ranks must share to be at the same frame."""
        return (self.file, self.line, self.function)

    def label(self) -> str:
        """``train.py:88 in step``."""
        name = self.file.replace("\\", "/").rsplit("/", 1)[-1]
        return clean(f"{name}:{self.line} in {self.function}")


def _frame(raw: Any) -> Frame | None:
    if isinstance(raw, Mapping):
        file, line, function = raw.get("file"), raw.get("line"), raw.get("function")
        library = raw.get("library")
    elif isinstance(raw, (list, tuple)) and len(raw) >= 3:
        file, line, function = raw[0], raw[1], raw[2]
        library = bool(raw[3]) if len(raw) > 3 else None
    else:
        return None
    if not isinstance(file, str) or not isinstance(function, str):
        return None
    return Frame(file, _int(line, 0), function, library if isinstance(library, bool) else None)


class Dump:
    """One rank's dump: who, when, why, and its main thread's frames (outermost first)."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.rank = _int(raw.get("rank"), 0)
        self.pid = _int(raw.get("pid"))
        self.host = clean(raw.get("host", ""), 100)
        self.time = clean(raw.get("time", ""), 40)
        self.seq = _int(raw.get("seq"), 0)
        self.reason = clean(raw.get("reason", ""), 40)
        self.world_size = max(1, _int(raw.get("world_size"), 1))
        # A forked child of the rank's process (a data loader worker) that was signalled too.
        self.child = raw.get("forked_from") is not None
        self.source = source
        self.main: list[Frame] = []
        threads = raw.get("threads")
        if not isinstance(threads, list):
            raise ValueError("no threads")
        for thread in threads:
            if isinstance(thread, Mapping) and thread.get("main"):
                frames = thread.get("frames")
                if isinstance(frames, list):
                    self.main = [f for f in map(_frame, frames) if f is not None]
                break
        self.threads = len(threads)

    @property
    def identity(self) -> tuple[str, int, int]:
        """The same dump read from the log line and from its file counts once."""
        return (self.host, self.pid, self.seq)

    @property
    def order(self) -> tuple[bool, str, int]:
        """Later dumps sort last; the rank's own process before its forked children."""
        return (not self.child, self.time, self.seq)

    def signature(self) -> tuple[tuple[str, int, str], ...]:
        """The main thread's frames, compared between ranks."""
        return tuple(frame.key for frame in self.main)

    def user_frame(self) -> Frame | None:
        """The innermost frame of user code of the main thread (else the innermost frame)."""
        for frame in reversed(self.main):
            if not frame.library:
                return frame
        return self.main[-1] if self.main else None


class Crash:
    """One crash report (``--remote_debug_post_mortem``)."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.rank = _int(raw.get("rank"), 0)
        self.pid = _int(raw.get("pid"))
        self.host = clean(raw.get("host", ""), 100)
        self.time = clean(raw.get("time", ""), 40)
        self.exception = clean(raw.get("exception", "?"), 300)
        self.where = clean(raw.get("where", ""), 100)
        frame = raw.get("frame")
        if isinstance(frame, str):
            self.frame = clean(frame, 200)
        else:
            frames = [f for f in map(_frame, raw.get("frames") or []) if f is not None]
            user = [f for f in frames if not f.library] or frames
            self.frame = user[-1].label() if user else "?"
        file = raw.get("file")
        self.file = clean(file if isinstance(file, str) else source, 300)

    @property
    def identity(self) -> tuple[str, int, str]:
        """The log line and the file of one report count once."""
        return (self.host, self.pid, self.time[:19])

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json``."""
        return {
            "rank": self.rank, "pid": self.pid, "host": self.host, "time": self.time,
            "exception": self.exception, "frame": self.frame, "where": self.where,
            "file": self.file,
        }


class Collector:
    """Gathers dumps and crash reports from files and lines."""

    def __init__(self) -> None:
        self.dumps: dict[tuple[str, int, int], Dump] = {}
        self.crashes: dict[tuple[str, int, str], Crash] = {}
        self.skipped: list[str] = []

    def add(self, raw: Any, source: str) -> bool:
        """Add one parsed object; False when it is neither a dump nor a crash report."""
        if not isinstance(raw, Mapping):
            return False
        try:
            if "amldbg_stacks" in raw:
                dump = Dump(raw, source)
                known = self.dumps.get(dump.identity)
                # Keep the file's version when both are read: it names itself as the source.
                if known is None or source.endswith(".json"):
                    self.dumps[dump.identity] = dump
                return True
            if "amldbg_crash" in raw:
                crash = Crash(raw, source)
                known_crash = self.crashes.get(crash.identity)
                if known_crash is None or source.endswith(".json"):
                    self.crashes[crash.identity] = crash
                return True
        except (ValueError, TypeError, AttributeError, RecursionError):
            self.skipped.append(source)
            return True
        return False

    def feed_lines(self, source: str, lines: Iterable[str]) -> None:
        """Read ``amldbg stacks:`` and ``amldbg crash:`` lines from a log."""
        for number, line in enumerate(lines, 1):
            for marker in (STACKS_MARKER, CRASH_MARKER):
                at = line.find(marker)
                if at < 0:
                    continue
                payload = line[at + len(marker):].strip()
                try:
                    raw = json.loads(payload)
                except (ValueError, RecursionError):
                    self.skipped.append(f"{source}:{number}")
                    continue
                if not self.add(raw, f"{source}:{number}"):
                    self.skipped.append(f"{source}:{number}")

    def feed_file(self, path: Path) -> None:
        """Read a dump or crash file (JSON), else a log."""
        if path.stat().st_size > _MAX_FILE:
            self.skipped.append(f"{path} (too large)")
            return
        with open(path, encoding="utf-8", errors="replace") as handle:
            if path.suffix.lower() == ".json":
                text = handle.read()
                try:
                    raw = json.loads(text)
                except (ValueError, RecursionError):
                    raw = None
                if raw is not None:
                    self.add(raw, str(path))
                    return
                self.feed_lines(str(path), text.splitlines())
                return
            self.feed_lines(str(path), _bounded_lines(handle))


def _bounded_lines(handle: TextIO) -> Iterable[str]:
    while True:
        line = handle.readline(_MAX_LINE)
        if not line:
            return
        yield line


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES
        )
    return [path]


def collect(paths: Sequence[str], stdin: TextIO) -> Collector:
    """Read every path (file, folder, ``-`` for ``stdin``); :class:`CliError` when one cannot be read."""
    collector = Collector()
    sources = list(paths) or ["-"]
    if sources == ["-"] and stdin.isatty():
        raise CliError("give dump files, log files or folders, or pipe a log into standard input")
    for source in sources:
        if source == "-":
            collector.feed_lines("<stdin>", _bounded_lines(stdin))
            continue
        if not os.path.exists(source):
            raise CliError(f"{clean(source)}: no such file or folder")
        try:
            for file in _files(Path(source)):
                collector.feed_file(file)
        except OSError as error:
            name = error.filename or source
            raise CliError(f"cannot read {clean(name)}: {clean(error.strerror or error)}") from None
    return collector


def _ranks_text(ranks: Sequence[int]) -> str:
    """``0-2,5``."""
    parts: list[str] = []
    start = previous = None
    for rank in sorted(ranks):
        if previous is not None and rank == previous + 1:
            previous = rank
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = rank
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def analyse(collector: Collector) -> dict[str, Any]:
    """Latest dump per rank, grouped by main-thread frames, largest group first."""
    latest: dict[int, Dump] = {}
    for dump in collector.dumps.values():
        known = latest.get(dump.rank)
        if known is None or dump.order > known.order:
            latest[dump.rank] = dump
    groups: dict[tuple[Any, ...], list[Dump]] = {}
    for rank in sorted(latest):
        dump = latest[rank]
        groups.setdefault(dump.signature(), []).append(dump)
    ordered = sorted(groups.values(), key=lambda members: (-len(members), members[0].rank))
    world = max((d.world_size for d in latest.values()), default=0)
    result_groups: list[dict[str, Any]] = []
    for members in ordered:
        first = members[0]
        frame = first.user_frame()
        result_groups.append({
            "ranks": [d.rank for d in members],
            "frame": frame.label() if frame else "(no main-thread frames)",
            "stack": [f.label() for f in first.main],
            "reasons": sorted({d.reason for d in members}),
            "dumps": [
                {"rank": d.rank, "pid": d.pid, "host": d.host, "time": d.time,
                 "reason": d.reason, "source": clean(d.source)}
                for d in members
            ],
        })
    outliers = sorted(rank for group in result_groups[1:] for rank in group["ranks"])
    # A world size read from a hostile file may be absurd: list missing ranks of real jobs only.
    missing = sorted(set(range(world)) - set(latest)) if 1 < world <= 100_000 else []
    return {
        "groups": result_groups,
        "outliers": outliers,
        "missing": missing,
        "world_size": world,
        "crashes": [
            c.to_dict() for c in sorted(collector.crashes.values(), key=lambda c: (c.rank, c.time))
        ],
    }


def format_report(result: Mapping[str, Any]) -> str:
    """The report for people."""
    lines = []
    groups = result["groups"]
    if groups:
        dumped = sum(len(g["ranks"]) for g in groups)
        world = result.get("world_size") or dumped
        lines.append(
            f"{dumped} rank{'s' if dumped != 1 else ''} dumped stacks (latest dump of each; "
            f"world size {world}); {len(groups)} distinct main-thread stack"
            f"{'s' if len(groups) != 1 else ''}, largest group first:"
        )
        for number, group in enumerate(groups, 1):
            ranks = group["ranks"]
            label = f"rank{'s' if len(ranks) != 1 else ''} {_ranks_text(ranks)}"
            lines.append("")
            lines.append(
                f"group {number}: {label} ({len(ranks)}), {'/'.join(group['reasons'])}: "
                f"at {group['frame']}"
            )
            for frame in group["stack"][-12:]:
                lines.append(f"    {frame}")
        lines.append("")
        if result["outliers"]:
            for group in groups[1:]:
                for rank in group["ranks"]:
                    lines.append(f"outlier: rank {rank} at {group['frame']}")
        elif len(groups) == 1:
            lines.append("no outlier: every rank that dumped is at the same frames")
        if result["missing"]:
            lines.append(
                f"no dump from rank{'s' if len(result['missing']) != 1 else ''} "
                f"{_ranks_text(result['missing'])} (still making progress, or its log was not given)"
            )
    crashes = result["crashes"]
    if crashes:
        if lines:
            lines.append("")
        lines.append(f"{len(crashes)} crash report{'s' if len(crashes) != 1 else ''}:")
        for crash in crashes:
            lines.append(
                f"  rank {crash['rank']} (pid {crash['pid']}): {crash['exception']} at "
                f"{crash['frame']}  [{crash['file']}]"
            )
    return "\n".join(lines)


def cmd_stacks(args: argparse.Namespace, out: TextIO) -> int:
    """Compare the ranks' stack dumps and list the crash reports."""
    collector = collect(getattr(args, "paths", []) or [], sys.stdin)
    for place in collector.skipped[:20]:
        print(f"amldbg stacks: skipped a damaged dump at {clean(place)}", file=sys.stderr)
    if len(collector.skipped) > 20:
        print(f"amldbg stacks: skipped {len(collector.skipped) - 20} more", file=sys.stderr)
    result = analyse(collector)
    found = bool(result["groups"] or result["crashes"])
    if getattr(args, "json", False):
        out.write(json.dumps(result, indent=2) + "\n")
        return EXIT_OK if found else EXIT_NEGATIVE
    if not found:
        print("amldbg stacks: no stack dump or crash report in the given input", file=sys.stderr)
        return EXIT_NEGATIVE
    out.write(format_report(result) + "\n")
    return EXIT_OK


def add_parser(commands: Any, formatter: Any) -> argparse.ArgumentParser:
    """Add ``amldbg stacks`` to the subcommands of the ``amldbg`` parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
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
    parser.set_defaults(run=cmd_stacks)
    return parser
