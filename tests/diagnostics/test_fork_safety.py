"""The stall report and the on-demand dumps across ``fork``, on real scripts: an ``os.fork()``
child that ends with ``sys.exit``, a fork-started child that arms its own report, DataLoader
workers forked in the middle of a dump, and ``torch.multiprocessing.start_processes``.

Each script runs as a subprocess whose every descendant is killed and reaped at the end
(:class:`processes.RunningGroup`): a child that hangs fails its test by a bounded wait.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from processes import RunningGroup, child_env, dumps

# The scripts' print writes each line in one write(2): the processes of a script share one
# stdout pipe, and print's separate writes of text and newline let their lines glue together.
LINE_PRINT = (
    "import os as _os; print = lambda *args, sep=' ', end='\\n', file=None, flush=False: "
    "_os.write(1, (sep.join(map(str, args)) + end).encode())\n"
)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text(LINE_PRINT + textwrap.dedent(body).lstrip())
    return str(path)


def diagnostics_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    folder = tmp_path / "diagnostics"
    return child_env(AMLDBG_DIAGNOSTICS_DIR=str(folder)), folder


def finish(run: RunningGroup, timeout: float) -> int:
    """The script's exit code; a script still running after ``timeout`` fails the test (it
    and its children are then killed by the ``with`` block)."""
    try:
        return run.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the script still ran after {timeout} s (a child hung); output:\n{run.output}"
        ) from None


def saved_dumps(folder: Path, pid: int) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"stacks-rank*-pid{pid}-*.json"))]


def test_an_os_fork_child_ending_with_sys_exit_exits_at_once(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import os, sys, time, amldbg

        print("amldbg from", amldbg.__file__, flush=True)
        amldbg.enable_remote_debug(stall_timeout=5)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            total = sum(i * i for i in range(100000))  # a little work
            print("child", os.getpid(), "worked", total, flush=True)
            sys.exit(3)  # the interpreter's exit: atexit, finalisation, faulthandler's timer
        status = None
        deadline = time.monotonic() + 20
        while status is None and time.monotonic() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
            else:
                time.sleep(0.05)
        took = time.monotonic() - started
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print(f"the child still ran after {took:.1f} s", flush=True)
            sys.exit(1)
        print(f"child exit {os.waitstatus_to_exitcode(status)} after {took:.2f} s", flush=True)
    """)
    env, _ = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        code = finish(run, 30)
    assert code == 0, run.output
    found = run.wait_for_line(r"^child exit (-?\d+) after ([\d.]+) s$", timeout=1)
    assert found.group(1) == "3", run.output
    assert float(found.group(2)) < 5, run.output
    assert re.search(r"^child \d+ worked \d+$", run.output, re.M), run.output


def test_a_fork_started_child_arms_its_own_stall_report(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import multiprocessing, os, sys, threading, amldbg

        def wait_for_shard(fd):
            return os.read(fd, 1)  # blocked in C for ~2.5 s

        def child():
            amldbg.enable_remote_debug(stall_timeout=1)
            print("child pid", os.getpid(), flush=True)
            r, w = os.pipe()
            later = threading.Timer(2.5, os.write, (w, b"x"))
            later.start()
            wait_for_shard(r)
            later.join()
            print("child done", flush=True)

        if __name__ == "__main__":
            print("amldbg from", amldbg.__file__, flush=True)
            amldbg.enable_remote_debug(stall_timeout=5)
            print("parent pid", os.getpid(), flush=True)
            process = multiprocessing.get_context("fork").Process(target=child)
            process.start()
            process.join(20)
            if process.is_alive():
                process.kill()
                process.join(5)
                print("the child still ran after 20 s", flush=True)
                sys.exit(1)
            print("child exit code", process.exitcode, flush=True)
            sys.exit(process.exitcode)
    """)
    env, folder = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        code = finish(run, 30)
    assert code == 0, run.output
    assert "child done" in run.lines and "child exit code 0" in run.lines
    parent = int(run.wait_for_line(r"^parent pid (\d+)$", timeout=1).group(1))
    child = int(run.wait_for_line(r"^child pid (\d+)$", timeout=1).group(1))
    assert re.search(rf"^amldbg: stall report armed on rank 0 \(pid {child}\)", run.output, re.M)
    own = [d for d in dumps(run.output) if d["pid"] == child]
    assert len(own) == 1, run.output
    assert own[0]["reason"] == "stall" and own[0]["forked_from"] == parent
    main = own[0]["threads"][0]
    assert main["main"] and main["frames"][-1][2] == "wait_for_shard"
    assert [d["pid"] for d in saved_dumps(folder, child)] == [child]


def test_dataloader_workers_forked_during_a_dump_dump_on_sigusr1_and_deliver(tmp_path: Path) -> None:
    job = script(tmp_path, """
        import os, signal, sys, threading, time
        import torch
        from torch.utils.data import DataLoader, Dataset
        import amldbg
        from amldbg.diagnostics import stacks

        PARENT = os.getpid()
        writing = threading.Event()  # the parent's dump has begun to write its lines
        release = threading.Event()  # ... and may go on

        class SlowStdout:
            # The parent's dump writes through here and is held in its first line until the
            # workers are forked: they are forked while the dump lock is held.
            def __init__(self, inner):
                self.inner = inner

            def write(self, text):
                if (os.getpid() == PARENT and threading.current_thread() is not threading.main_thread()
                        and text.startswith("amldbg")):
                    writing.set()
                    release.wait(15)
                return self.inner.write(text)

            def flush(self):
                return self.inner.flush()

            def __getattr__(self, name):
                return getattr(self.inner, name)

        class Numbers(Dataset):
            def __len__(self):
                return 8

            def __getitem__(self, index):
                return torch.tensor([index])

        def worker_init(worker_id):
            print(f"worker {worker_id} pid {os.getpid()}", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # the worker's own signal thread dumps
            mine = f"-pid{os.getpid()}-"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(  # still in worker_init meanwhile
                    mine in n and n.endswith(".json") for n in os.listdir(os.environ["AMLDBG_DIAGNOSTICS_DIR"])):
                time.sleep(0.02)
            print(f"worker {worker_id} dumped", flush=True)

        if __name__ == "__main__":
            print("amldbg from", amldbg.__file__, flush=True)
            torch.set_num_threads(1)
            amldbg.enable_remote_debug(stall_timeout=10, on_demand=True)
            print("parent pid", PARENT, flush=True)
            sys.stdout = SlowStdout(sys.stdout)
            threading.Thread(target=os.kill, args=(PARENT, signal.SIGUSR1)).start()
            if not writing.wait(10):
                print("the parent's dump never started", flush=True)
                sys.exit(1)
            print("dump lock held before the fork:", stacks._write_lock.locked(), flush=True)
            loader = DataLoader(Numbers(), batch_size=2, num_workers=2,
                                multiprocessing_context="fork", worker_init_fn=worker_init)
            batches = iter(loader)  # forks both workers now
            print("dump lock held after the fork:", stacks._write_lock.locked(), flush=True)
            got = [batch.flatten().tolist() for batch in batches]
            print("batches", got, flush=True)
            release.set()
            deadline = time.monotonic() + 10
            while stacks._write_lock.locked() and time.monotonic() < deadline:
                time.sleep(0.05)
            print("parent dump written:", not stacks._write_lock.locked(), flush=True)
    """)
    env, folder = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        code = finish(run, 30)
    assert code == 0, run.output
    assert "dump lock held before the fork: True" in run.lines, run.output
    assert "dump lock held after the fork: True" in run.lines, run.output
    assert "batches [[0, 1], [2, 3], [4, 5], [6, 7]]" in run.lines, run.output
    assert "parent dump written: True" in run.lines, run.output
    parent = int(run.wait_for_line(r"^parent pid (\d+)$", timeout=1).group(1))
    workers = [int(pid) for pid in re.findall(r"^worker \d pid (\d+)$", run.output, re.M)]
    assert len(set(workers)) == 2 and parent not in workers, run.output
    assert len(re.findall(r"^worker \d dumped$", run.output, re.M)) == 2, run.output
    for pid in workers:
        saved = saved_dumps(folder, pid)
        assert len(saved) == 1, (pid, run.output)
        assert saved[0]["reason"] == "signal" and saved[0]["forked_from"] == parent
        assert saved[0]["pid"] == pid and saved[0]["threads"][0]["main"]
        functions = [f["function"] for f in saved[0]["threads"][0]["frames"]]
        assert "worker_init" in functions, functions
    assert [d["reason"] for d in saved_dumps(folder, parent)] == ["signal"]
    assert sorted(d["pid"] for d in dumps(run.output)) == sorted([parent, *workers])


def test_start_processes_fork_children_arm_their_own_reports_and_answer_sigusr1(
    tmp_path: Path,
) -> None:
    job = script(tmp_path, """
        import glob, os, queue, signal, sys, threading, time
        import torch.multiprocessing as mp
        import amldbg

        FOLDER = os.environ["AMLDBG_DIAGNOSTICS_DIR"]
        NPROCS = 2

        def wait_for_go(done):
            return done.wait(20)

        def child(index, pids, done):
            amldbg.enable_remote_debug(stall_timeout=10, on_demand=True)
            pids.put((index, os.getpid()))
            if not wait_for_go(done):
                sys.exit(5)
            print(f"child {index} exits", flush=True)

        def signal_children(pids, done, answered):
            try:
                for _ in range(NPROCS):
                    index, pid = pids.get(timeout=15)
                    print(f"child {index} pid {pid}", flush=True)
                    os.kill(pid, signal.SIGUSR1)
                    deadline = time.monotonic() + 10
                    pattern = os.path.join(FOLDER, f"stacks-rank*-pid{pid}-*.json")
                    while not glob.glob(pattern) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if glob.glob(pattern):
                        answered.append(pid)
            except queue.Empty:
                print("a child never said its pid", flush=True)
            finally:
                done.set()

        if __name__ == "__main__":
            print("amldbg from", amldbg.__file__, flush=True)
            amldbg.enable_remote_debug(stall_timeout=10)
            print("parent pid", os.getpid(), flush=True)
            context = mp.get_context("fork")
            pids, done, answered = context.Queue(), context.Event(), []
            helper = threading.Thread(target=signal_children, args=(pids, done, answered))
            helper.start()
            mp.start_processes(child, args=(pids, done), nprocs=NPROCS, start_method="fork")
            print("start_processes returned", flush=True)
            helper.join(20)
            print("answered", len(answered), flush=True)
            sys.exit(0 if len(answered) == NPROCS else 1)
    """)
    env, folder = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        code = finish(run, 30)
    assert code == 0, run.output
    assert "start_processes returned" in run.lines and "answered 2" in run.lines, run.output
    assert {"child 0 exits", "child 1 exits"} <= set(run.lines), run.output
    parent = int(run.wait_for_line(r"^parent pid (\d+)$", timeout=1).group(1))
    children = {int(index): int(pid) for index, pid in re.findall(r"^child (\d) pid (\d+)$", run.output, re.M)}
    assert len(set(children.values())) == 2 and parent not in children.values(), run.output
    for index, pid in children.items():
        # start_processes numbers its children: child i is rank i (no RANK variable there).
        assert re.search(rf"^amldbg: stall report armed on rank {index} \(pid {pid}\)", run.output, re.M)
        saved = saved_dumps(folder, pid)
        assert [d["reason"] for d in saved] == ["signal"], (pid, run.output)
        assert saved[0]["rank"] == index
        assert saved[0]["forked_from"] == parent
        main = saved[0]["threads"][0]
        assert main["main"], main
        functions = [f["function"] for f in main["frames"]]
        assert "wait_for_go" in functions, functions
    assert saved_dumps(folder, parent) == []


def test_an_os_fork_child_blocked_in_c_dumps_on_sigusr1_another_of_its_threads_received(
    tmp_path: Path,
) -> None:
    # The kernel gives a process's signal to any thread that does not block it, and Python
    # runs the handler only on the main thread between bytecodes: a forked child asleep in C
    # answers SIGUSR1 all the same (its own signal thread). Its main thread blocks SIGUSR1
    # here so that another thread gets it.
    job = script(tmp_path, """
        import os, signal, sys, threading, time, amldbg

        amldbg.enable_remote_debug(on_demand=True)
        pid = os.fork()
        if pid == 0:
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

            def asleep_in_c():
                print("child", os.getpid(), flush=True)
                time.sleep(60)

            asleep_in_c()
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    env, folder = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        child = int(run.wait_for_line(r"^child (\d+)$", timeout=30).group(1))
        os.kill(child, signal.SIGUSR1)
        found = run.wait_for_line(r"^amldbg stacks: (\{.*\})$", timeout=20)
    dump = json.loads(found.group(1))
    assert dump["pid"] == child and dump["forked_from"], run.output
    main = next(thread for thread in dump["threads"] if thread["main"])
    assert main["frames"][-1][2] == "asleep_in_c", run.output


def test_a_forked_child_that_closes_every_descriptor_keeps_the_file_it_opens_next(tmp_path: Path) -> None:
    # A daemon closes every descriptor after its fork and opens its own files, which may get
    # the number of amldbg's signal pipe: amldbg must neither read from nor close them.
    data = tmp_path / "data.txt"
    data.write_text("x" * 1000)
    job = script(tmp_path, f"""
        import os, time, amldbg

        amldbg.enable_remote_debug(on_demand=True)
        pid = os.fork()
        if pid == 0:
            os.closerange(3, 1024)
            fd = os.open({str(data)!r}, os.O_RDONLY)
            time.sleep(5)  # amldbg's signal thread wakes twice meanwhile
            try:
                print("child read", len(os.read(fd, 4096)), flush=True)
            except OSError as error:
                print("child read failed", error.errno, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent done", flush=True)
    """)
    env, _ = diagnostics_env(tmp_path)
    with RunningGroup([job], cwd=tmp_path, env=env) as run:
        code = finish(run, 30)
    assert code == 0 and "child read 1000" in run.output, run.output
