"""`amldbg stacks`: grouping the ranks' dumps from files, folders and logs, and hostile input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from processes import ROOT, child_env

# Runs the real command.
HARNESS = """
import sys
from amldbg import cli
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


# --- real job folders: any log size, truncated dumps, hostile text, ranks, processes, crashes ---


def amldbg_stacks_bytes(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command with bytes in and out, strict UTF-8 streams (as a developer's terminal)."""
    return subprocess.run(
        [sys.executable, "-c", HARNESS, "stacks", *args], input=stdin, capture_output=True,
        cwd=str(ROOT), env=child_env(PYTHONIOENCODING="utf-8:strict"), timeout=60,
    )


# What must never reach a terminal raw: controls (line breaks too), bidi overrides and
# isolates, the line and paragraph separators, lone surrogates.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def assert_safe(done: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    """No traceback, and no raw unsafe character on any line of stdout or stderr."""
    out = done.stdout.decode("utf-8", "surrogateescape")
    err = done.stderr.decode("utf-8", "surrogateescape")
    assert "Traceback" not in err, err
    for stream in (out, err):
        for line in stream.split("\n"):
            assert not UNSAFE.search(line), repr(line)
    return out, err


@pytest.fixture
def big_log(tmp_path: Path) -> Iterator[Path]:
    """A 257 MiB driver log: a dump line, 257 MiB of NUL bytes (sparse: almost no disk
    used), another dump line. Deleted at the end, whatever happens."""
    log = tmp_path / "user_logs" / "std_log.txt"
    log.parent.mkdir()
    with open(log, "wb") as handle:
        handle.write(("amldbg stacks: " + json.dumps(dump(0, WAITING, world=2)) + "\n").encode())
        handle.truncate(257 << 20)
        handle.seek(0, os.SEEK_END)
        handle.write(("\n[default1]:amldbg stacks: " + json.dumps(dump(1, STUCK, world=2)) + "\n").encode())
    try:
        yield log
    finally:
        log.unlink()


def test_a_driver_log_over_256_mb_is_streamed_like_any_other(big_log: Path) -> None:
    assert big_log.stat().st_size > 256 << 20
    result = amldbg_stacks(str(big_log.parent.parent), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [g["ranks"] for g in report["groups"]] == [[0], [1]]
    # The NUL bytes are one line without a break: read in part, and said so.
    assert result.stderr.splitlines() == ["amldbg stacks: 1 line longer than 1024 KiB read only in part"]
    assert "too large" not in result.stderr


def test_a_truncated_dump_file_is_named_on_stderr(tmp_path: Path) -> None:
    write_dumps(tmp_path, [dump(0, WAITING), dump(1, WAITING)])
    whole = json.dumps(dump(2, STUCK), indent=1)
    cut = tmp_path / "stacks-rank2-pid102-1.json"
    cut.write_text(whole[: len(whole) // 2])  # an upload that stopped half-way
    damaged = tmp_path / "crash-rank3-pid103.json"
    damaged.write_text('{"amldbg_crash": 1, "rank": 3,, "pid": 103}')
    result = amldbg_stacks(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"amldbg stacks: skipped a damaged crash report at {damaged}",
        f"amldbg stacks: skipped a truncated dump at {cut} (the file ends before the dump does)",
    ]
    assert "group 1: ranks 0-1 (2)" in result.stdout
    assert "no dump from ranks 2-3" in result.stdout


def test_newlines_bidi_and_separators_in_a_dump_are_escaped_not_printed(tmp_path: Path) -> None:
    forged = "load\noutlier: rank 1 at train.py:1 in fake\u202e\u2028\u2066\x85\r"
    write_dumps(tmp_path, [dump(r, WAITING) for r in range(3)] + [dump(3, [("/mnt/code/train.py", 60, forged)])])
    evil = dump(0, WAITING)
    evil["host"] = "node\u2029\u202e-0"
    (tmp_path / "stacks-x\nfake\u202e.json").write_text(json.dumps(dump(1, STUCK))[:50])
    done = amldbg_stacks_bytes(str(tmp_path))
    assert done.returncode == 0
    out, err = assert_safe(done)
    # One outlier line, not a second one forged by the function name.
    assert [line for line in out.splitlines() if line.startswith("outlier:")] == [
        "outlier: rank 3 at train.py:60 in load\\x0aoutlier: rank 1 at train.py:1 in "
        "fake\\u202e\\u2028\\u2066\\x85\\x0d"
    ]
    assert "stacks-x\\x0afake\\u202e.json" in err and len(err.splitlines()) == 1
    as_json = amldbg_stacks_bytes(str(tmp_path), "--json")
    assert as_json.stdout.isascii()  # every such character is a JSON escape
    assert_safe(as_json)
    assert json.loads(as_json.stdout)["outliers"] == [3]


@pytest.mark.parametrize("rank", ["1e400", "-1", '"abc"', "2.0", "true", "10000000000", "null"])
def test_an_invalid_rank_is_rejected_not_read_as_rank_0(tmp_path: Path, rank: str) -> None:
    write_dumps(tmp_path, [dump(0, WAITING, world=1)])
    # A later dump at other frames that would replace the real rank 0's.
    bad = json.dumps(dump(0, STUCK, seq=9, time="2026-01-01T00:09:00", world=1))
    bad_file = tmp_path / "stacks-bad.json"
    bad_file.write_text(bad.replace('"rank": 0', f'"rank": {rank}'))
    crash = {"amldbg_crash": 1, "rank": 0, "pid": 5, "exception": "E", "frame": "f"}
    log = tmp_path / "std_log.txt"
    log.write_text("amldbg crash: " + json.dumps(crash).replace('"rank": 0', f'"rank": {rank}') + "\n")
    result = amldbg_stacks(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"amldbg stacks: ignored a dump with an invalid rank at {bad_file}",
        f"amldbg stacks: ignored a crash report with an invalid rank at {log}:1",
    ]
    assert "group 1: rank 0 (1), stall: at train.py:88 in all_reduce_forever" in result.stdout
    assert "load_shard" not in result.stdout and "crash report" not in result.stdout


def test_a_rank_given_as_a_string_of_digits_is_a_rank(tmp_path: Path) -> None:
    item = dump(2, WAITING, world=3)
    item["rank"] = "2"
    write_dumps(tmp_path, [item])
    report = json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)
    assert report["groups"][0]["ranks"] == [2] and report["missing"] == [0, 1]


def test_processes_that_all_claim_rank_0_stay_apart_and_the_outlier_is_named(tmp_path: Path) -> None:
    # torch.multiprocessing.spawn without RANK: four processes, all "rank 0 of 1".
    dumps = []
    for pid in (4242, 4243, 4244, 4245):
        item = dump(0, STUCK if pid == 4244 else WAITING, world=1)
        item["pid"], item["host"] = pid, "node-1"
        dumps.append(item)
    write_dumps(tmp_path, dumps)
    text = amldbg_stacks(str(tmp_path))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("4 processes of 1 rank dumped stacks (latest dump of each process;")
    assert ("group 1: rank 0 (pid 4242 on node-1), rank 0 (pid 4243 on node-1), "
            "rank 0 (pid 4245 on node-1) (3), stall: at train.py:88 in all_reduce_forever") in lines
    assert [line for line in lines if line.startswith("outlier:")] == [
        "outlier: rank 0 (pid 4244 on node-1) at train.py:60 in load_shard"
    ]
    assert any(line.startswith("4 processes claim rank 0") for line in lines)
    report = json.loads(amldbg_stacks(str(tmp_path), "--json").stdout)
    assert report["groups"][0]["ranks"] == [0]
    assert [p["pid"] for p in report["groups"][0]["processes"]] == [4242, 4243, 4245]
    assert report["groups"][1]["processes"] == [{"rank": 0, "pid": 4244, "host": "node-1"}]
    assert report["outliers"] == [0]
    assert report["outlier_processes"] == [
        {"rank": 0, "pid": 4244, "host": "node-1", "frame": "train.py:60 in load_shard"}
    ]


def test_every_crash_report_is_listed_and_one_read_twice_counts_once(tmp_path: Path) -> None:
    # A thread's crash and the main thread's crash of one process, in the same second.
    reports = [
        {"amldbg_crash": 1, "rank": 0, "pid": 77, "host": "n", "where": "thread",
         "time": "2026-01-01T00:00:00.100+00:00", "exception": "KeyError: 'x'", "frame": "io.py:5 in worker"},
        {"amldbg_crash": 1, "rank": 0, "pid": 77, "host": "n", "where": "main",
         "time": "2026-01-01T00:00:00.400+00:00", "exception": "RuntimeError: worker died",
         "frame": "train.py:12 in main"},
    ]
    folder = tmp_path / "outputs" / "amldbg"
    folder.mkdir(parents=True)
    names = ["crash-rank0-pid77.json", "crash-rank0-pid77-2.json"]
    lines = []
    for report, name in zip(reports, names):
        (folder / name).write_text(json.dumps(report))
        lines.append("amldbg crash: " + json.dumps({**report, "file": f"/mnt/outputs/amldbg/{name}"}))
    (tmp_path / "std_log.txt").write_text("\n".join(lines) + "\n")
    for paths in ([str(tmp_path)], [str(folder)], [str(tmp_path / "std_log.txt")]):
        result = amldbg_stacks(*paths)
        assert result.returncode == 0, result.stderr
        assert "2 crash reports:" in result.stdout, result.stdout
        assert "KeyError: 'x' at io.py:5 in worker" in result.stdout
        assert "RuntimeError: worker died at train.py:12 in main" in result.stdout
    # Without a file name, the time and place tell two reports apart (and one apart from itself).
    bare = [{k: v for k, v in r.items()} for r in reports]
    text = "".join("amldbg crash: " + json.dumps(r) + "\n" for r in bare + bare)
    assert "2 crash reports:" in amldbg_stacks(stdin=text).stdout


def test_link_loops_fifos_and_dangling_links_in_a_folder(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_dumps(job / "outputs", [dump(0, WAITING, world=1)])
    (job / "outputs" / "again").symlink_to("..")  # a folder link loop
    loop = job / "std_log.txt"
    loop.symlink_to(loop.name)  # a link to itself: nobody can open it, root included
    dangling = job / "stacks-rank1-pid101-1.json"
    dangling.symlink_to(job / "gone.json")
    os.mkfifo(job / "std_log_process_01.txt")  # would block a reader that opened it
    result = amldbg_stacks(str(job))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"amldbg stacks: cannot read {dangling}: No such file or directory; skipped",
        f"amldbg stacks: cannot read {loop}: Too many levels of symbolic links; skipped",
    ]
    assert "group 1: rank 0 (1)" in result.stdout
    # Nothing readable at all is bad input: exit 2 with one line.
    only = tmp_path / "only"
    only.mkdir()
    (only / "std_log.txt").symlink_to("std_log.txt")
    result = amldbg_stacks(str(only))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"amldbg stacks: error: cannot read {only / 'std_log.txt'}: Too many levels of symbolic links"
    )


def test_non_utf8_standard_input_is_read(tmp_path: Path) -> None:
    line = "amldbg stacks: " + json.dumps(dump(0, WAITING, world=1))
    done = amldbg_stacks_bytes("--json", stdin=b"\xff\xfe junk \xc3\x28\n" + line.encode() + b"\n\x80\n")
    assert done.returncode == 0, done.stderr
    assert_safe(done)
    assert json.loads(done.stdout)["groups"][0]["ranks"] == [0]
