"""Environment snapshots and their differences: the guides' "dependency bugs".

A snapshot records what decides how a script behaves beyond its own code: the Python
version and platform, every installed distribution and its version (with the top-level
modules it provides), the environment variables that matter to Azure ML jobs, and the GPU
and CUDA when present. Secrets are never written (:mod:`amldbg.core.secrets`): a variable
with a secret-looking name is recorded as ``"<hidden>"``, the credentials inside other
values (a token in a URL, a SAS signature, a key in a connection string) are masked where
they stand, and snapshot files are created readable by their owner only (0600). Take one
locally and one on the compute, and :func:`diff_snapshots` (or ``amldbg env diff``) says
what differs, the packages the script imports first. :func:`load_snapshot` reads snapshots
as untrusted input: bounded memory, damaged ones refused in one line, older shapes converted.

From a script, one call writes the snapshot to the driver log and to the run's outputs::

    import amldbg
    amldbg.write_env_snapshot()   # outputs/amldbg_env.json, plus one line in the driver log

Only the standard library is used; nothing heavy (torch, CUDA libraries) is imported.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from amldbg._version import __version__
from amldbg.core import announce, environment, joblogs, secrets
from amldbg.core.guard import guard, quietly

#: Marks the snapshot line a script writes to the driver log; ``amldbg env diff`` reads it.
SNAPSHOT_MARKER = "amldbg env snapshot: "
SNAPSHOT_FORMAT = 1
DEFAULT_OUTPUT = os.path.join("outputs", "amldbg_env.json")
HIDDEN = secrets.MASK

# Environment variables worth recording: the ones Azure ML, the launchers, CUDA and the
# common ML libraries read. Everything else (a user's own variables) stays out.
_ENV_PREFIXES = (
    "AZUREML_", "AZ_BATCH", "AZ_BATCHAI_", "AML_", "AMLDBG_", "APPLICATIONINSIGHTS_",
    "APPINSIGHTS_", "MLFLOW_", "CUDA", "NVIDIA_", "NCCL_", "CUDNN", "OMPI_", "PMI_", "MPI_",
    "MASTER_", "TORCH", "PYTORCH_", "TF_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_",
    "PYTHON", "CONDA_", "PIP_", "SSL_CERT_", "REQUESTS_CA_",
)
_ENV_NAMES = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
    "VIRTUAL_ENV", "LD_LIBRARY_PATH", "PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
}
def _relevant(name: str) -> bool:
    return name in _ENV_NAMES or name.upper().startswith(_ENV_PREFIXES)


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    # Secret-looking names are recorded with HIDDEN as their value, and the credentials in
    # other values (a token in a URL, a SAS signature) are masked where they stand.
    return secrets.mask_env({name: env[name] for name in sorted(env) if _relevant(name)})


def normalize_name(name: str) -> str:
    """A distribution name in its canonical form (PEP 503): ``Foo_Bar`` -> ``foo-bar``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_modules(dist: Any) -> list[str]:
    # top_level.txt is written by setuptools; other back ends only leave RECORD.
    text = None
    with quietly():  # a distribution's broken metadata: read its RECORD instead
        text = dist.read_text("top_level.txt")
    if text:
        return sorted({line.strip() for line in text.splitlines() if line.strip()})
    modules = set()
    files: Any = []
    with quietly():  # a distribution's broken metadata: no modules named
        files = dist.files or []
    for file in files:
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] in {"..", "__pycache__"}:
            continue
        if len(parts) == 1:
            name = parts[0]
            if name.endswith(".py"):
                modules.add(name[:-3])
            elif name.endswith((".so", ".pyd")):
                modules.add(name.split(".", 1)[0])
        elif not parts[0].endswith(".pth"):
            modules.add(parts[0])
    return sorted(module for module in modules if module.isidentifier())


def installed_packages(path: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every distribution importable from ``path`` (``sys.path``): name -> version, modules.

    When a name is installed twice along the path, the first one wins, as for ``import``.
    """
    from importlib import metadata

    packages: dict[str, dict[str, Any]] = {}
    for dist in metadata.distributions(path=list(sys.path if path is None else path)):
        raw_name = dist.metadata["Name"] if dist.metadata is not None else None
        if not raw_name:
            continue
        name = normalize_name(str(raw_name))
        if name in packages:
            continue
        packages[name] = {"version": str(dist.version), "modules": _top_level_modules(dist)}
    return dict(sorted(packages.items()))


def _module_owners(packages: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for name, info in packages.items():
        for module in info.get("modules", []):
            owners.setdefault(module, []).append(name)
    return owners


def imported_distributions(
    packages: Mapping[str, Mapping[str, Any]], modules: Iterable[str]
) -> list[str]:
    """The distributions in ``packages`` that provide any of ``modules`` (top-level names)."""
    owners = _module_owners(packages)
    found = set()
    for module in modules:
        found.update(owners.get(module.split(".", 1)[0], []))
    return sorted(found)


def script_imports(path: str | os.PathLike[str]) -> list[str]:
    """The top-level modules a Python file imports (read with ``ast``, not run).

    Raises ``OSError`` or ``SyntaxError`` for a file that cannot be read or parsed.
    """
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".", 1)[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".", 1)[0])
    return sorted(modules)


def _run(argv: list[str], timeout: float = 10.0) -> str | None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _gpu(env: Mapping[str, str]) -> dict[str, Any] | None:
    """GPUs from nvidia-smi and the CUDA version from the toolkit or torch, when present."""
    info: dict[str, Any] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        out = _run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        if out:
            gpus = []
            for line in out.strip().splitlines():
                fields = [field.strip() for field in line.split(",")]
                if len(fields) == 3:
                    gpus.append({"name": fields[0], "driver": fields[1], "memory": fields[2]})
            info["gpus"] = gpus
            if gpus:
                info["driver"] = gpus[0]["driver"]
    cuda = None
    for candidate in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            text = Path(candidate).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if candidate.endswith(".json"):
            try:
                cuda = json.loads(text)["cuda"]["version"]
            except (ValueError, KeyError, TypeError):
                cuda = None
        else:
            found = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
            cuda = found.group(1) if found else None
        if cuda:
            break
    if cuda is None and env.get("CUDA_VERSION"):
        cuda = env["CUDA_VERSION"]
    if cuda:
        info["cuda"] = str(cuda)
    # torch's view counts most, but importing torch takes seconds: only ask it when the
    # script has imported it already.
    torch = sys.modules.get("torch")
    if torch is not None:
        with quietly():  # torch's failure: what the driver said is enough
            info["torch_cuda"] = getattr(torch.version, "cuda", None)
            info["torch_cuda_available"] = bool(torch.cuda.is_available())
    return info or None


def env_snapshot(
    env: Mapping[str, str] | None = None, *, gpu: bool = True, record_imports: bool = True
) -> dict[str, Any]:
    """A snapshot of this Python environment as a JSON-ready dictionary.

    Keys: ``python`` (version, implementation, executable, prefix, virtual environment),
    ``platform``, ``packages`` (canonical name -> ``{"version", "modules"}``), ``imported``
    (the distributions whose modules this process has imported so far: call it from the
    script, after its imports, to record what the script uses; empty with
    ``record_imports=False``), ``env`` (relevant variables;
    secret-looking values replaced by ``"<hidden>"``), ``gpu`` (``None`` without one), and
    ``azureml`` (run id and rank, when in a job).
    """
    env = os.environ if env is None else env
    packages = installed_packages()
    # Private top-level modules (_distutils_hack, loaded by a .pth file at start-up) say
    # nothing about what the script uses.
    loaded = [
        name for name, module in list(sys.modules.items())
        if module is not None and "." not in name and not name.startswith("_")
    ] if record_imports else []
    run = environment.run_context(env)
    topology = environment.topology(env)
    snapshot = {
        "amldbg_snapshot": SNAPSHOT_FORMAT,
        "amldbg_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "prefix": sys.prefix,
            "virtualenv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "libc": " ".join(part for part in platform.libc_ver() if part) or None,
        },
        "packages": packages,
        "imported": imported_distributions(packages, loaded),
        "env": _environment(env),
        "gpu": _gpu(env) if gpu else None,
        "azureml": {
            "in_job": run.in_job,
            "run_id": run.run_id,
            "rank": topology.rank,
            "world_size": topology.world_size,
            "launcher": topology.launcher,
        },
    }
    # Beyond the variables, any string (an executable path, a run id) could carry a
    # credential; the snapshot is written to files and the driver log, so mask it all.
    masked: dict[str, Any] = secrets.mask_tree(snapshot)
    return masked


def write_env_snapshot(
    path: str | os.PathLike[str] | None = DEFAULT_OUTPUT,
    *,
    log: bool = True,
    all_ranks: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Take a snapshot and write it where the run keeps it; call once at the script's start.

    Writes ``path`` (default ``outputs/amldbg_env.json``, which Azure ML uploads with the
    run; ``None`` writes no file) and, with ``log``, one ``amldbg env snapshot: {json}`` line
    to stdout, i.e. the driver log, which ``amldbg env diff`` reads directly. In a
    distributed job only local rank 0 writes (one snapshot per node), unless ``all_ranks``;
    when several nodes write, each file name gets the node's rank. The file is created with
    mode 0600 and both it and the line are masked (:mod:`amldbg.core.secrets`). Returns the
    snapshot, or ``None`` on a rank that did not write. Never raises: a failure is one
    warning line.
    """
    env = os.environ if env is None else env
    topology = environment.topology(env)
    if not all_ranks and topology.local_rank != 0:
        return None
    snapshot = None
    # A snapshot must never stop the script it describes.
    with guard("could not take the environment snapshot", once=False):
        snapshot = env_snapshot(env)
    if snapshot is None:
        return None
    if path is not None:
        target = Path(path)
        if topology.is_distributed:
            suffix = f"_rank{topology.rank}" if all_ranks else f"_node{topology.node_rank}"
            target = target.with_name(target.stem + suffix + target.suffix)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the start: the snapshot names the machine, paths and packages.
            secrets.write_private(target, json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
        except OSError as error:
            announce.warn(f"could not write the environment snapshot to {target}: {error}")
    if log:
        announce.say(SNAPSHOT_MARKER + json.dumps(snapshot, sort_keys=True, separators=(",", ":")))
    return snapshot


class SnapshotError(Exception):
    """A snapshot file could not be read; the message says why in one line."""


#: The longest line kept whole when reading logs; the rest of a longer line is skipped
#: (:class:`amldbg.core.joblogs.LineReader`, the one bounded line reader).
MAX_LINE = joblogs.MAX_LINE
#: The largest snapshot read as one JSON document (a log is read line by line instead).
MAX_SNAPSHOT_FILE = 64 << 20
# A driver-log snapshot line of a large environment is long, but not this long.
_MAX_SNAPSHOT_LINE = 16 << 20


def _read_snapshot_data(path: str | os.PathLike[str]) -> Any:
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        size = os.fstat(handle.fileno()).st_size
        handle.seek(0)
        if head.startswith(b"{") and size <= MAX_SNAPSHOT_FILE:
            try:
                return json.loads(handle.read().decode("utf-8", "replace").lstrip("\ufeff"))
            except ValueError:
                handle.seek(0)  # maybe a log that starts with "{": look for the line
        found: str | None = None
        for line in joblogs.LineReader(handle, max_line=_MAX_SNAPSHOT_LINE):
            at = line.find(SNAPSHOT_MARKER)
            if at >= 0:
                found = line[at + len(SNAPSHOT_MARKER):]
    if found is None:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(found.strip())
    except ValueError:
        raise SnapshotError(f"{path}: the snapshot line is cut short or damaged") from None
    return data


def _scalar(value: Any) -> Any:
    """A value of a snapshot's field as a comparable scalar (a nested one as JSON text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # 1e400 parses as inf, which strict JSON output cannot hold
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _packages(raw: Any, path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """A snapshot's packages as name -> {"version", "modules"}, from this format or a
    simpler one (name -> version, or a list of "name==version")."""
    if isinstance(raw, list):
        pairs: list[tuple[Any, Any]] = []
        for item in raw:
            if isinstance(item, str) and "==" in item:
                name, _, pinned = item.partition("==")
                pairs.append((name.strip(), pinned.strip()))
            elif isinstance(item, dict):
                pairs.append((item.get("name"), item))
        raw = dict(pairs)
    if not isinstance(raw, dict):
        raise SnapshotError(
            f"{path}: the snapshot is damaged: its packages are not a list or an object"
        )
    packages: dict[str, dict[str, Any]] = {}
    for name, info in raw.items():
        if not isinstance(name, str) or not name.strip():
            continue
        modules: list[str] = []
        if isinstance(info, dict):
            version = info.get("version")
            found = info.get("modules")
            if isinstance(found, list):
                modules = [module for module in found if isinstance(module, str)]
        else:
            version = info
        packages[normalize_name(name)] = {
            "version": None if version is None else str(_scalar(version)),
            "modules": modules,
        }
    return packages


def _normalized(data: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """A loaded snapshot with every section of the expected type, and secrets masked.

    Snapshots come from other machines and older amldbg versions: fields of the wrong
    type are dropped or converted so that comparing them never fails, and the variables of
    a snapshot written before masking was complete are masked now.
    """
    if not isinstance(data, dict) or "packages" not in data or "python" not in data:
        raise SnapshotError(
            f"{path} is not an amldbg environment snapshot (make one with 'amldbg env snapshot')"
        )
    python = data["python"]
    if isinstance(python, str):
        python = {"version": python}
    if not isinstance(python, dict):
        raise SnapshotError(f"{path}: the snapshot is damaged: its python entry is not an object")
    snapshot = dict(data)
    snapshot["python"] = {str(key): _scalar(value) for key, value in python.items()}
    snapshot["packages"] = _packages(data["packages"], path)
    imported = data.get("imported")
    snapshot["imported"] = [
        normalize_name(name) for name in (imported if isinstance(imported, list) else [])
        if isinstance(name, str)
    ]
    for section in ("platform", "gpu", "env"):
        value = data.get(section)
        snapshot[section] = (
            {str(key): _scalar(item) for key, item in value.items()}
            if isinstance(value, dict)
            else None
        )
    if snapshot["env"] is not None:
        snapshot["env"] = secrets.mask_env(
            {name: "" if value is None else value for name, value in snapshot["env"].items()}
        )
    return snapshot


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot from a JSON file, or the last ``amldbg env snapshot:`` line of a log.

    Raises :class:`SnapshotError` (one line) for a file that cannot be read, is not a
    snapshot, or is damaged. Memory stays bounded for logs of any size; the sections of an
    older or foreign snapshot are converted to the current types and its variables masked.
    """
    try:
        data = _read_snapshot_data(path)
        return _normalized(data, path)
    except OSError as error:
        raise SnapshotError(f"cannot read {path}: {error.strerror or error}") from None
    except RecursionError:
        raise SnapshotError(f"{path}: the snapshot is nested too deeply to read") from None


@dataclasses.dataclass(frozen=True)
class Difference:
    """One difference between snapshot A and snapshot B.

    ``kind`` is ``python``, ``missing`` (in A, not in B), ``extra`` (in B, not in A),
    ``version``, ``gpu``, ``platform`` or ``env``; ``imported`` marks packages the script
    imports; ``change`` is ``major``/``minor``/``patch``/``other`` for versions.
    """

    kind: str
    name: str
    a: Any
    b: Any
    imported: bool = False
    change: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The difference as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``(1, 8, 22)`` for ``"1.8.22"`` or ``"v1.8.22rc1"``."""
    found = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def version_change(a: str, b: str) -> str:
    """How far apart two versions are: ``major``, ``minor``, ``patch`` or ``other``."""
    left, right = release(a), release(b)
    if not left or not right:
        return "other"
    for index, label in enumerate(("major", "minor", "patch")):
        if (left + (0,) * 3)[index] != (right + (0,) * 3)[index]:
            return label
    return "other"


_KIND_ORDER = {"python": 0, "missing": 1, "version": 2, "extra": 3, "gpu": 4, "platform": 5, "env": 6}
_CHANGE_ORDER = {"major": 0, "minor": 1, "patch": 2, "other": 3, None: 4}


def diff_snapshots(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    imports: Iterable[str] = (),
    ignore: Iterable[str] = (),
    sections: Iterable[str] = ("python", "packages", "gpu"),
) -> list[Difference]:
    """What differs between snapshots ``a`` and ``b``, most consequential first.

    Order: the Python version; then packages the script imports (those recorded in either
    snapshot's ``imported``, plus the distributions providing ``imports``, top-level module
    names), missing ones first, then major, minor, patch version changes, then extra ones;
    then every other package in the same order; then GPU/CUDA, platform and environment
    variables. ``sections`` chooses what is compared (``python``, ``packages``, ``gpu``,
    ``platform``, ``env``); ``ignore`` lists package names to leave out.
    """
    wanted = set(sections)
    skipped = {normalize_name(name) for name in ignore}
    differences: list[Difference] = []
    if "python" in wanted:
        for field in ("version", "implementation"):
            left = a.get("python", {}).get(field)
            right = b.get("python", {}).get(field)
            if left != right:
                differences.append(Difference("python", f"python {field}", left, right))
    if "packages" in wanted:
        left_packages = a.get("packages", {})
        right_packages = b.get("packages", {})
        used = set(a.get("imported", [])) | set(b.get("imported", []))
        modules = list(imports)
        used |= set(imported_distributions(left_packages, modules))
        used |= set(imported_distributions(right_packages, modules))
        for name in sorted(set(left_packages) | set(right_packages)):
            if name in skipped:
                continue
            left_version = left_packages.get(name, {}).get("version")
            right_version = right_packages.get(name, {}).get("version")
            if left_version == right_version:
                continue
            if right_version is None:
                differences.append(Difference("missing", name, left_version, None, name in used))
            elif left_version is None:
                differences.append(Difference("extra", name, None, right_version, name in used))
            else:
                differences.append(
                    Difference(
                        "version", name, left_version, right_version, name in used,
                        version_change(left_version, right_version),
                    )
                )
    for section in ("gpu", "platform", "env"):
        if section not in wanted:
            continue
        left_section = a.get(section) or {}
        right_section = b.get(section) or {}
        for field in sorted(set(left_section) | set(right_section)):
            left = left_section.get(field)
            right = right_section.get(field)
            if left != right:
                differences.append(Difference(section, field, left, right))
    differences.sort(
        key=lambda d: (
            d.kind != "python",
            not d.imported if d.kind in ("missing", "version", "extra") else True,
            _KIND_ORDER[d.kind],
            _CHANGE_ORDER[d.change],
            d.name,
        )
    )
    return differences


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_diff(differences: Sequence[Difference], a_label: str = "A", b_label: str = "B") -> str:
    """The differences as text for people: one line each, grouped, most consequential first."""
    if not differences:
        return f"no differences between {a_label} and {b_label}"
    groups: list[tuple[str, list[Difference]]] = []

    def group_of(d: Difference) -> str:
        if d.kind == "python":
            return "python"
        if d.kind in ("missing", "version", "extra"):
            return "packages the script imports" if d.imported else "other packages"
        return {"gpu": "gpu and cuda", "platform": "platform", "env": "environment variables"}[d.kind]

    for difference in differences:
        title = group_of(difference)
        if not groups or groups[-1][0] != title:
            groups.append((title, []))
        groups[-1][1].append(difference)
    width = max(len(d.name) for d in differences)
    lines = [f"A = {a_label}", f"B = {b_label}"]
    for title, members in groups:
        lines.append(f"{title}:")
        for d in members:
            if d.kind == "missing":
                what = f"{_show(d.a)} in A, missing in B"
            elif d.kind == "extra":
                what = f"missing in A, {_show(d.b)} in B"
            else:
                what = f"{_show(d.a)} (A) -> {_show(d.b)} (B)"
                if d.change and d.change != "other":
                    what += f"  [{d.change}]"
            lines.append(f"  {d.name.ljust(width)}  {what}")
    count = len(differences)
    lines.append(f"{count} difference{'s' if count != 1 else ''}")
    return "\n".join(lines)


def summary(snapshot: Mapping[str, Any]) -> str:
    """A one-line summary of a snapshot for people."""
    python = snapshot.get("python", {})
    platform_info = snapshot.get("platform", {})
    gpu = snapshot.get("gpu") or {}
    parts = [
        f"Python {python.get('version')} ({python.get('implementation')})",
        f"{platform_info.get('system')} {platform_info.get('machine')}",
        f"{len(snapshot.get('packages', {}))} packages",
    ]
    if gpu.get("gpus"):
        parts.append(f"{len(gpu['gpus'])} GPU(s)")
    if gpu.get("cuda"):
        parts.append(f"CUDA {gpu['cuda']}")
    return ", ".join(parts)
