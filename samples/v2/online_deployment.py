"""Deploy samples/score.py to an Azure ML (SDK v2) online endpoint with amldbg's debugger on.

    python samples/v2/online_deployment.py --dump > deployment.yml
        # az ml online-endpoint create --name amldbg-score [--local]
        # az ml online-deployment create -f deployment.yml [--local]
    python samples/v2/online_deployment.py --local    # local endpoint in Docker: debug here
    python samples/v2/online_deployment.py            # managed endpoint in the workspace

Needs `pip install azure-ai-ml azure-identity` (and Docker for ``--local``). score.py is the
v1 sample unchanged: ``@amldbg.debug_init`` / ``@amldbg.debug_run``, switched on by the
``AMLDBG_*`` variables below (a deployment has no command line).

Reaching the debugger (init() listens on 0.0.0.0:5678 and waits up to 30 s):
- local endpoint (``--local``): the image EXPOSEs 5678 and the local endpoint publishes every
  exposed port, so ``docker port amldbg-score.debug 5678`` names the host port; attach with
  ``"connect": {"host": "localhost", "port": HOSTPORT}`` and ``"pathMappings":
  [{"localRoot": "${workspaceFolder}/samples", "remoteRoot": "/var/azureml-app/samples"}]``.
- managed endpoint: only the scoring port is reachable from outside, so attach by reverse
  connect instead: set ``AMLDBG_REMOTE_DEBUG_CLIENT_IP`` to a VS Code that listens on an
  address the deployment can reach (a VNet with the workspace's managed network).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shared  # noqa: E402

ENDPOINT_NAME = "amldbg-score"  # unique in the Azure region: change it
DEPLOYMENT_NAME = "debug"
INSTANCE_TYPE = "Standard_DS3_v2"
# Reverse connect for a managed endpoint: the IP of a VS Code with a "listen" configuration.
VS_CODE_CLIENT_IP = None

#: What ``@amldbg.debug_init`` reads, in place of command-line flags.
DEBUG_VARIABLES = {
    "AMLDBG_REMOTE_DEBUG": "1",
    "AMLDBG_REMOTE_DEBUG_PORT": str(shared.DEBUG_PORT),
    "AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT": "30",
    "AMLDBG_REMOTE_DEBUG_LISTEN_HOST": "0.0.0.0",
}


def debug_variables(client_ip: str | None = VS_CODE_CLIENT_IP) -> dict[str, str]:
    """The deployment's ``AMLDBG_*`` variables, plus the server settings debugging needs."""
    variables = dict(DEBUG_VARIABLES)
    if client_ip:
        variables["AMLDBG_REMOTE_DEBUG_CLIENT_IP"] = client_ip
    # One worker: one debugger on 5678. gunicorn kills a worker silent for WORKER_TIMEOUT
    # seconds, including one paused at a breakpoint.
    variables["WORKER_COUNT"] = "1"
    variables["WORKER_TIMEOUT"] = "3600"
    return variables


def build(wheel: str | None = None, ssh_public_key: str | None = None) -> Any:
    """The online deployment (``ManagedOnlineDeployment``), built without a workspace.

    ``ssh_public_key`` is accepted for a uniform command line; deployments have no
    interactive services.
    """
    from azure.ai.ml.entities import (
        CodeConfiguration,
        ManagedOnlineDeployment,
        OnlineRequestSettings,
        ProbeSettings,
    )

    environment = shared.debug_environment(
        "score",
        extras=("debug",),
        pip=("azureml-inference-server-http", "inference-schema", "numpy"),
        image=shared.INFERENCE_IMAGE,
        # The local endpoint runs the server from this conda environment.
        prefix="/opt/miniconda/envs/inf-conda-env",
        wheel=wheel,
    )
    return ManagedOnlineDeployment(
        name=DEPLOYMENT_NAME,
        endpoint_name=ENDPOINT_NAME,
        code_configuration=CodeConfiguration(code=str(shared.SAMPLES), scoring_script="score.py"),
        environment=environment,
        environment_variables=debug_variables(),
        instance_type=INSTANCE_TYPE,
        instance_count=1,
        # A request may sit at a breakpoint: the longest timeout a managed endpoint allows.
        request_settings=OnlineRequestSettings(request_timeout_ms=180000),
        # init() may wait 30 s for a debugger before the server answers its probes.
        liveness_probe=ProbeSettings(initial_delay=60, period=10, failure_threshold=30),
        readiness_probe=ProbeSettings(initial_delay=60, period=10, failure_threshold=30),
    )


def submit(ml_client: Any, deployment: Any, local: bool = False) -> None:
    """Create the endpoint (when missing) and the deployment, then say how to attach."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    endpoint = ManagedOnlineEndpoint(name=ENDPOINT_NAME, auth_mode="key")
    ml_client.online_endpoints.begin_create_or_update(endpoint, local=local).result()
    ml_client.online_deployments.begin_create_or_update(deployment, local=local).result()
    if local:
        print(f"local deployment {ENDPOINT_NAME}.{DEPLOYMENT_NAME} is up; debugger port:")
        print(f"  docker port {ENDPOINT_NAME}.{DEPLOYMENT_NAME} {shared.DEBUG_PORT}")
    else:
        print(f"deployment {ENDPOINT_NAME}/{DEPLOYMENT_NAME} created; logs:")
        print(f"  az ml online-deployment get-logs -e {ENDPOINT_NAME} -n {DEPLOYMENT_NAME}")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--dump`` prints the YAML; ``--local`` deploys to Docker."""
    parser = shared.parser(__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true",
                        help="deploy to a local endpoint (Docker) where port 5678 is mapped")
    args = parser.parse_args(argv)

    def submit_here(ml_client: Any, deployment: Any) -> None:
        submit(ml_client, deployment, local=args.local)

    return shared.run(args, build, submit_here)


if __name__ == "__main__":
    sys.exit(main())
