"""VS Code launch.json entries for attaching to an amldbg debug endpoint.

The entries use the current schema of the Python Debugger extension (``"type": "debugpy"``
with a ``connect`` or ``listen`` object); older VS Code versions accept ``"type": "python"``
with the same fields. Nothing here touches the file system: ``amldbg launch-config --write``
merges these entries into a launch.json (:mod:`amldbg.launch_json`).
"""

from __future__ import annotations

import json
from typing import Any

#: Where Azure ML deployments put score.py and its folder inside the container.
DEPLOYMENT_REMOTE_ROOT = "/var/azureml-app"
DEFAULT_LOCAL_ROOT = "${workspaceFolder}"


def _path_mappings(local_root: str, remote_root: str) -> list[dict[str, str]]:
    return [{"localRoot": local_root, "remoteRoot": remote_root}]


def attach_config(
    host: str,
    port: int,
    *,
    remote_root: str,
    local_root: str = DEFAULT_LOCAL_ROOT,
    name: str | None = None,
    just_my_code: bool = True,
    redirect_output: bool = True,
) -> dict[str, Any]:
    """An entry that attaches VS Code to a script listening on ``host:port``.

    ``remote_root`` is the script's working directory on the compute, so that breakpoints
    set in ``local_root`` map onto the files the remote process runs.
    """
    return {
        "name": name or f"Azure ML: attach to {host}:{port}",
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": host, "port": int(port)},
        "pathMappings": _path_mappings(local_root, remote_root),
        "justMyCode": just_my_code,
        "redirectOutput": redirect_output,
    }


def listen_config(
    port: int,
    *,
    remote_root: str,
    host: str = "0.0.0.0",
    local_root: str = DEFAULT_LOCAL_ROOT,
    name: str | None = None,
    just_my_code: bool = True,
    redirect_output: bool = True,
) -> dict[str, Any]:
    """An entry in which VS Code listens on ``host:port`` for a script that connects out to it
    (reverse connect, ``--remote_debug_client_ip``)."""
    return {
        "name": name or f"Azure ML: listen for a script on port {port}",
        "type": "debugpy",
        "request": "attach",
        "listen": {"host": host, "port": int(port)},
        "pathMappings": _path_mappings(local_root, remote_root),
        "justMyCode": just_my_code,
        "redirectOutput": redirect_output,
    }


def deployment_config(
    port: int = 5678,
    *,
    host: str = "localhost",
    local_root: str = DEFAULT_LOCAL_ROOT,
    remote_root: str = DEPLOYMENT_REMOTE_ROOT,
    name: str = "Azure ML Deployment: attach",
    just_my_code: bool = True,
    redirect_output: bool = True,
) -> dict[str, Any]:
    """An entry that attaches to a score.py running in a deployment container whose debug
    port is mapped to ``host:port`` (the guides' "Docker Debug" entry, current schema)."""
    return attach_config(
        host,
        port,
        remote_root=remote_root,
        local_root=local_root,
        name=name,
        just_my_code=just_my_code,
        redirect_output=redirect_output,
    )


def compound_config(name: str, configuration_names: list[str]) -> dict[str, Any]:
    """A launch.json ``compounds`` entry that starts several attach entries at once."""
    return {"name": name, "configurations": list(configuration_names)}


def render(entry: dict[str, Any]) -> str:
    """The entry as indented JSON, ready to paste into launch.json's ``configurations``."""
    return json.dumps(entry, indent=4)
