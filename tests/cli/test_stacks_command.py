"""`amldbg stacks`: grouping the ranks' dumps from files, folders and logs, and hostile input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from processes import ROOT, child_env

# Runs the real command; registers `stacks` itself until amldbg/cli/__init__.py does.
HARNESS = """
import argparse, sys
from amldbg import cli
parser = cli.build_parser()
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
if "stacks" not in sub.choices:
    from amldbg.cli import stacks
    from amldbg.cli.common import formatter
    stacks.add_parser(sub, formatter)
    cli.build_parser = lambda: parser
sys.exit(cli.main(sys.argv[1:]))
"""

LIB = "/usr/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"


def amldbg_stacks(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HARNESS, "stacks", *args], input=stdin, capture_output=True,
        text=True, cwd=str(cwd), env=child_env(), timeout=60,
    )


def dump(rank: int, frames: list[tuple[str, int, str]], *, seq: int = 1, time: str = "2026-01-01T00:00:10",
         reason: str = "stall", world: int = 4) -> dict[str, Any]:
    return {
        "amldbg_stacks": 1, "rank": rank, "pid": 100 + rank, "host": "node-0", "seq": seq,
        "time": time, "reason": reason, "world_size": world,
        "threads": [
            {"name": "MainThread", "main": True, "frames": [
                {"file": f, "line": n, "function": fn, "library": f.startswith("/usr/lib")}
                for f, n, fn in frames
            ]},
            {"name": "pin_memory", "main": False, "frames": []},
        ],
    }


WAITING = [("/mnt/code/train.py", 120, "<module>"), ("/mnt/code/train.py", 88, "all_reduce_forever"),
           (LIB, 3252, "all_reduce")]
STUCK = [("/mnt/code/train.py", 120, "<module>"), ("/mnt/code/train.py", 60, "load_shard")]


def write_dumps(folder: Path, dumps: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in dumps:
        name = f"stacks-rank{item['rank']}-pid{item['pid']}-{item['seq']}.json"
        (folder / name).write_text(json.dumps(item))


def test_groups_ranks_and_names_the_outlier(tmp_path: Path) -> None:
    write_dumps(tmp_path / "outputs" / "amldbg", [dump(r, WAITING) for r in range(3)] + [dump(3, STUCK)])
    result = amldbg_stacks(str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["groups"][0]["ranks"] == [0, 1, 2]
    assert report["groups"][0]["frame"] == "train.py:88 in all_reduce_forever"
    assert report["groups"][1]["ranks"] == [3]
    assert report["groups"][1]["frame"] == "train.py:60 in load_shard"
    assert report["outliers"] == [3] and report["missing"] == []
    text = amldbg_stacks(str(tmp_path))
    assert text.returncode == 0
    assert "group 1: ranks 0-2 (3), stall: at train.py:88 in all_reduce_forever" in text.stdout
    assert "outlier: rank 3 at train.py:60 in load_shard" in text.stdout


def test_latest_dump_per_rank_and_a_dump_read_twice_counts_once(tmp_path: Path) -> None:
    early = [dump(r, STUCK, seq=1, time="2026-01-01T00:00:01") for r in range(2)]
    late = [dump(r, WAITING, seq=2, time="2026-01-01T00:05:00", reason="signal") for r in range(2)]
    write_dumps(tmp_path / "dumps", early + late)
    # The same late dump of rank 0 also appears in a driver log, behind a launcher's prefix.
    log = "\n".join([
        "[default0]:step 1",
        "[default0]:amldbg stacks: " + json.dumps(late[0]),
        "[default0]:amldbg: [rank 0] thread MainThread (main thread), most recent call last:",
    ])
    (tmp_path / "std_log.txt").write_text(log + "\n")
    report = json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)
    assert [g["ranks"] for g in report["groups"]] == [[0, 1]]
    assert report["groups"][0]["reasons"] == ["signal"]
    assert report["missing"] == [2, 3] and report["outliers"] == []
    sources = [d["source"] for d in report["groups"][0]["dumps"]]
    assert all(source.endswith(".json") for source in sources)


def test_a_forked_child_does_not_stand_for_its_rank(tmp_path: Path) -> None:
    main = dump(0, WAITING, time="2026-01-01T00:00:01", world=1)
    worker = dump(0, STUCK, seq=2, time="2026-01-01T00:00:02", world=1)
    worker["pid"], worker["forked_from"] = 999, main["pid"]
    write_dumps(tmp_path, [main, worker])
    report = json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)
    assert [g["frame"] for g in report["groups"]] == ["train.py:88 in all_reduce_forever"]


def test_reads_standard_input_and_lists_crash_reports(tmp_path: Path) -> None:
    crash = {"amldbg_crash": 1, "rank": 2, "pid": 77, "host": "n", "time": "2026-01-01T00:00:00",
             "exception": "ValueError: bad row", "frame": "train.py:12 in parse",
             "file": "outputs/amldbg/crash-rank2-pid77.json"}
    log = "amldbg crash: " + json.dumps(crash) + "\n"
    result = amldbg_stacks(stdin=log)
    assert result.returncode == 0, result.stderr
    assert "rank 2 (pid 77): ValueError: bad row at train.py:12 in parse" in result.stdout
    report = json.loads(amldbg_stacks("-", "--json", stdin=log).stdout)
    assert report["groups"] == [] and report["crashes"][0]["exception"] == "ValueError: bad row"


def test_exit_status_one_when_nothing_and_two_for_a_missing_path(tmp_path: Path) -> None:
    (tmp_path / "std_log.txt").write_text("epoch 1\nepoch 2\n")
    nothing = amldbg_stacks(str(tmp_path))
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert "no stack dump or crash report" in nothing.stderr
    assert json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)["groups"] == []
    missing = amldbg_stacks(str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("amldbg stacks: error: ") and "no such file" in missing.stderr


def test_hostile_input_never_gives_a_traceback_or_raw_control_characters(tmp_path: Path) -> None:
    evil = dump(0, [("/x/\x1b[2Jevil.py", 1, "f\x07n")], world=2)
    evil["host"] = "\x1b]0;title\x07"
    lines = [
        "amldbg stacks: {not json",
        "amldbg stacks: []",
        "amldbg stacks: " + json.dumps({"amldbg_stacks": 1, "threads": "nope"}),
        "amldbg stacks: " + json.dumps({"amldbg_stacks": 1, "rank": "x" * 10_000, "threads": [
            {"main": True, "frames": [[1, 2, 3], {"file": None}, "str"]}]}),
        "amldbg stacks: " + json.dumps(evil),
        "amldbg crash: " + json.dumps({"amldbg_crash": 1, "exception": ["\x1b"], "rank": 1e308}),
        "amldbg stacks: " + json.dumps({"amldbg_stacks": 1, "threads": [1, None, {"main": True}]}),
    ]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "broken.json").write_bytes(b"\xff\xfe{{{")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for extra in ([], ["--json"]):
        result = amldbg_stacks(str(tmp_path), *extra)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        for text in (result.stdout, result.stderr):
            assert not any(ch in text for ch in "\x1b\x07")
    report = json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)
    assert any("evil.py" in g["frame"] for g in report["groups"])
    assert "skipped a damaged dump" in amldbg_stacks(str(tmp_path)).stderr
