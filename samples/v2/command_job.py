"""Submit samples/train.py as an Azure ML (SDK v2) command job with remote debugging on.

    python samples/v2/command_job.py --dump > job.yml   # then: az ml job create -f job.yml
    python samples/v2/command_job.py                   # submits to the config.json workspace

Needs `pip install azure-ai-ml azure-identity` on your machine. train.py is the v1 sample
unchanged: the same three lines (``amldbg.add_args``, ``enable_remote_debug``, ``get_logger``).

Reaching the debugger (the script listens on 0.0.0.0:5678 and waits up to 300 s; the job log
``user_logs/std_log.txt`` says when and where, and ``amldbg find`` reads it for you):
- interactive job: open the job's VS Code service (Studio > job > "VS Code"); VS Code then
  runs in the job's container, so attach with launch.json ``"connect": {"host": "localhost",
  "port": 5678}``, ``"pathMappings": [{"localRoot": "${workspaceFolder}/samples",
  "remoteRoot": "."}]``. With a public key (``--ssh-key``, default ``~/.ssh/id_*.pub``) the
  job also has an SSH service: ``az ml job connect-ssh --name JOB --node-index 0
  --private-key-file-path KEY`` opens a shell in the container.
- SSH port forward, on a cluster created with SSH access (admin user + key): the container
  shares the node's network, so forward the node's 5678 and attach to localhost:5678:
      az ml compute list-nodes --name cpu-cluster -o table      # public IP and SSH port
      ssh -N -L 5678:127.0.0.1:5678 -p NODE_SSH_PORT azureuser@NODE_PUBLIC_IP
- VNet / VPN: attach to the node address the log prints, or set ``VS_CODE_CLIENT_IP`` to a
  VS Code that listens (reverse connect).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shared  # noqa: E402

COMPUTE_NAME = "cpu-cluster"
EXPERIMENT = "amldbg-remote-debug"
# Listen mode (default); set to a VS Code's IP (launch.json "listen") for reverse connect.
VS_CODE_CLIENT_IP = None

#: The guides' flags, as train.py receives them on its command line.
DEBUG_FLAGS = (
    "--remote_debug --remote_debug_connection_timeout 300 --remote_debug_port 5678"
)


def debug_flags(client_ip: str | None = VS_CODE_CLIENT_IP) -> str:
    """The remote-debug flags for a step's command line."""
    return DEBUG_FLAGS + (f" --remote_debug_client_ip {client_ip}" if client_ip else "")


def build(wheel: str | None = None, ssh_public_key: str | None = None) -> Any:
    """The command job (a ``CommandJob``), built without contacting a workspace."""
    from azure.ai.ml import Output
    from azure.ai.ml.entities import CommandJob

    return CommandJob(
        display_name="train with amldbg",
        experiment_name=EXPERIMENT,
        code=str(shared.SAMPLES / "train.py"),
        command=(
            "python train.py --output_dir ${{outputs.model}} --epochs 3 " + debug_flags()
        ),
        outputs={"model": Output(type="uri_folder")},
        environment=shared.debug_environment(
            "train", extras=("debug", "mlflow"), pip=("azureml-mlflow",), wheel=wheel
        ),
        environment_variables={
            # The announce lines reach std_log.txt at once (amldbg flushes them anyway).
            "PYTHONUNBUFFERED": "1",
        },
        compute=COMPUTE_NAME,
        services=shared.interactive_services(ssh_public_key),
    )


def submit(ml_client: Any, job: Any) -> None:
    """Submit the job and print where to look."""
    shared.submit_job(ml_client, job, COMPUTE_NAME, (
        "when its std_log.txt says it waits for a debugger: open the job's VS Code service",
        "and attach to localhost:5678 there, or forward the port over SSH and attach locally:",
    ))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--dump`` prints the YAML, otherwise the job is submitted."""
    args = shared.parser(__doc__.splitlines()[0]).parse_args(argv)
    return shared.run(args, build, submit, ssh_public_key=shared.ssh_key(args.ssh_key))


if __name__ == "__main__":
    sys.exit(main())
