"""Python stacks of every thread of this process, as the driver log and ``amldbg stacks`` read them.

:func:`capture` takes the stacks of all threads (``sys._current_frames()``, no tracing, no
ptrace) with the innermost frames' local values as bounded, secret-masked reprs;
:func:`write_dump` writes one dump in two forms:

* the driver log (stdout, flushed): one machine-readable line ``amldbg stacks: {json}``
  (rank, pid, reason, and each thread's frames as ``[file, line, function]`` without
  values) followed by readable ``amldbg: [rank R] ...`` lines with the values;
* a JSON file ``outputs/amldbg/stacks-rank<R>-pid<P>-<n>.json`` with everything (Azure ML
  uploads ``outputs/`` with the run).

The crash report of an uncaught exception (:mod:`amldbg.diagnostics.crash`) is made of the
same frame records and written the same way.

A value's repr is bounded: a user ``__repr__`` is called inside ``try`` and its result cut,
containers are shortened by :mod:`reprlib`, array-like objects (torch, numpy...) are
described by type, shape, dtype and device without calling their ``__repr__`` (which could
copy a tensor from a hung GPU), and capture stops adding values once its time budget is
spent. A local whose name looks secret (``token``, ``password``, ``api_key``...) is shown as
``<hidden>``, and a value that looks like a credential is masked.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import linecache
import os
import socket
import sys
import sysconfig
import threading
import time
from types import CodeType, FrameType, TracebackType
from typing import Any, Iterable, Mapping, Sequence

from amldbg.core import announce, environment, forksafe, safetext, secrets, settings
from amldbg.diagnostics import collectives, values

#: Marks the machine-readable dump line in the driver log; ``amldbg stacks`` reads it.
STACKS_MARKER = "amldbg stacks: "
#: Marks the line announcing a crash report; ``amldbg stacks`` and ``amldbg find`` read it.
CRASH_MARKER = "amldbg crash: "
DUMP_FORMAT = 1
#: Where dumps and crash reports go, relative to the working directory (Azure ML uploads it).
OUTPUT_DIR = os.path.join("outputs", "amldbg")
#: Set to write dumps elsewhere (tests, or a job whose outputs folder is not ./outputs).
OUTPUT_DIR_ENV = settings.DIAGNOSTICS_DIR.env_var

#: Innermost frames kept per thread.
MAX_FRAMES = 24
#: User frames per thread (innermost first) whose local values are recorded, besides the
#: innermost frame.
MAX_VALUE_FRAMES = 4
#: Local values recorded per frame.
MAX_LOCALS = 24
#: Characters of one value's text.
MAX_REPR = values.MAX_REPR
#: Seconds one capture may spend on values; past it, frames are recorded without values.
TIME_BUDGET = 1.0
#: Seconds a trigger waits for a dump already being written before it gives up (a dump
#: whose output blocks must not block the next trigger, or the main thread, for ever).
LOCK_WAIT = 2.0

_counter = itertools.count(1)
# The pid that imported amldbg: a forked child (a data loader worker) that dumps says whose
# child it is, so that `amldbg stacks` does not take it for its rank's main process.
_ORIGIN_PID = os.getpid()
_write_lock = forksafe.lock()


class _Fixed:
    """What this process works out once for its dumps and reports."""

    def __init__(self) -> None:
        # The output folder, made absolute when a diagnostic is armed (resolve_output_dir).
        self.output_dir: str | None = None
        # Where the standard library, installed packages and amldbg live (is_library_file).
        self.library_roots: tuple[str, ...] | None = None
        # Where the standard library and amldbg live (what amldbg's handler may be inside).
        self.own_roots: tuple[str, ...] | None = None


_fixed = _Fixed()


# -- values -----------------------------------------------------------------------------------
def safe_repr(value: Any, limit: int = MAX_REPR) -> str:
    """A bounded, secret-masked, one-line text of ``value``, made without running any of its
    code (:func:`amldbg.diagnostics.values.describe`); never raises."""
    return values.describe(value, limit)


# What frame.f_locals of a function is: a dict, or from Python 3.13 a C proxy of its own type.
_LOCALS_PROXY = type((lambda: sys._getframe().f_locals)())


def frame_locals(frame: FrameType, deadline: float) -> dict[str, str]:
    """The local values of ``frame`` (:func:`safe_repr`, secret names hidden), until
    ``deadline`` (a ``time.monotonic()`` value). A module frame's imports, functions and
    classes are left out before the :data:`MAX_LOCALS` are counted, so that a flat script
    shows its own values."""
    try:
        namespace = frame.f_locals
        if values.is_dict(namespace):
            items = list(dict.items(namespace))
        elif type(namespace) is _LOCALS_PROXY:  # Python 3.13's frame-locals proxy is C
            items = list(dict(namespace).items())
        else:
            # A class body's namespace may be a mapping of the script's (a metaclass's
            # __prepare__), whose methods must not run.
            return {}
    except Exception:  # locals that cannot be read: the frame is shown without values
        return {}
    return values.frame_values(iter(items), MAX_LOCALS, lambda: time.monotonic() > deadline)


# -- frames -----------------------------------------------------------------------------------
#: amldbg's own package folder.
_AMLDBG_ROOT = os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _roots(*schemes: str) -> tuple[str, ...]:
    """The folders of these ``sysconfig`` path schemes, and amldbg's own."""
    roots = {_AMLDBG_ROOT}
    for key in schemes:
        with contextlib.suppress(Exception):  # a scheme without this path: the others still count
            roots.add(os.path.normcase(os.path.realpath(sysconfig.get_paths()[key])))
    return tuple(sorted(roots))


def _under(filename: str, roots: tuple[str, ...]) -> bool:
    path = os.path.normcase(os.path.abspath(filename))
    return any(path.startswith(root + os.sep) for root in roots)


def is_library_file(filename: str) -> bool:
    """True for the standard library, installed packages and amldbg itself: not user code."""
    if filename.startswith("<"):
        return not filename.startswith("<stdin>")
    if "site-packages" in filename or "dist-packages" in filename:
        return True
    if _fixed.library_roots is None:
        _fixed.library_roots = _roots("stdlib", "platstdlib", "purelib", "platlib")
    return _under(filename, _fixed.library_roots)


def _is_amldbg_or_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen ") or _under(filename, (_AMLDBG_ROOT,)):
        return True
    if "site-packages" in filename or "dist-packages" in filename:
        return False  # a framework's, though the standard library's folder may hold it
    if _fixed.own_roots is None:
        _fixed.own_roots = _roots("stdlib", "platstdlib")
    return _under(filename, _fixed.own_roots)


def _frame_record(
    frame: FrameType, lineno: int | None, with_values: bool, deadline: float
) -> dict[str, Any]:
    code = frame.f_code
    line = lineno if lineno is not None else (frame.f_lineno or 0)
    filename = code.co_filename
    record: dict[str, Any] = {
        "file": safetext.escape(filename),
        "line": line,
        "function": safetext.escape(getattr(code, "co_qualname", code.co_name)),
        "library": is_library_file(filename),
    }
    try:
        # A lazy cache entry would call its module's loader (get_source: an import hook's code,
        # perhaps a remote fetch); only lines of files already read, or on disk, are shown.
        entry = linecache.cache.get(filename)
        lazy = type(entry) is tuple and len(entry) == 1
        source = "" if lazy else linecache.getline(filename, line).strip()
    except Exception:  # the frame is shown without its source line
        source = ""
    if source:
        # Masked whole, then cut: `connect(api_key="...")` hides its key wherever it is.
        record["code"] = safetext.safe(source, 200)
    if with_values:
        record["locals"] = frame_locals(frame, deadline)
    return record


def frames_of(frame: FrameType | None, deadline: float, limit: int = MAX_FRAMES) -> list[dict[str, Any]]:
    """The records of ``frame`` and its callers, outermost first, at most ``limit`` innermost
    ones; the innermost :data:`MAX_VALUE_FRAMES` carry local values."""
    chain: list[FrameType] = []
    while frame is not None and len(chain) < limit:
        chain.append(frame)
        frame = frame.f_back
    records = []
    user_frames = 0
    for index, current in enumerate(chain):
        # Values of the innermost frame and of the innermost user frames: a library's
        # internals (threading's self, torch's arguments) are rarely what was stuck.
        user = not is_library_file(current.f_code.co_filename)
        with_values = index == 0 or (user and user_frames < MAX_VALUE_FRAMES)
        user_frames += user
        records.append(_frame_record(current, None, with_values, deadline))
    records.reverse()
    return records


def traceback_frames(tb: TracebackType | None, deadline: float) -> list[dict[str, Any]]:
    """The records of a traceback, outermost first; every frame (up to :data:`MAX_FRAMES`
    innermost) carries its local values as they were when the exception was raised."""
    entries = []
    while tb is not None:
        entries.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    entries = entries[-MAX_FRAMES:]
    return [_frame_record(frame, line, True, deadline) for frame, line in entries]


def topology_fields() -> dict[str, Any]:
    """Who wrote a dump or report: the topology, the pid and the host."""
    topology = environment.topology()
    return {
        "rank": topology.rank,
        "local_rank": topology.local_rank,
        "world_size": topology.world_size,
        "node_rank": topology.node_rank,
        "launcher": topology.launcher,
        "pid": os.getpid(),
        "host": safetext.escape(socket.gethostname()),
    }


def timestamp() -> str:
    """Now, in UTC, to the millisecond (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _below(frame: FrameType | None, own_code: set[CodeType]) -> FrameType | None:
    """The frame a thread was in when one of ``own_code`` (amldbg's handler) interrupted it.

    From the innermost frame outward, the frames of amldbg and of the standard library (the
    helpers the handler calls: the signal thread may take its dump while the main thread's
    handler is in its ownership or wakeup-fd check) are passed over up to the outermost one
    running ``own_code``, and its caller is shown. A frame of the script's met first (its own
    signal handler, run on top of amldbg's) is what the thread was doing: the stack is whole.
    """
    if not own_code:
        return frame
    shown, walked = frame, frame
    while walked is not None:
        if walked.f_code in own_code:
            shown = walked.f_back
        elif not _is_amldbg_or_stdlib(walked.f_code.co_filename):
            break
        walked = walked.f_back
    return shown


def _threads_by_ident() -> dict[int, tuple[str, bool | None]]:
    """Each thread's name and daemon flag, read from the Thread objects' own fields: a
    subclass's ``name`` or ``daemon`` property is script code and is not run."""
    found: dict[int, tuple[str, bool | None]] = {}
    active = getattr(threading, "_active", None)
    try:
        threads = list(dict.values(active)) if type(active) is dict else threading.enumerate()
    except RuntimeError:  # a thread started or ended while the table was copied
        threads = threading.enumerate()
    for thread in threads:
        fields = values.instance_dict(thread)
        ident, name, daemon = fields.get("_ident"), fields.get("_name"), fields.get("_daemonic")
        if type(ident) is int:
            found[ident] = (
                name if type(name) is str else f"thread {ident}",
                daemon if type(daemon) is bool else None,
            )
    return found


def thread_name(thread: Any) -> str:
    """A thread's name from its own fields (a subclass's ``name`` property is not run)."""
    name = values.instance_dict(thread).get("_name")
    return name if type(name) is str else "a thread"


def capture(
    reason: str,
    detail: str = "",
    *,
    skip_threads: Iterable[int] = (),
    skip_code: Iterable[CodeType] = (),
    budget: float = TIME_BUDGET,
) -> dict[str, Any]:
    """Take the stacks of every thread of this process, the main thread first.

    ``reason`` says why (``stall``, ``signal``, ``request``); ``skip_threads`` are thread
    idents left out (the caller's own watchdog thread); a frame running one of ``skip_code``
    (amldbg's own signal handler, which interrupts the main thread) is left out with every
    frame it called, so the innermost frame shown is the one the thread was in. Never raises
    for a value that cannot be shown; spends at most about ``budget`` seconds on values.
    """
    deadline = time.monotonic() + budget
    skip = set(skip_threads)
    own_code = set(skip_code)
    names = _threads_by_ident()
    main_ident = threading.main_thread().ident
    frames = sys._current_frames()
    threads = []
    order = sorted(frames, key=lambda ident: (ident != main_ident, ident))
    for ident in order:
        name, daemon = names.get(ident, (f"thread {ident}", None))
        if ident in skip or name.startswith("amldbg-"):
            continue  # amldbg's own watchdog and trigger threads
        threads.append({
            "name": safetext.safe(name, 100),
            "ident": ident,
            "main": ident == main_ident,
            "daemon": daemon,
            "frames": frames_of(_below(frames[ident], own_code), deadline),
        })
    dump = {
        "amldbg_stacks": DUMP_FORMAT,
        "reason": reason,
        "detail": safetext.safe(detail, 500),
        "time": timestamp(),
        "seq": next(_counter),
        **topology_fields(),
        "threads": threads,
    }
    section = collectives.snapshot()
    if section is not None:
        dump["collectives"] = section
    if os.getpid() != _ORIGIN_PID:
        dump["forked_from"] = _ORIGIN_PID
    return dump


def resolve_output_dir() -> str:
    """Fix the folder dumps and crash reports go to, as an absolute path, and return it:
    ``$AMLDBG_DIAGNOSTICS_DIR``, else ``outputs/amldbg`` under the working directory *now*.

    Called when a diagnostic is armed, so that a script that later ``os.chdir``s into its
    data folder still writes its reports where Azure ML uploads them. The first call wins.
    """
    if _fixed.output_dir is None:
        _fixed.output_dir = os.path.abspath(settings.env_value(settings.DIAGNOSTICS_DIR) or OUTPUT_DIR)
    return _fixed.output_dir


def output_dir() -> str:
    """Where dumps and crash reports are written: the folder fixed when a diagnostic was
    armed (:func:`resolve_output_dir`), else resolved now."""
    return _fixed.output_dir or resolve_output_dir()


def json_fallback(value: Any) -> str:
    """``json.dumps``' ``default``: the type of a value JSON cannot hold, never its ``str()``
    (an object that is not amldbg's own)."""
    return f"<{values.type_name(type(value))}>"


def write_json(path: str, payload: Mapping[str, Any]) -> str | None:
    """Write ``payload`` to ``path`` whole (private to its owner, 0600); its path, or None
    after one warning line."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        text = json.dumps(payload, indent=1, default=json_fallback) + "\n"
        # 0600 from the start: the file holds local values of the script.
        secrets.write_private(temporary, text)
        os.replace(temporary, path)  # a reader never sees half a file
        return path
    except Exception as error:  # one warning line (once per folder), never the script's failure
        announce.warn_once(f"stacks-write:{os.path.dirname(path)}", f"could not write {path}: {error}")
        return None


def frame_label(record: Mapping[str, Any]) -> str:
    """``train.py:88 in step``: a frame as people read it."""
    return f"{os.path.basename(str(record.get('file', '?')))}:{record.get('line', '?')} in {record.get('function', '?')}"


def innermost_user_frame(frames: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The innermost frame of user code (not the standard library or a package), else the
    innermost frame."""
    for record in reversed(frames):
        if not record.get("library"):
            return record
    return frames[-1] if frames else None


#: Bytes a pipe writes in one piece (POSIX PIPE_BUF): ranks sharing a stdout (torchrun,
#: mpiexec) cannot cut into a line this short.
LINE_LIMIT = 4000


def summary_line(dump: Mapping[str, Any], limit: int = LINE_LIMIT) -> str:
    """The ``amldbg stacks: {json}`` line: the dump without values, for the driver log.

    Kept under ``limit`` bytes when it can be: other threads then keep only their innermost
    frame, then the main thread its innermost frames (the file has everything).
    """
    short = {key: value for key, value in dump.items() if key not in ("threads", "collectives")}

    def frames(thread: Mapping[str, Any], keep: int) -> list[list[Any]]:
        return [
            [f["file"], f["line"], f["function"]] + ([1] if f.get("library") else [])
            for f in thread["frames"][-keep:]
        ] if keep else []

    threads = list(dump.get("threads", []))
    text = ""
    section = dump.get("collectives")
    # Fewer collective entries before fewer frames: the verdict needs the newest entries of
    # each rank, and the main thread's frames name where the odd rank is.
    steps = ((MAX_FRAMES, MAX_FRAMES, 4), (MAX_FRAMES, 1, 4), (MAX_FRAMES, 1, 2), (8, 0, 2), (3, 0, 1), (3, 0, 0))
    for main_keep, other_keep, entries in steps:
        if isinstance(section, Mapping):
            short["collectives"] = collectives.shortened(section, entries)
        short["threads"] = [
            {
                "name": thread["name"],
                "main": thread["main"],
                "frames": frames(thread, main_keep if thread["main"] else other_keep),
            }
            for thread in threads
        ]
        text = STACKS_MARKER + json.dumps(short, sort_keys=True, separators=(",", ":"), default=str)
        if len(text.encode("utf-8", "replace")) <= limit:
            break
    return text


def format_dump(dump: Mapping[str, Any]) -> list[str]:
    """The readable lines of a dump (innermost frame last, as Python prints tracebacks)."""
    who = f"[rank {dump.get('rank', 0)}] "
    lines = []
    for thread in dump.get("threads", []):
        tag = " (main thread)" if thread.get("main") else (" (daemon)" if thread.get("daemon") else "")
        lines.append(f"{who}thread {thread.get('name')!s}{tag}, most recent call last:")
        for record in thread.get("frames", []):
            lines.append(f"{who}  File \"{record['file']}\", line {record['line']}, in {record['function']}")
            if record.get("code"):
                lines.append(f"{who}    {record['code']}")
            for name, value in (record.get("locals") or {}).items():
                lines.append(f"{who}      {name} = {value}")
    return lines


def write_dump(
    reason: str,
    detail: str = "",
    *,
    skip_threads: Iterable[int] = (),
    skip_code: Iterable[CodeType] = (),
    log: bool = True,
    directory: str | None = None,
) -> str | None:
    """Capture the stacks and write them to the driver log and a JSON file; return its path.

    Never raises: a failure is one warning line. Dumps of one process are serialised, so
    two triggers at once write two whole dumps; a trigger that finds a dump still being
    written after :data:`LOCK_WAIT` seconds (its output blocked) gives up with one line.
    """
    try:
        if not _write_lock.acquire(timeout=LOCK_WAIT):
            announce.warn_once(
                "stacks:busy", f"a stack dump was skipped: the previous one is still being "
                f"written after {announce.seconds(LOCK_WAIT)} s"
            )
            return None
        try:
            dump = capture(reason, detail, skip_threads=skip_threads, skip_code=skip_code)
            directory = directory or output_dir()
            name = f"stacks-rank{dump['rank']}-pid{dump['pid']}-{dump['seq']}.json"
            path = write_json(os.path.join(directory, name), dump)
            dump_file = path or ""
            if log:
                main = next((t for t in dump["threads"] if t["main"]), None)
                where = innermost_user_frame(main["frames"]) if main else None
                at = f" at {frame_label(where)}" if where else ""
                place = f"; written to {dump_file}" if dump_file else ""
                text = f": {dump['detail']}" if dump["detail"] else ""
                announce.info(
                    f"stacks of rank {dump['rank']} (pid {dump['pid']}), {reason}{text}; "
                    f"main thread{at}{place}"
                )
                # One write per line: ranks sharing a stdout may interleave lines, not cut
                # into them; every readable line names its rank.
                announce.say(summary_line({**dump, "file": dump_file}))
                for text_line in format_dump(dump):
                    announce.say(announce.PREFIX + safetext.shorten(text_line, LINE_LIMIT))
            return path
        finally:
            _write_lock.release()
    except Exception as error:  # a dump must never stop the script it describes
        announce.warn_once(f"stacks:{type(error).__name__}", f"could not dump the stacks: {error}")
        return None
