"""`amldbg env snapshot|diff` on snapshots taken in two real virtual environments."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from processes import ROOT, child_env, run_amldbg


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A real, installable pure-Python wheel holding module ``name`` (no top_level.txt, so the
    snapshot must find the module from RECORD, as for wheels of non-setuptools back ends)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: amldbg-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def make_venv(path: Path, wheels: list[Path]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *map(str, wheels)],
        check=True, timeout=120, env=child_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    return python


def venv_env(**extra: str) -> dict[str, str]:
    # amldbg itself comes from the work tree; it has no dependencies to install.
    return child_env(PYTHONPATH=str(ROOT), **extra)


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """Two virtual environments: A with tinylib 1.0 and onlya, B with tinylib 2.0 and onlyb."""
    base = tmp_path_factory.mktemp("venvs")
    wheels = base / "wheels"
    wheels.mkdir()
    python_a = make_venv(
        base / "a", [build_wheel(wheels, "tinylib", "1.0"), build_wheel(wheels, "onlya", "0.1")]
    )
    python_b = make_venv(
        base / "b", [build_wheel(wheels, "tinylib", "2.0.1"), build_wheel(wheels, "onlyb", "3.0")]
    )
    yield python_a, python_b, base


def amldbg(*args: str, python: str = sys.executable, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return run_amldbg(*args, python=python, cwd=cwd, env=venv_env(**env))


@pytest.fixture(scope="module")
def snapshots(venvs: tuple[Path, Path, Path]) -> tuple[Path, Path]:
    python_a, python_b, base = venvs
    a, b = base / "a.json", base / "b.json"
    for python, target in ((python_a, a), (python_b, b)):
        done = amldbg("env", "snapshot", "-o", str(target), python=str(python))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"amldbg env snapshot: {target}: Python ")
    return a, b


def test_snapshots_record_each_environment(snapshots: tuple[Path, Path]) -> None:
    a, b = (json.loads(path.read_text()) for path in snapshots)
    assert a["packages"]["tinylib"] == {"version": "1.0", "modules": ["tinylib"]}
    assert b["packages"]["tinylib"]["version"] == "2.0.1"
    assert "onlya" in a["packages"] and "onlya" not in b["packages"]
    assert a["python"]["virtualenv"] is True and a["python"]["prefix"] != b["python"]["prefix"]
    assert a["python"]["version"] == ".".join(map(str, sys.version_info[:3]))


def test_diff_lists_what_differs_script_imports_first(
    snapshots: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = snapshots
    script = tmp_path / "train.py"
    script.write_text("import os\nfrom onlya.sub import thing\n")
    done = amldbg("env", "diff", str(a), str(b), "--script", str(script))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"A = {a}", f"B = {b}", "packages the script imports:"]
    assert lines[3].split() == ["onlya", "0.1", "in", "A,", "missing", "in", "B"]
    assert lines[4] == "other packages:"
    assert lines[5].split() == ["tinylib", "1.0", "(A)", "->", "2.0.1", "(B)", "[major]"]
    assert lines[6].split() == ["onlyb", "missing", "in", "A,", "3.0", "in", "B"]
    assert lines[-1] == "3 differences"

    as_json = json.loads(amldbg("env", "diff", "--json", str(a), str(b)).stdout)
    assert [(d["kind"], d["name"]) for d in as_json] == [
        ("missing", "onlya"), ("version", "tinylib"), ("extra", "onlyb")
    ]
    ignored = amldbg("env", "diff", str(a), str(b), "--ignore", "tinylib", "--ignore", "onlya", "--ignore", "onlyb")
    assert ignored.returncode == 0 and ignored.stdout.startswith("no differences")


def test_same_environment_does_not_differ(snapshots: tuple[Path, Path]) -> None:
    a, _ = snapshots
    done = amldbg("env", "diff", str(a), str(a))
    assert done.returncode == 0
    assert done.stdout.strip() == f"no differences between {a} and {a}"


def test_script_snapshot_in_the_driver_log_records_its_imports(
    venvs: tuple[Path, Path, Path], snapshots: tuple[Path, Path], tmp_path: Path
) -> None:
    python_a, python_b, _ = venvs
    script = tmp_path / "train.py"
    script.write_text("import tinylib\nfrom amldbg.diagnostics.envsnap import write_env_snapshot\n\nwrite_env_snapshot()\nprint('training')\n")
    run = subprocess.run(
        [str(python_b), str(script)], capture_output=True, text=True, cwd=str(tmp_path),
        env=venv_env(), timeout=120,
    )
    assert run.returncode == 0, run.stderr
    log = tmp_path / "std_log.txt"
    log.write_text(run.stdout)
    assert run.stdout.splitlines()[-1] == "training"
    written = json.loads((tmp_path / "outputs" / "amldbg_env.json").read_text())
    assert "tinylib" in written["imported"]

    # The driver log's snapshot line is a snapshot too; tinylib counts as imported.
    a, _ = snapshots
    done = amldbg("env", "diff", str(a), str(log))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[2] == "packages the script imports:"
    assert lines[3].split()[:1] == ["tinylib"]


def test_secret_values_are_never_recorded(tmp_path: Path) -> None:
    secrets = {
        "AZUREML_RUN_TOKEN": "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-1111-2222-3333-444444444444",
        "AZUREML_DATASTORE_URL": "https://acct.blob.core.windows.net/c?sv=2022&sig=SIGSIGSIG",
        "MLFLOW_TRACKING_URI": "https://user:hunter2hunter2@mlflow.example",
    }
    target = tmp_path / "snap.json"
    done = amldbg("env", "snapshot", "-o", str(target), AZUREML_RUN_ID="run_42", **secrets)
    assert done.returncode == 0, done.stderr
    text = target.read_text() + done.stdout + done.stderr
    for value in secrets.values():
        assert value not in text
    for fragment in ("hunter2", "SIGSIG", "c2VjcmV0", "444444444444"):
        assert fragment not in text
    recorded = json.loads(target.read_text())["env"]
    # Secret names hide the whole value; elsewhere only the credential is masked, so that
    # the snapshot still says which host a URL names.
    assert recorded["AZUREML_RUN_TOKEN"] == "<hidden>"
    assert recorded["APPLICATIONINSIGHTS_CONNECTION_STRING"] == "<hidden>"
    assert recorded["AZUREML_DATASTORE_URL"] == "https://acct.blob.core.windows.net/c?sv=2022&sig=<hidden>"
    assert recorded["MLFLOW_TRACKING_URI"] == "https://<hidden>@mlflow.example"
    assert recorded["AZUREML_RUN_ID"] == "run_42"


def test_bad_inputs_are_one_line_errors(tmp_path: Path, snapshots: tuple[Path, Path]) -> None:
    a, _ = snapshots
    not_snapshot = tmp_path / "other.json"
    not_snapshot.write_text('{"hello": 1}')
    broken_script = tmp_path / "broken.py"
    broken_script.write_text("import (\n")
    cases = [
        (["env", "diff", str(a), str(tmp_path / "missing.json")], "cannot read"),
        (["env", "diff", str(a), str(not_snapshot)], "is not an amldbg environment snapshot"),
        (["env", "diff", str(a), str(a), "--script", str(broken_script)], "cannot parse"),
        (["env", "diff", str(a)], "the following arguments are required: B"),
        (["env", "snapshot", "-o", str(tmp_path / "no" / "such" / "dir.json")], "cannot write"),
    ]
    for argv, reason in cases:
        done = amldbg(*argv)
        assert done.returncode == 2, argv
        assert len(done.stderr.splitlines()) == 1 and reason in done.stderr, done.stderr


# Issue 10's examples of what the snapshot, write_env_snapshot() and the driver-log line wrote
# in plain text: (variable, value, the fragment that must never be written).
ISSUE_SECRETS = [
    ("PIP_EXTRA_INDEX_URL", "https://TOKENabc123xyz@pkgs.dev.azure.com/o/_packaging/f/pypi/simple/", "TOKENabc123xyz"),
    ("PIP_INDEX_URL", "https://user:pa/ss/w0rd@pypi.example/simple", "pa/ss/w0rd"),
    ("AZUREML_ACCOUNT_KEY1", "plainvalue0001", "plainvalue0001"),
    ("AZUREML_DATASTORE_STORAGEKEY", "plainvalue0002", "plainvalue0002"),
    ("AML_DB_PWD", "plainvalue0003", "plainvalue0003"),
    ("PIP_INDEX_PASS", "plainvalue0004", "plainvalue0004"),
    ("AZUREML_GIT_PAT", "plainvalue0005", "plainvalue0005"),
    ("MLFLOW_TRACKING_PASSWORD", "plainvalue0006", "plainvalue0006"),
    ("AZUREML_SSH_PASSPHRASE", "plainvalue0007", "plainvalue0007"),
    ("AZUREML_SP_CREDENTIAL", "plainvalue0008", "plainvalue0008"),
    # By value shape, under names that say nothing.
    ("AZUREML_STORAGE", "Zm9vYmFyQkFaMTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJD+/XyZ12==", "Zm9vYmFyQkFa"),
    ("AZUREML_HEADER", "Bearer abcDEF123ghiJKL456", "abcDEF123ghiJKL456"),
    ("MLFLOW_TRACKING_URI", "azureml://x.api.azureml.ms/mlflow?sig=SIGNATURE123", "SIGNATURE123"),
]


@pytest.mark.parametrize(("name", "value", "fragment"), ISSUE_SECRETS, ids=[c[0] for c in ISSUE_SECRETS])
def test_snapshot_never_holds_a_secret(name: str, value: str, fragment: str) -> None:
    from amldbg.diagnostics import envsnap

    snapshot = envsnap.env_snapshot({name: value, "AZUREML_RUN_ID": "run_1"}, gpu=False)
    assert name in snapshot["env"]  # the variable is recorded, its secret is not
    assert fragment not in json.dumps(snapshot)
    assert snapshot["env"]["AZUREML_RUN_ID"] == "run_1"


def test_write_env_snapshot_file_is_0600_and_the_driver_log_line_is_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from amldbg.diagnostics import envsnap

    env = {name: value for name, value, _ in ISSUE_SECRETS}
    target = tmp_path / "outputs" / "amldbg_env.json"
    old = os.umask(0o000)  # a permissive umask must not widen the file
    try:
        snapshot = envsnap.write_env_snapshot(target, env=env)
    finally:
        os.umask(old)
    assert snapshot is not None
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    line = capsys.readouterr().out
    assert line.startswith(envsnap.SNAPSHOT_MARKER)
    written = target.read_text() + line
    for _, _, fragment in ISSUE_SECRETS:
        assert fragment not in written


def test_env_snapshot_output_file_is_0600(tmp_path: Path) -> None:
    target = tmp_path / "snap.json"
    target.write_text("an older, world-readable file")
    target.chmod(0o644)
    done = amldbg("env", "snapshot", "-o", str(target), **{n: v for n, v, _ in ISSUE_SECRETS})
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.json"
    assert amldbg("env", "snapshot", "-o", str(fresh)).returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    printed = amldbg("env", "snapshot", **{n: v for n, v, _ in ISSUE_SECRETS}).stdout
    for _, _, fragment in ISSUE_SECRETS:
        assert fragment not in target.read_text() and fragment not in printed


def test_env_diff_masks_an_old_snapshot_written_before_masking(
    snapshots: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = snapshots
    old = json.loads(a.read_text())
    old["env"] = {"AZUREML_ACCOUNT_KEY1": "plainvalue0001", "PIP_INDEX_URL": "https://TOKENabc123xyz@h/simple"}
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps(old))
    done = amldbg("env", "diff", "--env", str(a), str(old_file))
    assert done.returncode == 1, done.stderr
    assert "plainvalue0001" not in done.stdout and "TOKENabc123xyz" not in done.stdout
    assert "AZUREML_ACCOUNT_KEY1" in done.stdout
