"""Sharing kernel work between the processes of a ``torch.distributed`` group.

Both strategies deal work units to ranks by a key that depends only on where the unit's entries lie
in the kernel (`Ranks.mine`), fill their own entries, and sum the accumulators (`sum_over_ranks`), so
every entry is computed by exactly one rank, in the one-process order, and the result is the
one-process result bit for bit. All ranks must agree on one memory plan: `agreed_budget` takes the
smallest budget of the group. Without an initialised process group everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from benchmark.kernels.memory import default_budget


def dist_info() -> tuple[int, int]:
    """(rank, world size), (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the group's size, and which work units are this rank's."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> Ranks:
        """The ranks of the initialised process group (or one process)."""
        return Ranks(*dist_info())

    def mine(self, key: int) -> bool:
        """Whether work unit ``key`` belongs to this rank (keys depend on kernel positions only)."""
        return key % self.world == self.rank


def host_budget(device: torch.device) -> int:
    """The default memory budget of one process: processes on one host share its memory (each GPU has its own)."""
    budget = default_budget(device)
    _, world = dist_info()
    if device.type != "cuda" and world > 1:
        budget //= int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return budget


def agreed_budget(budget: int, device: torch.device) -> int:
    """The smallest ``budget`` over the group, so that every rank makes the same plan."""
    _, world = dist_info()
    if world <= 1:
        return budget
    agreed = torch.tensor([budget], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return int(agreed.item())


def sum_over_ranks(tensors: Iterable[torch.Tensor]) -> None:
    """Add every rank's ``tensors`` in place (each rank filled only its own entries, the rest zeros)."""
    if dist_info()[1] <= 1:
        return
    for tensor in tensors:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)


def gather_rows(
    rows: Sequence[torch.Tensor], sizes: Sequence[int], ranks: Ranks, shape_rest: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Row blocks dealt to ranks by index (block ``i`` on rank ``i % world``) into one summed float64 tensor.

    ``rows[i]`` is this rank's block ``i`` (``[sizes[i], *shape_rest]``) or a placeholder for another
    rank's; the result is ``[sum(sizes), *shape_rest]`` on every rank.
    """
    if ranks.world == 1:
        return torch.cat(list(rows), dim=0)
    full = torch.zeros(sum(sizes), *shape_rest, dtype=torch.float64, device=device)
    offset = 0
    for index, (row, size) in enumerate(zip(rows, sizes, strict=True)):
        if ranks.mine(index):
            full[offset : offset + size] = row.to(device)
        offset += size
    sum_over_ranks([full])
    return full
