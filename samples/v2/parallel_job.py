"""Submit samples/parallel_entry.py as an Azure ML (SDK v2) parallel job, debugging process 0.

    python samples/v2/parallel_job.py --dump > parallel.yml   # az ml job create -f parallel.yml
    python samples/v2/parallel_job.py                        # submits to config.json's workspace

Needs `pip install azure-ai-ml azure-identity`. A v2 parallel job is a step of a pipeline
job; it keeps ParallelRunStep's contract (``init()`` once per worker process,
``run(mini_batch)`` per mini-batch, ``azureml_user.parallel_run.EntryScript``), so the entry
script is the v1 sample unchanged: ``@amldbg.debug_init`` / ``@amldbg.debug_run``. A parallel
job has no command line of its own for the script, so debugging is switched on by the
``AMLDBG_*`` variables below.

Reaching the debugger: worker process 0 of node 0 listens on 0.0.0.0:5678 (process N on
5678 + N when ``AMLDBG_REMOTE_DEBUG_PROCESSES`` selects more) and waits up to 120 s in
``init()``. Parallel jobs offer no interactive services, so attach from a VNet / VPN to the
node address in ``logs/user/...`` (``amldbg find`` reads it), forward the node's port over
SSH on a cluster with SSH access (see command_job.py), or set
``AMLDBG_REMOTE_DEBUG_CLIENT_IP`` to a VS Code that listens (reverse connect).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shared  # noqa: E402
from command_job import COMPUTE_NAME, EXPERIMENT  # noqa: E402

#: What the decorators read, in place of command-line flags.
DEBUG_VARIABLES = {
    "AMLDBG_REMOTE_DEBUG": "1",
    "AMLDBG_REMOTE_DEBUG_PROCESSES": "0",
    "AMLDBG_REMOTE_DEBUG_PORT": str(shared.DEBUG_PORT),
    "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "120",
    "AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "0.0.0.0",
}


def build(wheel: str | None = None, ssh_public_key: str | None = None) -> Any:
    """The pipeline job holding the parallel step, built without contacting a workspace.

    ``ssh_public_key`` is accepted for a uniform command line; parallel steps have no
    interactive services.
    """
    from azure.ai.ml import Input, Output, dsl
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    environment = shared.debug_environment(
        "parallel",
        extras=("debug",),
        pip=("azureml-core", "azureml-dataset-runtime[fuse]"),
        python="3.10",
        wheel=wheel,
    )
    count_readings = parallel_run_function(
        name="count_readings",
        display_name="count readings (remote debug on process 0)",
        inputs={"readings": Input(type="uri_folder", description="one reading per line")},
        outputs={"counts": Output(type="uri_file")},
        input_data="${{inputs.readings}}",
        mini_batch_size="2",  # files per mini-batch
        instance_count=1,
        max_concurrency_per_instance=2,
        mini_batch_error_threshold=0,
        logging_level="INFO",
        # Long enough for a debugging session on one mini-batch (the default is 60 s). A dict:
        # azure-ai-ml 1.35 annotates BatchRetrySettings but accepts only a dict at run time.
        retry_settings={"max_retries": 0, "timeout": 3600},
        environment_variables={**DEBUG_VARIABLES, "READING_THRESHOLD": "5.0"},
        task=RunFunction(
            code=str(shared.SAMPLES / "parallel_entry.py"),
            entry_script="parallel_entry.py",
            environment=environment,
            append_row_to="${{outputs.counts}}",
        ),
    )

    @dsl.pipeline(
        name="amldbg_parallel",
        display_name="parallel job with amldbg",
        compute=COMPUTE_NAME,
        experiment_name=EXPERIMENT,
    )
    # No annotations: dsl reads them, and `from __future__ import annotations` makes them text.
    def count_pipeline(readings):  # type: ignore[no-untyped-def]
        count = count_readings(readings=readings)
        return {"counts": count.outputs.counts}

    return count_pipeline(
        readings=Input(type="uri_folder", path=str(shared.SAMPLES / "parallel_data"))
    )


def submit(ml_client: Any, job: Any) -> None:
    """Submit the pipeline and print where to look."""
    shared.submit_job(ml_client, job, COMPUTE_NAME, (
        "process 0 of node 0 waits up to 120 s in init(): attach to the address its",
        "logs/user/.../Process-*.txt (and std_log) show, on port 5678, or forward it:",
    ))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--dump`` prints the YAML, otherwise the job is submitted."""
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    return shared.run(args, build, submit, ssh_public_key=None)


if __name__ == "__main__":
    sys.exit(main())
