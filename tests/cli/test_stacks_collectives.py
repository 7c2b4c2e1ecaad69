"""`amldbg stacks`: the collective verdict, from dumps shaped exactly as the capture writes them
(``"collectives"``: amldbg/diagnostics/collectives.py; files ``json.dumps(indent=1)``, driver-log
lines from the real ``summary_line``), and ``--html``.

The end-to-end runs under a real torchrun that produce these dumps live with the capture's
tests; here each case is one file layout, and the assertion is the exact line a user reads.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amldbg.cli import collectives, stacks
from amldbg.diagnostics.stacks import summary_line
from harness.stack_dumps import write_job
from processes import ROOT, child_env, run_amldbg

LIB = "/usr/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"
CODE = "/mnt/code/train.py"
LATE_NOTE = "the process group existed before the diagnostics were armed"

# What must never reach a terminal raw (as test_stacks_command.py).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_amldbg("stacks", *args, input=stdin, cwd=ROOT,
                      env=child_env(PYTHONIOENCODING="utf-8:strict"))


def entry(seq: int, op: str = "all_reduce", sizes: Any = None, state: str = "completed",
          dtypes: Any = None) -> dict[str, Any]:
    return {"seq": seq, "op": op, "sizes": [[4]] if sizes is None else sizes,
            "dtypes": ["float"] if dtypes is None else dtypes, "state": state}


def group(entries: list[dict[str, Any]], *, pg: str = "0", name: str = "default_pg",
          ranks: list[int] | None = None, last: int | None = None, completed: int | None = None,
          members: bool = True) -> dict[str, Any]:
    """One process group as the capture writes it (``last_enqueued``: the newest entry, unless
    given)."""
    seqs = [e["seq"] for e in entries if not e.get("p2p")]
    found: dict[str, Any] = {
        "process_group": name, "pg": pg,
        "last_enqueued": last if last is not None else (max(seqs) if seqs else None),
        "last_started": None, "last_completed": completed, "entries": entries,
    }
    if members:
        found["ranks"] = list(range(4)) if ranks is None else ranks
    return found


def section(*groups: dict[str, Any], recorder: str = "on", note: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {"recorder": recorder, "backend": "gloo", "groups": list(groups)}
    if note:
        found["note"] = note
    return found


def frames_at(function: str, line: int, waiting: bool) -> list[dict[str, Any]]:
    frames = [
        {"file": CODE, "line": 120, "function": "<module>", "library": False, "code": "main()"},
        {"file": CODE, "line": line, "function": function, "library": False,
         "code": f"{function}(shard)", "locals": {"shard": "'/data/part-3'", "step": "4"}},
    ]
    if waiting:
        frames.append({"file": LIB, "line": 3252, "function": "all_reduce", "library": True,
                       "code": "work.wait()", "locals": {"async_op": "False"}})
    return frames


def dump(rank: int, collected: dict[str, Any] | None, *, at: tuple[str, int] = ("step", 88),
         waiting: bool = True, world: int = 4) -> dict[str, Any]:
    """A stall report of ``rank`` (topology fields, three threads) with ``collected`` as its
    ``"collectives"`` section (``None``: a dump without one, as older amldbg wrote)."""
    found: dict[str, Any] = {
        "amldbg_stacks": 1, "reason": "stall", "detail": "no progress for 60 s",
        "time": "2026-01-01T00:00:10.000+00:00", "seq": 1, "rank": rank, "local_rank": rank,
        "world_size": world, "node_rank": 0, "launcher": "torchrun", "pid": 100 + rank,
        "host": "node-0",
        "threads": [
            {"name": "MainThread", "ident": 1, "main": True, "daemon": False,
             "frames": frames_at(at[0], at[1], waiting)},
            {"name": "pin_memory", "ident": 2, "main": False, "daemon": True, "frames": [
                {"file": "/usr/lib/python3.11/threading.py", "line": 320, "function": "wait",
                 "library": True, "code": "waiter.acquire()", "locals": {"timeout": "5.0"}}]},
            {"name": "Thread-2 (_monitor)", "ident": 3, "main": False, "daemon": True, "frames": []},
        ],
    }
    if collected is not None:
        found["collectives"] = collected
    return found


def write(folder: Path, dumps: list[dict[str, Any]]) -> Path:
    """The dump files, as the capture writes them (indent=1, a final line break)."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in dumps:
        name = f"stacks-rank{item['rank']}-pid{item['pid']}-{item['seq']}.json"
        (folder / name).write_text(json.dumps(item, indent=1) + "\n")
    return folder


def log_line(item: dict[str, Any], entries: int = 2) -> str:
    """The driver-log line of a dump: the real writer's, with fewer entries per group."""
    short = dict(item)
    if "collectives" in item:
        short["collectives"] = {
            **item["collectives"],
            "groups": [{**g, "entries": g["entries"][-entries:]} for g in item["collectives"]["groups"]],
        }
    return "[default{}]:".format(item["rank"]) + summary_line(short)


def report(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """The text report's lines and the JSON of ``amldbg stacks folder``."""
    text = run(str(folder))
    assert text.returncode == 0, text.stderr
    assert "Traceback" not in text.stderr
    as_json = run(str(folder), "--json")
    assert as_json.returncode == 0, as_json.stderr
    return text.stdout.splitlines(), json.loads(as_json.stdout)


def normal(last: int = 4, completed: int = 3, **kwargs: Any) -> dict[str, Any]:
    return section(group([entry(s, state="completed" if s <= completed else "scheduled")
                          for s in range(1, last + 1)], completed=completed, **kwargs))


# -- the three hangs of the issue -------------------------------------------------------------


def test_a_rank_stuck_before_a_collective_is_named_with_its_frame(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(3)]
    dumps.append(dump(3, normal(last=3), at=("wait_for_shard", 47), waiting=False))
    lines, result = report(write(tmp_path, dumps))
    line = "collective #4 all_reduce [[4]] float in default_pg: rank 3 never entered it (at train.py:47 in wait_for_shard)"
    # First in the report, before the stack groups; the HTML page shows the same lines.
    assert lines[0] == line and lines[1] == ""
    assert lines[2].startswith("4 ranks dumped stacks")
    assert result["collective_lines"] == [line]
    finding = result["collectives"][0]
    assert {k: finding[k] for k in ("process_group", "pg", "seq", "op", "sizes", "dtypes", "entered",
                                    "missing", "missing_at", "mismatch")} == {
        "process_group": "default_pg", "pg": "0", "seq": 4, "op": "all_reduce", "sizes": [[4]],
        "dtypes": ["float"], "entered": [0, 1, 2], "missing": [3],
        "missing_at": {"3": "train.py:47 in wait_for_shard"}, "mismatch": [],
    }
    assert len(result["collectives"]) == 1
    assert result["recorder"]["states"] == {"on": [0, 1, 2, 3]}
    assert "ranks_detail" not in result  # --json stays small


def test_two_ranks_calling_another_collective(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(2)]
    for rank in (2, 3):
        wrong = normal()
        wrong["groups"][0]["entries"][-1]["op"] = "broadcast"
        dumps.append(dump(rank, wrong))
    lines, result = report(write(tmp_path, dumps))
    assert lines[0] == "collective #4 all_reduce [[4]] float in default_pg: ranks 2-3 entered broadcast [[4]] float instead"
    assert lines[1] == ""
    finding = result["collectives"][0]
    assert finding["entered"] == [0, 1, 2, 3] and finding["missing"] == []
    assert finding["mismatch"] == [{"ranks": [2, 3], "op": "broadcast", "sizes": [[4]], "dtypes": ["float"]}]


def test_two_ranks_passing_other_sizes_while_the_others_went_on(tmp_path: Path) -> None:
    # gloo: ranks 0-1 return from #4 (silently wrong) and enter #5; ranks 2-3 hang in #4.
    dumps = [dump(r, normal(last=5, completed=4)) for r in range(2)]
    for rank in (2, 3):
        other = normal()
        other["groups"][0]["entries"][-1]["sizes"] = [[5]]
        dumps.append(dump(rank, other))
    lines, result = report(write(tmp_path, dumps))
    # The first divergence is #4, not the #5 that ranks 2-3 never reached.
    assert result["collective_lines"] == [
        "collective #4 all_reduce [[4]] float in default_pg: ranks 2-3 entered all_reduce [[5]] float instead"
    ]
    assert lines[0] == result["collective_lines"][0]
    finding = result["collectives"][0]
    assert finding["seq"] == 4 and finding["missing"] == []
    assert finding["mismatch"] == [{"ranks": [2, 3], "op": "all_reduce", "sizes": [[5]], "dtypes": ["float"]}]


def test_other_dtypes_are_a_mismatch_too(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(3)]
    half = normal()
    half["groups"][0]["entries"][-1]["dtypes"] = ["half"]
    dumps.append(dump(3, half))
    lines, _ = report(write(tmp_path, dumps))
    assert lines[0] == "collective #4 all_reduce [[4]] float in default_pg: rank 3 entered all_reduce [[4]] half instead"


def test_every_member_waiting_in_the_same_collective_is_said(tmp_path: Path) -> None:
    lines, result = report(write(tmp_path, [dump(r, normal()) for r in range(4)]))
    assert lines[0] == ("collective #4 all_reduce [[4]] float in default_pg: ranks 0-3 entered it and "
                        "none completed it (every member waits in it)")
    assert result["collectives"][0]["waiting"] is True
    # gloo marks a collective completed only later: ranks that returned from #4 and all hang
    # in their own code are not said to wait in it. NCCL's record is believed as it is.
    lines, result = report(write(tmp_path / "returned", [
        dump(r, normal(), at=("load_shard", 60), waiting=False) for r in range(4)]))
    assert result["collectives"] == []
    assert lines[0] == "collectives: no divergence in the 1 process group compared (ranks 0-3)"
    nccl = [dump(r, {**normal(), "backend": "nccl"}, at=("log_loss", 61), waiting=False) for r in range(4)]
    _, result = report(write(tmp_path / "nccl", nccl))
    assert result["collectives"][0]["waiting"] is True
    # Completed everywhere: nothing diverges, one line says the groups were compared.
    lines, result = report(write(tmp_path / "done", [dump(r, normal(completed=4)) for r in range(4)]))
    assert result["collectives"] == []
    assert lines[0] == "collectives: no divergence in the 1 process group compared (ranks 0-3)"


# -- process groups, rings, ranks without a record ------------------------------------------


def test_a_subgroup_is_judged_among_its_own_members(tmp_path: Path) -> None:
    # new_group([0, 1]) is torch's pg "1"; ranks 2-3 are not in it. Rank 1 is stuck in user
    # code, rank 0 waits for it in the subgroup, ranks 2-3 wait for both in the default group.
    pair = [entry(s, sizes=[[8]]) for s in (1, 2)]

    def both(default_last: int, pair_entries: list[dict[str, Any]]) -> dict[str, Any]:
        return section(
            group([entry(s) for s in range(1, default_last + 1)], completed=5),
            group(pair_entries, pg="1", name="pg 1", ranks=[0, 1], completed=2),
        )

    dumps = [
        dump(0, both(5, pair + [entry(3, sizes=[[8]], state="scheduled")]), at=("sync_pair", 70)),
        dump(1, both(5, pair), at=("load_shard", 60), waiting=False),
        dump(2, section(group([entry(s) for s in range(1, 7)], completed=5))),
        dump(3, section(group([entry(s) for s in range(1, 7)], completed=5))),
    ]
    lines, result = report(write(tmp_path, dumps))
    assert result["collective_lines"] == [
        "collective #6 all_reduce [[4]] float in default_pg: ranks 0-1 never entered it "
        "(rank 0 at train.py:70 in sync_pair; rank 1 at train.py:60 in load_shard)",
        "collective #3 all_reduce [[8]] float in pg 1: rank 1 never entered it (at train.py:60 in load_shard)",
    ]
    assert lines[:2] == result["collective_lines"]
    subgroup = result["collectives"][1]
    assert subgroup["pg"] == "1" and subgroup["members"] == [0, 1]
    assert subgroup["entered"] == [0] and subgroup["missing"] == [1]


def test_members_unknown_are_the_ranks_that_report_the_group(tmp_path: Path) -> None:
    dumps = [dump(r, section(group([entry(1), entry(2, state="scheduled")], members=False)))
             for r in range(3)]
    dumps.append(dump(3, section(group([entry(1)], members=False)), at=("load_shard", 60), waiting=False))
    lines, result = report(write(tmp_path, dumps))
    assert lines[0] == "collective #2 all_reduce [[4]] float in default_pg: rank 3 never entered it (at train.py:60 in load_shard)"
    assert result["collectives"][0]["members"] == [0, 1, 2, 3]
    # The default group without its member list is the world: a rank that did not dump is
    # said as such.
    lines, result = report(write(tmp_path / "three", dumps[1:]))
    assert result["collective_lines"] == [
        "collective #2 all_reduce [[4]] float in default_pg: rank 3 never entered it (at train.py:60 in load_shard)",
        "collective #2 all_reduce [[4]] float in default_pg: no dump from rank 0 (not compared)",
    ]


def test_evicted_entries_count_as_entered_and_are_not_compared(tmp_path: Path) -> None:
    def ring(first: int, last: int, odd_at: int | None = None) -> dict[str, Any]:
        entries = [entry(s, op="broadcast" if s == odd_at else "all_reduce",
                         state="scheduled" if s == last else "completed") for s in range(first, last + 1)]
        return section(group(entries, completed=last - 1))

    dumps = [
        # Ranks 0-1's rings hold #13-#20 (8 entries): #12 is evicted, and entered.
        dump(0, ring(13, 20)),
        dump(1, ring(13, 20)),
        # Ranks 2-3 hold #12-#19, with another op at #12: no other rank still holds #12, so
        # it is not judged; they never entered #20.
        dump(2, ring(12, 19, odd_at=12), at=("load_shard", 60), waiting=False),
        dump(3, ring(12, 19, odd_at=12), at=("load_shard", 60), waiting=False),
    ]
    lines, result = report(write(tmp_path, dumps))
    assert result["collective_lines"] == [
        "collective #20 all_reduce [[4]] float in default_pg: ranks 2-3 never entered it (at train.py:60 in load_shard)"
    ]
    assert result["collectives"][0]["mismatch"] == []
    # A rank whose ring holds only its last two entries (a driver-log line) entered #1-#18 too,
    # and a mismatch at a seq it no longer holds is not judged.
    odd = ring(11, 20, odd_at=15)
    lines = [log_line(dump(0, odd), entries=2)] + [log_line(dump(r, ring(11, 20)), entries=8) for r in (1, 2, 3)]
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "std_log.txt").write_text("\n".join(lines) + "\n")
    _, result = report(tmp_path / "log")
    assert result["collectives"][0]["waiting"] is True and result["collectives"][0]["mismatch"] == []


def test_p2p_entries_are_not_compared(tmp_path: Path) -> None:
    dumps = []
    for rank in range(4):
        entries = [entry(1), entry(2, state="scheduled")]
        # send/recv number their own sequence: rank 0 sent #7, rank 1 received #3.
        entries.insert(1, {**entry(7 if rank == 0 else 3, op="send" if rank == 0 else "recv"), "p2p": True})
        dumps.append(dump(rank, section(group(entries, completed=2))))
    _, result = report(write(tmp_path, dumps))
    assert result["collectives"] == []


def test_ranks_with_a_late_or_no_recorder_are_not_compared(tmp_path: Path) -> None:
    # Armed after init_process_group: the capture lists the groups, without any entry.
    late = section(group([], last=None), recorder="late", note=LATE_NOTE)
    lines, result = report(write(tmp_path / "late", [dump(r, late) for r in range(4)]))
    assert lines[0] == (f"collectives: the Flight Recorder was armed late on ranks 0-3 ({LATE_NOTE}): "
                        "stacks only")
    assert lines[1] == "" and lines[2].startswith("4 ranks dumped stacks")
    assert result["collectives"] == [] and result["recorder"]["states"] == {"late": [0, 1, 2, 3]}
    assert result["recorder"]["notes"] == {"late": LATE_NOTE}
    # Ranks 0-1 on, rank 2 off, rank 3 from an older amldbg: only 0-1 are compared, and the
    # rank that is not does not become "missing".
    mixed = [dump(0, normal()), dump(1, normal(last=3), at=("load_shard", 60), waiting=False),
             dump(2, section(group([]), recorder="off")), dump(3, None)]
    lines, result = report(write(tmp_path / "mixed", mixed))
    assert result["collective_lines"] == [
        "collective #4 all_reduce [[4]] float in default_pg: rank 1 never entered it (at train.py:60 in load_shard)",
        "collectives: the Flight Recorder was off on rank 2: not compared",
        "collectives: no record from rank 3 (an older amldbg, or no torch.distributed): not compared",
    ]
    finding = result["collectives"][0]
    assert finding["missing"] == [1] and finding["not_compared"] == [2, 3]
    assert result["recorder"]["none"] == [3]


def test_dumps_without_collectives_give_no_collective_line(tmp_path: Path) -> None:
    lines, result = report(write(tmp_path, [dump(r, None) for r in range(4)]))
    assert lines[0].startswith("4 ranks dumped stacks")
    assert result["collectives"] == [] and result["collective_lines"] == []


def test_a_rank_that_did_not_dump_is_said_apart_from_the_missing(tmp_path: Path) -> None:
    dumps = [dump(0, normal()), dump(1, normal()),
             dump(2, normal(last=3), at=("load_shard", 60), waiting=False)]
    lines, result = report(write(tmp_path, dumps))
    assert result["collective_lines"] == [
        "collective #4 all_reduce [[4]] float in default_pg: rank 2 never entered it (at train.py:60 in load_shard)",
        "collective #4 all_reduce [[4]] float in default_pg: no dump from rank 3 (not compared)",
    ]
    assert result["collectives"][0]["missing"] == [2] and result["collectives"][0]["no_dump"] == [3]
    assert "no dump from rank 3 (still making progress, or its log was not given)" in lines


def test_many_missing_ranks_name_eight_frames_then_count(tmp_path: Path) -> None:
    world = list(range(16))
    dumps = [dump(r, normal(ranks=world), world=16) for r in range(6)]
    for rank in range(6, 16):
        # Ten ranks stuck at ten different lines; rank 15 at the same one as rank 14.
        line = 200 + min(rank, 14)
        dumps.append(dump(rank, normal(last=3, ranks=world), at=("load", line), waiting=False, world=16))
    _, result = report(write(tmp_path, dumps))
    assert result["collective_lines"] == [
        "collective #4 all_reduce [[4]] float in default_pg: ranks 6-15 never entered it ("
        + "; ".join(f"rank {r} at train.py:{200 + r} in load" for r in range(6, 14))
        + "; and 2 more)"
    ]
    assert len(result["collectives"][0]["missing_at"]) == 10


def test_log_lines_and_files_mixed(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(3)]
    dumps.append(dump(3, normal(last=3), at=("wait_for_shard", 47), waiting=False))
    write(tmp_path / "outputs", dumps[:2])
    # Ranks 2-3 only in the driver log (their files were not uploaded); rank 0's line is
    # there too, and its file wins.
    log = [log_line(dumps[0]), "[default0]:epoch 1", log_line(dumps[2]), log_line(dumps[3])]
    (tmp_path / "user_logs").mkdir()
    (tmp_path / "user_logs" / "std_log.txt").write_text("\n".join(log) + "\n")
    lines, result = report(tmp_path)
    assert lines[0] == "collective #4 all_reduce [[4]] float in default_pg: rank 3 never entered it (at train.py:47 in wait_for_shard)"
    assert result["collectives"][0]["entered"] == [0, 1, 2]


# -- hostile collectives sections -------------------------------------------------------------


def hostile_sections() -> list[tuple[str, Any]]:
    def with_group(**change: Any) -> dict[str, Any]:
        found = normal()
        found["groups"][0].update(change)
        return found

    def with_entry(**change: Any) -> dict[str, Any]:
        found = normal()
        found["groups"][0]["entries"][-1].update(change)
        return found

    deep: Any = [4]
    for _ in range(200):
        deep = [deep]
    return [
        ("not an object", "on"),
        ("no recorder state", {"groups": []}),
        ("invalid groups", {"recorder": "on", "groups": {"0": {}}}),
        ("a process group is not an object", {"recorder": "on", "groups": [7]}),
        ("a process group without its name", with_group(pg=None)),
        ("invalid sequence number", with_group(last_enqueued=10**30)),
        ("invalid sequence number", with_group(last_completed=-1)),
        ("invalid sequence number", with_group(last_started=True)),
        ("invalid sequence number", with_group(last_enqueued=float("nan"))),
        ("invalid sequence number", with_group(last_enqueued=2.0)),
        ("invalid sequence number", with_entry(seq=float("inf"))),
        ("an entry without a sequence number", with_entry(seq=None)),
        ("invalid sizes", with_entry(sizes=deep)),
        ("invalid sizes", with_entry(sizes=[[2**70]])),
        ("invalid sizes", with_entry(sizes=[[-4]])),
        ("invalid sizes", with_entry(sizes=[[True]])),
        ("invalid sizes", with_entry(sizes=[[1] * 65])),
        ("invalid dtypes", with_entry(dtypes="float")),
        ("invalid op", with_entry(op=["all_reduce"])),
        ("invalid ranks", with_group(ranks=[0, -1])),
        ("invalid entries", with_group(entries={"seq": 1})),
    ]


def test_a_damaged_collectives_section_drops_only_the_collectives(tmp_path: Path) -> None:
    cases = hostile_sections()
    for number, (_, bad) in enumerate(cases):
        folder = tmp_path / f"case{number:02d}"
        dumps = [dump(r, normal()) for r in range(3)] + [dump(3, bad)]
        write(folder, dumps)
    # One run over every case's folder: each case's rank 3 is dropped from the verdict.
    text = run(str(tmp_path))
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    notes = [line for line in text.stderr.splitlines() if "dropped the damaged collectives" in line]
    assert len(notes) == min(len(cases), 20), text.stderr
    for number, (why, _) in enumerate(cases[:20]):
        source = tmp_path / f"case{number:02d}" / "stacks-rank3-pid103-1.json"
        assert (f"amldbg stacks: dropped the damaged collectives of a dump at {source} ({why}); "
                "its stacks are kept") in notes
    # Each case on its own: the stacks of rank 3 are kept, and no rank is named "missing".
    for number in (0, 5, 12):
        lines, result = report(tmp_path / f"case{number:02d}")
        assert result["groups"][0]["ranks"] == [0, 1, 2, 3]
        assert result["collectives"] == []
        assert all("never entered" not in line for line in lines)
        assert result["recorder"]["states"] == {"on": [0, 1, 2], "damaged": [3]}
        assert lines[0] == (f"collectives: the collectives in the dumps of rank 3 were damaged "
                            f"({cases[number][0]}): not compared")


def test_hostile_texts_and_bounds_never_reach_the_terminal_raw(tmp_path: Path) -> None:
    evil_op = "all_reduce\x1b[2J\u202egnp.\u2028forged\r\n"
    dumps = [dump(r, normal()) for r in range(2)]
    for rank in (2, 3):
        odd = normal()
        odd["groups"][0]["entries"][-1]["op"] = evil_op
        odd["groups"][0]["entries"][-1]["dtypes"] = ["fl\x07oat"]
        odd["groups"][0]["process_group"] = "default_pg"
        dumps.append(dump(rank, odd))
    # A rank with far too much of everything: the first 64 groups and the newest 16
    # entries of each are read; a member list longer than any job is no member list.
    many = normal()
    many["groups"] += [group([entry(s) for s in range(1, 10_001)], pg="1000", name="pg\x1b",
                             ranks=list(range(200_001)))]
    many["groups"] += [group([entry(1)], pg=str(1001 + i), name=f"pg\x1b{i}") for i in range(200)]
    dumps[0] = dump(0, many)
    write(tmp_path, dumps)
    done = run_amldbg("stacks", str(tmp_path), text=False, cwd=ROOT,
                      env=child_env(PYTHONIOENCODING="utf-8:strict"))
    assert done.returncode == 0, done.stderr
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "Traceback" not in err
    for line in (out + err).split("\n"):
        assert not UNSAFE.search(line), repr(line)
    assert ("collective #4 all_reduce [[4]] float in default_pg: ranks 2-3 entered "
            "all_reduce\\x1b[2J\\u202egnp.\\u2028forged\\x0d\\x0a [[4]] fl\\x07oat instead") in out.splitlines()
    as_json = run_amldbg("stacks", str(tmp_path), "--json", text=False, cwd=ROOT)
    assert as_json.stdout.isascii()
    result = json.loads(as_json.stdout)
    assert result["collectives"][0]["mismatch"][0]["op"] == "all_reduce\\x1b[2J\\u202egnp.\\u2028forged\\x0d\\x0a"
    # Rank 0's other groups have no other member that reports them: nothing to judge.
    assert len(result["collectives"]) == 1


def test_parse_bounds_groups_and_entries() -> None:
    raw = section(*[group([entry(s) for s in range(1, 101)], pg=str(i)) for i in range(100)])
    record = stacks.parse_collectives(raw)
    assert len(record.groups) == 64
    assert [e.seq for e in record.groups[0].entries] == list(range(85, 101))
    assert stacks.parse_collectives(section(group([], ranks=list(range(100_001))))).groups[0].ranks is None


# -- ranks_detail (the HTML page's data) and --html ------------------------------------------


def test_detail_keeps_every_thread_with_code_and_values_shared_between_ranks(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(3)]
    dumps.append(dump(3, normal(last=3), at=("wait_for_shard", 47), waiting=False))
    dumps[3]["threads"][0]["frames"][1]["locals"]["evil"] = "\x1b]0;owned\x07"
    write(tmp_path, dumps)
    collector = stacks.collect([str(tmp_path)], sys.stdin)
    result = stacks.analyse(collector, detail=True)
    detail = result["ranks_detail"]
    assert [d["rank"] for d in detail] == [0, 1, 2, 3]
    assert [d["group"] for d in detail] == [0, 0, 0, 1]
    assert result["groups"][detail[3]["group"]]["ranks"] == [3]
    stuck = detail[3]
    assert [t["name"] for t in stuck["threads"]] == ["MainThread", "pin_memory", "Thread-2 (_monitor)"]
    assert [t["main"] for t in stuck["threads"]] == [True, False, False]
    inner = stuck["threads"][0]["frames"][-1]
    assert inner == {"file": CODE, "line": 47, "function": "wait_for_shard", "library": False,
                     "code": "wait_for_shard(shard)",
                     "locals": {"shard": "'/data/part-3'", "step": "4", "evil": "\\x1b]0;owned\\x07"}}
    assert {"pid", "host", "reason", "time"} <= set(stuck)
    assert stuck["collectives"][0]["last_enqueued"] == 3 and stuck["collectives"][0]["size"] == 4
    assert stuck["collectives"][0]["entries"][-1] == {"seq": 3, "op": "all_reduce", "sizes": [[4]],
                                                     "dtypes": ["float"], "state": "completed"}
    # The same frames of ranks 0-2 are one object each: 4,096 ranks stay small.
    assert detail[0]["threads"][0]["frames"] is detail[1]["threads"][0]["frames"]
    assert detail[0]["threads"][1]["frames"][0] is detail[3]["threads"][1]["frames"][0]
    # Without detail, only the main thread's frames are read (and no code or values).
    plain = stacks.analyse(stacks.collect([str(tmp_path)], sys.stdin, detail=False), detail=True)
    assert [len(d["threads"]) for d in plain["ranks_detail"]] == [1, 1, 1, 1]
    assert "code" not in plain["ranks_detail"][3]["threads"][0]["frames"][-1]


def test_html_is_written_private_and_the_report_still_printed(tmp_path: Path) -> None:
    dumps = [dump(r, normal()) for r in range(3)]
    dumps.append(dump(3, normal(last=3), at=("wait_for_shard", 47), waiting=False))
    write(tmp_path / "dumps", dumps)
    page = tmp_path / "job.html"
    done = run(str(tmp_path / "dumps"), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"amldbg stacks: wrote {page}"]
    assert done.stdout.splitlines()[0].startswith("collective #4 all_reduce [[4]] float in default_pg: rank 3")
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert "rank 3 never entered it" in page.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # With --json: the JSON on stdout, without the page's per-rank detail.
    done = run(str(tmp_path / "dumps"), "--json", "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert "ranks_detail" not in json.loads(done.stdout)


@pytest.mark.parametrize("where", ["missing/job.html", "."])
def test_an_unwritable_html_file_is_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    write(tmp_path / "dumps", [dump(r, normal()) for r in range(2)])
    target = str(tmp_path / where)
    done = run(str(tmp_path / "dumps"), "--html", target)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"amldbg stacks: error: cannot write {target}: ")
    assert not [p for p in tmp_path.rglob("*.tmp")]


# -- the verdict's pure functions --------------------------------------------------------------


def test_ranks_text_and_who() -> None:
    assert collectives.ranks_text([5, 0, 1, 2]) == "0-2,5"
    assert stacks._ranks_text([3]) == "3"
    assert collectives.who([1, 3]) == "ranks 1, 3" and collectives.who([2, 3]) == "ranks 2-3"
    assert collectives.call_text("all_reduce", ((4,),), ("float",)) == "all_reduce [[4]] float"
    assert collectives.call_text("all_gather", [[2, 3], [4]], ["float", "long"]) == "all_gather [[2, 3], [4]] float,long"


def test_verdict_on_records_directly() -> None:
    def record(last: int, op: str = "all_reduce") -> collectives.Record:
        entries = tuple(collectives.Entry(s, op if s == last else "all_reduce", ((4,),), ("float",), None, False)
                        for s in range(1, last + 1))
        return collectives.Record("on", "", "gloo", (collectives.Group(
            "default_pg", "0", (0, 1, 2, 3), last, None, last - 1, entries),))

    records = {0: record(4), 1: record(4), 2: record(4, "broadcast"), 3: record(3)}
    findings = collectives.verdict(records, range(4), lambda rank: f"f{rank}.py:1 in g")
    assert findings[0]["seq"] == 4 and findings[0]["missing"] == [3]
    assert findings[0]["mismatch"] == [{"ranks": [2], "op": "broadcast", "sizes": [[4]], "dtypes": ["float"]}]
    assert collectives.finding_lines(findings[0]) == [
        "collective #4 all_reduce [[4]] float in default_pg: rank 3 never entered it (at f3.py:1 in g)",
        "collective #4 all_reduce [[4]] float in default_pg: rank 2 entered broadcast [[4]] float instead",
    ]


def test_the_benchmark_job_is_shaped_like_the_schema(tmp_path: Path) -> None:
    # The 4,096-rank benchmark's files, at 16 ranks: the same verdict as the real shape.
    expect = write_job(tmp_path, 16)
    lines, result = report(tmp_path)
    assert lines[:2] == [
        f"collective #{expect['seq']} all_reduce [[4096, 1024]] float in default_pg: rank {expect['stuck']} "
        "never entered it (at data.py:47 in wait_for_shard)",
        f"collective #{expect['seq']} all_reduce [[4096, 1024]] float in default_pg: ranks "
        f"{expect['pair'][0]}-{expect['pair'][1]} entered broadcast [[4096, 1024]] float instead",
    ]
    assert os.path.getsize(next(tmp_path.iterdir())) > 10_000


def test_a_line_naming_thousands_of_ranks_is_bounded() -> None:
    every_other = list(range(0, 20_000, 2))
    text = collectives.who(every_other)
    assert text.startswith("ranks 0, 2, 4, ") and text.endswith(" and 9984 more")
    assert len(text) < 200


def test_ranks_with_no_collective_yet_say_so_once(tmp_path: Path) -> None:
    # Every rank is still in init_process_group: a recorder, and no group yet.
    _, result = report(write(tmp_path, [dump(r, section()) for r in range(4)]))
    assert result["collective_lines"] == ["collectives: no collective recorded yet on ranks 0-3"]
