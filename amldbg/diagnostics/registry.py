"""Which processes of this node have on-demand triggers armed: what ``amldbg signal`` reads.

Each process that arms ``--remote_debug_on_demand`` keeps one file, ``<dir>/<pid>.json``
(written 0600, atomically), naming its pid, the start time of that pid (field 22 of
``/proc/<pid>/stat``, so that a reused pid is never taken for it), its uid, rank, local rank,
world size, launcher, host, the signals amldbg handles there, a masked script name and when
it was armed. The file goes when the triggers are disarmed and at exit. A process killed
outright leaves its file: readers see that the pid is gone (or now names another process)
and may remove it.

Where: ``$AMLDBG_REGISTRY_DIR`` when set; else ``$XDG_RUNTIME_DIR/amldbg`` when that variable
names a directory owned by us; else ``<tempdir>/amldbg-<uid>``. The directory is created
0700 and used only when it is a real directory (not a symlink) owned by the current uid and
closed to group and others; anything else means no registry (one warning line), and the
job carries on. Readers check the same before believing a file.

Linux only: without ``/proc`` a pid cannot be verified, so nothing is registered (the
triggers themselves still work with ``kill -USR1 PID``).

Why a registry: ``pkill -USR1 -f train.py`` also matches torchrun's agent
(``python -m torch.distributed.run ... train.py``), which SIGUSR1 ends, orphaning the ranks.
Only the processes listed here, verified alive, are ever signalled by ``amldbg signal``.

The runtime side (:func:`register`, :func:`update`, :func:`unregister`) never raises into the
script: a failure is one warning line. Only the process that registered may rewrite or remove
its entry (a forked child, such as a data loader worker, leaves its parent's entry alone).
Only the standard library is used.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import stat
import sys
import tempfile
import uuid
from typing import Any, Iterable, Mapping, Sequence

from amldbg.core import announce, environment, forksafe, safetext, secrets, settings
from amldbg.core.guard import guard

__all__ = [
    "DIR_ENV", "MAX_ENTRY", "SIGNALS", "Entry", "Scan", "alive", "directory", "entries",
    "register", "remove", "scan", "start_time", "status", "unregister", "update",
]

#: Set to keep the registry elsewhere (tests; a job and a shell that disagree on TMPDIR).
DIR_ENV = settings.REGISTRY_DIR.env_var
#: The signals an entry may say amldbg owns.
SIGNALS = ("SIGUSR1", "SIGUSR2")
#: Larger files are not read (an entry is a few hundred bytes).
MAX_ENTRY = 64 * 1024
#: The most files a reader looks at in one directory.
MAX_FILES = 10_000
FORMAT = 1

_lock = forksafe.lock()


@dataclasses.dataclass
class _Registered:
    """This process's entry: the pid that wrote it (a forked child is not it), where, what."""

    owner_pid: int | None = None
    path: str | None = None
    record: dict[str, Any] | None = None
    atexit_registered: bool = False

    def forget(self) -> None:
        self.owner_pid, self.path, self.record = None, None, None


_registered = _Registered()


# -- where ------------------------------------------------------------------------------------
def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else -1


def _owned_directory(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == _uid()


def candidates(env: Mapping[str, str] | None = None) -> list[str]:
    """The registry directories, the one a process writes first.

    ``$AMLDBG_REGISTRY_DIR`` alone when set. Otherwise a shell (an SSH session) may see an
    ``XDG_RUNTIME_DIR`` that the job did not, so readers look at both usual places.
    """
    env = os.environ if env is None else env
    explicit = settings.env_value(settings.REGISTRY_DIR, env)
    if explicit:
        return [os.path.abspath(explicit)]
    found = []
    runtime_dir = (env.get("XDG_RUNTIME_DIR") or "").strip()
    if runtime_dir and os.path.isabs(runtime_dir) and _owned_directory(runtime_dir):
        found.append(os.path.join(runtime_dir, "amldbg"))
    found.append(os.path.join(tempfile.gettempdir(), f"amldbg-{_uid()}"))
    return found


def problem(path: str) -> str | None:
    """Why ``path`` may not hold the registry (None when it may): it must be a directory, not
    a symlink, owned by the current uid, with no permission for group and others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != _uid():
        return f"is owned by uid {info.st_uid}, not by uid {_uid()}"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
    return None


def directory(create: bool = False, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The directory this process registers in, and why it cannot be used (None when it can).

    With ``create`` a missing directory is made 0700 (its parents too, for
    ``$AMLDBG_REGISTRY_DIR``). An existing one is never changed: a symlink, a directory of
    another user or one open to others is refused, not repaired.
    """
    env = os.environ if env is None else env
    path = candidates(env)[0]
    if create and not os.path.lexists(path):
        if settings.env_value(settings.REGISTRY_DIR, env):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)  # the umask can only narrow it
    return path, problem(path)


# -- the process itself -----------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), None when it cannot be read."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            data = handle.read(4096)
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold anything, ')' too.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 3 is fields[0]
    except (IndexError, ValueError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _record_for(signals: Sequence[str]) -> dict[str, Any] | None:
    pid = os.getpid()
    started = start_time(pid)
    if started is None:
        return None  # no /proc: nothing a reader could verify
    topology = environment.topology()
    script = sys.argv[0] if sys.argv and sys.argv[0] else "(no script)"
    return {
        "amldbg_registry": FORMAT,
        "pid": pid,
        "start_time": started,
        "uid": _uid(),
        "rank": topology.rank,
        "local_rank": topology.local_rank,
        "world_size": topology.world_size,
        "launcher": topology.launcher,
        "host": safetext.safe(socket.gethostname(), 200),
        "signals": list(signals),
        "script": safetext.safe(os.path.basename(script) or script, 200),
        "armed_at": _now(),
    }


def _write(path: str, record: Mapping[str, Any]) -> None:
    folder = os.path.dirname(path)
    temporary = os.path.join(folder, f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        secrets.write_private(temporary, json.dumps(record, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except BaseException:  # not a catch: the half-written file goes, the error goes on
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _owned(signals: Iterable[str]) -> list[str]:
    wanted = set(map(str, signals))
    return [name for name in SIGNALS if name in wanted]


def register(signals: Iterable[str]) -> bool:
    """Record this process with the signals amldbg handles (``SIGUSR1``, ``SIGUSR2``).

    True when the entry was written. Never raises: a failure is one warning line.
    """
    with guard("amldbg signal cannot see this process (kill -USR1 PID still works)"):
        names = _owned(signals)
        if not names:
            unregister()
            return False
        with _lock:
            record = _record_for(names)
            if record is None:
                return False  # Linux only
            path, refused = directory(create=True)
            if refused is not None:
                message = (
                    f"amldbg signal cannot see this process: the registry {safetext.safe(path, 300)} "
                    f"{refused} (kill -USR1 {os.getpid()} still works; set {DIR_ENV} to a "
                    f"private directory)"
                )
                announce.warn_once("registry:" + path, message)
                return False
            entry = os.path.join(path, f"{record['pid']}.json")
            _write(entry, record)
            _registered.owner_pid, _registered.path, _registered.record = os.getpid(), entry, record
            if not _registered.atexit_registered:
                atexit.register(_at_exit)
                _registered.atexit_registered = True
            return True
    return False


def update(signals: Iterable[str]) -> bool:
    """Rewrite this process's entry with the signals amldbg still handles; an empty list
    removes it. Nothing happens in a process that did not register (a forked child).

    True when the entry now lists ``signals``. Never raises.
    """
    with guard("amldbg signal: could not update this process's entry"):
        names = _owned(signals)
        if not names:
            unregister()
            return False
        if _registered.owner_pid != os.getpid():
            return False  # a forked child: its parent's entry (and maybe a lock held at fork)
        with _lock:
            path, previous = _registered.path, _registered.record
            if _registered.owner_pid != os.getpid() or path is None or previous is None:
                return False
            record = {**previous, "signals": names}
            _write(path, record)
            _registered.record = record
            return True
    return False


def unregister() -> None:
    """Remove this process's entry (also done at exit). Only the process that wrote it may:
    in a forked child this does nothing. Never raises."""
    if _registered.owner_pid != os.getpid():
        return  # never registered, or a forked child (which must not wait for a lock held at fork)
    with guard("amldbg signal: could not remove this process's entry"), _lock:
        path = _registered.path
        if _registered.owner_pid != os.getpid() or path is None:
            return
        _registered.forget()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _at_exit() -> None:
    unregister()


# -- readers ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
    """One registry file, its fields checked (never trusted: see :func:`status`)."""

    pid: int
    start_time: int
    uid: int
    rank: int
    local_rank: int
    world_size: int
    launcher: str
    host: str
    signals: tuple[str, ...]
    script: str
    armed_at: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``amldbg signal --json`` (every string made safe to print)."""
        return {
            "pid": self.pid, "rank": self.rank, "local_rank": self.local_rank,
            "world_size": self.world_size, "launcher": safetext.safe(self.launcher, 40),
            "host": safetext.safe(self.host, 200), "signals": list(self.signals),
            "script": safetext.safe(self.script, 200), "armed_at": safetext.safe(self.armed_at, 40),
        }


@dataclasses.dataclass
class Scan:
    """What the registry held: the entries, the files skipped (``name: why``), the
    directories read and the directories refused (``path why``)."""

    entries: list[Entry] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    directories: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)


def _int(raw: Mapping[str, Any], name: str, low: int = 0, high: int = 2**62) -> int:
    value = raw.get(name)
    if type(value) is not int or not low <= value <= high:  # bool is no int here
        raise ValueError(f"bad {name}")
    return value


def _str(raw: Mapping[str, Any], name: str, limit: int = 1000) -> str:
    value = raw.get(name)
    if type(value) is not str or len(value) > limit:
        raise ValueError(f"bad {name}")
    return value


def parse(text: str, path: str) -> Entry:
    """One entry from a file's text; ``ValueError`` when anything is missing or mistyped."""
    try:
        raw = json.loads(text)
    except RecursionError:
        raise ValueError("not JSON") from None
    if not isinstance(raw, dict) or raw.get("amldbg_registry") != FORMAT:
        raise ValueError("not a registry entry")
    pid = _int(raw, "pid", 1, 2**31)
    if os.path.basename(path) != f"{pid}.json":
        raise ValueError("its name is not its pid's")
    signals = raw.get("signals")
    if (
        not isinstance(signals, list) or not signals or len(signals) > len(SIGNALS)
        or any(type(name) is not str or name not in SIGNALS for name in signals)
    ):
        raise ValueError("bad signals")
    uid = _int(raw, "uid", 0, 2**32)
    if uid != _uid():
        raise ValueError(f"written for uid {uid}")
    world_size = _int(raw, "world_size", 1, 10_000_000)
    return Entry(
        pid=pid,
        start_time=_int(raw, "start_time"),
        uid=uid,
        rank=_int(raw, "rank", 0, 10_000_000),
        local_rank=_int(raw, "local_rank", 0, 10_000_000),
        world_size=world_size,
        launcher=_str(raw, "launcher", 40),
        host=_str(raw, "host", 300),
        signals=tuple(name for name in SIGNALS if name in signals),
        script=_str(raw, "script", 300),
        armed_at=_str(raw, "armed_at", 40),
        path=path,
    )


def _read(path: str) -> str:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)  # a symlink fails here (ELOOP)
    with open(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_uid != _uid():
            raise ValueError(f"owned by uid {info.st_uid}")
        if info.st_size > MAX_ENTRY:
            raise ValueError(f"too large ({info.st_size} bytes)")
        data = handle.read(MAX_ENTRY + 1)
    if len(data) > MAX_ENTRY:
        raise ValueError("too large")
    return data.decode("utf-8")


def scan(folders: Sequence[str] | None = None) -> Scan:
    """Read every registry file (``folders``, else :func:`candidates`) as hostile input.

    A directory that is missing is passed over, one that fails :func:`problem` is refused;
    a file that is too large, not JSON, mistyped, a symlink or someone else's is skipped
    and named in :attr:`Scan.skipped`. Never signals or removes anything.
    """
    found = Scan()
    seen: set[str] = set()
    for folder in folders if folders is not None else candidates():
        folder = os.path.abspath(folder)
        if folder in seen:
            continue
        seen.add(folder)
        why = problem(folder)
        if why == "does not exist":
            continue
        if why is not None:
            found.refused.append(f"{folder} {why}")
            continue
        found.directories.append(folder)
        try:
            names = sorted(os.listdir(folder))
        except OSError as error:
            found.refused.append(f"{folder} cannot be listed ({error.strerror})")
            continue
        for name in names[:MAX_FILES]:
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # a write in progress
            path = os.path.join(folder, name)
            if not name.endswith(".json"):
                found.skipped.append(f"{name}: not an entry")
                continue
            try:
                found.entries.append(parse(_read(path), path))
            except (OSError, ValueError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                found.skipped.append(f"{name}: {reason or type(error).__name__}")
        if len(names) > MAX_FILES:
            found.skipped.append(f"{len(names) - MAX_FILES} more files in {folder}")
    found.entries.sort(key=lambda entry: (entry.rank, entry.pid))
    return found


def entries(folders: Sequence[str] | None = None) -> list[Entry]:
    """The well-formed entries of the registry (see :func:`scan`); not yet verified alive."""
    return scan(folders).entries


def _process_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def status(entry: Entry) -> str:
    """``"alive"`` when the entry's process runs: its pid exists, is owned by the current uid
    and started when the entry says. Else ``"exited"`` (no such pid), ``"reused"`` (the pid
    now names another process), ``"other user"`` or ``"unverifiable"`` (no /proc)."""
    if not os.path.isdir("/proc/self"):
        return "unverifiable"
    started = start_time(entry.pid)
    if started is None:
        return "exited"
    if started != entry.start_time:
        return "reused"
    if _process_uid(entry.pid) != _uid() or entry.uid != _uid():
        return "other user"
    return "alive"


def alive(entry: Entry) -> bool:
    """True when ``entry``'s own process still runs (:func:`status`)."""
    return status(entry) == "alive"


def catches(pid: int, name: str) -> bool:
    """True when process ``pid`` has a handler for signal ``name`` (``SigCgt`` in
    ``/proc/<pid>/status``): sending it then cannot end the process by default action."""
    import signal

    number = getattr(signal, name, None)
    if number is None:
        return False
    try:
        with open(f"/proc/{int(pid)}/status", "rb") as handle:
            data = handle.read(16384)
    except OSError:
        return False
    for line in data.splitlines():
        if line.startswith(b"SigCgt:"):
            try:
                mask = int(line.split()[1], 16)
            except (IndexError, ValueError):
                return False
            return bool(mask >> (int(number) - 1) & 1)
    return False


def remove(entry: Entry) -> bool:
    """Remove a stale entry's file (a reader's clean-up); True when it was removed."""
    try:
        os.unlink(entry.path)
        return True
    except OSError:
        return False
