"""The distribution: `python -m build` makes an sdist and a wheel that pass `twine check`, and
the wheel installs into a clean virtual environment with each extra.

The base wheel and the `debug` extra are really installed and run. The heavy extras (`aml`
pulls azureml-core) are resolved by pip without installing (`pip install --dry-run`), once,
for `all`: the wheel's metadata must make `all` exactly the union of the other extras, and a
set of requirements that resolves has every subset resolving too, so one resolution of `all`
proves each extra (and keeps this file near a minute and a half instead of five).
"""

from __future__ import annotations

import email.parser
import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

# Imported, not importorskip: build/twine is part of the test extra, and a missing component
# must fail the run instead of skipping these tests.
import build  # noqa: F401
import pytest
import twine  # noqa: F401

from conftest import free_port
from processes import ROOT, child_env

pytestmark = pytest.mark.slow

EXTRAS = ("debug", "aml", "appinsights", "otel", "mlflow", "cli", "all")
# What each extra must bring (its package name as pip reports it).
BRINGS = {
    "debug": {"debugpy"},
    "aml": {"azureml-core"},
    "appinsights": {"opencensus-ext-azure"},
    "otel": {"azure-monitor-opentelemetry-exporter"},
    "mlflow": {"mlflow-skinny"},
    "cli": {"json-five"},
    "all": {"debugpy", "azureml-core", "opencensus-ext-azure",
            "azure-monitor-opentelemetry-exporter", "mlflow-skinny", "json-five"},
}
_SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                               ".mypy_cache", ".ruff_cache", ".pytest_cache", "environments")


def run(argv: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    """Run ``argv``; fail the test with its output unless it exits 0; return its stdout."""
    result = subprocess.run(argv, cwd=cwd, env=child_env(), capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=timeout)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel from `python -m build`, built from a copy of the checkout (so the
    checkout gets no build/ or egg-info writes)."""
    base = tmp_path_factory.mktemp("build")
    project = base / "project"
    shutil.copytree(ROOT, project, ignore=_SKIP)
    out = base / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(project)])
    return out


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh, empty virtual environment (not even pip: the test venv's
    pip installs into it with ``--python``, which saves running ensurepip)."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(where, with_pip=False)
    return where / "bin" / "python"


def pip(clean_python: Path, *args: str) -> str:
    """Run the test venv's pip against the clean venv."""
    return run([sys.executable, "-m", "pip", "--python", str(clean_python), *args])


def extras_of(wheel: Path) -> dict[str, set[str]]:
    """extra -> the requirements (as written) the wheel's metadata gives it."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    found: dict[str, set[str]] = {
        extra: set() for extra in metadata.get_all("Provides-Extra") or []
    }
    for line in metadata.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        match = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if match:
            found[match.group(1)].add(requirement.strip())
    return found


def the(dist: Path, pattern: str) -> Path:
    """The single file in ``dist`` matching ``pattern``."""
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_build_makes_an_sdist_and_a_wheel_that_pass_twine_check(dist: Path) -> None:
    sdist, wheel = the(dist, "amldbg-*.tar.gz"), the(dist, "amldbg-*-py3-none-any.whl")
    out = run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    assert out.count("PASSED") == 2, out


def test_wheel_installs_and_runs_in_a_clean_venv(dist: Path, clean_python: Path) -> None:
    wheel = the(dist, "amldbg-*-py3-none-any.whl")
    pip(clean_python, "install", "--quiet", str(wheel))
    # No dependencies at all: the base install is amldbg alone, and it works (debugging off).
    code = ("import amldbg, sys; amldbg.enable_remote_debug(); "
            "print(amldbg.__version__, 'debugpy' in sys.modules)")
    version, debugpy_loaded = run([str(clean_python), "-c", code]).split()
    assert debugpy_loaded == "False"
    assert wheel.name.startswith(f"amldbg-{version}-")
    amldbg_cli = clean_python.parent / "amldbg"
    assert run([str(amldbg_cli), "--version"]).strip() == f"amldbg {version}"
    assert pip(clean_python, "list", "--format", "json").count('"name"') == 1

    # The debug extra really installs debugpy, and amldbg starts it (listen without waiting,
    # on a free loopback port).
    pip(clean_python, "install", "--quiet", f"{wheel}[debug]")
    port = free_port()
    code = ("import amldbg; s = amldbg.enable_remote_debug(enabled=True, timeout=0, "
            f"port={port}, listen_host='127.0.0.1'); print('session', s.mode, s.port)")
    out = run([str(clean_python), "-c", code])
    assert out.splitlines()[-1] == f"session listen {port}", out


def test_extras_are_the_documented_ones_and_all_is_their_union(dist: Path) -> None:
    extras = extras_of(the(dist, "amldbg-*-py3-none-any.whl"))
    # `test` is the development extra (pytest, linters, the real components the suite drives).
    assert set(extras) - {"test"} == set(EXTRAS)
    union = set().union(*(extras[extra] for extra in EXTRAS if extra != "all"))
    assert extras["all"] == union


def test_every_extra_resolves_in_the_clean_venv(dist: Path, clean_python: Path) -> None:
    wheel = the(dist, "amldbg-*-py3-none-any.whl")
    report = pip(clean_python, "install", "--dry-run", "--ignore-installed", "--quiet",
                 "--report", "-", f"{wheel}[all]")
    names = {item["metadata"]["name"].lower() for item in json.loads(report)["install"]}
    assert "amldbg" in names
    for extra in EXTRAS:
        assert BRINGS[extra] <= names, (extra, BRINGS[extra] - names)
