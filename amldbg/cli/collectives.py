"""The collective verdict of ``amldbg stacks``: where the ranks' collectives diverge.

Pure functions over the ``"collectives"`` sections that :mod:`amldbg.cli.stacks` parsed from
the ranks' dumps (:class:`Record`, :class:`Group`, :class:`Entry`; the schema is written by
:mod:`amldbg.diagnostics.collectives`). Per process group (matched across ranks by torch's
name ``pg``; its members are its ``ranks`` when known, else the ranks that reported it),
:func:`verdict` finds the first sequence number at which the members diverge:

* some member never entered it (its last enqueued collective, or its newest entry, is
  below it) while another did: the members that never entered it are *missing*, each with
  the innermost user frame of its main thread;
* the members that entered it did not all call the same collective: the groups whose
  ``(op, sizes, dtypes)`` differ from the largest group are a *mismatch*. A sequence number is
  compared only when every rank that entered it still holds it in its ring (an older one,
  evicted, is known to be entered but not what it was).

When no member diverges but all entered the same last collective and none completed it,
every member waits in it: said too. Only ranks whose Flight Recorder was ``"on"`` are
compared (a late, off or failed recorder lists its groups without entries: read as "entered
nothing", it would name innocent ranks); :func:`recorder_summary` says which ranks were
which, so that the report can say in one line why collectives were not compared.

Everything here is bounded whatever the input (4,096 ranks, hostile counts), and every line
:func:`verdict_lines` returns is escaped to one safe line by :mod:`amldbg.core.safetext`.
"""

from __future__ import annotations

import bisect
import json
from typing import (
    Any,
    Callable,
    Collection,
    Iterable,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from amldbg.core import safetext

#: Frames named in one "never entered it" line; the other missing ranks are counted.
MAX_NAMED_FRAMES = 8
#: Mismatching groups written per finding: lines of text, and entries of JSON.
MAX_MISMATCH_LINES = 8
MAX_MISMATCH_JSON = 64
#: Findings written as text lines; the rest are counted in one line (all are in the JSON).
MAX_FINDING_LINES = 32

ON = "on"
#: torch's name of the default process group (the world).
DEFAULT_PG = "0"
#: A world size beyond this, read from a hostile dump, is no world.
MAX_WORLD = 100_000

#: The state of a rank whose dump's collectives section was damaged (dropped when read).
DAMAGED = "damaged"

# How the report says each state of the recorder ("the Flight Recorder was off on ...").
_STATE_TEXTS = {
    "late": "the Flight Recorder was armed late on {who}",
    "off": "the Flight Recorder was off on {who}",
    "unavailable": "the Flight Recorder was unavailable on {who}",
    "error": "the Flight Recorder could not be read on {who}",
    "partial": "only the Flight Recorder's status was read on {who}",
    DAMAGED: "the collectives in the dumps of {who} were damaged",
}

# (op, sizes, dtypes): what two ranks must share to have called the same collective.
Call = Tuple[Optional[str], Optional[tuple], Optional[Tuple[str, ...]]]


class Entry(NamedTuple):
    """One collective of a rank's ring (``sizes`` as nested tuples, hashable)."""

    seq: int
    op: str | None
    sizes: tuple | None
    dtypes: tuple[str, ...] | None
    state: str | None
    p2p: bool

    @property
    def call(self) -> Call:
        """What is compared between ranks at one sequence number."""
        return (self.op, self.sizes, self.dtypes)


class Group(NamedTuple):
    """One process group of a rank's dump."""

    process_group: str
    pg: str
    ranks: tuple[int, ...] | None
    last_enqueued: int | None
    last_started: int | None
    last_completed: int | None
    entries: tuple[Entry, ...]


class Record(NamedTuple):
    """A rank's ``"collectives"`` section: the recorder's state, a note, its groups."""

    recorder: str
    note: str
    backend: str
    groups: tuple[Group, ...]


def ranks_text(ranks: Iterable[int]) -> str:
    """``0-2,5``: ranks as ranges (each rank once)."""
    parts: list[str] = []
    start = previous = None
    for rank in sorted(set(ranks)):
        if previous is not None and rank == previous + 1:
            previous = rank
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = rank
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


#: Rank ranges one line names; the rest are counted.
MAX_RANGES = 16


def who(ranks: Sequence[int]) -> str:
    """``rank 3``, ``ranks 2-3``, ``ranks 1, 3``; past :data:`MAX_RANGES` ranges, ``... and N
    more`` (a line naming every other rank of 100,000 would be a megabyte)."""
    parts = ranks_text(ranks).split(",") if ranks else []
    shown = ", ".join(parts[:MAX_RANGES])
    if len(parts) > MAX_RANGES:
        named = sum(1 for part in parts[:MAX_RANGES] for _ in _range_members(part))
        shown += f" and {len(ranks) - named} more"
    return f"rank{'s' if len(ranks) != 1 else ''} {shown}"


def _range_members(part: str) -> range:
    first, _, last = part.partition("-")
    return range(int(first), int(last or first) + 1)


def _listed(sizes: Any) -> Any:
    return [_listed(item) for item in sizes] if isinstance(sizes, tuple) else sizes


def call_text(op: str | None, sizes: Any, dtypes: Sequence[str] | None) -> str:
    """``all_reduce [[4]] float``: a collective as the report names it."""
    parts = [op or "?"]
    if sizes is not None:
        parts.append(json.dumps(_listed(sizes) if isinstance(sizes, tuple) else sizes))
    if dtypes:
        parts.append(",".join(dtypes))
    return " ".join(parts)


def entry_dict(entry: Entry) -> dict[str, Any]:
    """An entry as JSON."""
    found: dict[str, Any] = {
        "seq": entry.seq, "op": entry.op,
        "sizes": _listed(entry.sizes) if entry.sizes is not None else None,
        "dtypes": list(entry.dtypes) if entry.dtypes is not None else None,
        "state": entry.state,
    }
    if entry.p2p:
        found["p2p"] = True
    return found


def group_dict(group: Group) -> dict[str, Any]:
    """A rank's process group as JSON (without its member list, which may be thousands of
    ranks long and is the same on every member: ``size`` says how many)."""
    found: dict[str, Any] = {
        "process_group": group.process_group, "pg": group.pg,
        "last_enqueued": group.last_enqueued, "last_started": group.last_started,
        "last_completed": group.last_completed,
        "entries": [entry_dict(e) for e in group.entries],
    }
    if group.ranks is not None:
        found["size"] = len(group.ranks)
    return found


def _pg_order(pg: str) -> tuple[bool, int, str]:
    # torch names its groups "0", "1", ... in the order they were made: the default first.
    return (not pg.isdigit(), int(pg) if pg.isdigit() and len(pg) < 18 else 0, pg)


def _most_common(values: Iterable[Any]) -> Any:
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return max(counts, key=lambda value: counts[value]) if counts else None


class _Member:
    """One compared rank in one process group: how far it got, and what its ring holds."""

    __slots__ = ("rank", "last", "held", "completed")

    def __init__(self, rank: int, group: Group) -> None:
        self.rank = rank
        self.held: dict[int, Call] = {}
        for entry in group.entries:
            if not entry.p2p:
                self.held.setdefault(entry.seq, entry.call)
        newest = max(self.held, default=-1)
        self.last = max(newest, -1 if group.last_enqueued is None else group.last_enqueued)
        self.completed = -1 if group.last_completed is None else group.last_completed


def _calls(members: Sequence[_Member], seq: int) -> dict[Call, list[int]]:
    """The ranks by what they called at ``seq``, largest group first (ties: lowest rank)."""
    found: dict[Call, list[int]] = {}
    for member in members:
        call = member.held.get(seq)
        if call is not None:
            found.setdefault(call, []).append(member.rank)
    return dict(sorted(found.items(), key=lambda item: (-len(item[1]), min(item[1]))))


def _diverges(members: Sequence[_Member]) -> int | None:
    """The first sequence number at which ``members`` diverge, else ``None``."""
    lasts = sorted(member.last for member in members)
    low, high = lasts[0], lasts[-1]
    first = low + 1 if low < high else None
    # Content: the seqs held by every member that entered them, oldest first.
    holders: dict[int, int] = {}
    for member in members:
        for seq in member.held:
            holders[seq] = holders.get(seq, 0) + 1
    for seq in sorted(holders):
        if first is not None and seq >= first:
            break
        entered = len(lasts) - bisect.bisect_left(lasts, seq)
        if entered >= 2 and holders[seq] == entered and len(_calls(members, seq)) > 1:
            return seq
    return first


def verdict(
    records: Mapping[int, Record],
    dumped: Iterable[int],
    where: Callable[[int], str | None],
    in_collective: Callable[[int], bool] = lambda rank: False,
    world: int = 0,
) -> list[dict[str, Any]]:
    """The findings, one per process group that diverges or where every member waits.

    ``records``: each rank's parsed section (ranks that dumped without one are left out);
    ``dumped``: every rank that dumped at all; ``where(rank)``: the innermost user frame of
    that rank's main thread (``train.py:47 in wait_for_shard``), or ``None``;
    ``in_collective(rank)``: whether its main thread is inside ``torch.distributed``;
    ``world``: the world size the dumps give, the members of the default group (torch's
    ``"0"``) when its dumps do not list them.

    "Every member waits in it" needs every member's last collective not completed. NCCL's
    watchdog records completions as they happen; gloo's recorder marks a collective
    completed only later (one that returned still reads as not completed), so with any
    backend but NCCL every member's main thread must also be inside ``torch.distributed``:
    ranks that all returned and hang elsewhere are not said to wait in a collective.
    """
    dumped_ranks = set(dumped)
    by_pg: dict[str, dict[int, Group]] = {}
    for rank, record in records.items():
        if record.recorder != ON:
            continue
        for group in record.groups:
            by_pg.setdefault(group.pg, {}).setdefault(rank, group)
    findings = []
    for pg in sorted(by_pg, key=_pg_order):
        trusted = {rank for rank in by_pg[pg] if records[rank].backend == "nccl" or in_collective(rank)}
        everyone = range(world) if pg == DEFAULT_PG and 1 < world <= MAX_WORLD else None
        found = _judge(pg, by_pg[pg], dumped_ranks, where, trusted, everyone)
        if found is not None:
            findings.append(found)
    return findings


def _judge(
    pg: str, reporters: Mapping[int, Group], dumped: set[int], where: Callable[[int], str | None],
    waits: Collection[int], everyone: Iterable[int] | None = None,
) -> dict[str, Any] | None:
    """The finding of one process group (``waits``: the ranks whose "not completed" can be
    believed, see :func:`verdict`; ``everyone``: its members when no dump lists them), else
    ``None``."""
    known = _most_common(g.ranks for g in reporters.values() if g.ranks is not None)
    if known is None:
        known = everyone
    members = set(reporters) | set(known or ())
    compared = [_Member(rank, reporters[rank]) for rank in sorted(reporters)]
    seq = _diverges(compared)
    last = compared[0].last
    waiting = (
        seq is None and last >= 0 and len(reporters) == len(members) >= 2
        and all(m.last == last and m.completed < last and m.rank in waits for m in compared)
    )
    if seq is None and not waiting:
        return None
    if seq is None:
        seq = last
    entered = [m for m in compared if m.last >= seq]
    missing = [m.rank for m in compared if m.last < seq]
    calls = _calls(entered, seq)
    call: Call = next(iter(calls), (None, None, None))
    mismatch: list[dict[str, Any]] = []
    if sum(len(ranks) for ranks in calls.values()) == len(entered):
        for (op, sizes, dtypes), ranks in list(calls.items())[1:]:
            mismatch.append({
                "ranks": ranks, "op": op, "sizes": _listed(sizes),
                "dtypes": list(dtypes) if dtypes is not None else None,
            })
    missing_at = {}
    for rank in missing:
        frame = where(rank)
        if frame is not None:
            missing_at[str(rank)] = frame
    name = _most_common(g.process_group for g in reporters.values())
    op, sizes, dtypes = call
    return {
        "process_group": name, "pg": pg, "seq": seq, "op": op,
        "sizes": _listed(sizes), "dtypes": list(dtypes) if dtypes is not None else None,
        "members": sorted(members),
        "entered": [m.rank for m in entered], "missing": missing, "missing_at": missing_at,
        "mismatch": mismatch[:MAX_MISMATCH_JSON],
        "mismatch_more": max(0, len(mismatch) - MAX_MISMATCH_JSON),
        "waiting": waiting,
        "not_compared": sorted((members & dumped) - set(reporters)),
        "no_dump": sorted(members - dumped),
    }


def recorder_summary(records: Mapping[int, Record], dumped: Iterable[int]) -> dict[str, Any]:
    """Which ranks had the Flight Recorder in which state: ``{"states": {"on": [0, 1],
    "late": [2]}, "notes": {"late": "..."}, "none": [3]}`` (``none``: ranks that dumped
    without a collectives section)."""
    states: dict[str, list[int]] = {}
    notes: dict[str, list[str]] = {}
    for rank in sorted(records):
        record = records[rank]
        states.setdefault(record.recorder, []).append(rank)
        if record.note:
            notes.setdefault(record.recorder, []).append(record.note)
    return {
        "states": states,
        "notes": {state: _most_common(texts) for state, texts in notes.items()},
        "none": sorted(set(dumped) - set(records)) if records else [],
    }


def _head(finding: Mapping[str, Any]) -> str:
    call = "" if finding["op"] is None else " " + call_text(finding["op"], finding["sizes"], finding["dtypes"])
    return f"collective #{finding['seq']}{call} in {finding['process_group']}"


def _missing_text(finding: Mapping[str, Any]) -> str:
    missing = finding["missing"]
    at = finding["missing_at"]
    by_frame: dict[str | None, list[int]] = {}
    for rank in missing:
        by_frame.setdefault(at.get(str(rank)), []).append(rank)
    if len(by_frame) == 1:
        frame = next(iter(by_frame))
        place = f" (at {frame})" if frame is not None else ""
        return f"{who(missing)} never entered it{place}"
    parts = []
    for frame, ranks in list(by_frame.items())[:MAX_NAMED_FRAMES]:
        parts.append(f"{who(ranks)} at {frame}" if frame is not None else f"{who(ranks)} with no main-thread frame")
    rest = sum(len(ranks) for ranks in list(by_frame.values())[MAX_NAMED_FRAMES:])
    if rest:
        parts.append(f"and {rest} more")
    return f"{who(missing)} never entered it ({'; '.join(parts)})"


def finding_lines(finding: Mapping[str, Any]) -> list[str]:
    """The text lines of one finding (not yet escaped)."""
    head = _head(finding)
    lines = []
    if finding["waiting"]:
        lines.append(f"{head}: {who(finding['entered'])} entered it and none completed it "
                     "(every member waits in it)")
    if finding["missing"]:
        lines.append(f"{head}: {_missing_text(finding)}")
    for group in finding["mismatch"][:MAX_MISMATCH_LINES]:
        lines.append(f"{head}: {who(group['ranks'])} entered "
                     f"{call_text(group['op'], group['sizes'], group['dtypes'])} instead")
    others = finding["mismatch"][MAX_MISMATCH_LINES:]
    more = sum(len(group["ranks"]) for group in others)
    if others or finding.get("mismatch_more"):
        variants = len(others) + finding.get("mismatch_more", 0)
        what = f"{more} more ranks" if not finding.get("mismatch_more") else "more ranks"
        lines.append(f"{head}: {what} entered {variants} other variants instead")
    if finding["no_dump"]:
        lines.append(f"{head}: no dump from {who(finding['no_dump'])} (not compared)")
    return lines


def _recorder_lines(summary: Mapping[str, Any], compared: int, findings: int) -> list[str]:
    states: Mapping[str, Sequence[int]] = summary["states"]
    on = bool(states.get(ON))
    tail = "not compared" if on else "stacks only"
    lines = []
    for state, ranks in sorted(states.items(), key=lambda item: min(item[1])):
        if state == ON:
            continue
        text = _STATE_TEXTS.get(state, "the Flight Recorder was '{state}' on {who}")
        note = summary["notes"].get(state)
        because = f" ({safetext.shorten(note, 200)})" if note else ""
        lines.append(f"collectives: {text.format(who=who(ranks), state=state)}{because}: {tail}")
    if summary["none"]:
        lines.append(f"collectives: no record from {who(summary['none'])} (an older amldbg, or "
                     f"no torch.distributed): {tail}")
    if on and not findings and not compared:
        lines.append(f"collectives: no collective recorded yet on {who(states[ON])}")
    elif on and not findings:
        groups = "process group" if compared == 1 else "process groups"
        lines.append(f"collectives: no divergence in the {compared} {groups} compared "
                     f"({who(states[ON])})")
    return lines


def verdict_lines(findings: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], compared: int) -> list[str]:
    """The report's collective lines, each escaped to one safe line: one per finding, then
    what could not be compared (``compared``: how many process groups were)."""
    lines = []
    for finding in findings[:MAX_FINDING_LINES]:
        lines.extend(finding_lines(finding))
    if len(findings) > MAX_FINDING_LINES:
        lines.append(f"collectives: {len(findings) - MAX_FINDING_LINES} more process groups "
                     "diverge (see --json)")
    lines.extend(_recorder_lines(summary, compared, len(findings)))
    return [safetext.escape(line) for line in lines]


def compared_groups(records: Mapping[int, Record]) -> int:
    """How many process groups the verdict compared (those of ranks whose recorder was on)."""
    return len({g.pg for r in records.values() if r.recorder == ON for g in r.groups})
