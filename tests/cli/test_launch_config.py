"""`amldbg launch-config` printing entries and merging them into real launch.json files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import json5

from processes import run_amldbg

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# What VS Code writes for a new launch.json, plus a user's own edits: comments of both
# kinds, trailing commas, and an amldbg entry from an earlier run to be updated in place.
HEAD = """{
    // Use IntelliSense to learn about possible attributes.
    // Hover to view descriptions of existing attributes.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python Debugger: Current File",
            "type": "debugpy",
            "request": "launch",
            "program": "${file}", // whichever file is open
            "console": "integratedTerminal",
        },
        /* attach to yesterday's job */
"""
OLD_ENTRY = """        {
            "name": "Azure ML: attach to rank 0",
            "type": "debugpy",
            "request": "attach",
            "connect": {"host": "10.1.1.1", "port": 5678,},
        }"""
TAIL = """,
        {
            "name": "Tests", "type": "debugpy", "request": "launch", "module": "pytest",
        }, // keep me
    ],
}
"""


def amldbg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m amldbg` command in ``cwd``."""
    return run_amldbg(*args, cwd=cwd)


def names(text: str) -> list[str]:
    return [entry["name"] for entry in json5.loads(text)["configurations"]]


def test_print_without_write_is_a_launch_json_document(tmp_path: Path) -> None:
    done = amldbg(
        "launch-config", "--host", "10.3.0.5", "--port", "5679", "--remote-root", "/mnt/wd",
        "--local-root", "${workspaceFolder}/code/step1", "--no-just-my-code", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["version"] == "0.2.0"
    (entry,) = document["configurations"]
    assert entry["type"] == "debugpy" and entry["request"] == "attach"
    assert entry["connect"] == {"host": "10.3.0.5", "port": 5679}
    assert entry["pathMappings"] == [{"localRoot": "${workspaceFolder}/code/step1", "remoteRoot": "/mnt/wd"}]
    assert entry["justMyCode"] is False and entry["redirectOutput"] is True


def test_listen_and_deployment_entries(tmp_path: Path) -> None:
    listen = json.loads(amldbg("launch-config", "--listen", "--port", "6000", cwd=tmp_path).stdout)
    (entry,) = listen["configurations"]
    assert entry["listen"] == {"host": "0.0.0.0", "port": 6000} and "connect" not in entry
    deployment = json.loads(
        amldbg("launch-config", "--deployment", "--no-redirect-output", cwd=tmp_path).stdout
    )
    (entry,) = deployment["configurations"]
    assert entry["connect"] == {"host": "localhost", "port": 5678}
    assert entry["pathMappings"][0]["remoteRoot"] == "/var/azureml-app"
    assert entry["redirectOutput"] is False


def test_write_creates_the_file_and_its_folder(tmp_path: Path) -> None:
    done = amldbg(
        "launch-config", "--host", "10.3.0.5", "--write", ".vscode/launch.json", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / ".vscode" / "launch.json").read_text())
    assert [e["connect"]["host"] for e in written["configurations"]] == ["10.3.0.5"]
    assert "created" in done.stdout


def test_update_in_place_keeps_every_other_byte(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    launch.write_text(HEAD + OLD_ENTRY + TAIL)
    done = amldbg(
        "launch-config", "--host", "10.3.0.5", "--port", "5690", "--remote-root", "/mnt/wd",
        "--name", "Azure ML: attach to rank 0", "--write", str(launch), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "updated 'Azure ML: attach to rank 0'" in done.stdout
    text = launch.read_text()
    # Everything before and after the entry is untouched, comments and trailing commas too.
    assert text.startswith(HEAD) and text.endswith(TAIL)
    middle = json5.loads(text[len(HEAD): len(text) - len(TAIL)])
    assert middle["connect"] == {"host": "10.3.0.5", "port": 5690}
    assert middle["pathMappings"][0]["remoteRoot"] == "/mnt/wd"
    assert names(text) == ["Python Debugger: Current File", "Azure ML: attach to rank 0", "Tests"]
    # The new entry is indented like its neighbours.
    assert '\n        {\n            "name": "Azure ML: attach to rank 0",' in text

    # Writing the same entry again changes nothing.
    again = amldbg(
        "launch-config", "--host", "10.3.0.5", "--port", "5690", "--remote-root", "/mnt/wd",
        "--name", "Azure ML: attach to rank 0", "--write", str(launch), cwd=tmp_path,
    )
    assert again.returncode == 0 and launch.read_text() == text


def test_from_log_adds_entries_and_a_compound_after_the_others(tmp_path: Path) -> None:
    launch = tmp_path / ".vscode" / "launch.json"
    launch.parent.mkdir()
    original = HEAD + OLD_ENTRY + TAIL
    launch.write_text(original)
    done = amldbg(
        "launch-config", "--from-log", str(FIXTURES / "job_mpi"), "--write", str(launch),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    text = launch.read_text()
    # Every original line is still there, in order (the earlier rank-0 entry was replaced).
    old_entry_lines = set(OLD_ENTRY.splitlines())
    kept = [line for line in original.splitlines() if line not in old_entry_lines]
    remaining = iter(text.splitlines())
    assert all(any(line == other for other in remaining) for line in kept)
    document = json5.loads(text)
    assert names(text) == [
        "Python Debugger: Current File",
        "Azure ML: attach to rank 0",
        "Tests",
        "Azure ML: attach to rank 1",
    ]
    by_name = {e["name"]: e for e in document["configurations"]}
    assert by_name["Azure ML: attach to rank 0"]["connect"] == {"host": "10.3.0.6", "port": 5678}
    assert by_name["Azure ML: attach to rank 1"]["connect"] == {"host": "10.3.0.6", "port": 5679}
    assert document["compounds"] == [
        {
            "name": "Azure ML: all endpoints",
            "configurations": ["Azure ML: attach to rank 0", "Azure ML: attach to rank 1"],
        }
    ]
    assert text.count("//") == original.count("//") and "/* attach to yesterday's job */" in text


def test_broken_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    broken = HEAD + OLD_ENTRY + ",\n        {\"name\": \"half\", \n"  # cut off mid-way
    launch.write_text(broken)
    before = launch.stat().st_mtime_ns
    done = amldbg("launch-config", "--host", "10.3.0.5", "--write", str(launch), cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"amldbg launch-config: error: cannot parse {launch}: ")
    assert done.stderr.rstrip().endswith("nothing was changed")
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert launch.read_text() == broken and launch.stat().st_mtime_ns == before
    assert sorted(os.listdir(tmp_path)) == ["launch.json"]  # no temporary file left behind


def test_not_a_launch_json_is_refused(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    for content in ('[{"name": "x"}]\n', '{"configurations": {"name": "x"}}\n'):
        launch.write_text(content)
        done = amldbg("launch-config", "--listen", "--write", str(launch), cwd=tmp_path)
        assert done.returncode == 2 and "is not a launch.json" in done.stderr
        assert launch.read_text() == content


def test_crlf_tabs_and_a_missing_configurations_key(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    original = '{\r\n\t// only settings so far\r\n\t"version": "0.2.0",\r\n}\r\n'
    launch.write_bytes(original.encode())
    done = amldbg("launch-config", "--listen", "--port", "5700", "--write", str(launch), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = launch.read_bytes().decode()
    assert "\n" not in data.replace("\r\n", "")  # no lone LF slipped in
    assert data.startswith('{\r\n\t// only settings so far\r\n\t"version": "0.2.0",\r\n\t"configurations": [\r\n\t\t{')
    assert json5.loads(data)["configurations"][0]["listen"]["port"] == 5700


def test_write_through_a_symlink_keeps_the_link_and_the_mode(tmp_path: Path) -> None:
    # Dotfiles setups link .vscode/launch.json to a file kept elsewhere.
    real = tmp_path / "dotfiles" / "launch.json"
    real.parent.mkdir()
    real.write_text(HEAD + OLD_ENTRY + TAIL)
    real.chmod(0o640)
    link = tmp_path / ".vscode" / "launch.json"
    link.parent.mkdir()
    link.symlink_to(real)
    done = amldbg("launch-config", "--host", "10.3.0.5", "--name", "Azure ML: new", "--write", str(link), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "Azure ML: new" in names(real.read_text())
    assert (real.stat().st_mode & 0o7777) == 0o640
    assert sorted(os.listdir(real.parent)) == ["launch.json"]  # no temporary file left behind


def test_write_replaces_the_file_atomically(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    launch.write_text(HEAD + OLD_ENTRY + TAIL)
    before = launch.stat().st_ino
    # A reader holding the old file keeps a complete old copy: the file is replaced, not
    # rewritten in place.
    with open(launch, encoding="utf-8") as reader:
        done = amldbg("launch-config", "--listen", "--write", str(launch), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert reader.read() == HEAD + OLD_ENTRY + TAIL
    assert launch.stat().st_ino != before
    assert sorted(os.listdir(tmp_path)) == ["launch.json"]


def test_read_only_launch_json_is_refused(tmp_path: Path) -> None:
    launch = tmp_path / "launch.json"
    original = HEAD + OLD_ENTRY + TAIL
    launch.write_text(original)
    launch.chmod(0o444)
    done = amldbg("launch-config", "--host", "10.3.0.5", "--write", str(launch), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"amldbg launch-config: error: cannot write {launch}: it is read-only; nothing was changed"
    ]
    assert launch.read_text() == original and (launch.stat().st_mode & 0o7777) == 0o444
    assert sorted(os.listdir(tmp_path)) == ["launch.json"]


def test_a_new_launch_json_gets_the_usual_mode(tmp_path: Path) -> None:
    done = amldbg("launch-config", "--listen", "--write", "launch.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    umask = os.umask(0o022)
    os.umask(umask)
    assert ((tmp_path / "launch.json").stat().st_mode & 0o777) == 0o666 & ~umask
