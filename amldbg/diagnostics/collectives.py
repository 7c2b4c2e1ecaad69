"""The collectives of this rank in every dump: PyTorch's Flight Recorder, read at the moment.

Since torch 2.13 the Flight Recorder keeps a ring of the last 2,000 collectives of every
backend by default, and amldbg leaves it as it is. With an older torch, whose ring is off
unless ``TORCH_FR_BUFFER_SIZE`` / ``TORCH_NCCL_TRACE_BUFFER_SIZE`` is set, :func:`prepare`
(called when a stall report or the on-demand triggers are armed) turns it on with a small
ring of :data:`RING` entries if no process group exists yet (torch reads the variable when
it makes its first one); armed after that, it leaves torch alone and says so in one line. A
ring size the user set is always kept (``0`` keeps the recorder off).

:func:`snapshot` is the ``"collectives"`` section of a stack dump or crash report: per
process group, its last enqueued, started and completed collective (sequence numbers) and
its last few entries (sequence number, op, sizes, dtypes, state), bounded. gloo and NCCL go
through the same code: ``_dump_fr_trace_json`` (every backend's recorder) and, where it
exists, ``_dump_nccl_trace_json`` (NCCL's own ring). Membership comes from
``torch.distributed``'s own tables. None of the script's code runs: torch's C functions are
called on a thread of amldbg's own, waited for at most :data:`ANSWER_WAIT` seconds, and
never in a forked child (the recorder's lock may be held by a thread the child lacks). A
ring larger than :data:`LARGE_RING` is read without its entries: torch builds the whole
answer holding the GIL, which would freeze the script for seconds at every dump.

What torch's record says, and what amldbg takes from it:

* entries carry the process group's *name* (``process_group[0]``, the same on every rank)
  and a per-process *id* (``pg_id``, counted on each rank over the groups it is a member
  of), and ``pg_status`` is keyed by that id: a status is used only through the id→name
  map its entries give, so that ranks 2-3's first subgroup is not taken for ranks 0-1's;
* gloo counts send/recv in ``pg_status`` but neither records them nor numbers them in the
  entries: the last enqueued collective is the newest entry, and a status that disagrees
  with it is not used;
* a process group destroyed and made again has the same name and a new id: only the
  entries of its newest id are kept.

Never raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import threading
from typing import Any, Iterable, Mapping

from amldbg.core import announce, forksafe, safetext, threads
from amldbg.core.guard import guard, quietly

#: Collectives the ring keeps when amldbg turns the Flight Recorder on (torch < 2.13).
RING = 64
#: The first torch whose Flight Recorder is on by default, and the ring it keeps then.
DEFAULT_ON_SINCE = (2, 13)
DEFAULT_RING = 2000
#: A ring larger than this is read without its entries (see the module's docstring).
LARGE_RING = 4096
#: The variables that size the recorder's ring; one set by the user is left as it is.
BUFFER_VARIABLES = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
#: Entries kept per process group in a dump file (the driver-log line keeps fewer).
MAX_ENTRIES = 8
#: Process groups kept per dump.
MAX_GROUPS = 16
#: Tensors whose sizes and dtypes are kept per entry.
MAX_TENSORS = 8
#: Seconds a dump waits for torch's recorder to answer.
ANSWER_WAIT = 1.0
#: Bytes of the recorder's answer that are read (a user's large ring is cut, not parsed).
MAX_ANSWER = 8 * 1024 * 1024

ON = "on"
PARTIAL = "partial"
LATE = "late"
OFF = "off"
UNAVAILABLE = "unavailable"
ERROR = "error"

_lock = forksafe.lock()


@dataclasses.dataclass
class _State:
    """What this process's recorder was judged to be, and whose it is."""

    #: What prepare() found (and why): None until a diagnostic is armed.
    recorder: str | None = None
    note: str = ""
    #: The pid whose recorder this is: a forked child (a data loader worker) never asks torch.
    owner_pid: int = dataclasses.field(default_factory=os.getpid)
    #: A call into torch that has not answered: the next dump does not start another.
    pending: threading.Event | None = None


_state = _State()

LATE_NOTE = (
    "the process group existed before the diagnostics were armed, so PyTorch's Flight "
    "Recorder is off: dumps carry stacks only (arm amldbg before init_process_group, or set "
    "TORCH_FR_BUFFER_SIZE)"
)


def _users_ring(env: Mapping[str, str]) -> tuple[bool, bool]:
    """Whether the user sized the recorder's ring, and whether that size turns it on
    (``TORCH_FR_BUFFER_SIZE=0`` is the user's way to keep it off)."""
    chosen = False
    for name in BUFFER_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        chosen = True
        text = value.strip()
        if text.isdigit() and int(text) > 0:
            return True, True
    return chosen, False


OFF_BY_USER = "the user set the Flight Recorder's ring to 0 (TORCH_FR_BUFFER_SIZE): dumps carry stacks only"


def _process_group_exists() -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    with quietly():  # torch's failure: no process group to read
        return bool(dist.is_available() and dist.is_initialized())
    return False


def _torch_version() -> tuple[int, int] | None:
    """The installed torch's (major, minor), without importing it."""
    module = sys.modules.get("torch")
    text = vars(module).get("__version__") if module is not None else None
    if not isinstance(text, str):
        text = None
        with quietly():  # not installed, or unreadable metadata: no version
            import importlib.metadata

            text = importlib.metadata.version("torch")
        if text is None:
            return None
    found = re.match(r"(\d+)\.(\d+)", str(text))
    return (int(found.group(1)), int(found.group(2))) if found else None


def ring_on_by_default() -> bool:
    """True when the installed torch keeps a Flight Recorder ring without being asked."""
    version = _torch_version()
    return version is not None and version >= DEFAULT_ON_SINCE


def ring_size(env: Mapping[str, str]) -> int:
    """The entries torch's ring holds in a process started with ``env``."""
    for name in BUFFER_VARIABLES:
        text = env.get(name, "").strip()
        if text.isdigit():
            return int(text)
    return DEFAULT_RING if ring_on_by_default() else 0


def prepare() -> str:
    """Make sure the Flight Recorder records this process's collectives; return what the
    dumps will carry (``"on"``, ``"off"``, ``"late"``). Idempotent; never raises."""
    with guard("collectives are off", key="collectives:prepare"), _lock:
        if _state.recorder is not None:
            return _state.recorder
        chosen, on = _users_ring(os.environ)
        if chosen:
            # The user's own ring, or the user's wish that there be none.
            _state.recorder, _state.note = (ON, "") if on else (OFF, OFF_BY_USER)
        elif ring_on_by_default():
            _state.recorder = ON  # torch's own ring: nothing to change
        elif _process_group_exists():
            _state.recorder, _state.note = LATE, LATE_NOTE
            announce.info(f"collectives: {LATE_NOTE}")
        else:
            # Inherited by the launcher's children and subprocesses too: each records
            # into its own small ring.
            os.environ["TORCH_FR_BUFFER_SIZE"] = str(RING)
            _state.recorder = ON
        return _state.recorder
    return ERROR


def _recorder_state() -> tuple[str, str]:
    if _state.recorder is not None:
        return _state.recorder, _state.note
    # Not armed by amldbg (a crash report of a rank that only has crash hooks).
    chosen, on = _users_ring(os.environ)
    if on or (not chosen and ring_on_by_default()):
        return ON, ""
    if chosen:
        return OFF, OFF_BY_USER
    return OFF, "PyTorch's Flight Recorder was not on (TORCH_FR_BUFFER_SIZE unset)"


# -- reading torch's record -----------------------------------------------------------------
def _number(value: Any) -> int | None:
    """A non-negative sequence number from the recorder (it writes "-1" for none)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _sizes(value: Any) -> list[list[int]]:
    shown: list[list[int]] = []
    if isinstance(value, list):
        for shape in value[:MAX_TENSORS]:
            if isinstance(shape, list):
                shown.append([d for d in shape[:8] if isinstance(d, int) and not isinstance(d, bool)])
    return shown


def _dtypes(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [safetext.safe(d, 20).lower() for d in value[:MAX_TENSORS] if isinstance(d, str)]


def _op(name: Any) -> str:
    text = name if isinstance(name, str) else "?"
    # "gloo:all_reduce", "nccl:all_reduce_coalesced": the backend is said once per dump.
    return safetext.safe(text.split(":", 1)[-1] or "?", 60)


def _entry(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    p2p = bool(raw.get("is_p2p"))
    seq = _number(raw.get("p2p_seq_id" if p2p else "collective_seq_id"))
    if seq is None:
        return None
    state = raw.get("state")
    state = state if state in ("scheduled", "started", "completed") else "scheduled"
    if raw.get("retired") is True:
        state = "completed"  # gloo never writes "completed" into the entry itself
    entry: dict[str, Any] = {
        "seq": seq,
        "op": _op(raw.get("profiling_name")),
        "sizes": _sizes(raw.get("input_sizes")),
        "dtypes": _dtypes(raw.get("input_dtypes")),
        "state": state,
    }
    if p2p:
        entry["p2p"] = True
    return entry


def _record(dump: Any) -> dict[str, Any] | None:
    """The recorder's answer (JSON bytes), parsed; ``None`` when it is not one."""
    if not isinstance(dump, (bytes, str)) or len(dump) > MAX_ANSWER:
        return None
    try:
        record = json.loads(dump)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _answers(with_entries: bool = True) -> list[dict[str, Any]]:
    """What torch's recorders hold now (every backend's, and NCCL's own ring); only each
    group's status when ``with_entries`` is false."""
    c10d = sys.modules.get("torch._C._distributed_c10d")
    if c10d is None:
        with quietly():  # torch's failure: no answer
            import torch._C._distributed_c10d as c10d  # torch.distributed imported it already
        if c10d is None:
            return []
    answers = []
    for name in ("_dump_fr_trace_json", "_dump_nccl_trace_json"):
        function = getattr(c10d, name, None)
        if function is None:
            continue
        record = None
        with quietly():  # one recorder's failure: the other may still answer
            record = _record(function(includeCollectives=with_entries, onlyActive=False))
        if record is not None:
            answers.append(record)
    return answers


def _membership() -> dict[str, tuple[str, list[int]]]:
    """Each process group by torch's name: its description and its members' global ranks,
    from ``torch.distributed``'s own tables (no call into the script)."""
    found: dict[str, tuple[str, list[int]]] = {}
    with quietly():  # torch's tables are not as expected: what was read so far
        world = sys.modules["torch.distributed.distributed_c10d"]._world
        names = dict(world.pg_names)
        group_ranks = dict(world.pg_group_ranks)
        descriptions: Mapping[Any, Any] = {}
        with_desc = getattr(world, "pg_group_desc", None)  # not in every torch
        if isinstance(with_desc, dict):
            descriptions = dict(with_desc)
        for group, name in list(names.items())[:MAX_GROUPS * 4]:
            members = group_ranks.get(group)
            ranks = sorted(r for r in dict(members) if type(r) is int) if isinstance(members, dict) else []
            desc = descriptions.get(group)
            found[str(name)] = (desc if isinstance(desc, str) else "", ranks[:100_000])
    return found


def _readable(name: str, desc: str) -> str:
    if desc and desc != "undefined":
        return safetext.safe(desc, 60)
    return "default_pg" if name == "0" else safetext.safe(f"pg {name}", 60)


def _groups(answers: Iterable[Mapping[str, Any]], members: Mapping[str, tuple[str, list[int]]]) -> list[dict[str, Any]]:
    # Entries by group name, each from the newest incarnation (id) of the group.
    newest: dict[str, int] = {}
    by_name: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    descs: dict[str, str] = {}
    names_of_ids: dict[str, str] = {}
    statuses: list[Mapping[str, Any]] = []
    for answer in answers:
        status = answer.get("pg_status")
        if isinstance(status, dict):
            statuses.append(status)
        raw_entries = answer.get("entries")
        if not isinstance(raw_entries, list):
            continue
        for raw in raw_entries[-LARGE_RING:]:
            if not isinstance(raw, dict):
                continue
            pg = raw.get("process_group")
            pg_id = _number(raw.get("pg_id"))
            if not (isinstance(pg, list) and len(pg) >= 2 and pg_id is not None):
                continue
            name = str(pg[0])
            entry = _entry(raw)
            if entry is None:
                continue
            names_of_ids[str(pg_id)] = name
            descs.setdefault(name, str(pg[1]))
            newest[name] = max(newest.get(name, pg_id), pg_id)
            by_name.setdefault(name, []).append((pg_id, entry))
    groups: dict[str, dict[str, Any]] = {}
    for name in list(by_name) + [n for n in members if n not in by_name]:
        if len(groups) >= MAX_GROUPS:
            break
        known_desc, ranks = members.get(name, ("", []))
        kept = [entry for pg_id, entry in by_name.get(name, []) if pg_id == newest.get(name)]
        collectives = [e for e in kept if not e.get("p2p")]
        group: dict[str, Any] = {
            "process_group": _readable(name, known_desc or descs.get(name, "")),
            "pg": safetext.safe(name, 60),
            "last_enqueued": max((e["seq"] for e in collectives), default=None),
            "last_started": None,
            "last_completed": max((e["seq"] for e in collectives if e["state"] == "completed"), default=None),
            "entries": kept[-MAX_ENTRIES:],
        }
        if ranks and name == "0" and ranks == list(range(len(ranks))):
            # The default group is the whole world: its size says it, and a list of 4,096
            # ranks in every rank's dump would be half of what a large job writes.
            group["size"] = len(ranks)
        elif ranks:
            group["ranks"] = ranks
        _take_status(group, statuses, str(newest.get(name, "")), names_of_ids)
        groups[name] = group
    return sorted(groups.values(), key=lambda g: (len(g["pg"]), g["pg"]))


def _take_status(group: dict[str, Any], statuses: Iterable[Mapping[str, Any]], pg_id: str,
                 names_of_ids: Mapping[str, str]) -> None:
    """The started and completed numbers of the group's status, when that status is the
    group's (its id maps to the group's name) and agrees with the entries."""
    if not pg_id or names_of_ids.get(pg_id) != group["pg"]:
        return
    for status in statuses:
        fields = status.get(pg_id)
        if not isinstance(fields, dict):
            continue
        if _number(fields.get("last_enqueued_collective")) != group["last_enqueued"]:
            continue  # gloo's status also counts send/recv, which its entries do not number
        group["last_started"] = _number(fields.get("last_started_collective"))
        completed = _number(fields.get("last_completed_collective"))
        if completed is not None:
            group["last_completed"] = completed
        return


def _backend() -> str:
    with quietly():  # torch's failure: no backend named
        dist = sys.modules["torch.distributed"]
        return safetext.safe(dist.get_backend(), 20) if dist.is_initialized() else ""
    return ""


def _read(with_entries: bool = True) -> dict[str, Any]:
    return {"answers": _answers(with_entries), "members": _membership(), "backend": _backend()}


def snapshot(wait: float = ANSWER_WAIT) -> dict[str, Any] | None:
    """The ``"collectives"`` section of a dump, or ``None`` when this process never imported
    ``torch.distributed`` (or is a forked child). Waits at most ``wait`` seconds. Never
    raises."""
    try:
        if "torch.distributed" not in sys.modules or os.getpid() != _state.owner_pid:
            return None
        recorder, note = _recorder_state()
        section: dict[str, Any] = {"recorder": recorder}
        if note:
            section["note"] = note
        if not _process_group_exists():
            section["groups"] = []
            return section
        if _state.pending is not None and not _state.pending.is_set():
            section.update(recorder=ERROR, note="PyTorch's Flight Recorder did not answer an earlier dump")
            section["groups"] = _groups([], _membership())
            return section
        answered = threading.Event()
        _state.pending = answered

        size = ring_size(os.environ)
        with_entries = size <= LARGE_RING

        def read() -> dict[str, Any]:
            try:
                # A ring may hold entries even when amldbg did not turn it on (the user's,
                # torch's own): it is always read.
                return _read(with_entries)
            finally:
                answered.set()

        ok, found = threads.call_within(read, wait, "amldbg-collectives")
        if not ok:
            section.update(recorder=ERROR, note=f"PyTorch's Flight Recorder did not answer within {announce.seconds(wait)} s")
            section["groups"] = []
            return section
        if found["backend"]:
            section["backend"] = found["backend"]
        section["groups"] = _groups(found["answers"], found["members"])
        if any(g["entries"] for g in section["groups"]):
            section["recorder"] = ON
            section.pop("note", None)
        elif not with_entries and recorder == ON:
            section.update(recorder=PARTIAL, note=(
                f"the Flight Recorder's ring holds {size} entries: only its status was read "
                "(reading every entry holds the GIL, freezing the script at every dump)"))
        elif recorder == ON and not found["answers"]:
            section.update(recorder=ERROR, note="PyTorch's Flight Recorder gave no readable answer")
        return section
    except Exception as error:  # not the guard: the failure is told in the dump's own section
        return {"recorder": ERROR, "note": safetext.safe(f"the collectives could not be read: {type(error).__name__}", 200), "groups": []}


def shortened(section: Mapping[str, Any], entries: int) -> dict[str, Any]:
    """``section`` with at most ``entries`` entries per group (the driver-log line)."""
    short = dict(section)
    short["groups"] = [
        {**group, "entries": list(group.get("entries", []))[-entries:] if entries else []}
        for group in section.get("groups", [])
    ]
    return short


def forget() -> None:
    """Judge the recorder again at the next arm (tests)."""
    _state.recorder, _state.note = None, ""


def _after_fork_in_child() -> None:
    _state.pending = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
