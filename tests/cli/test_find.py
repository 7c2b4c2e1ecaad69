"""`amldbg find` (and the command's shared behaviour) on realistic logs and on a real run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from processes import ROOT, child_env, run_amldbg

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def amldbg(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `python -m amldbg` command in the fixtures' folder."""
    return run_amldbg(*args, input=stdin if stdin is not None else "", cwd=cwd or FIXTURES)


def find_json(*args: str, stdin: str | None = None, cwd: Path | None = None) -> list[dict]:
    done = amldbg("find", "--json", *args, stdin=stdin, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["RANK", "PID", "MODE", "ADDRESS"]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def test_driver_log_table_shows_the_attached_endpoint_once() -> None:
    done = amldbg("find", "70_driver_log.txt")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    # The guide lines, the launch.json entry and both JSON lines are one endpoint.
    assert rows == [["0", "143", "listen", "10.3.0.5:5678", "yes", "300 s", "70_driver_log.txt:15"]]


def test_hand_written_guide_lines_without_a_port() -> None:
    (endpoint,) = find_json("70_driver_log_guide.txt")
    assert endpoint["host"] == "10.0.0.4"
    assert endpoint["port"] == 5678 and endpoint["port_assumed"] is True
    assert endpoint["attached"] is False and endpoint["state"] == "not-attached"
    assert endpoint["timeout"] == 300 and endpoint["origin"] == "guide"
    table = amldbg("find", "70_driver_log_guide.txt").stdout
    assert "10.0.0.4:5678 (assumed port)" in table


def test_interleaved_mpi_ranks_in_a_job_folder() -> None:
    endpoints = find_json("job_mpi")
    by_rank = {e["rank"]: e for e in endpoints}
    assert len(endpoints) == 2 and set(by_rank) == {0, 1}
    assert (by_rank[0]["port"], by_rank[0]["attached"], by_rank[0]["pid"]) == (5678, False, 71)
    assert (by_rank[1]["port"], by_rank[1]["attached"], by_rank[1]["pid"]) == (5679, True, 72)
    assert all(e["host"] == "10.3.0.6" and e["timeout"] == 120 for e in endpoints)
    assert by_rank[0]["cwd"] == "/mnt/azureml/cr/j/4b8e2c/exe/wd"
    assert by_rank[0]["source"].endswith("job_mpi/user_logs/std_log.txt")


def test_interleaved_guide_lines_are_grouped_by_rank_prefix() -> None:
    endpoints = find_json("std_log_guide_mpi.txt")
    assert [(e["rank"], e["host"], e["attached"]) for e in endpoints] == [
        (0, "10.0.0.4", False),
        (1, "10.0.0.5", True),
    ]


def test_torchrun_prefixes_after_timestamps_and_a_rank_still_waiting() -> None:
    done = amldbg("find", "std_log_torchrun.txt")
    rows = table_rows(done.stdout)
    assert [row[:6] for row in rows] == [
        ["2", "301", "listen", "10.3.0.8:5678", "yes", "300 s"],
        ["3", "302", "listen", "10.3.0.8:5679", "waiting", "300 s"],
    ]
    waiting = find_json("std_log_torchrun.txt")[1]
    assert waiting["attached"] is None and waiting["state"] == "waiting"


def test_reverse_connect_endpoint() -> None:
    (endpoint,) = find_json("std_log_reverse.txt")
    assert endpoint["mode"] == "connect"
    assert endpoint["host"] == "203.0.113.7" and endpoint["port"] == 5678
    assert endpoint["node_address"] == "10.3.0.9"
    assert endpoint["state"] == "failed" and endpoint["attached"] is False
    row = table_rows(amldbg("find", "std_log_reverse.txt").stdout)[0]
    assert row[2:5] == ["connect", "203.0.113.7:5678", "failed"]


def test_parallel_run_step_log_folder() -> None:
    endpoints = find_json("prs_job")
    assert sorted(e["port"] for e in endpoints) == [5678, 5679, 5680]
    assert {e["pid"] for e in endpoints} == {2210, 2211, 2212}
    assert all(e["state"] == "listening" and e["attached"] is None for e in endpoints)
    sources = {Path(e["source"]).name for e in endpoints}
    assert sources == {"Process-3.txt", "process000.stdout.txt", "process001.stdout.txt"}


def test_standard_input() -> None:
    text = (FIXTURES / "std_log_torchrun.txt").read_text()
    endpoints = find_json(stdin=text)
    assert [(e["rank"], e["source"]) for e in endpoints] == [(2, "<stdin>"), (3, "<stdin>")]
    assert find_json("-", stdin=text) == endpoints


def test_two_copies_of_one_run_give_one_endpoint(tmp_path: Path) -> None:
    # 70_driver_log.txt and user_logs/std_log.txt of one run carry the same lines.
    shutil.copy(FIXTURES / "70_driver_log.txt", tmp_path / "70_driver_log.txt")
    (tmp_path / "user_logs").mkdir()
    shutil.copy(FIXTURES / "70_driver_log.txt", tmp_path / "user_logs" / "std_log.txt")
    endpoints = find_json(str(tmp_path))
    assert len(endpoints) == 1 and endpoints[0]["attached"] is True


def test_no_endpoint_is_exit_1_with_one_line(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text("epoch 0: loss 1.0\nport: 5678\nDebugger attached = True\n")
    done = amldbg("find", str(log))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "amldbg find: no debug endpoint announced in the given logs"


def test_missing_file_is_exit_2_with_one_line() -> None:
    done = amldbg("find", "no-such-log.txt")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["amldbg find: error: no-such-log.txt: no such file or folder"]


def test_damaged_endpoint_line_is_reported_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    good = (FIXTURES / "std_log_reverse.txt").read_text()
    log.write_text('amldbg endpoint: {"host": "10.0.0.1", "port": 56\n' + good)
    done = amldbg("find", "--json", str(log))
    assert done.returncode == 0
    assert [e["host"] for e in json.loads(done.stdout)] == ["203.0.113.7"]
    assert done.stderr.strip() == f"amldbg find: skipped a damaged 'amldbg endpoint:' or 'amldbg crash:' line at {log}:1"


@pytest.mark.parametrize(
    "command", [["find"], ["launch-config"], ["env", "snapshot"], ["env", "diff"], ["doctor"]]
)
def test_every_subcommand_has_help_with_an_example(command: list[str]) -> None:
    done = amldbg(*command, "--help")
    assert done.returncode == 0
    examples = done.stdout.split("examples:", 1)[1]
    assert f"amldbg {' '.join(command)}" in examples


def test_no_subcommand_and_bad_option_are_one_line_errors() -> None:
    done = amldbg()
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    done = amldbg("find", "--no-such-option")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "unrecognized arguments: --no-such-option" in done.stderr
    assert amldbg("--version").stdout.startswith("amldbg ")


def test_find_and_launch_config_on_a_real_samples_train_run(tmp_path: Path) -> None:
    argv = [
        sys.executable, str(ROOT / "samples" / "train.py"), "--remote_debug",
        "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", "0",
        "--remote_debug_connection_timeout", "1", "--output_dir", str(tmp_path / "outputs"),
    ]
    run = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=str(tmp_path), env=child_env(), text=True,
    )
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", output)
    assert listening, output
    log = tmp_path / "std_log.txt"
    log.write_text(output)

    (endpoint,) = find_json(str(log))
    assert endpoint["host"] == "127.0.0.1"
    assert endpoint["port"] == int(listening.group(1))
    assert endpoint["pid"] == run.pid
    assert endpoint["mode"] == "listen" and endpoint["attached"] is False
    assert endpoint["timeout"] == 1
    assert Path(endpoint["cwd"]).resolve() == tmp_path.resolve()

    done = amldbg("launch-config", "--from-log", str(log))
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)["configurations"]
    assert entry["connect"] == {"host": "127.0.0.1", "port": int(listening.group(1))}
    assert entry["type"] == "debugpy" and entry["request"] == "attach"
    assert Path(entry["pathMappings"][0]["remoteRoot"]).resolve() == tmp_path.resolve()


def test_v2_job_folder_ranks_from_std_log_process_file_names() -> None:
    # Azure ML v2 writes one user_logs/std_log_process_<rank>.txt per process: lines that do
    # not say their rank (the guide's lines, an amldbg line without "rank") get it from there.
    endpoints = find_json("v2_job")
    assert [(e["rank"], e["address"], e["state"], e["origin"]) for e in endpoints] == [
        (0, "10.0.0.6:5678", "attached", "amldbg"),
        (1, "10.0.0.7:5678", "not-attached", "guide"),
        (2, "10.0.0.7:5679", "listening", "amldbg"),
        (3, "10.0.0.7:5680", "waiting", "amldbg"),
    ]
    assert endpoints[1]["port_assumed"] is True
    assert Path(endpoints[1]["source"]).name == "std_log_process_01.txt"
    rows = table_rows(amldbg("find", "v2_job").stdout)
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]


def test_v2_command_job_std_log() -> None:
    (endpoint,) = find_json("v2_command")
    assert (endpoint["rank"], endpoint["address"], endpoint["state"]) == (0, "10.0.0.9:5678", "waiting")
    assert endpoint["source"].endswith("v2_command/user_logs/std_log.txt")


def test_v2_parallel_job_log_folder() -> None:
    # logs/user/stdout/<node>/process<N>.stdout.txt per worker process, and the older
    # logs/user/<node>/Process-<N>.txt; the stderr and EntryScript logs are read too.
    endpoints = find_json("v2_parallel")
    assert sorted((e["host"], e["port"], e["pid"]) for e in endpoints) == [
        ("10.0.0.4", 5678, 3301), ("10.0.0.5", 5678, 3401), ("10.0.0.6", 5680, 3501),
    ]
    assert all(e["state"] == "listening" for e in endpoints)


def test_launch_config_from_a_v2_job_folder(tmp_path: Path) -> None:
    done = amldbg("launch-config", "--from-log", "v2_job")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    entries = {e["name"]: e["connect"] for e in document["configurations"]}
    assert entries == {
        "Azure ML: attach to rank 0": {"host": "10.0.0.6", "port": 5678},
        "Azure ML: attach to rank 1": {"host": "10.0.0.7", "port": 5678},
        "Azure ML: attach to rank 2": {"host": "10.0.0.7", "port": 5679},
        "Azure ML: attach to rank 3": {"host": "10.0.0.7", "port": 5680},
    }
    assert document["compounds"][0]["configurations"] == list(entries)
    parallel = json.loads(amldbg("launch-config", "--from-log", "v2_parallel").stdout)
    assert sorted(e["connect"]["host"] for e in parallel["configurations"]) == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]


def test_crash_reports_announced_in_a_log_are_listed(tmp_path: Path) -> None:
    log = tmp_path / "user_logs" / "std_log_process_03.txt"
    log.parent.mkdir()
    log.write_text(
        "step 1\n"
        'amldbg crash: {"amldbg_crash": 1, "pid": 4242, "exception": "ValueError: bad shard\\u001b[31m", '
        '"frame": "train.py:47 in wait_for_shard", "file": "outputs/amldbg/crash-rank3-pid4242.json"}\n'
        'amldbg crash: {"rank": [\n'
    )
    done = amldbg("find", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "crash reports:" in done.stdout
    # The rank comes from the file name; the escape sequence is printed escaped.
    assert ("rank 3 (pid 4242): ValueError: bad shard\\x1b[31m at train.py:47 in wait_for_shard: "
            "outputs/amldbg/crash-rank3-pid4242.json") in done.stdout
    assert "\x1b" not in done.stdout
    assert "skipped a damaged" in done.stderr
