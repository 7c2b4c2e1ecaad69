"""The commands on hostile input: logs and snapshots come from remote machines.

What a user observes is checked: the exit status (2 with one line for bad input, never 1
for it), no traceback, no raw control character on the terminal, damaged records skipped and
counted, memory bounded by the line cap rather than the file size.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from processes import child_env, run_amldbg

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOOD = (
    'amldbg endpoint: {"cwd": "/wd", "host": "10.0.0.1", "mode": "listen", "pid": 7, '
    '"port": 5678, "rank": 0, "state": "waiting", "timeout": 60}'
)
# What must never reach a terminal raw: C0 (ESC starts CSI/OSC/DCS), DEL, C1, lone surrogates.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def run(*args: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real `python -m amldbg`, with bytes in and out (as a terminal would get them).

    Standard streams are strict UTF-8, as on a developer's machine with a UTF-8 locale
    (under the C locale Python would quietly use surrogateescape instead).
    """
    return run_amldbg(*args, input=stdin, text=False, cwd=cwd or FIXTURES,
                      env=child_env(PYTHONIOENCODING="utf-8:strict"))


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def assert_clean(done: subprocess.CompletedProcess[bytes]) -> None:
    """No traceback and no raw control character in anything printed."""
    out, err = text(done.stdout), text(done.stderr)
    assert "Traceback" not in err, err
    for stream in (out, err):
        assert not RAW_CONTROL.search(stream), repr(stream)


def endpoint_line(**fields: object) -> str:
    base: dict[str, object] = {"host": "10.0.0.2", "mode": "listen", "pid": 9, "port": 5679, "state": "waiting"}
    base.update(fields)
    return "amldbg endpoint: " + json.dumps(base)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("deep nesting", "amldbg endpoint: " + "[" * 100_000),
        ("deep nesting in a field", 'amldbg endpoint: {"host": "10.0.0.2", "worker": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        ("1e400 port", endpoint_line(port=1e400).replace("Infinity", "1e400")),
        ("port out of range", endpoint_line(port=70000)),
        ("port zero", endpoint_line(port=0)),
        ("port not a number", endpoint_line(port="5678; rm -rf /")),
        ("port true", endpoint_line(port=True)),
        ("host a number", endpoint_line(host=1234)),
        ("host a list", endpoint_line(host=["10.0.0.2"])),
        ("host an object", endpoint_line(host={"a": 1})),
        ("host with spaces", endpoint_line(host="10.0.0.2 evil")),
        ("host with an escape", endpoint_line(host="10.0.0.2\u001b]0;x\u0007")),
        ("mode an object", endpoint_line(mode={"x": 1})),
        ("not an object", 'amldbg endpoint: ["a", 1]'),
        ("cut short", 'amldbg endpoint: {"host": "10.0.0.2", "port": 56'),
    ],
)
def test_a_damaged_record_is_skipped_and_counted(tmp_path: Path, name: str, bad: str) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text(bad + "\n" + GOOD + "\n")
    done = run("find", "--json", str(log))
    assert_clean(done)
    assert done.returncode == 0, text(done.stderr)
    assert [e["host"] for e in json.loads(done.stdout)] == ["10.0.0.1"]
    assert text(done.stderr).splitlines() == [
        f"amldbg find: skipped a damaged 'amldbg endpoint:' or 'amldbg crash:' line at {log}:1"
    ]


def test_only_damaged_records_is_nothing_found_not_a_crash(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text("\n".join(endpoint_line(port=p) for p in (0, 70000, 1e300)) + "\n")
    done = run("find", str(log))
    assert_clean(done)
    assert done.returncode == 1
    assert text(done.stderr).splitlines()[-1] == "amldbg find: no debug endpoint announced in the given logs"


def test_many_damaged_records_give_a_bounded_report(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text("amldbg endpoint: {broken\n" * 10_000 + GOOD + "\n")
    done = run("find", str(log))
    assert_clean(done)
    assert done.returncode == 0
    lines = text(done.stderr).splitlines()
    assert len(lines) == 6
    assert lines[-1] == "amldbg find: skipped 9995 more damaged 'amldbg endpoint:' lines"


def test_odd_but_valid_values_do_not_crash(tmp_path: Path) -> None:
    # 1e400 as a timeout or rank, lone surrogates and escapes in free text: shown escaped.
    log = tmp_path / "std_log.txt"
    lines = [
        '{"host": "10.0.0.3", "port": 5680, "pid": 11, "timeout": 1e400, "rank": 1e400, '
        '"cwd": "/wd/\\ud800\\u001b]52;c;aGk=\\u0007", "mode": "listen\\u009b2J", "worker": "w\\u001b[31m"}',
        '{"host": "10.0.0.4", "port": 5681, "pid": 12, "rank": -3, "world_size": "many", "bind": 5}',
    ]
    log.write_text("".join(f"amldbg endpoint: {line}\n" for line in lines))
    table = run("find", str(log))
    assert_clean(table)
    assert table.returncode == 0
    out = text(table.stdout)
    assert "listen\\x9b2J" in out and "w\\x1b[31m" in out
    as_json = run("find", "--json", str(log))
    assert_clean(as_json)
    first, second = json.loads(as_json.stdout)
    assert first["timeout"] is None and first["rank"] is None
    assert first["cwd"] == "/wd/\ud800\u001b]52;c;aGk=\u0007"  # kept, escaped by JSON
    assert second["rank"] is None and second["world_size"] is None and second["bind"] is None


def test_control_characters_in_guide_lines_and_file_names_are_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    evil = folder / "std_log_\x1b]0;owned\x07.txt"
    evil.write_text("Timeout for debug connection: 30\nip_address: 10.0.0.8\n\x1b[2J\x9b1m\n")
    done = run("find", str(folder))
    assert_clean(done)
    assert done.returncode == 0
    assert "std_log_\\x1b]0;owned\\x07.txt" in text(done.stdout)
    missing = run("find", str(tmp_path / "no\x1b[2Jsuch.txt"))
    assert_clean(missing)
    assert missing.returncode == 2
    assert text(missing.stderr).splitlines() == [
        f"amldbg find: error: {tmp_path}/no\\x1b[2Jsuch.txt: no such file or folder"
    ]
    option = run("find", "--\x1b]0;x\x07")
    assert_clean(option)
    assert option.returncode == 2 and len(option.stderr.splitlines()) == 1


def test_non_utf8_standard_input(tmp_path: Path) -> None:
    data = b"\xff\xfe garbage \xc3\x28\n" + GOOD.encode() + b"\n\x80\x81 more\n"
    done = run("find", "--json", stdin=data)
    assert_clean(done)
    assert done.returncode == 0, text(done.stderr)
    assert [e["host"] for e in json.loads(done.stdout)] == ["10.0.0.1"]


def test_one_unreadable_file_in_a_folder_is_reported_and_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "job" / "user_logs"
    folder.mkdir(parents=True)
    (folder / "std_log_process_00.txt").write_text(GOOD + "\n")
    # A link loop cannot be opened by anyone, root included (chmod 000 would not stop root).
    loop = folder / "std_log_process_01.txt"
    loop.symlink_to(loop.name)
    done = run("find", "--json", str(tmp_path / "job"))
    assert_clean(done)
    assert done.returncode == 0
    assert [e["host"] for e in json.loads(done.stdout)] == ["10.0.0.1"]
    assert text(done.stderr).splitlines() == [
        f"amldbg find: cannot read {loop}: Too many levels of symbolic links; skipped"
    ]
    # Nothing readable at all is bad input: exit 2, not "nothing found".
    only = tmp_path / "only"
    only.mkdir()
    (only / "std_log.txt").symlink_to("std_log.txt")
    done = run("find", str(only))
    assert_clean(done)
    assert done.returncode == 2
    assert text(done.stderr).splitlines()[-1].startswith("amldbg find: error: cannot read ")


def test_launch_config_from_log_only_writes_valid_ports(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text(
        "\n".join(
            [
                endpoint_line(port=70000, rank=1, pid=21),
                endpoint_line(port=0, rank=2, pid=22),
                endpoint_line(port=5690, rank=3, pid=23),
                # The guide's lines with an impossible port: the default is assumed instead.
                "[1,4]<stdout>:Timeout for debug connection: 30",
                "[1,4]<stdout>:ip_address: 10.0.0.5",
                "[1,4]<stdout>:port: 99999",
            ]
        )
        + "\n"
    )
    done = run("launch-config", "--from-log", str(log))
    assert_clean(done)
    assert done.returncode == 0, text(done.stderr)
    entries = json.loads(done.stdout)["configurations"]
    assert [(e["name"], e["connect"]["port"]) for e in entries] == [
        ("Azure ML: attach to rank 3", 5690), ("Azure ML: attach to rank 4", 5678)
    ]
    assert text(done.stderr).count("amldbg launch-config: skipped a damaged") == 2
    nothing = tmp_path / "bad.txt"
    nothing.write_text(endpoint_line(port=0) + "\n")
    done = run("launch-config", "--from-log", str(nothing))
    assert_clean(done)
    assert done.returncode == 2
    assert text(done.stderr).splitlines()[-1] == (
        "amldbg launch-config: error: no debug endpoint to attach to in the given logs (see 'amldbg find')"
    )


def test_a_200_mb_log_without_a_newline_needs_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    block = b"x" * (1 << 20)
    with open(log, "wb") as handle:
        for _ in range(200):
            handle.write(block)
        handle.write(b"\n" + GOOD.encode() + b"\n")
    size = log.stat().st_size
    probe = (
        "import json, sys\n"
        "from amldbg.cli import main\n"
        "status = main(['find', '--json', sys.argv[1]])\n"
        # VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the forking parent's (pytest's)
        # high-water mark across exec; VmHWM belongs to this process's own address space.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "sys.stderr.write('maxrss_kb %s\\n' % hwm)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(log)], capture_output=True, env=child_env(), timeout=600
    )
    assert done.returncode == 0, text(done.stderr)
    assert [e["host"] for e in json.loads(done.stdout)] == ["10.0.0.1"]
    err = text(done.stderr)
    assert "amldbg find: 1 line longer than 1024 KiB read only in part" in err
    peak = int(re.search(r"maxrss_kb (\d+)", err).group(1)) * 1024  # type: ignore[union-attr]
    # A memory ceiling, not a timing: far below the file's size (reading the line whole
    # would need well over 2x the file size as text).
    assert peak < size // 2, f"peak {peak >> 20} MiB for a {size >> 20} MiB log"


# --- amldbg env diff on old, malformed and hostile snapshots --------------------------------


def snapshot(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "amldbg_snapshot": 1,
        "python": {"version": "3.11.4", "implementation": "CPython"},
        "platform": {"system": "Linux", "machine": "x86_64"},
        "packages": {"numpy": {"version": "1.26.0", "modules": ["numpy"]}},
        "imported": ["numpy"],
        "env": {"RANK": "0"},
        "gpu": None,
    }
    data.update(overrides)
    return data


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("deep nesting", '{"python": ' + "[" * 100_000, "nested too deeply"),
        ("deep nesting, valid prefix", '{"packages": {}, "python": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ("packages a number", json.dumps(snapshot(packages=5)), "damaged"),
        ("python a list", json.dumps(snapshot(python=[1, 2])), "damaged"),
        ("a JSON list", "[1, 2, 3]", "is not an amldbg environment snapshot"),
        ("binary", "\x00\x01\x02 not json", "is not an amldbg environment snapshot"),
        ("cut log line", "log start\namldbg env snapshot: {\"python\": {\"version\": \n", "cut short or damaged"),
    ],
)
def test_env_diff_bad_snapshots_exit_2_with_one_line(tmp_path: Path, name: str, content: str, reason: str) -> None:
    good = write(tmp_path / "a.json", snapshot())
    bad = tmp_path / "b.json"
    bad.write_text(content)
    done = run("env", "diff", str(good), str(bad))
    assert_clean(done)
    assert done.returncode == 2, text(done.stdout)
    (line,) = text(done.stderr).splitlines()
    assert line.startswith("amldbg env diff: error: ") and reason in line, line


def test_env_diff_old_and_odd_snapshots_compare(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", snapshot())
    # An older, simpler shape: packages as "name==version", no imported list, no env.
    old = write(tmp_path / "old.json", {"python": "3.10.2", "packages": ["numpy==1.21.0", "scipy==1.7.0"]})
    done = run("env", "diff", str(a), str(old))
    assert_clean(done)
    assert done.returncode == 1, text(done.stderr)
    out = text(done.stdout)
    assert "numpy" in out and "1.26.0 (A) -> 1.21.0 (B)" in out and "scipy" in out
    # 1e400 and nested values where strings belong.
    odd = tmp_path / "odd.json"
    odd.write_text(
        '{"python": {"version": 1e400}, "packages": {"numpy": {"version": 1e400, "modules": 3}, '
        '"x\\u001b[2J": "1.0", "7": [1]}, "imported": {"a": 1}, "env": ["x"], "gpu": "none"}'
    )
    for extra in ([], ["--json"], ["--env", "--platform"]):
        done = run("env", "diff", *extra, str(a), str(odd))
        assert_clean(done)
        assert done.returncode == 1, text(done.stderr)
    # Package names are normalised to lower case; the escape is still shown as text.
    assert "x\\x1b[2j" in text(run("env", "diff", str(a), str(odd)).stdout)


def test_env_diff_reads_a_snapshot_line_from_a_non_utf8_log(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", snapshot())
    log = tmp_path / "std_log.txt"
    line = "amldbg env snapshot: " + json.dumps(snapshot(packages={"numpy": {"version": "2.0.0"}}))
    log.write_bytes(b"\xff\xfe\x00junk\n" + line.encode() + b"\n\x80 tail\n")
    done = run("env", "diff", str(a), str(log))
    assert_clean(done)
    assert done.returncode == 1
    assert "1.26.0 (A) -> 2.0.0 (B)" in text(done.stdout)


def test_env_diff_never_prints_an_old_snapshots_secret(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", snapshot())
    old = write(
        tmp_path / "old.json",
        snapshot(env={"AZUREML_ACCOUNT_KEY1": "plainvalue0001", "PIP_INDEX_URL": "https://TOKENabc1@h/s"}),
    )
    for extra in ([], ["--json"]):
        done = run("env", "diff", "--env", *extra, str(a), str(old))
        assert_clean(done)
        assert done.returncode == 1
        assert b"plainvalue0001" not in done.stdout and b"TOKENabc1" not in done.stdout
        assert b"AZUREML_ACCOUNT_KEY1" in done.stdout


def test_unwritable_snapshot_output_is_one_line(tmp_path: Path) -> None:
    done = run("env", "snapshot", "-o", str(tmp_path / "no" / "dir" / "\x1b[2J.json"))
    assert_clean(done)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX only")
def test_env_snapshot_to_a_fifo_or_dev_null_is_fine(tmp_path: Path) -> None:
    done = run("env", "snapshot", "-o", os.devnull)
    assert_clean(done)
    assert done.returncode == 0


def test_line_reader_splits_like_a_file_and_caps_long_lines() -> None:
    import io
    import random

    from amldbg.core.joblogs import LineReader

    generator = random.Random(7)
    for _ in range(300):
        data = bytes(generator.choice(b"ab\n\r\xff") for _ in range(generator.randrange(0, 60)))
        reader = LineReader(io.BytesIO(data), max_line=8, chunk=generator.randrange(1, 9))
        lines = list(reader)
        expected = data.split(b"\n")
        if expected and expected[-1] == b"":
            expected.pop()
        assert lines == [line[:8].decode("utf-8", "replace").rstrip("\r") for line in expected]
        assert reader.cut == sum(len(line) > 8 for line in expected)
        text_lines = list(LineReader(io.StringIO(data.decode("latin-1")), max_line=8, chunk=3))
        assert len(text_lines) == len(expected)


def test_find_ends_on_a_folder_link_loop_and_never_opens_a_fifo(tmp_path: Path) -> None:
    # The walker amldbg stacks uses too (amldbg.core.joblogs): a linked folder is read once,
    # a loop ends, a FIFO below a folder (which would block a reader) is never opened.
    job = tmp_path / "job"
    (job / "user_logs").mkdir(parents=True)
    (job / "user_logs" / "std_log.txt").write_text(GOOD + "\n")
    (job / "user_logs" / "up").symlink_to("..")
    (job / "again").symlink_to("user_logs")
    os.mkfifo(job / "user_logs" / "std_log_process_01.txt")
    done = run("find", "--json", str(job))
    assert_clean(done)
    assert done.returncode == 0, text(done.stderr)
    assert [(e["host"], e["source"]) for e in json.loads(done.stdout)] == [
        ("10.0.0.1", str(job / "user_logs" / "std_log.txt"))
    ]
    assert done.stderr == b""
