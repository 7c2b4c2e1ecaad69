"""Reading the Azure ML context: the job's identity, the process topology, this node's address.

This module is the only place in amldbg that reads the variables Azure ML and the
distributed launchers set, so that every feature (debug ports, log dimensions, which rank
sends metrics) agrees on who "this process" is. It imports nothing beyond the standard
library and :mod:`.settings` (where amldbg's own variables are declared), and reads
lazily: nothing here runs at ``import amldbg``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import sys
from typing import Mapping

from amldbg.core import settings

# Variables Azure ML sets in a job (SDK v1 run and SDK v2 command job alike).
RUN_ID = "AZUREML_RUN_ID"
RUN_TOKEN = "AZUREML_RUN_TOKEN"
EXPERIMENT_NAME = "AZUREML_ARM_PROJECT_NAME"
WORKSPACE_NAME = "AZUREML_ARM_WORKSPACE_NAME"
ROOT_RUN_ID = "AZUREML_ROOT_RUN_ID"
PARENT_RUN_ID = "AZUREML_PARENT_RUN_ID"
STEP_NAME = "AZUREML_STEP_NAME"
SERVICE_ENDPOINT = "AZUREML_SERVICE_ENDPOINT"

# Set by the user (or a test) to override the announced node address.
NODE_ADDRESS_OVERRIDE = settings.NODE_ADDRESS.env_var


def _first_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value is None or value.strip() == "":
            continue
        try:
            return int(value)
        except ValueError:
            continue
    return None


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where this process sits in a (possibly) distributed job.

    ``launcher`` names what numbered the process: ``"torchrun"``, ``"deepspeed"``,
    ``"accelerate"``, ``"lightning"``, ``"per-node"``, ``"mpi"``, ``"spawn"``,
    ``"azureml"``, ``"torch.distributed"`` (a process group and no launcher variables) or
    ``"single"`` when nothing did (see :func:`topology`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    launcher: str = "single"

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part in the job."""
        return self.world_size > 1


def debug_port(base: int, local_index: int) -> int:
    """The port a process debugs on: the base port plus its index on this node.

    Each process on a node needs a port of its own, so local process ``i`` uses ``base + i``
    (local rank for launchers, worker index for the inference server, process index for
    ParallelRunStep). ``0`` (any free port) stays ``0``.
    """
    return base + local_index if base else base


# Variables only some launchers set, which tell them apart (the rank variables are shared).
_DEEPSPEED_MARKERS = ("CROSS_RANK", "LOCAL_SIZE")  # deepspeed.launcher.launch
_ACCELERATE_MARKERS = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND")
_LIGHTNING_MODULES = ("lightning", "pytorch_lightning", "lightning_fabric")


def topology(env: Mapping[str, str] | None = None) -> Topology:
    """This process's rank and peers, as the launcher that started it numbers them.

    What each launcher sets, and which value wins (first match, top to bottom):

    1. ``RANK`` (or ``LOCAL_RANK`` alone), with ``LOCAL_RANK``, ``WORLD_SIZE``,
       ``LOCAL_WORLD_SIZE`` and the node index from ``GROUP_RANK``/``NODE_RANK``:

       * torchrun (and ``accelerate launch --multi_gpu``, which runs torchrun's code) sets
         ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
         ``ROLE_RANK``, ``TORCHELASTIC_RUN_ID``, ``MASTER_ADDR``/``PORT``; Azure ML's PyTorch
         distribution sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``.
       * DeepSpeed's ``deepspeed`` launcher sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
         ``LOCAL_SIZE`` (its local world size) and ``CROSS_RANK``/``CROSS_SIZE`` (node index
         and count), and passes ``--local_rank=N``: ``launcher`` is ``"deepspeed"``.
       * PyTorch Lightning's DDP launcher (``_SubprocessScriptLauncher``) re-runs the script
         for local ranks 1.. with ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE`` and
         ``MASTER_ADDR``/``PORT`` and *no* ``RANK``; the user's own process is local rank 0
         and gets the same variables set in-process when ``Trainer.fit`` starts (it has none
         before). Without ``RANK`` the global rank is ``node * LOCAL_WORLD_SIZE + local
         rank``, exact on one node; ``launcher`` is ``"lightning"`` when Lightning is
         imported, else ``"per-node"``.
       * ``accelerate launch`` sets ``ACCELERATE_*`` variables beside the launcher's own
         (torchrun's above, or MPI's below with ``--cpu --mpirun_hostfile``), and
         ``Accelerator()`` then sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` in-process from
         them: ``launcher`` is ``"accelerate"``.
    2. Open MPI (Azure ML's MPI jobs): ``OMPI_COMM_WORLD_RANK``, ``_LOCAL_RANK``, ``_SIZE``,
       ``_LOCAL_SIZE``. ``OMPI_COMM_WORLD_NODE_RANK`` is *not* a node index (it counts
       processes on the node across jobs), so the node is ``rank // local size``, which
       holds for mpirun's default by-slot placement.
    3. MPICH / Intel MPI (``mpiexec``, ``accelerate launch --cpu --mpirun_hostfile``):
       ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``.
    4. Azure ML's per-node index ``AZ_BATCHAI_TASK_INDEX`` (the worker index of an SDK v1
       ``PyTorchConfiguration`` job or a multi-node step) with ``AZUREML_NODE_COUNT`` as the
       world size: one process per node is assumed.

    For this process's own topology (``env`` omitted, or ``os.environ`` itself), two facts
    of the process come on top, and win over the variables:

    * ``torch.multiprocessing.spawn`` sets no variable: it calls ``fn(i, *args)`` in each
      child through its ``_wrap``, and the child's ``multiprocessing.current_process()``
      still holds that target and its arguments. When the target is torch's ``_wrap``,
      ``i`` is the local rank (and, before the process group exists, the rank; the world
      size is then only known to be at least ``i + 1``); ``launcher`` is ``"spawn"``.
      Variables inherited from the parent are kept only when their ``LOCAL_RANK`` is ``i``.
      (``current_process()._identity`` is not used: it counts every process the parent
      ever started, so an earlier ``Pool`` or a parallel start shifts it.)
    * Once ``torch.distributed`` is imported and its default process group exists, its
      ``get_rank()`` and ``get_world_size()`` are the rank and world size, whatever the
      variables said (a per-node launcher on several nodes, spawn, a script that passed
      ``rank=`` itself). torch is never imported here: only an already loaded
      ``torch.distributed`` is asked, and any failure leaves the answer above.

    A process with none of them is rank 0 of 1. A value that is not an integer is ignored.
    Cheap (a few dictionary look-ups), safe from any thread, and never raises.
    """
    own = env is None or env is os.environ
    env = os.environ if env is None else env
    found = _from_variables(env, own)
    if not own:
        return found
    index = _spawn_index()
    if index is not None:
        found = _spawned(found, index)
    return _from_process_group(found)


def _from_variables(env: Mapping[str, str], own: bool) -> Topology:
    if _first_int(env, "RANK", "LOCAL_RANK") is not None:
        return _torch_topology(env, own)
    if _first_int(env, "OMPI_COMM_WORLD_RANK") is not None:
        found = _mpi_topology(
            env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        )
    elif _first_int(env, "PMI_RANK") is not None:
        found = _mpi_topology(env, "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE", "MPI_LOCALNRANKS")
    else:
        node = _first_int(env, "AZ_BATCHAI_TASK_INDEX")
        if node is None:
            return Topology()
        nodes = _first_int(env, "AZUREML_NODE_COUNT") or 1
        return Topology(
            node_rank=node, rank=node, world_size=max(nodes, node + 1), launcher="azureml"
        )
    if any(name in env for name in _ACCELERATE_MARKERS):
        found = dataclasses.replace(found, launcher="accelerate")
    return found


def _torch_topology(env: Mapping[str, str], own: bool) -> Topology:
    deepspeed = all(name in env for name in _DEEPSPEED_MARKERS)
    local_rank = _first_int(env, "LOCAL_RANK")
    # DeepSpeed names the local world size and the node index its own way; the names are
    # generic enough that they are read only beside DeepSpeed's other variables.
    extra = ("LOCAL_SIZE", "CROSS_RANK") if deepspeed else ()
    local_world = _first_int(env, "LOCAL_WORLD_SIZE", *extra[:1])
    node = _first_int(env, "GROUP_RANK", "NODE_RANK", *extra[1:])
    rank = _first_int(env, "RANK")
    launcher = "torchrun"
    if rank is None:
        # Only a per-node launcher ran: derive the global rank where the layout is known.
        rank = (local_rank or 0) + (node or 0) * (local_world or 1)
        launcher = "per-node"
        if own and any(name in sys.modules for name in _LIGHTNING_MODULES):
            launcher = "lightning"
    if deepspeed:
        launcher = "deepspeed"
    elif any(name in env for name in _ACCELERATE_MARKERS):
        launcher = "accelerate"
    world = _first_int(env, "WORLD_SIZE") or max(rank + 1, local_world or 1)
    return Topology(
        rank=rank,
        local_rank=rank if local_rank is None else local_rank,
        world_size=world,
        local_world_size=local_world or 1,
        node_rank=node if node is not None else 0,
        launcher=launcher,
    )


def _spawn_index() -> int | None:
    """The ``i`` that ``torch.multiprocessing.spawn`` passes to ``fn`` in this child, else None."""
    wrap = getattr(sys.modules.get("torch.multiprocessing.spawn"), "_wrap", None)
    process_module = sys.modules.get("multiprocessing.process")
    if wrap is None or process_module is None:
        return None
    try:
        # The Process object's own fields: a property of a subclass would be script code.
        fields = vars(process_module.current_process())
        target, args = fields.get("_target"), fields.get("_args")
    except Exception:  # a damaged multiprocessing state: no spawn index
        return None
    # spawn calls _wrap(fn, i, args, error_file).
    if target is not wrap or type(args) is not tuple or len(args) < 2:
        return None
    index = args[1]
    return index if type(index) is int and index >= 0 else None


def _spawned(found: Topology, index: int) -> Topology:
    if found.launcher != "single" and found.local_rank == index:
        # Variables set for this child (by the script's fn, or consistent by construction).
        return dataclasses.replace(found, launcher="spawn")
    return Topology(
        rank=index, local_rank=index, world_size=index + 1, local_world_size=index + 1,
        node_rank=found.node_rank, launcher="spawn",
    )


def _from_process_group(found: Topology) -> Topology:
    """``found`` with the rank and world size of torch's default process group, if one exists."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return found
    try:
        is_available = getattr(dist, "is_available", None)
        is_initialized = getattr(dist, "is_initialized", None)
        if is_available is None or is_initialized is None or not is_available():
            return found
        if not is_initialized():
            return found
        rank, world = dist.get_rank(), dist.get_world_size()
    except Exception:  # torch half imported, or a group being torn down: keep the variables
        return found
    if type(rank) is not int or type(world) is not int or not 0 <= rank < world:
        return found
    if found.launcher == "single":
        # A group and no launcher: one node is the only layout that can be assumed.
        return Topology(
            rank=rank, local_rank=rank, world_size=world, local_world_size=world,
            launcher="torch.distributed",
        )
    return dataclasses.replace(
        found, rank=rank, world_size=world,
        local_world_size=max(found.local_world_size, found.local_rank + 1),
    )


def _mpi_topology(
    env: Mapping[str, str], rank_var: str, local_var: str, size_var: str, local_size_var: str
) -> Topology:
    rank = _first_int(env, rank_var) or 0
    local_rank = _first_int(env, local_var)
    local_world = _first_int(env, local_size_var) or 1
    return Topology(
        rank=rank,
        local_rank=rank if local_rank is None else local_rank,
        world_size=_first_int(env, size_var) or rank + 1,
        local_world_size=local_world,
        node_rank=rank // local_world if local_world > 0 else 0,
        launcher="mpi",
    )


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The Azure ML job this process belongs to, as far as the environment tells.

    Every field is ``None`` outside Azure ML. ``in_job`` is true only when the variables
    that azureml-core itself needs for an online run are present.
    """

    run_id: str | None = None
    experiment: str | None = None
    workspace: str | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    step_name: str | None = None
    in_job: bool = False


def run_context(env: Mapping[str, str] | None = None) -> RunContext:
    """Describe the Azure ML run from its environment variables, without importing azureml."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    return RunContext(
        run_id=get(RUN_ID),
        experiment=get(EXPERIMENT_NAME),
        workspace=get(WORKSPACE_NAME),
        parent_run_id=get(PARENT_RUN_ID),
        root_run_id=get(ROOT_RUN_ID),
        step_name=get(STEP_NAME),
        in_job=bool(get(RUN_ID) and get(RUN_TOKEN) and get(SERVICE_ENDPOINT)),
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _linux_default_route_interface() -> str | None:
    # /proc/net/route lists the IPv4 routes; the default route has destination 0.
    try:
        with open("/proc/net/route", encoding="ascii") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
                    return fields[0]
    except OSError:
        return None
    return None


def _interface_ipv4(interface: str) -> str | None:
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    siocgifaddr = 0x8915
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = struct.pack("256s", interface.encode("ascii")[:15])
        answer = fcntl.ioctl(sock.fileno(), siocgifaddr, packed)
        return socket.inet_ntoa(answer[20:24])
    except OSError:
        return None
    finally:
        sock.close()


def _hostname_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def node_address(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """This node's IPv4 address as a client on the compute's network would reach it.

    Returns ``(address, how)``, where ``how`` says which rule chose it:

    1. ``AMLDBG_NODE_ADDRESS`` when set (the user knows better);
    2. on Linux, the address of the interface that carries the default route
       (``/proc/net/route`` plus the ``SIOCGIFADDR`` ioctl: no packet is sent);
    3. the first non-loopback address the host name resolves to; ``/etc/hosts`` often maps
       it to 127.0.1.1, which is skipped;
    4. ``127.0.0.1`` as a last resort.
    """
    env = os.environ if env is None else env
    override = settings.env_value(settings.NODE_ADDRESS, env)
    if override:
        return override, NODE_ADDRESS_OVERRIDE
    if sys.platform.startswith("linux"):
        interface = _linux_default_route_interface()
        if interface:
            address = _interface_ipv4(interface)
            if address and not is_loopback(address):
                return address, f"default-route interface {interface}"
    for address in _hostname_addresses():
        if not is_loopback(address):
            return address, "host name"
    return "127.0.0.1", "loopback fallback"


def port_available(host: str, port: int) -> bool:
    """True when a TCP listener could bind ``host:port`` right now (checked by binding it).

    ``0.0.0.0`` and ``::`` check every interface. The answer can be stale a moment later;
    callers that then bind for real must still handle "address in use".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError:
        return False
    return True
