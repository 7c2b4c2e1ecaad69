"""The collectives of this rank in every dump: PyTorch's Flight Recorder, read at the moment.

When a stall report or the on-demand triggers are armed before the first process group
exists, :func:`prepare` turns the Flight Recorder on with a small ring
(``TORCH_FR_BUFFER_SIZE``, read by torch when it records its first collective), unless the
user set ``TORCH_FR_BUFFER_SIZE`` or ``TORCH_NCCL_TRACE_BUFFER_SIZE`` already. Armed after
a process group exists, it leaves torch alone (setting the variable then made torch 2.13
abort at exit) and says so in one line: the dumps carry stacks only.

:func:`snapshot` is the ``"collectives"`` section of a stack dump or crash report: per
process group, its last enqueued, started and completed collective (sequence numbers) and
its last few entries (sequence number, op, sizes, dtypes, state), bounded. gloo and NCCL go
through the same code: ``_dump_fr_trace_json`` (every backend's recorder) and, where it
exists, ``_dump_nccl_trace_json`` (NCCL's own ring). Membership comes from
``torch.distributed``'s own tables. None of the script's code runs: torch's C functions are
called on a thread of amldbg's own, waited for at most :data:`ANSWER_WAIT` seconds, and
never in a forked child (the recorder's lock may be held by a thread the child lacks).
Never raises.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Iterable, Mapping

from amldbg.core import announce, forksafe, safetext, threads

#: Collectives the ring keeps when amldbg turns the Flight Recorder on.
RING = 64
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
LATE = "late"
OFF = "off"
UNAVAILABLE = "unavailable"
ERROR = "error"

_lock = forksafe.lock()
# What prepare() found: None until a diagnostic is armed.
_recorder: str | None = None
_note = ""
# The pid whose recorder this is: a forked child (a data loader worker) never asks torch.
_owner_pid = os.getpid()
# A call into torch that has not answered: the next dump does not start another.
_pending: threading.Event | None = None

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
    try:
        return bool(dist.is_available() and dist.is_initialized())
    except Exception:
        return False


def prepare() -> str:
    """Turn the Flight Recorder on for this process if no process group exists yet; return
    what the dumps will carry (``"on"``, ``"late"``). Idempotent; never raises."""
    global _recorder, _note
    try:
        with _lock:
            if _recorder is not None:
                return _recorder
            chosen, on = _users_ring(os.environ)
            if chosen:
                # The user's own ring, or the user's wish that there be none.
                _recorder, _note = (ON, "") if on else (OFF, OFF_BY_USER)
            elif _process_group_exists():
                _recorder, _note = LATE, LATE_NOTE
                announce.info(f"collectives: {LATE_NOTE}")
            else:
                # Inherited by the launcher's children and subprocesses too: each records
                # into its own small ring.
                os.environ["TORCH_FR_BUFFER_SIZE"] = str(RING)
                _recorder = ON
            return _recorder
    except Exception as error:
        announce.warn_once("collectives:prepare", f"collectives are off: {error}")
        return ERROR


def _recorder_state() -> tuple[str, str]:
    if _recorder is not None:
        return _recorder, _note
    # Not armed by amldbg (a crash report of a rank that only has crash hooks).
    chosen, on = _users_ring(os.environ)
    if on:
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


def _entry(raw: Mapping[str, Any], completed: int | None) -> dict[str, Any] | None:
    p2p = bool(raw.get("is_p2p"))
    seq = _number(raw.get("p2p_seq_id" if p2p else "collective_seq_id"))
    if seq is None:
        return None
    state = raw.get("state")
    state = state if state in ("scheduled", "started", "completed") else "scheduled"
    if not p2p and completed is not None and seq <= completed:
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


def _answers() -> list[dict[str, Any]]:
    """What torch's recorders hold now (every backend's, and NCCL's own ring)."""
    try:
        c10d = sys.modules.get("torch._C._distributed_c10d")
        if c10d is None:
            import torch._C._distributed_c10d as c10d  # torch.distributed imported it already
    except Exception:
        return []
    answers = []
    for name in ("_dump_fr_trace_json", "_dump_nccl_trace_json"):
        function = getattr(c10d, name, None)
        if function is None:
            continue
        try:
            record = _record(function(includeCollectives=True, onlyActive=False))
        except Exception:
            continue
        if record is not None:
            answers.append(record)
    return answers


def _membership() -> dict[str, tuple[str, list[int]]]:
    """Each process group by torch's name: its description and its members' global ranks,
    from ``torch.distributed``'s own tables (no call into the script)."""
    found: dict[str, tuple[str, list[int]]] = {}
    try:
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
    except Exception:
        pass
    return found


def _readable(name: str, desc: str) -> str:
    if desc and desc != "undefined":
        return safetext.safe(desc, 60)
    return "default_pg" if name == "0" else safetext.safe(f"pg {name}", 60)


def _groups(answers: Iterable[Mapping[str, Any]], members: Mapping[str, tuple[str, list[int]]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    entries: dict[str, list[dict[str, Any]]] = {}

    def group(name: str, desc: str = "") -> dict[str, Any] | None:
        if name not in groups:
            if len(groups) >= MAX_GROUPS:
                return None
            known_desc, ranks = members.get(name, ("", []))
            groups[name] = {
                "process_group": _readable(name, desc or known_desc),
                "pg": safetext.safe(name, 60),
                "last_enqueued": None, "last_started": None, "last_completed": None,
                "entries": [],
            }
            if ranks and name == "0" and ranks == list(range(len(ranks))):
                # The default group is the whole world: its size says it, and a list of
                # 4,096 ranks in every rank's dump would be half of what a large job writes.
                groups[name]["size"] = len(ranks)
            elif ranks:
                groups[name]["ranks"] = ranks
        return groups[name]

    for answer in answers:
        status = answer.get("pg_status")
        if isinstance(status, dict):
            for name, fields in list(status.items())[:MAX_GROUPS]:
                found = group(str(name))
                if found is None or not isinstance(fields, dict):
                    continue
                for key, source in (("last_enqueued", "last_enqueued_collective"),
                                    ("last_started", "last_started_collective"),
                                    ("last_completed", "last_completed_collective")):
                    value = _number(fields.get(source))
                    if value is not None and (found[key] is None or value > found[key]):
                        found[key] = value
        raw_entries = answer.get("entries")
        if not isinstance(raw_entries, list):
            continue
        for raw in raw_entries[-RING * 4:]:
            if not isinstance(raw, dict):
                continue
            pg = raw.get("process_group")
            name, desc = (str(pg[0]), str(pg[1])) if isinstance(pg, list) and len(pg) >= 2 else (str(raw.get("pg_id", "?")), "")
            found = group(name, desc)
            if found is None:
                continue
            entry = _entry(raw, found["last_completed"])
            if entry is not None:
                entries.setdefault(name, []).append(entry)
    for name, found in groups.items():
        kept = entries.get(name, [])
        found["entries"] = kept[-MAX_ENTRIES:]
        collectives = [e["seq"] for e in kept if not e.get("p2p")]
        if collectives and (found["last_enqueued"] is None or max(collectives) > found["last_enqueued"]):
            found["last_enqueued"] = max(collectives)
    # Groups this rank belongs to but never used yet: a rank stuck before its first
    # collective in a group still says it is a member.
    for name, (desc, _ranks) in members.items():
        if name not in groups:
            group(name, desc)
    return sorted(groups.values(), key=lambda g: (len(g["pg"]), g["pg"]))


def _backend() -> str:
    try:
        dist = sys.modules["torch.distributed"]
        return safetext.safe(dist.get_backend(), 20) if dist.is_initialized() else ""
    except Exception:
        return ""


def _read() -> dict[str, Any]:
    return {"answers": _answers(), "members": _membership(), "backend": _backend()}


def snapshot(wait: float = ANSWER_WAIT) -> dict[str, Any] | None:
    """The ``"collectives"`` section of a dump, or ``None`` when this process never imported
    ``torch.distributed`` (or is a forked child). Waits at most ``wait`` seconds. Never
    raises."""
    global _pending
    try:
        if "torch.distributed" not in sys.modules or os.getpid() != _owner_pid:
            return None
        recorder, note = _recorder_state()
        section: dict[str, Any] = {"recorder": recorder}
        if note:
            section["note"] = note
        if not _process_group_exists():
            section["groups"] = []
            return section
        if _pending is not None and not _pending.is_set():
            section.update(recorder=ERROR, note="PyTorch's Flight Recorder did not answer an earlier dump")
            section["groups"] = _groups([], _membership())
            return section
        answered = threading.Event()
        _pending = answered

        def read() -> dict[str, Any]:
            try:
                return _read() if recorder == ON else {"answers": [], "members": _membership(), "backend": _backend()}
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
        return section
    except Exception as error:
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
    global _recorder, _note
    _recorder, _note = None, ""


def _after_fork_in_child() -> None:
    global _pending
    _pending = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
