"""Submit samples/train.py as an Azure ML (SDK v1) pipeline step with remote debugging on.

This is the developer-side half of the guides' workflow. It is not run by the tests (it needs
a workspace); it needs `pip install azureml-core azureml-pipeline-core azureml-pipeline-steps`.

The step passes the same flags the guides use. The compute's environment needs amldbg with
its `debug` extra (debugpy); `aml` adds azureml-core for run metrics.
"""

from azureml.core import Environment, Experiment, Workspace
from azureml.core.conda_dependencies import CondaDependencies
from azureml.core.runconfig import RunConfiguration
from azureml.pipeline.core import Pipeline, PipelineData
from azureml.pipeline.steps import PythonScriptStep

COMPUTE_NAME = "cpu-cluster"
# Listen mode (default): the script listens on the node; attach from a VS Code on the same
# network (VNet/VPN) to the `ip_address:` the driver log shows, or run `amldbg find`.
# Reverse connect: set this to the IP of a VS Code that listens (launch.json "listen").
VS_CODE_CLIENT_IP = None


def build_pipeline(ws: Workspace) -> Pipeline:
    """One PythonScriptStep running train.py with the guides' remote-debug arguments."""
    env = Environment("amldbg-train")
    env.python.conda_dependencies = CondaDependencies.create(
        python_version="3.11",
        pip_packages=["amldbg[debug,aml]", "azureml-defaults"],
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
        source_directory="samples",
        arguments=arguments,
        outputs=[model],
        compute_target=ws.compute_targets[COMPUTE_NAME],
        runconfig=run_config,
        allow_reuse=False,
    )
    return Pipeline(workspace=ws, steps=[step])


def main() -> None:
    """Submit the pipeline to the workspace described by ./config.json."""
    ws = Workspace.from_config()
    run = Experiment(ws, "amldbg-remote-debug").submit(build_pipeline(ws))
    print("submitted:", run.id, run.get_portal_url())


if __name__ == "__main__":
    main()
