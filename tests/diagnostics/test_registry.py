"""The registry of armed processes (amldbg.diagnostics.registry) that `amldbg signal` reads:
its files and directory, what a reader believes of them, and the runtime side in real scripts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from amldbg.core import secrets
from amldbg.diagnostics import registry
from processes import child_env

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the registry is Linux only")


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "registry"
    monkeypatch.setenv(registry.DIR_ENV, str(path))
    yield path
    registry.unregister()


def warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("amldbg: warning: ")]


def test_register_update_unregister(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert registry.register(["SIGUSR1", "SIGUSR2", "SIGTERM"])
    path = folder / f"{os.getpid()}.json"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = json.loads(path.read_text())
    assert raw["pid"] == os.getpid() and raw["uid"] == os.getuid()
    assert raw["start_time"] == registry.start_time(os.getpid()) is not None
    assert raw["signals"] == ["SIGUSR1", "SIGUSR2"]  # only the ones amldbg may own
    assert (raw["rank"], raw["world_size"]) == (0, 1)
    assert [name for name in os.listdir(folder)] == [path.name]  # no temporary file left

    [entry] = registry.entries()
    assert entry.pid == os.getpid() and entry.signals == ("SIGUSR1", "SIGUSR2")
    assert registry.alive(entry) and registry.status(entry) == "alive"

    assert registry.update(["SIGUSR2"])
    assert registry.entries()[0].signals == ("SIGUSR2",)
    assert json.loads(path.read_text())["armed_at"] == raw["armed_at"]
    assert not registry.update([])  # amldbg owns no signal any more: no entry
    assert not path.exists()
    assert not registry.update(["SIGUSR1"])  # not registered: nothing is written
    assert not path.exists()

    assert registry.register(["SIGUSR1"])
    registry.unregister()
    registry.unregister()
    assert os.listdir(folder) == []
    assert warnings(capsys.readouterr().out) == []


def test_the_script_name_is_masked_and_escaped(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/x/train\x1b]0;owned\x07.py", "--token", "s3cret"])
    assert registry.register(["SIGUSR1"])
    [entry] = registry.entries()
    assert entry.script == "train\\x1b]0;owned\\x07.py"
    assert "s3cret" not in (folder / f"{os.getpid()}.json").read_text()


def test_where_the_registry_lives(tmp_path: Path) -> None:
    runtime = tmp_path / "run-user"
    runtime.mkdir()
    assert registry.candidates({"AMLDBG_REGISTRY_DIR": "/r"}) == ["/r"]
    temp = os.path.join(__import__("tempfile").gettempdir(), f"amldbg-{os.getuid()}")
    assert registry.candidates({"XDG_RUNTIME_DIR": str(runtime)}) == [str(runtime / "amldbg"), temp]
    assert registry.candidates({"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == [temp]
    assert registry.candidates({}) == [temp]


def refused_directory(tmp_path: Path, kind: str) -> Path:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    if kind == "symlink":
        link = tmp_path / "link"
        link.symlink_to(real, target_is_directory=True)
        return link
    if kind == "open to others":
        real.chmod(0o755)
        return real
    if kind == "a file":
        (tmp_path / "file").write_text("")
        return tmp_path / "file"
    if os.getuid() != 0:
        pytest.skip("making a directory of another user needs root")
    os.chown(real, 65534, 65534)
    return real


@pytest.mark.parametrize("kind", ["symlink", "open to others", "another user's", "a file"])
def test_an_unsafe_directory_is_refused_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str,
) -> None:
    path = refused_directory(tmp_path, kind)
    monkeypatch.setenv(registry.DIR_ENV, str(path))
    assert not registry.register(["SIGUSR1"])
    assert not registry.register(["SIGUSR1", "SIGUSR2"])
    [line] = warnings(capsys.readouterr().out)
    assert "amldbg signal cannot see this process" in line and str(path) in line
    assert f"kill -USR1 {os.getpid()} still works" in line
    assert not (tmp_path / "real" / f"{os.getpid()}.json").exists()
    # A reader refuses it too, even with a well-formed entry in it.
    if kind != "a file":
        target = tmp_path / "real" / f"{os.getpid()}.json"
        target.write_text(json.dumps(good_record()))
        found = registry.scan()
        assert found.entries == [] and len(found.refused) == 1


def test_a_failure_is_one_warning_and_never_raises(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(path: Any, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(secrets, "write_private", broken)
    assert not registry.register(["SIGUSR1"])
    assert not registry.register(["SIGUSR1"])
    [line] = warnings(capsys.readouterr().out)
    assert "amldbg signal cannot see this process" in line and "No space left" in line
    assert os.listdir(folder) == []  # the temporary file went too


def good_record(**changes: Any) -> dict[str, Any]:
    record = {
        "amldbg_registry": 1, "pid": os.getpid(), "start_time": registry.start_time(os.getpid()),
        "uid": os.getuid(), "rank": 3, "local_rank": 1, "world_size": 4, "launcher": "torchrun",
        "host": "node-0", "signals": ["SIGUSR1"], "script": "train.py",
        "armed_at": "2026-01-01T00:00:00+00:00",
    }
    record.update(changes)
    return record


def test_hostile_files_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "registry"
    folder.mkdir(mode=0o700)
    me = os.getpid()
    (folder / f"{me}.json").write_text(json.dumps(good_record()))
    bad = {
        "1.json": "x" * (registry.MAX_ENTRY + 1),              # huge
        "2.json": "{not json",
        "3.json": json.dumps(good_record(pid=3, rank="0")),     # wrong types
        "4.json": json.dumps(good_record(pid=4, world_size=True)),
        "5.json": json.dumps(good_record(pid=5, signals=["SIGKILL"])),
        "6.json": json.dumps(good_record(pid=5)),               # name is not its pid
        "7.json": json.dumps(good_record(pid=7, uid=os.getuid() + 1)),
        "8.json": "[" * 100_000 + "]" * 100_000,                # deep nesting
        "9.json": json.dumps([good_record(pid=9)]),
        "10.json": json.dumps(good_record(pid=10, signals="SIGUSR1")),
        "11.json": json.dumps(good_record(pid=11, host="h" * 5000)),
        "12.json": b"\xff\xfe".decode("latin-1"),
        "notes.txt": "hello",
    }
    for name, text in bad.items():
        (folder / name).write_text(text, encoding="latin-1" if name == "12.json" else "utf-8")
    (folder / "13.json").symlink_to(folder / f"{me}.json")
    os.mkfifo(folder / "14.json")  # a reader must not block on it
    (folder / ".99-abcdef.tmp").write_text("{")  # a write in progress: not counted
    found = registry.scan([str(folder)])
    assert [entry.pid for entry in found.entries] == [me]
    assert len(found.skipped) == len(bad) + 2
    assert any(item.startswith("1.json: too large") for item in found.skipped)
    assert any(item.startswith("13.json: ") for item in found.skipped)


def test_only_the_entry_s_own_process_is_alive(tmp_path: Path) -> None:
    # Exited: a child that ran and was reaped.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    started = registry.start_time(os.getpid())
    assert started is not None
    dead = registry.parse(json.dumps(good_record(pid=child.pid)), f"/r/{child.pid}.json")
    assert registry.status(dead) == "exited" and not registry.alive(dead)
    # Reused: our own pid, with another start time.
    reused = registry.parse(json.dumps(good_record(start_time=started + 1)), f"/r/{os.getpid()}.json")
    assert registry.status(reused) == "reused"
    # Another user's process, with its real start time.
    other = subprocess.Popen(["sleep", "60"], user=65534) if os.getuid() == 0 else None
    try:
        pid = other.pid if other is not None else 1
        theirs = registry.parse(
            json.dumps(good_record(pid=pid, start_time=registry.start_time(pid))), f"/r/{pid}.json",
        )
        assert registry.status(theirs) == "other user"
    finally:
        if other is not None:
            other.kill()
            other.wait(30)
    mine = registry.parse(json.dumps(good_record()), f"/r/{os.getpid()}.json")
    assert registry.alive(mine)


def test_start_time_reads_field_22_even_when_the_name_has_parentheses(tmp_path: Path) -> None:
    script = tmp_path / "a) b (c"
    script.write_text("import time; time.sleep(30)\n")
    os.symlink(sys.executable, tmp_path / "py) x (")
    child = subprocess.Popen([str(tmp_path / "py) x ("), str(script)])
    try:
        text = Path(f"/proc/{child.pid}/stat").read_text()
        expected = int(text[text.rfind(")") + 2:].split()[19])
        assert registry.start_time(child.pid) == expected
    finally:
        child.kill()
        child.wait(30)
    assert registry.start_time(child.pid) is None
    assert registry.start_time(-1) is None


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(body).lstrip())
    return subprocess.run(
        [sys.executable, str(job)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
        env=child_env(AMLDBG_REGISTRY_DIR=str(tmp_path / "registry")),
    )


def test_a_forked_child_never_removes_or_rewrites_its_parent_s_entry(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import json, os, sys
        from amldbg.diagnostics import registry
        assert registry.register(["SIGUSR1", "SIGUSR2"])
        path = os.path.join(os.environ["AMLDBG_REGISTRY_DIR"], f"{os.getpid()}.json")
        child = os.fork()
        if child == 0:
            registry.update(["SIGUSR1"])
            registry.update([])
            registry.unregister()
            sys.exit(0)  # atexit runs in the child too
        _, code = os.waitpid(child, 0)
        print("child", code, "entry", json.load(open(path))["signals"], flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert "child 0 entry ['SIGUSR1', 'SIGUSR2']" in result.stdout
    assert os.listdir(tmp_path / "registry") == []  # the parent's exit removed it


def test_arming_registers_and_disarming_unregisters(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import os, signal, amldbg
        from amldbg.debugger import on_demand
        from amldbg.diagnostics import registry
        signal.signal(signal.SIGUSR2, lambda *a: None)  # the script's own: amldbg leaves it
        amldbg.enable_remote_debug(on_demand=True)
        print("armed", [(e.pid == os.getpid(), e.signals) for e in registry.entries()], flush=True)
        on_demand.disarm()
        print("disarmed", registry.entries(), flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert "armed [(True, ('SIGUSR1',))]" in result.stdout
    assert "disarmed []" in result.stdout
    assert "warning" not in result.stdout


def test_off_by_default_registers_nothing(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import amldbg
        amldbg.enable_remote_debug()
        print("done", flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "registry").exists()
