"""The one builder of the per-interpreter virtual environments that tests run other code in.

``venv_for(python, requirements, name)`` returns ``ROOT/.venvs/<name>``, a venv made by the
interpreter ``python`` with ``pip install <requirements>`` done in it. A stamp file inside the
venv records a hash of the interpreter, the requirement specs and setup.cfg; a later call whose
hash is the same reuses the venv as it is, any other rebuilds it from nothing (a clean clone,
as CI has, builds every venv fresh). A missing interpreter or a failed install raises
:class:`VenvError` with the reason; the tests' conftest.py reports it as a plain failure of the
calling test (never a skip): a version amldbg claims must be tested.

Interpreters other than 3.11 are forbidden torch (a pip constraint): only a CPU build for 3.11
lies on this machine's disk, and on any other interpreter pip would download a multi-GB CUDA
build. A requirement that pulls torch in there fails the install, loudly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"

STAMP = "amldbg-venv.json"
# Bump when the way venvs are built changes, so that every existing one is rebuilt.
BUILDER_VERSION = 1
INSTALL_TIMEOUT = 1800.0


class VenvError(RuntimeError):
    """An interpreter is missing or does not run, or a venv could not be built; the message
    says which and why (the last lines of the build's log)."""


def interpreter(version: str) -> str:
    """The path of the interpreter for ``version`` ("3.12" or "3.12.1"), or ``version`` itself
    when it is already a path. Raises :class:`VenvError` when no such interpreter is on this
    machine."""
    if os.sep in version:
        if not Path(version).is_file():
            raise VenvError(f"interpreter {version} does not exist on this machine")
        return version
    candidates = sorted(
        (p for p in PYENV.glob(f"{version}*/bin/python") if p.parent.parent.name.split(".")[:len(
            version.split("."))] == version.split(".")),
        key=lambda p: [int(part) for part in p.parent.parent.name.split(".") if part.isdigit()],
    )
    if candidates:
        return str(candidates[-1])
    found = shutil.which(f"python{version}")
    if found:
        return found
    raise VenvError(
        f"no Python {version} on this machine (looked in {PYENV} and PATH): amldbg claims "
        f"{version}, so CI needs it (pyenv install {version})"
    )


def python_of(venv: Path) -> Path:
    """The interpreter inside a venv made by :func:`venv_for`."""
    return venv / "bin" / "python"


def _clean_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
        and not k.startswith("AMLDBG_")
    }
    env["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    env["PIP_NO_INPUT"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _version_of(python: str) -> str:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True, text=True, timeout=60, env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VenvError(f"interpreter {python} does not run: {exc}") from exc
    if done.returncode != 0:
        raise VenvError(f"interpreter {python} does not run:\n{done.stderr}")
    return done.stdout.strip()


def _digest(python: str, version: str, requirements: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(f"builder {BUILDER_VERSION}\n".encode())
    h.update(f"{os.path.realpath(python)} {version}\n".encode())
    for spec in requirements:
        h.update(f"req {spec}\n".encode())
    h.update((ROOT / "setup.cfg").read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder per venv at a time, across processes (two pytest runs, helpers)."""
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], log: Path, what: str, timeout: float) -> None:
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(argv)}\n")
        out.flush()
        try:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_clean_env(), cwd=ROOT, timeout=timeout,
            )
            code: int | str = done.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout:.0f} s"
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise VenvError(f"{what} failed ({code}); the last lines of {log}:\n{tail}")


def venv_for(python: str, requirements: Sequence[str], name: str) -> Path:
    """A venv at ``ROOT/.venvs/<name>`` made by ``python`` (a path, or a version such as
    "3.12") with ``pip install`` of ``requirements`` done in it, reused while the interpreter,
    the specs and setup.cfg stay the same.

    Each spec is one requirement as it would be written on pip's command line, split like a
    shell would: ``"-e /work/main[debug,otel]"``, ``"pytest>=7"``, ``"pytest-timeout"``.
    """
    if isinstance(requirements, str):
        raise TypeError("requirements is a sequence of specs, not one string")
    python = interpreter(python)
    version = _version_of(python)
    digest = _digest(python, version, requirements)
    venv = VENVS / name
    stamp = venv / STAMP
    log = VENVS / f"{name}.log"
    with _locked(name):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text())["hash"] == digest and python_of(venv).exists():
                return venv
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        log.write_text(f"building {venv} with {python} ({version})\n")
        _run([python, "-m", "venv", str(venv)], log, f"creating the venv {name} ({version})", 300)
        argv = [str(python_of(venv)), "-m", "pip", "install", "--progress-bar", "off"]
        if not version.startswith("3.11."):
            forbid = venv / "amldbg-no-torch.txt"
            forbid.write_text(
                "# Only a CPU torch for 3.11 lies on this disk; elsewhere pip would download\n"
                "# a multi-GB CUDA build.\ntorch<0\n"
            )
            argv += ["-c", str(forbid)]
        for spec in requirements:
            argv += shlex.split(spec)
        _run(argv, log, f"pip install in the venv {name} ({version})", INSTALL_TIMEOUT)
        took = time.monotonic() - started
        stamp.write_text(json.dumps({
            "hash": digest, "python": python, "version": version,
            "requirements": list(requirements), "build_seconds": round(took, 1),
        }, indent=1))
        with open(log, "a") as out:
            out.write(f"\nbuilt in {took:.0f} s\n")
    return venv


#: The venv of each claimed version besides 3.11: amldbg (editable) with every extra that
#: installs there and that the interpreter-dependent tests drive, and pytest. Shared by
#: tests/test_python_versions.py and benchmarks/bench_versions.py.
MATRIX_REQUIREMENTS = (
    f"-e {ROOT}[debug,appinsights,otel,mlflow,cli]",
    "pytest>=7",
    "pytest-timeout>=2",
)


def matrix_venv(version: str) -> Path:
    """``ROOT/.venvs/py<version>``: the version matrix's venv for ``version`` ("3.12")."""
    return venv_for(version, MATRIX_REQUIREMENTS, f"py{version}")


def build_seconds(venv: Path) -> float | None:
    """How long the last build of ``venv`` took (None when it was never built here)."""
    try:
        return float(json.loads((venv / STAMP).read_text())["build_seconds"])
    except (OSError, ValueError, KeyError):
        return None
