"""Submit a two-step Azure ML (SDK v2) pipeline job, prep -> train, debugging the train step.

    python samples/v2/pipeline_job.py --dump > pipeline.yml   # az ml job create -f pipeline.yml
    python samples/v2/pipeline_job.py                        # submits to config.json's workspace

Needs `pip install azure-ai-ml azure-identity`. Each step is a command: a step debugs when
its command line carries the flags (here only train; add ``command_job.debug_flags()`` to
prep's command to debug it as well). Both run samples' scripts unchanged in how they use
amldbg: ``add_args``, ``enable_remote_debug``, ``get_logger``.

Reaching the debugger: the train step has the VS Code / JupyterLab (and, with a public key,
SSH) services of an interactive job: open the step's VS Code service in Studio and attach to
localhost:5678 there; or forward the node's port over SSH (see command_job.py); or, from a
VNet / VPN, attach to the node address its ``user_logs/std_log.txt`` prints (``amldbg find``
reads it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shared  # noqa: E402
from command_job import COMPUTE_NAME, EXPERIMENT, debug_flags  # noqa: E402


def build(wheel: str | None = None, ssh_public_key: str | None = None) -> Any:
    """The pipeline job (a ``PipelineJob``), built without contacting a workspace."""
    from azure.ai.ml import Input, Output, command, dsl

    environment = shared.debug_environment(
        "train", extras=("debug", "mlflow"), pip=("azureml-mlflow",), wheel=wheel
    )
    prep_step = command(
        name="prep",
        display_name="prep data",
        code=str(shared.V2 / "prep.py"),
        command="python prep.py --output_dir ${{outputs.data}} --rows 20",
        outputs={"data": Output(type="uri_folder")},
        environment=environment,
    )
    train_step = command(
        name="train",
        display_name="train (remote debug)",
        code=str(shared.SAMPLES / "train.py"),
        command=(
            "python train.py --input_data ${{inputs.data}} --output_dir ${{outputs.model}} "
            + debug_flags()
        ),
        inputs={"data": Input(type="uri_folder")},
        outputs={"model": Output(type="uri_folder")},
        environment=environment,
        environment_variables={"PYTHONUNBUFFERED": "1"},
    )

    @dsl.pipeline(
        name="amldbg_pipeline",
        display_name="prep -> train with amldbg",
        compute=COMPUTE_NAME,
        experiment_name=EXPERIMENT,
    )
    def prep_and_train() -> dict:
        prep = prep_step()
        train = train_step(data=prep.outputs.data)
        train.services = shared.interactive_services(ssh_public_key)
        return {"model": train.outputs.model}

    return prep_and_train()


def submit(ml_client: Any, job: Any) -> None:
    """Submit the pipeline and print where to look."""
    shared.submit_job(ml_client, job, COMPUTE_NAME, (
        "open the train step in Studio; when its std_log.txt says it waits for a debugger,",
        "open its VS Code service and attach to localhost:5678 there, or forward the port:",
    ))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--dump`` prints the YAML, otherwise the pipeline is submitted."""
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    return shared.run(args, build, submit, ssh_public_key=shared.ssh_key(args.ssh_key))


if __name__ == "__main__":
    sys.exit(main())
