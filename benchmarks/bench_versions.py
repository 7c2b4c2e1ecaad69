"""The debugger's figures on each Python version amldbg claims with sys.monitoring or not: 3.11
(pydevd traces with ``sys.settrace``) beside 3.12 and 3.13 (pydevd uses ``sys.monitoring``).

Per version, each run in that version's venv (harness/venvs.py: ``.venvs/py3.12`` and
``.venvs/py3.13``, built when missing; 3.11 is this interpreter), as ratios against a process
that never enabled debugging measured in the same run (interleaved rounds, the median of
per-round ratios and their range; 1.0 = full speed):

* after a debugger wait nobody answered, the pure-Python speed of the main thread and of a
  ``threading.Thread`` started after the wait: bench_debug.py's own measurement
  (``speed_after_wait``), run under that version;
* the same for a thread started with ``_thread.start_new_thread`` (what pydevd patches
  separately), and, with a client attached and no breakpoint set, the main thread's loop, a
  generator expression on it (pydevd traces generator frames too), and new ``threading`` and
  ``_thread`` threads;
* a client attaching late, after the wait, with a breakpoint in the loop of each kind of
  thread started after the wait (the main thread, ``threading``, ``_thread``, and a thread
  made by C, ``pthread_create`` through ctypes, calling back into Python): which of them stop,
  and how long after the attach.

Run: python benchmarks/bench_versions.py [--quick]   (talks only to 127.0.0.1)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, Ratio, Row, child_env, goal_text, interleaved, ratio, run_alone

from harness.dap_client import DAPClient
from harness.debug_adapters import reap_debug_adapters
from harness.venvs import matrix_venv, python_of

HERE = Path(__file__).resolve().parent
VERSIONS = ("3.11", "3.12", "3.13")


def python_for(version: str) -> str:
    """This interpreter for its own version, else the version matrix's venv (built if need be)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    return str(python_of(matrix_venv(version)))


def _env() -> dict[str, str]:
    # The children import bench_debug (from here) and run pydevd.
    return child_env(HERE, PYDEVD_DISABLE_FILE_VALIDATION="1")


# -- bench_debug's figures, under another interpreter -----------------------------------------
REUSED = textwrap.dedent("""
    import json, sys
    import bench_debug
    figures = bench_debug.speed_after_wait(sys.argv[1] == "quick", modes=("timed-out",))
    print("FIGURES " + json.dumps({k: [v.median, v.low, v.high, v.rounds] for k, v in figures.items()}))
""")


def reused_figures(python: str, quick: bool) -> dict[str, Ratio]:
    """bench_debug.speed_after_wait, run by ``python``: main thread and new thread."""
    done = subprocess.run([python, "-c", REUSED, "quick" if quick else "full"], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=900, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("FIGURES "))
    return {k: Ratio(*v) for k, v in json.loads(line[len("FIGURES "):]).items()}


# -- the other speed figures: a _thread thread after the wait, and attached -------------------
SPEED = textwrap.dedent("""
    import _thread, json, sys, threading, time
    MODE, N, REPEAT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if MODE != "never":
        import amldbg
        # attached: the benchmark attaches a client (no breakpoints) during this wait.
        amldbg.enable_remote_debug(enabled=True, timeout=0.5 if MODE == "timed-out" else 120,
                                   port=0, listen_host="127.0.0.1")
        if MODE == "attached":
            import debugpy
            assert debugpy.is_client_connected()
            time.sleep(0.5)  # the attach's own work settles

    def work(n):
        total = 0
        for i in range(n):
            total += i % 7
        return total

    def gen(n):
        return sum(i % 7 for i in range(n))

    def best(function, n, repeat):
        fastest = float("inf")
        for _ in range(repeat):
            t = time.thread_time(); function(n); fastest = min(fastest, time.thread_time() - t)
        return fastest

    result = {"main": best(work, N, REPEAT), "genexpr": best(gen, N, REPEAT)}

    def in_thread(key, done):
        result[key] = best(work, N, REPEAT)
        done.release()

    done = threading.Semaphore(0)
    threading.Thread(target=in_thread, args=("threading", done)).start()
    done.acquire()
    _thread.start_new_thread(in_thread, ("_thread", done))
    done.acquire()
    print("RESULT " + json.dumps(result), flush=True)
""")


class Child:
    """A child of another interpreter whose output is read line by line; always reaped."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=_env(), cwd=ROOT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def line(self, prefix: str, timeout: float = 120) -> str:
        """The rest of the first line starting with ``prefix``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for seen in self.lines:
                    if seen.startswith(prefix):
                        return seen[len(prefix):]
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise RuntimeError(f"no line {prefix!r}; the child printed:\n"
                                       + "\n".join(self.lines[-60:]))
                self._changed.wait(min(left, 0.2))

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)


def _speed_child(python: str, mode: str, n: int, repeat: int) -> dict[str, float]:
    with Child([python, "-c", SPEED, mode, str(n), str(repeat)]) as child:
        port = 0
        try:
            if mode == "attached":
                port = int(child.line("port: "))
                client = DAPClient.connect("127.0.0.1", port)
                try:
                    client.attach()
                    result: dict[str, float] = json.loads(child.line("RESULT ", timeout=600))
                finally:
                    client.disconnect()
            else:
                result = json.loads(child.line("RESULT ", timeout=600))
            child.proc.wait(60)
        finally:
            if port:
                reap_debug_adapters([port])
    return result


def other_speeds(python: str, quick: bool) -> dict[str, Ratio]:
    """Ratios never enabled / mode for the _thread thread after the wait and for attached."""
    rounds, n, repeat = (1, 200_000, 2) if quick else (5, 1_000_000, 5)
    samples: dict[str, list[dict[str, float]]] = {}

    def measure(mode: str) -> float:
        samples.setdefault(mode, []).append(_speed_child(python, mode, n, repeat))
        return 0.0

    modes = ("never", "timed-out", "attached")
    interleaved({mode: (lambda m=mode: measure(m)) for mode in modes}, rounds)

    def of(mode: str, key: str) -> Ratio:
        return ratio([(b[key], r[key]) for b, r in zip(samples["never"], samples[mode])])

    return {
        "timed-out _thread": of("timed-out", "_thread"),
        "attached main": of("attached", "main"),
        "attached genexpr": of("attached", "genexpr"),
        "attached threading": of("attached", "threading"),
        "attached _thread": of("attached", "_thread"),
    }


# -- late attach into every kind of thread -----------------------------------------------------
LATE = textwrap.dedent("""
    import _thread, ctypes, threading, time
    import amldbg

    amldbg.enable_remote_debug(enabled=True, timeout=0.5, port=0, listen_host="127.0.0.1")
    deadline = time.monotonic() + 120
    started = threading.Semaphore(0)

    def loop_threading():
        started.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1  # breakpoint: threading
            time.sleep(0.01)

    def loop_thread():
        started.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1  # breakpoint: _thread
            time.sleep(0.01)

    def loop_c(_):
        started.release()
        count = 0
        while time.monotonic() < deadline:
            count += 1  # breakpoint: C
            time.sleep(0.01)
        return None

    threading.Thread(target=loop_threading, daemon=True).start()
    _thread.start_new_thread(loop_thread, ())
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.c_void_p] * 4
    routine = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(loop_c)
    handle = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(handle), None, routine, None) == 0
    for _ in range(3):
        started.acquire()
    print("threads started", flush=True)
    count = 0
    while time.monotonic() < deadline:
        count += 1  # breakpoint: main
        time.sleep(0.01)
""")
KINDS = ("main", "threading", "_thread", "C")


def late_attach(python: str, quick: bool, script_dir: Path) -> dict[str, float | None]:
    """Seconds from the attach to the first stop in each kind of thread (None: no stop)."""
    script = script_dir / "late_attach.py"
    script.write_text(LATE)
    lines = {n: kind for n, text in enumerate(LATE.splitlines(), 1) for kind in KINDS
             if text.endswith(f"# breakpoint: {kind}")}
    wait = 5.0 if quick else 15.0
    stops: dict[str, float | None] = {kind: None for kind in KINDS}
    with Child([python, str(script)]) as child:
        port = int(child.line("port: "))
        try:
            child.line("threads started")
            client = DAPClient.connect("127.0.0.1", port)
            try:
                client.attach(breakpoints={str(script): sorted(lines)})
                attached = time.monotonic()
                left = set(lines)
                while left and time.monotonic() < attached + wait:
                    try:
                        stop = client.wait_for_stop(timeout=max(0.1, attached + wait - time.monotonic()))
                    except AssertionError:
                        break  # no further stop within the wait
                    line = client.top_frame(stop["threadId"])["line"]
                    if line in left:
                        stops[lines[line]] = time.monotonic() - attached
                        left.discard(line)
                        client.request("setBreakpoints", {"source": {"path": str(script)},
                                                          "breakpoints": [{"line": n} for n in sorted(left)]})
                    client.continue_(stop["threadId"])
            finally:
                client.disconnect()
        finally:
            child.proc.kill()
            child.proc.wait(30)
            reap_debug_adapters([port])
    return stops


def _version_of(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def version_figures(version: str, quick: bool, script_dir: Path) -> list[Row]:
    """``version``'s figures as (figure, measured, goal, met), the figure named with the exact
    version that ran (``Python 3.12.1: ...``)."""
    python = python_for(version)
    name = f"Python {_version_of(python)}"
    reused = reused_figures(python, quick)
    other = other_speeds(python, quick)

    def speed(label: str, value: Ratio) -> Row:
        return (f"{name}: {label}", value.text(), ">= 0.95", goal_text(value.median >= 0.95))

    def shown(label: str, value: Ratio) -> Row:
        return (f"{name}: {label}", value.text(), "(shown)", "")

    found = [
        speed("after a wait nobody answered, main thread vs never enabled", reused["timed-out main"]),
        speed("after a wait nobody answered, a threading.Thread started after it",
              reused["timed-out thread"]),
        speed("after a wait nobody answered, a _thread.start_new_thread thread",
              other["timed-out _thread"]),
        shown("attached, no breakpoints, main thread loop", other["attached main"]),
        shown("attached, no breakpoints, generator expression on the main thread",
              other["attached genexpr"]),
        shown("attached, no breakpoints, a new threading.Thread", other["attached threading"]),
        shown("attached, no breakpoints, a new _thread thread", other["attached _thread"]),
    ]
    stops = late_attach(python, quick, script_dir)
    said = ", ".join(f"{kind} " + ("no" if s is None else f"yes ({s:.1f} s)")
                     for kind, s in stops.items())
    found.append((f"{name}: a late client stops in threads started after the wait", said,
                  "(shown)", ""))
    return found


def figures(quick: bool) -> list[Row]:
    """Print every version's figures, one line each; return them as rows of run_all.py's
    table."""
    import tempfile

    started = time.monotonic()
    found: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        for version in VERSIONS:
            print(f"== Python {version} ==", flush=True)
            for figure, measured, goal, met in version_figures(version, quick, Path(scratch)):
                print(f"{figure}: {measured}" + (f" (goal {goal})" if goal != "(shown)" else ""),
                      flush=True)
                found.append((figure, measured, goal, met))
    print(f"({'--quick: NOT trustworthy, ' if quick else ''}{time.monotonic() - started:.0f} s)")
    return found


def main(argv: list[str] | None = None) -> int:
    """Print every version's figures, one line each."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
