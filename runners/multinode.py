"""One DeepSpeed launcher per node, the way clusters start multi-node jobs (no ssh, no hostfile).

Under ``srun`` (or by hand) every node runs ``bench run ... --launcher deepspeed`` itself; each
starts ``deepspeed.launcher.launch`` for its own ranks with the same world description, its node
rank and the master's address and port. Node 0 holds global rank 0: it creates, logs and closes the
MLflow run; the other nodes only run their ranks. Where the values come from, first found wins:

=============  ==========================  ==================================================
value          option (``--launch-opt``)   environment
=============  ==========================  ==================================================
node rank      ``node_rank``               ``SLURM_NODEID`` (when ``SLURM_NNODES`` > 1)
nodes          ``num_nodes``               ``SLURM_NNODES``
master         ``master_addr``             ``MASTER_ADDR``, else the first host of
                                           ``SLURM_JOB_NODELIST`` (``scontrol show hostnames``)
port           ``master_port``             ``MASTER_PORT``, else 29500 + ``SLURM_JOB_ID`` % 1000
=============  ==========================  ==================================================
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from registry import BenchError


@dataclass(frozen=True)
class NodePlan:
    """This node's place in a multi-node launch."""

    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int


def _first_slurm_host() -> str | None:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    hosts = done.stdout.split()
    return hosts[0] if done.returncode == 0 and hosts else None


def node_plan(options: Any, env: dict[str, str] | None = None) -> NodePlan | None:
    """The per-node plan of ``options`` (a `DeepSpeedOptions`), or None for a single-launcher run.

    A run is per-node when ``node_rank`` is given, or under SLURM with more than one node and no hostfile.
    """
    env = dict(os.environ) if env is None else env
    node_rank = getattr(options, "node_rank", None)
    slurm_nodes = int(env.get("SLURM_NNODES", "1") or 1)
    if node_rank is None and options.hostfile is None and slurm_nodes > 1 and "SLURM_NODEID" in env:
        node_rank = int(env["SLURM_NODEID"])
    if node_rank is None:
        return None
    num_nodes = options.num_nodes if options.num_nodes > 1 else slurm_nodes
    if num_nodes < 2:
        raise BenchError(f"node_rank {node_rank} needs num_nodes >= 2 (--launch-opt num_nodes=N)")
    if not 0 <= node_rank < num_nodes:
        raise BenchError(f"node_rank {node_rank} is outside 0..{num_nodes - 1}")
    if options.hostfile is not None:
        raise BenchError("node_rank (one launcher per node) and --hostfile (one launcher over ssh) exclude each other")
    master = getattr(options, "master_addr", None) or env.get("MASTER_ADDR") or _first_slurm_host()
    if not master:
        raise BenchError("multi-node launch without a master address: pass --launch-opt master_addr=HOST "
                         "(node 0's address) or run under SLURM")
    port = options.master_port or (int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None)
    if port is None and env.get("SLURM_JOB_ID", "").isdigit():
        port = 29500 + int(env["SLURM_JOB_ID"]) % 1000
    if port is None:
        raise BenchError("multi-node launch without a port: pass --launch-opt master_port=N (the same on every node)")
    return NodePlan(node_rank=node_rank, num_nodes=num_nodes, master_addr=master, master_port=port)


def per_node_command(plan: NodePlan, *, num_gpus: int, worker_args: list[str]) -> list[str]:
    """``deepspeed.launcher.launch`` for this node's ``num_gpus`` ranks (every node has the same count)."""
    world = {f"node{i}": list(range(num_gpus)) for i in range(plan.num_nodes)}
    world_info = base64.urlsafe_b64encode(json.dumps(world).encode()).decode()
    return [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
            f"--node_rank={plan.node_rank}", f"--master_addr={plan.master_addr}", f"--master_port={plan.master_port}",
            "--log_level", "warning", "--module", "runners.worker", *worker_args]
