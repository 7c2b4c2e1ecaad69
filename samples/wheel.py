"""Build the amldbg wheel from this checkout, for samples that ship it to Azure ML compute.

amldbg is not on PyPI yet: `pip install amldbg` on a cluster would fail (or install whatever
someone else publishes under that name). Until it is published, every sample ships the wheel
built from this checkout (SDK v1: ``Environment.add_private_pip_wheel``; SDK v2: the wheel
beside the environment's conda file, which references it by relative path).

    python samples/wheel.py DIR        # builds dist wheel into DIR and prints its path

The build runs in a temporary copy of the project so that the checkout gets no ``build/``
directory; it needs pip and network access for the build backend (setuptools), like any
``pip wheel``.
"""

from __future__ import annotations

import email.parser
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent

# Everything a wheel build reads; the rest of the checkout (tests, samples, venvs) stays out.
_PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "MANIFEST.in")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def build_wheel(dest: str | Path, source: str | Path = ROOT) -> Path:
    """Build amldbg's wheel from ``source`` into the directory ``dest`` and return its path.

    Earlier ``amldbg-*.whl`` files in ``dest`` are removed, so that a conda file or a
    requirements line that names "the wheel in this directory" can never pick a stale one.
    Raises ``RuntimeError`` with pip's output when the build fails.
    """
    dest = Path(dest)
    source = Path(source)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amldbg-wheel-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        for name in _PROJECT_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, project / name)
        shutil.copytree(source / "amldbg", project / "amldbg", ignore=_IGNORE)
        out = Path(tmp) / "wheels"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
             str(project)],
            capture_output=True,
            text=True,
        )
        built = sorted(out.glob("amldbg-*.whl")) if out.exists() else []
        if result.returncode != 0 or len(built) != 1:
            raise RuntimeError(
                f"building the amldbg wheel failed (pip exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        for old in dest.glob("amldbg-*.whl"):
            old.unlink()
        return Path(shutil.copy2(built[0], dest / built[0].name))


def copy_wheel(wheel: str | Path, dest: str | Path) -> Path:
    """Copy an already built amldbg wheel into ``dest`` (replacing older ones); return the copy."""
    wheel = Path(wheel)
    if not wheel.is_file() or not wheel.name.startswith("amldbg-") or wheel.suffix != ".whl":
        raise ValueError(f"not an amldbg wheel: {wheel}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheel.name
    if wheel.resolve() == target.resolve():
        return target
    for old in dest.glob("amldbg-*.whl"):
        old.unlink()
    return Path(shutil.copy2(wheel, target))


def wheel_into(dest: str | Path, wheel: str | Path | None = None) -> Path:
    """The amldbg wheel in ``dest``: ``wheel`` copied there when given, else freshly built."""
    return copy_wheel(wheel, dest) if wheel else build_wheel(dest)


def extra_requirements(wheel: str | Path, extras: Sequence[str]) -> list[str]:
    """The requirements the wheel's ``extras`` add (``debugpy>=1.8.1`` for ``debug``), read
    from its metadata.

    For installers that take the wheel by plain URL (SDK v1's private wheels), where the
    ``amldbg[debug] @ URL`` form would bypass the service's handling of the URL.
    """
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    wanted = set(extras)
    found: list[str] = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        match = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if match and match.group(1) in wanted and requirement.strip() not in found:
            found.append(requirement.strip())
    return found


def tagged_copy(wheel: str | Path) -> Path:
    """A copy of ``wheel`` whose file name carries a build tag made from its content.

    Uploads keyed by file name (``Environment.add_private_pip_wheel(exist_ok=True)``) would
    otherwise keep serving the first wheel of a version that is rebuilt (``0.1.0.dev0``);
    pip ignores the build tag when it installs.
    """
    wheel = Path(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:12]
    name, version, rest = wheel.name.split("-", 2)
    target = wheel.with_name(f"{name}-{version}-0{digest}-{rest}")
    if not target.exists():
        shutil.copy2(wheel, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: build the wheel into the directory given (default ``dist``)."""
    args = sys.argv[1:] if argv is None else argv
    print(build_wheel(args[0] if args else "dist"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
