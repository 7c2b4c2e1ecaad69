"""``amldbg stacks PATH --html FILE``: one self-contained HTML page of the whole job.

:func:`render` turns the result of :func:`amldbg.cli.stacks.analyse` (with ``detail=True``)
into one page that a browser opens from disk, with nothing fetched:

* the verdict lines at the top: the collectives the ranks diverge at, the outliers, the
  ranks with no dump, the crash reports;
* a grid of every rank, coloured by the group of its main-thread stack, outliers, ranks with
  no dump and ranks a collective verdict names marked, with a legend (group, frame, count)
  and a search box (a rank, a range ``0-7,12``, or text of a frame);
* the merged call tree of every rank's main thread as an icicle flame graph: the outermost
  frame on top, each frame as wide as its number of ranks, labelled with its frame and its
  ranks; a click lists its ranks, a frame can be zoomed into;
* a click on a rank (in the grid, the flame graph, a verdict line) shows its threads, its
  frames with their code and values, and its collective record; built only then.

It stays small at thousands of ranks: every distinct string, frame, frame list, set of
values, thread and collective record is written once and ranks refer to it by number.

Everything in the page came from files that may be hostile. Text is HTML-escaped where it
is written into the markup; the data is JSON inside a ``<script type="application/json">``
block with ``<``, ``>``, ``&`` and every non-ASCII character escaped, so no string can end
the block; the page's script only ever sets ``textContent``, never HTML; and a strict
Content-Security-Policy (no source of any kind, the page's own style and script allowed by
their hashes) keeps anything that would slip through from running or loading.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from amldbg.cli.collectives import ranks_text
from amldbg.core import safetext

__all__ = ["render"]

#: Ranks drawn in the grid at most (a world size read from a hostile file may be absurd).
MAX_CELLS = 100_000
#: Lines of one kind (outliers, collectives, crashes) in the verdict; the rest are counted.
MAX_LINES = 40
#: Outlier lines in the verdict; the rest are named in one line.
MAX_OUTLIER_LINES = 12
#: Characters of any one string kept in the page.
MAX_TEXT = 2000


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as one safe line (escaped again: cheap, and the page relies on it)."""
    if value is None:
        return ""
    return safetext.shorten(safetext.escape(value), limit)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _ranks(value: Any) -> list[int]:
    """The non-negative integers of a list, sorted, each once."""
    if not isinstance(value, (list, tuple)):
        return []
    return sorted({v for v in value if isinstance(v, int) and not isinstance(v, bool) and v >= 0})


def _plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def _ranks_phrase(ranks: Sequence[int]) -> str:
    return f"rank{'s' if len(ranks) != 1 else ''} {ranks_text(ranks)}"


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _compact(value: Any) -> str:
    """Sizes or dtypes (``[[4]]``, ``["float"]``) as short text."""
    if isinstance(value, str):
        return _text(value, 200)
    try:
        return _text(json.dumps(value, separators=(",", ":"), ensure_ascii=True), 200)
    except (TypeError, ValueError, RecursionError):
        return "?"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


class _Table:
    """Values written once and referred to by their position."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._index: dict[Any, int] = {}

    def add(self, key: Any, item: Any = None) -> int:
        at = self._index.get(key)
        if at is None:
            at = self._index[key] = len(self.items)
            self.items.append(key if item is None else item)
        return at


class _Payload:
    """The page's data: tables of distinct strings, frames, frame lists, value sets,
    threads and collective records; processes and groups refer to them by number."""

    def __init__(self) -> None:
        self.strings = _Table()
        self.frames = _Table()
        self.stacks = _Table()
        self.values = _Table()
        self.threads = _Table()
        self.records = _Table()
        # analyse() hands the same frame lists to every rank at the same frames, and most
        # texts and records repeat from rank to rank: each is worked out once.
        self._texts: dict[tuple[str, int], int] = {}
        self._frame_lists: dict[int, tuple[Any, tuple[list[int], list[tuple[str, int, str]], list[int]]]] = {}
        self._raw_records: dict[str, int] = {}
        self._frame_dicts: dict[int, tuple[Any, int, tuple[str, int, str], int]] = {}

    def s(self, value: Any, limit: int = MAX_TEXT) -> int:
        if type(value) is str:
            at = self._texts.get((value, limit))
            if at is None:
                at = self._texts[(value, limit)] = self.strings.add(_text(value, limit))
            return at
        return self.strings.add(_text(value, limit))

    def frame(self, raw: Mapping[str, Any]) -> tuple[int, tuple[str, int, str]]:
        """A frame's number and its key (file, line, function)."""
        file = _text(raw.get("file", "?"), 500)
        line = _int(raw.get("line")) or 0
        function = _text(raw.get("function", "?"), 300)
        library = 1 if raw.get("library") is True else 0
        code = raw.get("code")
        code_id = self.s(code, 300) if isinstance(code, str) and code else -1
        entry = (self.s(file), line, self.s(function), library, code_id)
        return self.frames.add(entry, list(entry)), (file, line, function)

    def value_set(self, raw: Any) -> int:
        if not isinstance(raw, Mapping) or not raw:
            return -1
        flat: list[int] = []
        for name, value in list(raw.items())[:64]:
            flat += [self.s(name, 200), self.s(value, 400)]
        key = tuple(flat)
        return self.values.add(key, flat)

    def thread(self, raw: Mapping[str, Any]) -> tuple[int, list[tuple[str, int, str]], list[int]]:
        """A thread's number, its frames' keys and frame numbers."""
        raw_frames = raw.get("frames")
        known = self._frame_lists.get(id(raw_frames))
        if known is not None and known[0] is raw_frames:
            frame_ids, keys, value_ids = known[1]
        else:
            frame_ids, keys, value_ids = [], [], []
            for frame in _list(raw_frames)[:200]:
                if not isinstance(frame, Mapping):
                    continue
                seen = self._frame_dicts.get(id(frame))
                if seen is None or seen[0] is not frame:
                    at, key = self.frame(frame)
                    seen = self._frame_dicts[id(frame)] = (frame, at, key, self.value_set(frame.get("locals")))
                frame_ids.append(seen[1])
                keys.append(seen[2])
                value_ids.append(seen[3])
            # The list itself is kept with its id, so the id cannot be reused meanwhile.
            self._frame_lists[id(raw_frames)] = (raw_frames, (frame_ids, keys, value_ids))
        stack = self.stacks.add(tuple(frame_ids), frame_ids)
        values = value_ids if any(v >= 0 for v in value_ids) else []
        name, main = self.s(raw.get("name", "?"), 200), 1 if raw.get("main") else 0
        thread = self.threads.add((name, main, stack, tuple(values)), [name, main, stack, values])
        return thread, keys, frame_ids

    def record(self, raw: Any) -> int:
        """A rank's collective record (its process groups, schema of the dumps)."""
        try:
            whole = json.dumps(raw, sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError):
            whole = None
        if whole is not None and whole in self._raw_records:
            return self._raw_records[whole]
        at = self._record(raw)
        if whole is not None:
            self._raw_records[whole] = at
        return at

    def _record(self, raw: Any) -> int:
        groups = []
        for group in _list(raw)[:32]:
            if not isinstance(group, Mapping):
                continue
            entries = []
            for entry in _list(group.get("entries"))[-16:]:
                if not isinstance(entry, Mapping):
                    continue
                entries.append([
                    _int(entry.get("seq")), self.s(entry.get("op", "?"), 100),
                    self.s(_compact(entry.get("sizes", ""))), self.s(_compact(entry.get("dtypes", ""))),
                    self.s(entry.get("state", ""), 40), 1 if entry.get("p2p") else 0,
                ])
            groups.append([
                self.s(group.get("process_group", group.get("pg", "?")), 200),
                self.s(group.get("pg", ""), 200),
                (ranks_text(_ranks(group.get("ranks"))) if "ranks" in group
                 else _int(group.get("size"))),
                _int(group.get("last_enqueued")), _int(group.get("last_started")),
                _int(group.get("last_completed")), entries,
            ])
        if not groups:
            return -1
        key = json.dumps(groups, separators=(",", ":"))
        return self.records.add(key, groups)


def _verdict(result: Mapping[str, Any]) -> tuple[str, list[tuple[str, str, list[int]]]]:
    """The summary line and the verdict lines: (css class, text, ranks a click opens)."""
    groups = [_mapping(g) for g in _list(result.get("groups"))]
    shared = set(_ranks(result.get("shared_ranks")))
    ranks = sorted({r for g in groups for r in _ranks(g.get("ranks"))})
    processes = sum(len(_list(g.get("processes"))) or len(_ranks(g.get("ranks"))) for g in groups)
    world = _int(result.get("world_size")) or len(ranks)
    if groups:
        who = (
            _plural(len(ranks), "rank") if processes == len(ranks)
            else f"{_plural(processes, 'process', 'processes')} of {_plural(len(ranks), 'rank')}"
        )
        summary = (
            f"{who} dumped stacks (world size {world}); "
            f"{_plural(len(groups), 'distinct main-thread stack')}"
        )
    else:
        summary = "no stack dump in the given input"
    lines: list[tuple[str, str, list[int]]] = []

    def add(kind: str, items: Sequence[tuple[str, list[int]]], what: str, limit: int = MAX_LINES) -> None:
        for text, named in items[:limit]:
            lines.append((kind, text, named))
        if len(items) > limit:
            rest = sorted({r for _, named in items[limit:] for r in named})
            lines.append((kind, _text(
                f"{len(items) - limit} more {what}: {_ranks_phrase(rest)}", 1000) if rest
                else f"{len(items) - limit} more {what} not listed", rest[:1]))

    findings = [_mapping(item) for item in _list(result.get("collectives"))]
    collective_lines = [(_text(line), _named_by(line, findings)) for line in _list(result.get("collective_lines"))]
    given = bool(collective_lines)
    if not given:
        # An older analyse() without the text lines: say the verdict from the records.
        for item in findings:
            missing = _ranks(item.get("missing"))
            mismatch = [_mapping(m) for m in _list(item.get("mismatch"))]
            if not missing and not mismatch:
                continue
            head = (f"collective #{_int(item.get('seq'))} {_text(item.get('op', '?'), 100)} "
                    f"in {_text(item.get('process_group', '?'), 200)}")
            if missing:
                collective_lines.append((f"{head}: {_ranks_phrase(missing)} never entered it", missing))
            for m in mismatch:
                named = _ranks(m.get("ranks"))
                collective_lines.append((
                    f"{head}: {_ranks_phrase(named)} entered it as {_text(m.get('op', '?'), 100)} "
                    f"{_compact(m.get('sizes', ''))} {_compact(m.get('dtypes', ''))}", named,
                ))
    add("collective", collective_lines, "collective lines")
    outliers: list[tuple[str, list[int]]] = []
    for group in groups[1:]:
        frame = _text(group.get("frame", "?"), 300)
        for process in _list(group.get("processes")) or [{"rank": r} for r in _ranks(group.get("ranks"))]:
            process = _mapping(process)
            rank = _int(process.get("rank"))
            if rank is None:
                continue
            if rank in shared:
                pid = process.get("pid")
                host = _text(process.get("host", ""), 100)
                label = f"rank {rank} (pid {'?' if pid is None else _text(pid, 20)}{f' on {host}' if host else ''})"
            else:
                label = f"rank {rank}"
            outliers.append((f"outlier: {label} at {frame}", [rank]))
    # The grid shows them all; a few lines name them, so that the grid stays in view.
    add("outlier", outliers, "outliers", MAX_OUTLIER_LINES)
    if len(groups) == 1:
        lines.append(("ok", "no outlier: every rank that dumped is at the same frames", []))
    missing = _ranks(result.get("missing"))
    if missing:
        lines.append((
            "missing",
            f"no dump from {_ranks_phrase(missing)} (still making progress, or its log was not given)",
            missing[:1],
        ))
    for rank in sorted(shared):
        lines.append(("shared", f"several processes claim rank {rank}: each is shown with its pid and host", [rank]))
    crashes = []
    for crash in _list(result.get("crashes")):
        crash = _mapping(crash)
        rank = _int(crash.get("rank"))
        pid = crash.get("pid")
        crashes.append((
            f"crash: rank {rank} (pid {'?' if pid is None else _text(pid, 20)}): "
            f"{_text(crash.get('exception', '?'), 300)} at {_text(crash.get('frame', '?'), 300)}",
            [] if rank is None else [rank],
        ))
    add("crash", crashes, "crash reports")
    if not given:
        # The collective lines say what the recorder recorded; without them, say it here.
        for line in _recorder_lines(result.get("recorder")):
            lines.append(("recorder", line, []))
    return _text(summary), lines


def _named_by(line: Any, findings: Sequence[Mapping[str, Any]]) -> list[int]:
    """The rank a click on a collective line opens: the first one the line's finding names
    (``collective #4 ... in default_pg: rank 3 never entered it``)."""
    text = _text(line)
    for finding in findings:
        seq, group = _int(finding.get("seq")), _text(finding.get("process_group", ""), 200)
        if seq is None or not text.startswith(f"collective #{seq} ") or f" in {group}: " not in text:
            continue
        if "never entered" in text:
            named = _ranks(finding.get("missing"))
        else:
            named = [r for m in _list(finding.get("mismatch")) for r in _ranks(_mapping(m).get("ranks"))]
        return sorted(named)[:1]
    return []


def _recorder_lines(recorder: Any) -> list[str]:
    """What the Flight Recorder recorded, as analyse() puts it: a line, lines, or a mapping
    of states to ranks (``{"late": [2]}``) or to text."""
    if recorder is None or recorder == "":
        return []
    if isinstance(recorder, str):
        return [_text(f"collectives: {recorder}", 500)]
    if isinstance(recorder, (list, tuple)):
        return [_text(f"collectives: {line}", 500) for line in recorder[:MAX_LINES] if line]
    if isinstance(recorder, Mapping) and isinstance(recorder.get("states"), Mapping):
        # analyse()'s summary: {"states": {"on": [0, 1], "late": [2]}, "notes": ..., "none": [3]}
        parts = [f"{_text(state, 40)} on {_ranks_phrase(_ranks(ranks))}"
                 for state, ranks in list(recorder["states"].items())[:MAX_LINES]]
        if _ranks(recorder.get("none")):
            parts.append(f"no record from {_ranks_phrase(_ranks(recorder.get('none')))}")
        return [_text("Flight Recorder: " + "; ".join(parts), 1000)] if parts else []
    if isinstance(recorder, Mapping):
        parts = []
        for state, value in list(recorder.items())[:MAX_LINES]:
            if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
                parts.append(f"{_text(state, 40)} on {_ranks_phrase(_ranks(value))}")
            else:
                parts.append(f"{_text(state, 40)}: {_text(value, 300)}")
        return [_text("Flight Recorder: " + "; ".join(parts), 1000)] if parts else []
    return [_text(f"collectives: {recorder}", 500)]


def _tree(
    groups: Sequence[Mapping[str, Any]],
    stacks: dict[int, list[tuple[Any, str, str, int]]],
    payload: _Payload,
) -> dict[str, list[Any]]:
    """The merged call tree of the groups' main threads, nodes in display order (each node
    after its parent, children largest first), as columns."""
    # node: [key, label id, file id, library, count, groups, children]
    nodes: list[list[Any]] = [[None, payload.s("all ranks"), -1, 0, 0, [], {}]]
    for number, group in enumerate(groups):
        count = len(_list(group.get("processes"))) or len(_ranks(group.get("ranks"))) or 1
        node = nodes[0]
        node[4] += count
        node[5].append(number)
        for key, label, file, library in stacks.get(number, []):
            at = node[6].get(key)
            if at is None:
                at = node[6][key] = len(nodes)
                nodes.append([key, payload.s(label), payload.s(file) if file else -1, library, 0, [], {}])
            node = nodes[at]
            node[4] += count
            node[5].append(number)
    columns: dict[str, list[Any]] = {
        "parent": [], "label": [], "file": [], "lib": [], "count": [], "groups": [],
    }
    # Depth first, iteratively (stacks are deep, and hostile ones deeper).
    pending: list[tuple[int, int]] = [(0, -1)]
    while pending:
        at, parent = pending.pop()
        node = nodes[at]
        number = len(columns["parent"])
        columns["parent"].append(parent)
        columns["label"].append(node[1])
        columns["file"].append(node[2])
        columns["lib"].append(node[3])
        columns["count"].append(node[4])
        columns["groups"].append(node[5])
        children = sorted(node[6].values(), key=lambda c: (-nodes[c][4], c))
        pending.extend((child, number) for child in reversed(children))
    return columns


def _data(result: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the page's script draws, written once each."""
    payload = _Payload()
    groups = [_mapping(g) for g in _list(result.get("groups"))]
    rank_group: dict[int, int] = {}
    group_rows = []
    for number, group in enumerate(groups):
        ranks = _ranks(group.get("ranks"))
        for member in ranks:
            rank_group.setdefault(member, number)
        group_rows.append({
            "frame": payload.s(group.get("frame", "?"), 300),
            "ranks": ranks,
            "n": len(_list(group.get("processes"))) or len(ranks),
            "reasons": [payload.s(r, 40) for r in _list(group.get("reasons"))[:8]],
            "stack": [payload.s(f, 300) for f in _list(group.get("stack"))[:200]],
        })
    processes: list[list[Any]] = []
    # The main thread's frames of one process of each group: the group's stack in the tree.
    stacks: dict[int, list[tuple[Any, str, str, int]]] = {}
    for item in _list(result.get("ranks_detail")):
        raw = _mapping(item)
        rank = _int(raw.get("rank"))
        if rank is None or rank < 0:
            continue
        given = _int(raw.get("group"))
        index = given if given is not None and 0 <= given < len(groups) else rank_group.get(rank, -1)
        threads = []
        for thread in _list(raw.get("threads"))[:256]:
            if not isinstance(thread, Mapping):
                continue
            at, keys, frame_ids = payload.thread(thread)
            threads.append(at)
            if thread.get("main") and index >= 0 and index not in stacks:
                stacks[index] = [
                    (key, f"{_basename(key[0])}:{key[1]} in {key[2]}", key[0],
                     payload.frames.items[frame][3])
                    for key, frame in zip(keys, frame_ids)
                ]
        pid = _int(raw.get("pid"))
        processes.append([
            rank, pid, payload.s(raw.get("host", ""), 200), payload.s(raw.get("reason", ""), 40),
            payload.s(raw.get("time", ""), 60), index, threads, payload.record(raw.get("collectives")),
            payload.s(raw.get("recorder") or "", 40),
        ])
    for number, members in enumerate(groups):
        if number not in stacks:
            # No detail of this group: its stack's labels stand for its frames.
            stacks[number] = [(label, _text(label, 300), "", 0) for label in _list(members.get("stack"))[:200]]
    collectives = []
    for raw_finding in _list(result.get("collectives"))[:1000]:
        item = _mapping(raw_finding)
        collectives.append({
            "pg": payload.s(item.get("process_group", item.get("pg", "?")), 200),
            "pgid": payload.s(item.get("pg", ""), 200),
            "seq": _int(item.get("seq")),
            "op": payload.s(item.get("op", "?"), 100),
            "sizes": payload.s(_compact(item.get("sizes", ""))),
            "dtypes": payload.s(_compact(item.get("dtypes", ""))),
            "missing": _ranks(item.get("missing")),
            "mismatch": [
                {"ranks": _ranks(_mapping(m).get("ranks")), "op": payload.s(_mapping(m).get("op", "?"), 100),
                 "sizes": payload.s(_compact(_mapping(m).get("sizes", ""))),
                 "dtypes": payload.s(_compact(_mapping(m).get("dtypes", "")))}
                for m in _list(item.get("mismatch"))[:64]
            ],
        })
    crashes = []
    for raw_crash in _list(result.get("crashes"))[:1000]:
        crash = _mapping(raw_crash)
        crash_rank = _int(crash.get("rank"))
        if crash_rank is None:
            continue
        crashes.append([
            crash_rank, payload.s(crash.get("exception", "?"), 300), payload.s(crash.get("frame", "?"), 300),
            payload.s(crash.get("time", ""), 60), payload.s(crash.get("file", ""), 300),
        ])
    missing = _ranks(result.get("missing"))
    world = _int(result.get("world_size")) or 0
    cells = set(rank_group) | set(missing) | {p[0] for p in processes}
    if 0 < world <= MAX_CELLS:
        cells |= set(range(world))
    return {
        "cells": sorted(cells)[:MAX_CELLS],
        "groups": group_rows,
        "outliers": _ranks(result.get("outliers")),
        "missing": missing,
        "shared": _ranks(result.get("shared_ranks")),
        "collectives": collectives,
        "crashes": crashes,
        "procs": processes,
        "tree": _tree(groups, stacks, payload),
        "frames": payload.frames.items,
        "stacks": payload.stacks.items,
        "values": payload.values.items,
        "threads": payload.threads.items,
        "records": payload.records.items,
        "s": payload.strings.items,
    }


def _script_json(data: Any) -> str:
    """JSON that cannot end or confuse the ``<script>`` element it is written in: ASCII only
    (U+2028 and U+2029 too), and no ``<``, ``>`` or ``&`` (``</script>``, ``<!--``)."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def render(result: Mapping[str, Any]) -> str:
    """The page for ``result`` (:func:`amldbg.cli.stacks.analyse` with ``detail=True``; the
    keys it lacks are left out of the page): one self-contained HTML document, nothing
    fetched. Never raises for odd values in ``result``."""
    summary, lines = _verdict(result)
    data = _data(result)
    e = html.escape
    items = []
    for kind, text, named in lines:
        attribute = f' data-rank="{named[0]}"' if named else ""
        items.append(f'<li class="v-{kind}"{attribute}>{e(text)}</li>')
    verdict = "\n".join(items) or '<li class="v-ok">nothing to report</li>'
    csp = (
        f"default-src 'none'; style-src {_hash(_CSS)}; script-src {_hash(_JS)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        # The policy is this module's own text: no quote or markup to escape in it.
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
        '<meta name="referrer" content="no-referrer">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>amldbg stacks: {e(summary)}</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n",
        _BODY.format(summary=e(summary), verdict=verdict),
        f'<script type="application/json" id="amldbg-data">{_script_json(data)}</script>\n',
        f"<script>{_JS}</script>\n</body>\n</html>\n",
    ])


_BODY = """\
<main>
<header><h1>amldbg stacks</h1><p class="summary">{summary}</p></header>
<section id="verdict" aria-label="verdict"><ul>
{verdict}
</ul></section>
<section id="ranks" aria-labelledby="ranks-title">
<h2 id="ranks-title">Ranks</h2>
<div class="tools"><label>Find <input id="find" type="search" autocomplete="off" spellcheck="false"
 placeholder="rank (3), ranks (0-7,12) or frame text"></label> <span id="find-status" aria-live="polite"></span></div>
<div id="legend"></div>
<div id="grid" aria-label="ranks, coloured by main-thread stack"></div>
</section>
<section id="flame" aria-labelledby="flame-title">
<h2 id="flame-title">Main threads, merged</h2>
<p class="hint">Outermost frame on top; a frame is as wide as its number of ranks. Hover or click a frame for its ranks.</p>
<div id="flame-graph"></div>
<div id="flame-sel"></div>
</section>
</main>
<aside id="detail" aria-label="rank detail"><p class="hint">Click a rank in the grid or the flame graph to see its threads, frames, values and collectives.</p></aside>
<div id="tip" role="tooltip" hidden></div>
<noscript><p>The grid, the flame graph and the rank details need JavaScript; the verdict above is complete without it.</p></noscript>
"""

_CSS = """
:root{--fg:#1d2430;--muted:#5b6575;--line:#d8dde5;--bg:#fff;--panel:#f6f7f9;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
*{box-sizing:border-box}
html,body{margin:0;padding:0;background:var(--bg);color:var(--fg);font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{display:grid;grid-template-columns:minmax(0,1fr) minmax(320px,38%);min-height:100vh}
@media (max-width:900px){body{display:block}#detail{position:static;height:auto;border-left:0;border-top:1px solid var(--line)}}
main{padding:12px 18px;min-width:0}
h1{font-size:20px;margin:0 0 2px}
h2{font-size:15px;margin:18px 0 6px}
h3{font-size:14px;margin:14px 0 4px}
.summary,.hint{color:var(--muted);margin:2px 0 6px}
#verdict ul{list-style:none;margin:8px 0;padding:0}
#verdict li{font-family:var(--mono);font-size:13px;padding:3px 8px;margin:2px 0;border-left:4px solid var(--line);background:var(--panel);overflow-wrap:anywhere}
#verdict li[data-rank]{cursor:pointer}
#verdict li[data-rank]:hover{background:#eceff4}
.v-collective{border-left-color:#c62828!important;font-weight:600}
.v-outlier{border-left-color:#e4572e!important}
.v-missing{border-left-color:#7a7a7a!important}
.v-crash{border-left-color:#8e24aa!important}
.v-ok{border-left-color:#29a36a!important}
.tools{margin:4px 0 8px}
#find{font:inherit;padding:3px 6px;width:22em;max-width:70%;border:1px solid var(--line);border-radius:4px}
#find-status{color:var(--muted);margin-left:6px}
#legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:4px 0 10px;font-size:13px}
.lg{display:inline-flex;align-items:center;gap:6px;cursor:pointer;max-width:100%;overflow-wrap:anywhere}
.lg.on{text-decoration:underline}
.sw{display:inline-block;flex:none;width:14px;height:14px;border-radius:3px;border:1px solid rgba(0,0,0,.25)}
#grid{display:grid;gap:2px;align-items:stretch;user-select:none}
.rl{align-self:center;font:10px var(--mono);color:var(--muted);text-align:right;padding-right:4px;white-space:nowrap}
.c{position:relative;border-radius:2px;cursor:pointer;color:#10151d;font:11px/1 var(--mono);display:flex;align-items:center;justify-content:center;overflow:hidden}
.c.big{font-size:13px;font-weight:600}
.c.out{box-shadow:inset 0 0 0 2px #111}
.c.miss{background:repeating-linear-gradient(45deg,#f2f2f2 0 3px,#c7c7c7 3px 5px)!important;outline:1px dashed #888;outline-offset:-1px;color:#555}
.c.coll::after{content:"";position:absolute;top:0;right:0;width:35%;max-width:9px;aspect-ratio:1;background:#c62828;border-bottom-left-radius:100%}
.c.crash::before{content:"";position:absolute;bottom:0;left:0;width:35%;max-width:9px;aspect-ratio:1;background:#8e24aa;border-top-right-radius:100%}
.c.sel{outline:3px solid #0b57d0;outline-offset:1px;z-index:1}
#grid.dim .c:not(.hl){opacity:.22}
#flame-graph{position:relative;overflow:hidden;border:1px solid var(--line);border-radius:4px;background:#fbfbfc}
.fn{position:absolute;height:19px;border-right:1px solid #fff;border-bottom:1px solid #fff;padding:2px 4px;font:11.5px/15px var(--mono);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;cursor:pointer;color:#10151d}
.fn.lib{opacity:.62}
.fn.anc{background:#e3e6eb!important;color:var(--muted)}
.fn:hover{filter:brightness(.9)}
.fn.pick{box-shadow:inset 0 0 0 2px #0b57d0}
#flame-sel{margin:8px 0;font-size:13px;overflow-wrap:anywhere}
#flame-sel .where{font-family:var(--mono)}
button{font:inherit;font-size:12px;padding:2px 8px;margin:4px 6px 0 0;border:1px solid var(--line);border-radius:4px;background:#fff;cursor:pointer}
.chips{display:flex;flex-wrap:wrap;gap:3px;margin-top:4px}
.chip{font:12px var(--mono);padding:1px 6px;border-radius:9px;background:#e8edf5;cursor:pointer;border:0}
#detail{position:sticky;top:0;height:100vh;overflow:auto;border-left:1px solid var(--line);background:var(--panel);padding:12px 16px;min-width:0}
#detail h2{margin-top:0;font-size:18px}
.badges{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0}
.badge{font-size:12px;padding:1px 7px;border-radius:9px;background:#e0e4ea}
.badge.bad{background:#fde0dc;color:#8a1c0c}
.meta{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
details.th{margin:6px 0;border:1px solid var(--line);border-radius:4px;background:#fff}
details.th>summary{cursor:pointer;padding:4px 8px;font-weight:600;overflow-wrap:anywhere}
ol.frames{list-style:none;margin:0;padding:0 8px 6px}
.fr{border-top:1px solid #eef0f3;padding:4px 0}
.fr .loc{font:12.5px var(--mono);overflow-wrap:anywhere}
.fr.lib .loc{color:var(--muted)}
.fr.user .loc{font-weight:600}
.code{font:12px var(--mono);background:#f3f5f8;padding:2px 6px;margin:2px 0 0 12px;white-space:pre-wrap;overflow-wrap:anywhere}
table.vals{border-collapse:collapse;margin:3px 0 0 12px;font:12px var(--mono)}
table.vals td{padding:1px 6px;vertical-align:top;overflow-wrap:anywhere}
table.vals td:first-child{color:#0b57d0;white-space:nowrap}
table.coll{border-collapse:collapse;font:12px var(--mono);margin:4px 0 8px;background:#fff}
table.coll th,table.coll td{border:1px solid var(--line);padding:2px 6px;text-align:left;overflow-wrap:anywhere}
table.coll tr.at td{background:#fde0dc}
#tip{position:fixed;z-index:10;max-width:460px;padding:5px 8px;background:#1d2430;color:#fff;font:12px/1.35 var(--mono);border-radius:4px;pointer-events:none;white-space:pre-wrap;overflow-wrap:anywhere}
#tip[hidden]{display:none}
"""

_JS = r"""
(function () {
"use strict";
var t0 = performance.now();
var D = JSON.parse(document.getElementById("amldbg-data").textContent);
var S = D.s;
function s(i) { return i >= 0 && i < S.length ? S[i] : ""; }
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function plural(n, w, many) { return n + " " + (n === 1 ? w : (many || w + "s")); }
function ranksText(list) {
  var out = [], i = 0, a = list.slice().sort(function (x, y) { return x - y; });
  while (i < a.length) {
    var j = i;
    while (j + 1 < a.length && a[j + 1] <= a[j] + 1) j++;
    out.push(a[i] === a[j] ? String(a[i]) : a[i] + "-" + a[j]);
    i = j + 1;
  }
  return out.join(",");
}
function ranksPhrase(list, limit) {
  var text = ranksText(list);
  if (limit && text.length > limit) {
    var cut = text.lastIndexOf(",", limit);
    text = text.slice(0, cut > 0 ? cut : limit) + ",\u2026 (" + list.length + ")";
  }
  return (list.length === 1 ? "rank " : "ranks ") + text;
}

var PALETTE = ["#9cc0e6", "#f28e5c", "#f5c04a", "#a98bd9", "#5fc28d", "#e86d9a", "#4fb8c4", "#b08d6e", "#c7d24f", "#8e9ae0"];
function colour(g) {
  if (g < 0) return "#e6e6e6";
  if (g < PALETTE.length) return PALETTE[g];
  return "hsl(" + Math.round((g * 137.508) % 360) + ",58%,66%)";
}

// Who is where.
var groupOf = new Map(), procsOf = new Map();
D.groups.forEach(function (g, n) { g.ranks.forEach(function (r) { if (!groupOf.has(r)) groupOf.set(r, n); }); });
D.procs.forEach(function (p, i) {
  var list = procsOf.get(p[0]);
  if (!list) procsOf.set(p[0], list = []);
  list.push(i);
});
var outlier = new Set(D.outliers), missing = new Set(D.missing), shared = new Set(D.shared);
var crashed = new Set(D.crashes.map(function (c) { return c[0]; }));
var named = new Map();  // rank -> collective verdict phrases naming it
function name(rank, text) {
  var list = named.get(rank);
  if (!list) named.set(rank, list = []);
  list.push(text);
}
D.collectives.forEach(function (c) {
  var head = "#" + c.seq + " " + s(c.op) + " in " + s(c.pg);
  c.missing.forEach(function (r) { name(r, "never entered collective " + head); });
  c.mismatch.forEach(function (m) {
    m.ranks.forEach(function (r) { name(r, "entered collective " + head + " as " + s(m.op) + " " + s(m.sizes) + " " + s(m.dtypes)); });
  });
});

var tip = $("tip");
function showTip(text, ev) {
  tip.textContent = text;
  tip.hidden = false;
  moveTip(ev);
}
function moveTip(ev) {
  if (tip.hidden) return;
  var x = ev.clientX + 14, y = ev.clientY + 16, w = tip.offsetWidth, h = tip.offsetHeight;
  if (x + w > innerWidth - 4) x = Math.max(4, ev.clientX - w - 10);
  if (y + h > innerHeight - 4) y = Math.max(4, ev.clientY - h - 10);
  tip.style.left = x + "px";
  tip.style.top = y + "px";
}
function hideTip() { tip.hidden = true; }

// -- the grid ---------------------------------------------------------------------------
var grid = $("grid"), cellOf = new Map(), highlight = null, selected = null;
function rankSummary(r) {
  var parts = ["rank " + r];
  if (missing.has(r)) parts.push("no dump");
  var g = groupOf.get(r);
  if (g !== undefined) parts.push("group " + (g + 1) + " at " + s(D.groups[g].frame));
  if (outlier.has(r)) parts.push("outlier");
  if (shared.has(r)) parts.push("claimed by several processes");
  if (crashed.has(r)) parts.push("crash report");
  (named.get(r) || []).forEach(function (t) { parts.push(t); });
  return parts.join("\n");
}
function buildGrid() {
  var n = D.cells.length;
  var size = n <= 64 ? 44 : n <= 256 ? 28 : n <= 1024 ? 16 : n <= 2048 ? 12 : 9;
  var gap = size < 12 ? 1 : 2;
  var labels = size < 28;
  var avail = Math.max(100, grid.clientWidth - (labels ? 48 : 0));
  var cols = Math.max(1, Math.floor((avail + gap) / (size + gap)));
  if (cols >= 16) cols -= cols % 8;  // a node's 8 ranks stay on one row
  cols = Math.min(cols, n || 1);
  grid.textContent = "";
  cellOf.clear();
  grid.style.gap = gap + "px";
  grid.style.gridTemplateColumns = (labels ? "max-content " : "") + "repeat(" + cols + "," + size + "px)";
  grid.style.gridAutoRows = (size < 28 ? size : Math.round(size * 0.78)) + "px";
  var frag = document.createDocumentFragment();
  for (var i = 0; i < n; i++) {
    var r = D.cells[i];
    if (labels && i % cols === 0) frag.appendChild(el("div", "rl", r));
    var c = document.createElement("div");
    var g = groupOf.get(r);
    var cls = "c";
    if (!labels) cls += " big";
    if (missing.has(r) || (g === undefined && !procsOf.has(r))) cls += " miss";
    if (outlier.has(r)) cls += " out";
    if (named.has(r)) cls += " coll";
    if (crashed.has(r)) cls += " crash";
    if (r === selected) cls += " sel";
    if (highlight && highlight.has(r)) cls += " hl";
    c.className = cls;
    c.dataset.rank = r;
    if (g !== undefined) c.style.background = colour(g);
    if (!labels) c.textContent = r;
    cellOf.set(r, c);
    frag.appendChild(c);
  }
  grid.appendChild(frag);
  grid.classList.toggle("dim", !!highlight);
}
function setHighlight(set) {
  highlight = set && set.size ? set : null;
  grid.classList.toggle("dim", !!highlight);
  cellOf.forEach(function (c, r) { c.classList.toggle("hl", !!highlight && highlight.has(r)); });
}
grid.addEventListener("click", function (ev) {
  var c = ev.target.closest("[data-rank]");
  if (c) selectRank(+c.dataset.rank);
});
grid.addEventListener("mouseover", function (ev) {
  var c = ev.target.closest("[data-rank]");
  if (c) showTip(rankSummary(+c.dataset.rank), ev); else hideTip();
});
grid.addEventListener("mousemove", moveTip);
grid.addEventListener("mouseleave", hideTip);

// -- the legend -------------------------------------------------------------------------
function buildLegend() {
  var host = $("legend");
  var shown = Math.min(D.groups.length, 24);
  for (var g = 0; g < shown; g++) {
    var grp = D.groups[g];
    var item = el("span", "lg");
    var sw = el("span", "sw");
    sw.style.background = colour(g);
    item.appendChild(sw);
    item.appendChild(el("span", null, "group " + (g + 1) + " \u00b7 " + plural(grp.ranks.length, "rank") + " \u00b7 " + s(grp.frame)));
    item.dataset.group = g;
    host.appendChild(item);
  }
  if (D.groups.length > shown) host.appendChild(el("span", "lg", (D.groups.length - shown) + " more groups (hover a rank)"));
  function marker(cls, text) {
    var item = el("span", "lg");
    var sw = el("span", "sw c " + cls);
    sw.style.background = cls === "out" ? colour(1) : "#fff";
    item.appendChild(sw);
    item.appendChild(el("span", null, text));
    host.appendChild(item);
  }
  if (D.outliers.length) marker("out", "outlier (not in group 1): " + plural(D.outliers.length, "rank"));
  if (D.missing.length) marker("miss", "no dump: " + plural(D.missing.length, "rank"));
  if (named.size) marker("coll", "named by a collective verdict: " + plural(named.size, "rank"));
  if (crashed.size) marker("crash", "crash report: " + plural(crashed.size, "rank"));
  host.addEventListener("click", function (ev) {
    var item = ev.target.closest("[data-group]");
    if (!item) return;
    var on = !item.classList.contains("on");
    host.querySelectorAll(".lg.on").forEach(function (x) { x.classList.remove("on"); });
    item.classList.toggle("on", on);
    setHighlight(on ? new Set(D.groups[+item.dataset.group].ranks) : null);
  });
}

// -- the flame graph (icicle) ---------------------------------------------------------------
var T = D.tree, N = T.parent.length, kids = [], depthOf = new Int32Array(N), nodeRanksCache = new Map();
for (var i = 0; i < N; i++) {
  kids.push([]);
  if (T.parent[i] >= 0) { kids[T.parent[i]].push(i); depthOf[i] = depthOf[T.parent[i]] + 1; }
}
function nodeRanks(i) {
  var got = nodeRanksCache.get(i);
  if (got) return got;
  var set = new Set();
  T.groups[i].forEach(function (g) { D.groups[g].ranks.forEach(function (r) { set.add(r); }); });
  got = Array.from(set).sort(function (a, b) { return a - b; });
  nodeRanksCache.set(i, got);
  return got;
}
function nodeLabel(i) { return s(T.label[i]) + " \u2014 " + ranksPhrase(nodeRanks(i), 48); }
// The whole label when it fits (about 7 px a character), else the function and the ranks.
function fitLabel(i, w) {
  var full = nodeLabel(i), room = (w - 8) / 7;
  if (full.length <= room) return full;
  var label = s(T.label[i]), at = label.indexOf(" in ");
  return (at >= 0 ? label.slice(at + 4) : label) + " \u2014 " + ranksPhrase(nodeRanks(i), 24);
}
function nodeTip(i) {
  var ranks = nodeRanks(i), lines = [];
  var file = s(T.file[i]);
  lines.push(i === 0 ? "all ranks" : s(T.label[i]));
  if (file) lines.push(file);
  if (T.lib[i]) lines.push("(library code)");
  lines.push(ranksPhrase(ranks, 400) + (T.count[i] !== ranks.length ? " (" + plural(T.count[i], "process", "processes") + ")" : ""));
  return lines.join("\n");
}
var zoom = 0, picked = -1, ROW = 20, MIN = 3;
var flame = $("flame-graph");
function drawFlame() {
  flame.textContent = "";
  var W = flame.clientWidth, frag = document.createDocumentFragment(), drawn = 0, rows = 0, hidden = 0;
  function place(i, x, w, row, cls) {
    var d = document.createElement("div");
    d.className = "fn" + (T.lib[i] ? " lib" : "") + (cls ? " " + cls : "") + (i === picked ? " pick" : "");
    d.dataset.node = i;
    d.style.left = x + "px";
    d.style.width = Math.max(1, w) + "px";
    d.style.top = row * ROW + "px";
    if (!cls) d.style.background = T.groups[i].length === 1 ? colour(T.groups[i][0]) : "#c9ced6";
    d.setAttribute("aria-label", nodeLabel(i));
    if (w >= 40) d.textContent = fitLabel(i, w);
    frag.appendChild(d);
    drawn++;
    if (row + 1 > rows) rows = row + 1;
  }
  var chain = [];
  for (var a = T.parent[zoom]; a >= 0; a = T.parent[a]) chain.unshift(a);
  chain.forEach(function (a, row) { place(a, 0, W, row, "anc"); });
  var stack = [[zoom, 0, W, chain.length]];
  while (stack.length) {
    var top = stack.pop(), i = top[0], x = top[1], w = top[2], row = top[3];
    if (drawn > 20000) { hidden++; continue; }
    place(i, x, w, row);
    var list = kids[i];
    if (!list.length) continue;
    // Widths by count; a frame of a few ranks among thousands is widened to MIN pixels
    // (taken from the wide ones) so that an outlier stays visible and clickable.
    var total = T.count[i], widths = [], small = 0, deficit = 0, big = 0;
    list.forEach(function (k) {
      var ideal = w * T.count[k] / total;
      widths.push(ideal);
      if (ideal < MIN) { small++; deficit += MIN - ideal; } else big += ideal;
    });
    if (small && big - deficit > big / 2) {
      var scale = (big - deficit) / big;
      widths = widths.map(function (v) { return v < MIN ? MIN : v * scale; });
    }
    var at = x;
    for (var k = 0; k < list.length; k++) {
      if (widths[k] >= 0.5) stack.push([list[k], at, widths[k], row + 1]); else hidden++;
      at += widths[k];
    }
  }
  flame.style.height = Math.max(1, rows) * ROW + 2 + "px";
  flame.appendChild(frag);
  flame.dataset.hidden = hidden;
}
flame.addEventListener("mouseover", function (ev) {
  var d = ev.target.closest("[data-node]");
  if (!d) { hideTip(); return; }
  var i = +d.dataset.node;
  showTip(nodeTip(i), ev);
  if (picked < 0) setHighlight(new Set(nodeRanks(i)));
});
flame.addEventListener("mousemove", moveTip);
flame.addEventListener("mouseleave", function () { hideTip(); if (picked < 0) setHighlight(null); });
flame.addEventListener("click", function (ev) {
  var d = ev.target.closest("[data-node]");
  if (d) pickNode(+d.dataset.node);
});
function pickNode(i) {
  picked = i;
  var ranks = nodeRanks(i), host = $("flame-sel");
  host.textContent = "";
  host.appendChild(el("div", "where", nodeLabel(i)));
  var file = s(T.file[i]);
  if (file) host.appendChild(el("div", "meta", file + (T.lib[i] ? " (library code)" : "")));
  var b = el("button", null, "zoom into this frame");
  b.addEventListener("click", function () { zoom = i; drawFlame(); });
  host.appendChild(b);
  if (zoom) {
    var r = el("button", null, "whole tree");
    r.addEventListener("click", function () { zoom = 0; drawFlame(); });
    host.appendChild(r);
  }
  var c = el("button", null, "clear");
  c.addEventListener("click", function () { picked = -1; host.textContent = ""; setHighlight(null); drawFlame(); });
  host.appendChild(c);
  host.appendChild(chips(ranks));
  setHighlight(new Set(ranks));
  drawFlame();
  if (ranks.length === 1) selectRank(ranks[0]);
}
function chips(ranks) {
  var box = el("div", "chips"), limit = 512;
  ranks.slice(0, limit).forEach(function (r) {
    var b = el("button", "chip", r);
    b.dataset.rank = r;
    b.title = "rank " + r;
    box.appendChild(b);
  });
  if (ranks.length > limit) box.appendChild(el("span", "meta", "\u2026 " + (ranks.length - limit) + " more: " + ranksPhrase(ranks, 300)));
  box.addEventListener("click", function (ev) {
    var b = ev.target.closest("[data-rank]");
    if (b) selectRank(+b.dataset.rank);
  });
  return box;
}

// -- one rank, built when asked ---------------------------------------------------------
var detail = $("detail");
function selectRank(r) {
  if (selected !== null && cellOf.has(selected)) cellOf.get(selected).classList.remove("sel");
  selected = r;
  if (cellOf.has(r)) cellOf.get(r).classList.add("sel");
  detail.textContent = "";
  detail.scrollTop = 0;
  detail.appendChild(el("h2", null, "rank " + r));
  var badges = el("div", "badges");
  function badge(text, bad) { badges.appendChild(el("span", "badge" + (bad ? " bad" : ""), text)); }
  var g = groupOf.get(r);
  if (g !== undefined) badge("group " + (g + 1) + " of " + D.groups.length, false);
  if (outlier.has(r)) badge("outlier", true);
  if (missing.has(r) || (g === undefined && !procsOf.has(r))) badge("no dump", true);
  if (shared.has(r)) badge("claimed by " + (procsOf.get(r) || []).length + " processes", true);
  (named.get(r) || []).forEach(function (t) { badge(t, true); });
  detail.appendChild(badges);
  var procs = procsOf.get(r) || [];
  if (!procs.length) {
    if (g !== undefined) {
      detail.appendChild(el("p", "meta", "at " + s(D.groups[g].frame) + "; this rank's threads and values were not in the input (its group's stack:)"));
      var ol = el("ol", "frames");
      D.groups[g].stack.forEach(function (f) { var li = el("li", "fr"); li.appendChild(el("div", "loc", s(f))); ol.appendChild(li); });
      detail.appendChild(ol);
    } else {
      detail.appendChild(el("p", "meta", "no dump from this rank: it was still making progress, or its log was not given"));
    }
  }
  procs.forEach(function (pi) { detail.appendChild(processBlock(D.procs[pi], procs.length > 1)); });
  D.crashes.forEach(function (c) {
    if (c[0] !== r) return;
    detail.appendChild(el("h3", null, "crash report"));
    detail.appendChild(el("div", "meta", s(c[1]) + " at " + s(c[2]) + (s(c[3]) ? " \u00b7 " + s(c[3]) : "")));
    if (s(c[4])) detail.appendChild(el("div", "meta", s(c[4])));
  });
  try { history.replaceState(null, "", "#rank=" + r); } catch (e) { /* a file page may refuse */ }
}
function processBlock(p, several) {
  var box = el("div", "proc");
  var meta = [];
  meta.push("pid " + (p[1] === null ? "?" : p[1]) + (s(p[2]) ? " on " + s(p[2]) : ""));
  if (s(p[3])) meta.push(s(p[3]));
  if (s(p[4])) meta.push(s(p[4]));
  if (p[5] >= 0) meta.push("group " + (p[5] + 1) + " at " + s(D.groups[p[5]].frame));
  if (several) box.appendChild(el("h3", null, "process " + (p[1] === null ? "?" : p[1])));
  box.appendChild(el("div", "meta", meta.join(" \u00b7 ")));
  box.appendChild(el("h3", null, "threads (" + p[6].length + ")"));
  p[6].forEach(function (ti) { box.appendChild(threadBlock(D.threads[ti])); });
  var state = s(p[8]);
  if (state && state !== "on") box.appendChild(el("p", "meta", "Flight Recorder: " + state + " (this rank's collectives are not compared)"));
  if (p[7] >= 0) box.appendChild(recordBlock(D.records[p[7]]));
  else if (!state || state === "on") box.appendChild(el("p", "meta", "no collective record in this dump"));
  return box;
}
function threadBlock(t) {
  var frames = D.stacks[t[2]], values = t[3];
  var d = el("details", "th");
  d.open = !!t[1];
  d.appendChild(el("summary", null, s(t[0]) + (t[1] ? " (main thread)" : "") + " \u2014 " + plural(frames.length, "frame")));
  var ol = el("ol", "frames");
  frames.forEach(function (fi, k) {
    var f = D.frames[fi];
    var li = el("li", "fr " + (f[3] ? "lib" : "user"));
    var file = s(f[0]), base = file.replace(/\\/g, "/").split("/").pop();
    var loc = el("div", "loc", base + ":" + f[1] + " in " + s(f[2]));
    loc.title = file;
    li.appendChild(loc);
    if (f[4] >= 0) li.appendChild(el("div", "code", s(f[4])));
    var vs = values.length > k ? values[k] : -1;
    if (vs >= 0) {
      var flat = D.values[vs], table = el("table", "vals");
      for (var j = 0; j + 1 < flat.length; j += 2) {
        var tr = el("tr");
        tr.appendChild(el("td", null, s(flat[j])));
        tr.appendChild(el("td", null, s(flat[j + 1])));
        table.appendChild(tr);
      }
      li.appendChild(table);
    }
    ol.appendChild(li);
  });
  d.appendChild(ol);
  return d;
}
function dash(v) { return v === null || v === undefined ? "\u2013" : String(v); }
function recordBlock(groups) {
  var box = el("div", "record");
  box.appendChild(el("h3", null, "collectives (Flight Recorder)"));
  groups.forEach(function (g) {
    var verdictSeq = new Set();
    D.collectives.forEach(function (c) {
      if ((s(c.pgid) && s(c.pgid) === s(g[1])) || s(c.pg) === s(g[0])) verdictSeq.add(c.seq);
    });
    var head = s(g[0]) + (s(g[1]) && s(g[1]) !== s(g[0]) ? " (pg " + s(g[1]) + ")" : "");
    if (typeof g[2] === "string") head += " \u00b7 ranks " + g[2];
    else if (typeof g[2] === "number") head += " \u00b7 " + plural(g[2], "member");
    head += " \u00b7 last enqueued " + dash(g[3]) + ", started " + dash(g[4]) + ", completed " + dash(g[5]);
    box.appendChild(el("div", "meta", head));
    var table = el("table", "coll"), tr = el("tr");
    ["#", "op", "sizes", "dtypes", "state"].forEach(function (h) { tr.appendChild(el("th", null, h)); });
    table.appendChild(tr);
    g[6].forEach(function (e) {
      var row = el("tr", verdictSeq.has(e[0]) ? "at" : null);
      [dash(e[0]), s(e[1]) + (e[5] ? " (p2p)" : ""), s(e[2]), s(e[3]), s(e[4])].forEach(function (v) { row.appendChild(el("td", null, v)); });
      table.appendChild(row);
    });
    box.appendChild(table);
  });
  return box;
}

// -- the verdict lines and the search box -----------------------------------------------------
$("verdict").addEventListener("click", function (ev) {
  var li = ev.target.closest("[data-rank]");
  if (li) selectRank(+li.dataset.rank);
});
var find = $("find"), status = $("find-status");
var RANKS = /^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$/;
function query() {
  var q = find.value;
  if (!q.trim()) { status.textContent = ""; setHighlight(null); return null; }
  var set = new Set();
  if (RANKS.test(q)) {
    q.split(",").forEach(function (part) {
      var ends = part.split("-").map(function (x) { return parseInt(x, 10); });
      var lo = ends[0], hi = ends.length > 1 ? ends[1] : ends[0];
      for (var r = lo; r <= hi && set.size < 200000; r++) if (cellOf.has(r) || procsOf.has(r)) set.add(r);
    });
    status.textContent = set.size ? plural(set.size, "rank") + (set.size === 1 ? " (Enter opens it)" : "") : "no such rank";
  } else {
    var needle = q.trim().toLowerCase();
    for (var i = 1; i < N; i++) {
      if (s(T.label[i]).toLowerCase().indexOf(needle) >= 0 || s(T.file[i]).toLowerCase().indexOf(needle) >= 0) {
        nodeRanks(i).forEach(function (r) { set.add(r); });
      }
    }
    status.textContent = set.size ? plural(set.size, "rank") + " at a frame matching" : "no frame matches";
  }
  setHighlight(set);
  return set;
}
find.addEventListener("input", query);
find.addEventListener("keydown", function (ev) {
  if (ev.key !== "Enter") return;
  var set = query();
  if (set && set.size) selectRank(Math.min.apply(null, Array.from(set).slice(0, 100000)));
});

// -- start ------------------------------------------------------------------------------
function start() {
  buildLegend();
  buildGrid();
  drawFlame();
  var resized = 0;
  addEventListener("resize", function () {
    clearTimeout(resized);
    resized = setTimeout(function () { buildGrid(); drawFlame(); }, 120);
  });
  var wanted = /^#rank=(\d+)$/.exec(location.hash);
  // Open the rank the others wait for: one a collective verdict names, else the first outlier.
  var first = wanted ? +wanted[1] : named.size ? Math.min.apply(null, Array.from(named.keys())) :
    D.outliers.length ? D.outliers[0] : null;
  if (first !== null) selectRank(first);
  // Milliseconds the script took, and since the page was asked for (for benchmarks/).
  document.documentElement.dataset.renderMs = Math.round(performance.now() - t0);
  document.documentElement.dataset.readyMs = Math.round(performance.now());
  document.documentElement.dataset.ready = "1";
}
try {
  start();
} catch (e) {
  var p = el("p", "v-crash", "this page could not draw everything: " + e);
  document.querySelector("main").appendChild(p);
  throw e;
}
})();
"""
