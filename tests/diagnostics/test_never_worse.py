"""The diagnostics never make the job worse: a crash, a stall report, a signal and the values
they show, tried with the objects real training scripts hold (issue 17).

Each test runs a real script in a subprocess with a bounded wait: on code that runs the
script's ``__repr__`` on the watchdog or crash path these scripts hang, and the test fails
by its timeout instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import string
import textwrap
import time
from pathlib import Path

import pytest

from conftest import free_port
from processes import Running, child_env, dumps

# Objects whose __repr__ (and __str__, and attribute hooks) block on a lock that another
# thread holds for ever, like a shard reader on a hung mount; each call leaves a mark.
STUCK_OBJECTS = """
import threading, time

held = threading.Lock()
holding = threading.Event()

def prefetch():
    with held:  # a prefetch thread stuck on a hung mount, holding the reader's lock
        holding.set()
        threading.Event().wait()

threading.Thread(target=prefetch, name="prefetch", daemon=True).start()
holding.wait()

def mark(what):
    with open("called.txt", "a") as handle:
        handle.write(what + "\\n")

class ShardReader:
    def __init__(self, path):
        self.path = path
        self.position = 128
    def __repr__(self):
        mark("repr")
        held.acquire()
        return "never"
    __str__ = __repr__
    def __getattr__(self, name):
        mark("getattr " + name)
        held.acquire()
"""


def script(tmp_path: Path, body: str, **fields: object) -> Path:
    """Write the job; ``$name`` in ``body`` is replaced by ``fields[name]``."""
    path = tmp_path / "job.py"
    text = textwrap.dedent(body)
    path.write_text(string.Template(text).substitute(fields) if fields else text)
    return path


def when(run: Running, text: str) -> float:
    """When the first line holding ``text`` arrived (time.monotonic)."""
    return next(t for line, t in zip(run.lines, run.line_times) if text in line)


def marks(tmp_path: Path) -> str:
    called = tmp_path / "called.txt"
    return called.read_text() if called.exists() else ""


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return child_env(AMLDBG_DIAGNOSTICS_DIR=str(tmp_path / "reports"), **extra)


def test_a_crash_holding_a_blocking_object_prints_its_traceback_and_exits_at_once(tmp_path: Path) -> None:
    job = script(tmp_path, STUCK_OBJECTS + """
import amldbg

amldbg.enable_remote_debug(post_mortem=True, timeout=0, listen_host="127.0.0.1", port=$port)

def read_shard(reader):
    raise OSError("the mount went away")

read_shard(ShardReader("/mnt/data/shard-7"))
""", port=free_port())
    started = time.monotonic()
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        code = run.wait(60)
        output = run.output
    elapsed = time.monotonic() - started
    assert code == 1, output
    assert "Traceback (most recent call last):" in output
    assert "OSError: the mount went away" in output
    assert elapsed < 30, f"exited after {elapsed:.1f} s"
    [report] = (tmp_path / "reports").glob("crash-rank0-pid*.json")
    crash = json.loads(report.read_text())
    innermost = crash["frames"][-1]
    assert innermost["function"] == "read_shard"
    # Shown by its type and its fields, read from the instance: never its __repr__.
    assert innermost["locals"]["reader"] == "ShardReader(path='/mnt/data/shard-7', position=128)"
    assert marks(tmp_path) == ""


def test_a_stall_report_arrives_whatever_the_frames_hold_and_the_exit_does_not_wait(tmp_path: Path) -> None:
    job = script(tmp_path, STUCK_OBJECTS + """
import os, sys, amldbg

amldbg.enable_remote_debug(stall_timeout=1)
main_lock = threading.Lock()

class Batch:
    def __repr__(self):
        mark("repr batch")
        main_lock.acquire()  # the stalled main thread holds it
        return "never"

def wait_for_peer(reader, batch):
    with main_lock:
        r, w = os.pipe()
        ready = __import__("select").select([r], [], [], 4)
    print("stall over", flush=True)

wait_for_peer(ShardReader("/mnt/data/shard-1"), Batch())
sys.exit(0)
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        run.wait_for_line(r"stall report armed")
        run.wait_for_line(r"^amldbg stacks: ", timeout=20)
        armed_at = when(run, "stall report armed")
        reported_at = when(run, "amldbg stacks: ")
        run.wait_for_line("stall over", timeout=20)
        stall_over = time.monotonic()
        code = run.wait(30)
        exit_wait = time.monotonic() - stall_over
        output = run.output
    assert code == 0, output
    # Within 2 s of the timeout (1 s after arming, plus the sampling).
    assert reported_at - armed_at < 1 + 2, f"reported {reported_at - armed_at:.1f} s after arming"
    assert exit_wait < 3, f"the exit waited {exit_wait:.1f} s"
    [dump] = dumps(output)
    assert dump["threads"][0]["frames"][-1][2] == "wait_for_peer"
    assert "amldbg: [rank 0]       reader = ShardReader(path='/mnt/data/shard-1', position=128)" in output
    assert "amldbg: [rank 0]       batch = <__main__.Batch object>" in output
    assert marks(tmp_path) == ""


def test_tensors_in_containers_show_shape_without_any_of_their_code_and_frames_no_columns(
    tmp_path: Path,
) -> None:
    job = script(tmp_path, """
import collections, dataclasses, os, signal, sys, time
from collections import UserDict
import pandas, torch, amldbg

def mark(what):
    with open("called.txt", "a") as handle:
        handle.write(what + "\\n")

class Watched(torch.Tensor):
    # On a GPU, Tensor.__repr__ copies the data to the host: it must never run.
    def __repr__(self):
        mark("repr")
        return "copied"
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        mark("torch_function")
        return super().__torch_function__(func, types, args, kwargs or {})

Pair = collections.namedtuple("Pair", "inputs labels")

@dataclasses.dataclass
class Step:
    features: object
    lr: float = 0.1

class BatchEncoding(UserDict):  # Hugging Face's shape
    pass

amldbg.enable_remote_debug(on_demand=True)

def train_step(pair, step, encoding, frame):
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(2)

tensor = torch.zeros(4, 8).as_subclass(Watched)
train_step(
    Pair(tensor, torch.ones(4, dtype=torch.int64)),
    Step(tensor),
    BatchEncoding({"input_ids": tensor, "attention_mask": tensor}),
    pandas.DataFrame({"dtype": ["COLUMN-CONTENT"], "b": [2]}),
)
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        assert run.wait(60) == 0, run.output
        output = run.output
    shown = "<Watched shape=(4, 8) dtype=torch.float32 device=cpu>"
    assert f"pair = Pair(inputs={shown}, labels=<Tensor shape=(4,) dtype=torch.int64 device=cpu>)" in output
    assert f"step = Step(features={shown}, lr=0.1)" in output
    # Cut at 160 characters, like every value.
    assert f"encoding = BatchEncoding(data={{'input_ids': {shown}, 'attention_mask': <Watched" in output
    assert "frame = <DataFrame shape=(1, 2)>" in output
    assert "COLUMN-CONTENT" not in output
    assert marks(tmp_path) == ""


def test_values_of_a_dump_never_break_the_rank_prefix(tmp_path: Path) -> None:
    job = script(tmp_path, """
import os, signal, time, torch, amldbg

amldbg.enable_remote_debug(on_demand=True)

def forward(model, note):
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(2)

forward(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()), "first line\\nsecond line\\u2028third\\u202e")
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path, RANK="1", WORLD_SIZE="2")) as run:
        assert run.wait(60) == 0, run.output
        lines = list(run.lines)
    start = next(i for i, line in enumerate(lines) if line.startswith("amldbg stacks: "))
    end = max(i for i, line in enumerate(lines) if line.startswith("amldbg: [rank 1]"))
    for line in lines[start + 1 : end + 1]:
        assert line.startswith("amldbg: [rank 1] "), line
        assert "\u2028" not in line and "\u202e" not in line
    text = "\n".join(lines)
    assert "note = 'first line\\nsecond line\\u2028third\\u202e'" in text
    assert "model = Sequential(training=True" in text


def test_a_flat_script_stalled_at_module_level_shows_its_own_values(tmp_path: Path) -> None:
    imports = "\n".join(f"import {name}" for name in (
        "argparse", "collections", "contextlib", "dataclasses", "functools", "itertools",
        "json", "logging", "math", "pathlib", "random", "re", "select", "shutil", "string",
        "struct", "tempfile", "textwrap", "typing", "uuid", "os", "sys", "time",
    ))
    functions = "\n".join(f"def helper_{n}():\n    return {n}\n" for n in range(10))
    job = script(tmp_path, imports + "\n" + functions + """
import amldbg

amldbg.enable_remote_debug(stall_timeout=1)
learning_rate = 0.03
epochs = 12
r, w = os.pipe()
select.select([r], [], [], 3)
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        assert run.wait(60) == 0, run.output
        output = run.output
    assert "amldbg: [rank 0]       learning_rate = 0.03" in output
    assert "amldbg: [rank 0]       epochs = 12" in output


def test_secrets_are_hidden_in_every_container_and_text_form_and_files_are_private(tmp_path: Path) -> None:
    secret_values = {
        "hf": "hf_QwErTyUiOpAsDfGh1234",
        "dc": "dataclass-secret-41",
        "ns": "namespace-secret-42",
        "nt": "namedtuple-secret-43",
        "env": "environ-secret-44",
        "src": "source-line-secret-45",
        "url": "url-password-secret-46",
    }
    job = script(tmp_path, """
import argparse, collections, dataclasses, os, sys, types, amldbg

@dataclasses.dataclass
class Credentials:
    user: str
    client_secret: str

Login = collections.namedtuple("Login", "user password")

def connect(api_key):
    raise ConnectionError("refused")

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf_token")
    amldbg.add_args(parser)
    args = parser.parse_args()
    amldbg.enable_remote_debug(args)
    creds = Credentials("me", "$dc")
    space = types.SimpleNamespace(user="me", db_password="$ns")
    login = Login("me", "$nt")
    environment = os.environ
    url = "https://user:" + "$url" * 8 + "@storage.example/data"
    connect(api_key="$src")

main()
""", **secret_values)
    argv = [str(job), "--hf_token", secret_values["hf"], "--remote_debug_post_mortem",
            "--remote_debug_connection_timeout", "0", "--remote_debug_listen_host", "127.0.0.1",
            "--remote_debug_port", str(free_port())]
    with Running(argv, cwd=tmp_path, env=env_for(tmp_path, DATABASE_TOKEN=secret_values["env"])) as run:
        assert run.wait(60) == 1, run.output
        output = run.output
    [report] = (tmp_path / "reports").glob("crash-rank0-pid*.json")
    saved = report.read_text()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    main_frame = next(f for f in json.loads(saved)["frames"] if f["function"] == "main")
    shown = main_frame["locals"]
    assert "hf_token=<hidden>" in shown["args"]
    assert shown["creds"] == "Credentials(user='me', client_secret=<hidden>)"
    assert shown["space"] == "SimpleNamespace(user='me', db_password=<hidden>)"
    assert shown["login"] == "Login(user='me', password=<hidden>)"
    assert shown["environment"].startswith("environ({")
    source = next(f for f in json.loads(saved)["frames"] if f["function"] == "main" and "connect(" in f.get("code", ""))
    assert source["code"] == 'connect(api_key="<hidden>")'
    # The crash line in the driver log and the report: no secret, whatever the container.
    for name, value in secret_values.items():
        if name == "env":  # the environment is summarised, secret names hidden
            assert value not in saved, name
            continue
        assert value not in saved, name
        assert value not in output.split("Traceback (most recent call last):")[0], name


def test_reports_land_in_the_folder_fixed_when_armed_even_after_a_chdir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    job = script(tmp_path, """
import os, select, amldbg

amldbg.enable_remote_debug(stall_timeout=0.5)
os.chdir("data")  # a script that works in its data folder
r, w = os.pipe()
select.select([r], [], [], 2)
""")
    env = child_env()  # no AMLDBG_DIAGNOSTICS_DIR: the default outputs/amldbg
    with Running([str(job)], cwd=tmp_path, env=env) as run:
        assert run.wait(60) == 0, run.output
    found = list((tmp_path / "outputs" / "amldbg").glob("stacks-rank0-pid*.json"))
    assert len(found) == 1, os.listdir(tmp_path / "data")
    assert not (tmp_path / "data" / "outputs").exists()
    assert stat.S_IMODE(found[0].stat().st_mode) == 0o600


def test_post_mortem_starts_the_debugger_whatever_the_exceptions_str_does(tmp_path: Path) -> None:
    port = free_port()
    job = script(tmp_path, """
import amldbg

class BadMessage(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")

amldbg.enable_remote_debug(post_mortem=True, timeout=1, listen_host="127.0.0.1", port=$port)
raise BadMessage("shard 7")
""", port=port)
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        code = run.wait(60)
        output = run.output
    assert code == 1, output
    assert "post-mortem: uncaught BadMessage: shard 7 in the main thread on rank 0" in output
    assert f"listening on 127.0.0.1:{port}" in output
    assert "Debugger attached = False" in output
    assert "post-mortem debugging failed" not in output


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGUSR2"])
def test_a_signal_that_a_framework_took_over_is_left_to_it(tmp_path: Path, signame: str) -> None:
    port = free_port()
    job = script(tmp_path, """
import os, signal, sys, time, amldbg

amldbg.enable_remote_debug(on_demand=True, listen_host="127.0.0.1", port=$port)
# A framework installs its own handler during fit(), as Lightning's requeue handler does.
def requeue(number, frame):
    print("framework handler ran", flush=True)
signal.signal(signal.$signame, requeue)
os.kill(os.getpid(), signal.$signame)
time.sleep(1)
os.kill(os.getpid(), signal.$signame)
time.sleep(1)
print("done", flush=True)
""", port=port, signame=signame)
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        assert run.wait(60) == 0, run.output
        output = run.output
    assert output.count("framework handler ran") == 2
    assert "amldbg stacks: " not in output
    assert "SIGUSR2: starting the debugger" not in output and "listening on" not in output
    assert output.count(f"{signame} now has another handler") == 1
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


def test_a_signal_handed_back_to_amldbg_is_acted_on_again(tmp_path: Path) -> None:
    job = script(tmp_path, """
import os, signal, time, amldbg

amldbg.enable_remote_debug(on_demand=True)
ours = signal.getsignal(signal.SIGUSR1)
signal.signal(signal.SIGUSR1, lambda number, frame: print("framework handler ran", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.5)
signal.signal(signal.SIGUSR1, ours)  # the framework restores what was there after fit()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(1)
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        assert run.wait(60) == 0, run.output
        output = run.output
    assert output.count("framework handler ran") == 1
    assert "SIGUSR1 is amldbg's again" in output
    assert len(dumps(output)) == 1


def test_the_sigusr1_default_is_kept_for_a_process_that_never_armed(tmp_path: Path) -> None:
    # Guards the other side: amldbg installs nothing unless asked.
    job = script(tmp_path, """
import os, signal, time, amldbg
amldbg.enable_remote_debug()
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(2)
""")
    with Running([str(job)], cwd=tmp_path, env=env_for(tmp_path)) as run:
        code = run.wait(60)
    assert code == -signal.SIGUSR1
