"""Submit samples/train.py as an Azure ML (SDK v1) pipeline step with remote debugging on.

This is the developer-side half of the guides' workflow. It is not run by the tests (it needs
a workspace); it needs `pip install azureml-core azureml-pipeline-core azureml-pipeline-steps`.

The step passes the same flags the guides use. The compute's environment needs amldbg with
its `debug` extra (debugpy); `aml` adds azureml-core for run metrics. amldbg is not on PyPI
yet, so the environment gets the wheel built from this checkout (samples/wheel.py), uploaded
to the workspace with `Environment.add_private_pip_wheel`, plus the requirements of the
extras read from the wheel's own metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

from azureml.core import Environment, Experiment, Workspace
from azureml.core.conda_dependencies import CondaDependencies
from azureml.core.runconfig import RunConfiguration
from azureml.pipeline.core import Pipeline, PipelineData
from azureml.pipeline.steps import PythonScriptStep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheel import ROOT, extra_requirements, tagged_copy, wheel_into  # noqa: E402

COMPUTE_NAME = "cpu-cluster"
# Listen mode (default): the script listens on the node; attach from a VS Code on the same
# network (VNet/VPN) to the `ip_address:` the driver log shows, or run `amldbg find`.
# Reverse connect: set this to the IP of a VS Code that listens (launch.json "listen").
VS_CODE_CLIENT_IP = None
# amldbg's extras on the compute: debugpy, and azureml-core for run metrics.
EXTRAS = ("debug", "aml")


def amldbg_pip_packages(ws: Workspace, wheel: str | None = None) -> list[str]:
    """pip lines that install amldbg[debug,aml] from the wheel of this checkout.

    The wheel (``wheel``, or one built now into ./dist) gets a content build tag, so that a
    rebuilt 0.1.0.dev0 is uploaded anew instead of the first upload being reused.
    """
    built = tagged_copy(wheel_into(ROOT / "dist", wheel))
    url = Environment.add_private_pip_wheel(workspace=ws, file_path=str(built), exist_ok=True)
    return [url, *extra_requirements(built, EXTRAS)]


def build_pipeline(ws: Workspace, wheel: str | None = None) -> Pipeline:
    """One PythonScriptStep running train.py with the guides' remote-debug arguments."""
    env = Environment("amldbg-train")
    env.python.conda_dependencies = CondaDependencies.create(
        python_version="3.11",
        pip_packages=[*amldbg_pip_packages(ws, wheel), "azureml-defaults"],
    )
    run_config = RunConfiguration()
    run_config.environment = env

    model = PipelineData("model", datastore=ws.get_default_datastore())
    arguments = [
        "--output_dir", model,
        "--remote_debug",
        "--remote_debug_connection_timeout", 300,
        "--remote_debug_port", 5678,
    ]
    if VS_CODE_CLIENT_IP:
        arguments += ["--remote_debug_client_ip", VS_CODE_CLIENT_IP]

    step = PythonScriptStep(
        name="train",
        script_name="train.py",
        source_directory=str(Path(__file__).resolve().parent),
        arguments=arguments,
        outputs=[model],
        compute_target=ws.compute_targets[COMPUTE_NAME],
        runconfig=run_config,
        allow_reuse=False,
    )
    return Pipeline(workspace=ws, steps=[step])


def main() -> None:
    """Submit the pipeline to the workspace described by ./config.json.

    ``python samples/pipeline.py [WHEEL]``: ship WHEEL instead of building one.
    """
    ws = Workspace.from_config()
    wheel = sys.argv[1] if len(sys.argv) > 1 else None
    run = Experiment(ws, "amldbg-remote-debug").submit(build_pipeline(ws, wheel))
    print("submitted:", run.id, run.get_portal_url())


if __name__ == "__main__":
    main()
