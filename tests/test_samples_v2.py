"""The Azure ML SDK v2 samples: `--dump` prints YAML that the real azure-ai-ml loads back, with
the debugging parts intact (flags, AMLDBG_* variables, the port, the shipped amldbg wheel).

Nothing here contacts a workspace: the samples run in an empty directory (no config.json).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

# Imported, not importorskip: azure-ai-ml is part of the test extra, and a missing component
# must fail the run instead of skipping these tests.
import azure.ai.ml  # noqa: F401
import pytest

from processes import SAMPLES, child_env

V2 = SAMPLES / "v2"
FLAGS = "--remote_debug --remote_debug_connection_timeout 300 --remote_debug_port 5678"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The amldbg wheel, built once from this checkout by the samples' own helper."""
    sys.path.insert(0, str(SAMPLES))
    try:
        from wheel import build_wheel
    finally:
        sys.path.remove(str(SAMPLES))
    built = build_wheel(tmp_path_factory.mktemp("wheel"))
    assert re.fullmatch(r"amldbg-[^-]+-py3-none-any\.whl", built.name)
    return built


@pytest.fixture(scope="module")
def dumped(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each sample's ``--dump``, run once, in parallel, each in an empty directory (no
    config.json): sample -> (its YAML file, its environments directory); and "submit" ->
    (the stderr of command_job.py run without ``--dump`` there, ...)."""
    runs = {}
    for sample in ("command_job", "pipeline_job", "parallel_job", "online_deployment"):
        where = tmp_path_factory.mktemp(sample)
        proc = subprocess.Popen(
            [sys.executable, str(V2 / f"{sample}.py"), "--dump", "--wheel", str(wheel),
             "--env-dir", str(where / "environments")],
            cwd=where, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )
        runs[sample] = (where, proc)
    # And one submit: it reads ./config.json before anything else touches the network.
    where = tmp_path_factory.mktemp("submit")
    runs["submit"] = (where, subprocess.Popen(
        [sys.executable, str(V2 / "command_job.py"), "--wheel", str(wheel),
         "--env-dir", str(where / "environments")],
        cwd=where, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    ))
    results = {}
    try:
        for sample, (where, proc) in runs.items():
            out, err = proc.communicate(timeout=300)
            if sample == "submit":
                (where / "stderr.txt").write_text(err)
                assert proc.returncode == 2, err[-3000:]
                results[sample] = (where / "stderr.txt", where / "environments")
                continue
            assert proc.returncode == 0, f"{sample}: {err[-3000:]}"
            assert "Traceback" not in err
            (where / f"{sample}.yml").write_text(out)
            results[sample] = (where / f"{sample}.yml", where / "environments")
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def shipped_wheel(environment: Any, wheel: Path) -> str:
    """Check the environment's build context ships ``wheel`` from its conda file; return the
    conda file's amldbg line."""
    context = Path(environment.build.path)
    assert (context / wheel.name).read_bytes() == wheel.read_bytes()
    conda = (context / "conda.yaml").read_text()
    line = next(line.strip()[2:] for line in conda.splitlines()
                if line.strip().startswith("- ./amldbg-"))
    assert line.startswith(f"./{wheel.name}[") and "debug" in line
    # The conda file is what the Dockerfile installs; the image exposes the debug port.
    dockerfile = (context / environment.build.dockerfile_path).read_text()
    assert "conda env create" in dockerfile and "conda.yaml" in dockerfile
    assert re.search(r"^EXPOSE 5678$", dockerfile, re.M)
    return line


def test_command_job_dump_loads_with_flags_services_and_wheel(wheel: Path, dumped: Any) -> None:
    from azure.ai.ml import load_job

    path, _ = dumped["command_job"]
    job = load_job(path)
    assert job.type == "command"
    assert job.command.startswith("python train.py --output_dir ${{outputs.model}}")
    assert FLAGS in job.command
    assert Path(job.code) == SAMPLES / "train.py"
    assert {"vscode", "jupyter"} <= set(job.services)
    assert "debug" in shipped_wheel(job.environment, wheel)


def test_pipeline_job_dump_loads_with_flags_on_the_train_step(wheel: Path, dumped: Any) -> None:
    from azure.ai.ml import load_job

    path, _ = dumped["pipeline_job"]
    job = load_job(path)
    assert job.type == "pipeline"
    assert set(job.jobs) == {"prep", "train"}
    train, prep = job.jobs["train"], job.jobs["prep"]
    assert FLAGS in train.command and "--input_data ${{inputs.data}}" in train.command
    assert "--remote_debug" not in prep.command
    assert "vscode" in train.services
    assert Path(prep.code) == V2 / "prep.py"
    shipped_wheel(train.environment, wheel)


def test_parallel_job_dump_loads_with_amldbg_variables(wheel: Path, dumped: Any) -> None:
    from azure.ai.ml import load_job

    path, _ = dumped["parallel_job"]
    job = load_job(path)
    assert job.type == "pipeline"
    step = job.jobs["count_readings"]
    assert step.type == "parallel"
    assert step.environment_variables["AMLDBG_REMOTE_DEBUG"] == "1"
    assert step.environment_variables["AMLDBG_REMOTE_DEBUG_PROCESSES"] == "0"
    assert step.environment_variables["AMLDBG_REMOTE_DEBUG_PORT"] == "5678"
    assert step.task["entry_script"] == "parallel_entry.py"
    assert Path(step.task["code"]) == SAMPLES / "parallel_entry.py"
    # The input is the local folder (uploaded on submit), not a data asset named like it.
    data = job.inputs["readings"]._data
    assert data.path == str(SAMPLES / "parallel_data")
    assert "debug" in shipped_wheel(step.task["environment"], wheel)


def test_online_deployment_dump_loads_with_variables_port_and_wheel(
    wheel: Path, dumped: Any
) -> None:
    from azure.ai.ml import load_online_deployment

    path, _ = dumped["online_deployment"]
    deployment = load_online_deployment(path)
    variables = deployment.environment_variables
    assert variables["AMLDBG_REMOTE_DEBUG"] == "1"
    assert variables["AMLDBG_REMOTE_DEBUG_PORT"] == "5678"
    assert variables["AMLDBG_REMOTE_DEBUG_LISTEN_HOST"] == "0.0.0.0"  # reachable via mapping
    assert variables["WORKER_COUNT"] == "1"
    assert deployment.code_configuration.scoring_script == "score.py"
    assert Path(deployment.code_configuration.code) == SAMPLES
    shipped_wheel(deployment.environment, wheel)
    conda = (Path(deployment.environment.build.path) / "conda.yaml").read_text()
    assert "azureml-inference-server-http" in conda


@pytest.mark.slow
def test_conda_files_wheel_line_installs_from_beside_the_conda_file(
    dumped: Any, tmp_path: Path
) -> None:
    # conda runs pip in the conda file's directory: the relative wheel line must resolve
    # there, extras included (pip's resolver proves it without installing anything).
    _, env_dir = dumped["online_deployment"]
    context = env_dir / "score"
    line = next(line.strip()[2:] for line in (context / "conda.yaml").read_text().splitlines()
                if line.strip().startswith("- ./amldbg-"))
    (context / "amldbg-requirements.txt").write_text(line + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
         "--report", "-", "--quiet", "-r", "amldbg-requirements.txt"],
        cwd=context, env=child_env(), capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"name": "amldbg"' in result.stdout and '"name": "debugpy"' in result.stdout


def test_without_dump_the_sample_submits_to_the_config_json_workspace(dumped: Any) -> None:
    stderr = dumped["submit"][0].read_text()
    # No config.json in its directory: one line naming the file, no traceback, exit 2.
    assert "command_job.py: no workspace:" in stderr and "config.json" in stderr
    assert "Traceback" not in stderr
