"""Distributed meta-batches on torch.distributed (gloo on CPU, NCCL on GPU), launched with ``torchrun``.

On GPUs each rank computes on the GPU of its ``LOCAL_RANK`` (``run.device: auto`` or ``cuda``; train/device.py)
and the group uses NCCL; on CPUs (``run.device: cpu``, or no GPU) gloo. The backend follows ``run.device``,
not merely whether a GPU exists: ``run.device=cpu`` on a GPU machine all-reduces with gloo.

The tasks of a meta-batch are spread over ranks (task k runs on rank k mod world, or, where the task family
measures its tasks' speeds, by :func:`longest_first` over them); every rank holds the same initialisation and
meta-optimiser state; before each meta-step the per-rank meta-gradient sums and task counts are all-reduced,
so every rank takes the same step. Rank 0 logs and checkpoints; it evaluates alone, except where the task
family spreads its held-out runs over the ranks (Atari: :meth:`World.block`, parts gathered on rank 0).
Without torchrun (no WORLD_SIZE in the environment) everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_size: int = 1
    device: torch.device = torch.device("cpu")     # where collectives run: this rank's GPU under NCCL

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def one_node(self) -> bool:
        """Every rank on one machine (torchrun's local world is the whole world): they share its disk."""
        return self.local_size == self.size

    def mine(self, items: list, costs: Sequence[float] | None = None) -> list:
        """This rank's share of a meta-batch: items k with k mod size == rank, or with ``costs`` (the same on
        every rank) the items :func:`longest_first` gives this rank."""
        if costs is None or self.size == 1:
            return items[self.rank::self.size]
        return [item for item, rank in zip(items, longest_first(costs, self.size)) if rank == self.rank]

    def block(self, items: list) -> list:
        """This rank's contiguous share of ``items``: as equal in count as can be, rank 0 first (neighbours —
        the held-out runs of one game — stay together, so a rank can batch them)."""
        n = len(items)
        return items[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the others."""
        if self.size == 1:
            return [value]
        out = [None] * self.size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` in place over ranks (one flat buffer: one collective per meta-step)."""
        if self.size == 1 or not tensors:
            return
        # Tensors may sit on the CPU (counters) and on the device (accumulators): one buffer on the
        # collective's device (NCCL reduces CUDA tensors only), copied back to each tensor's own device.
        flat = torch.cat([t.reshape(-1).to(self.device, torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
            offset += n

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value (a string, or any picklable object), on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def longest_first(costs: Sequence[float], ranks: int) -> list[int]:
    """Longest processing time first (Graham 1969): the rank of each task, taking tasks in decreasing cost
    (ties in their order) and giving each to the rank with the least cost so far (ties: the lowest rank). Its
    makespan is at most 4/3 of the best assignment's; with equal costs it is round robin (task k on rank
    k mod ranks)."""
    loads = [0.0] * ranks
    out = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda k: -costs[k]):
        rank = min(range(ranks), key=lambda r: loads[r])
        out[k] = rank
        loads[rank] += costs[k]
    return out


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun set up, or run alone. ``device`` is ``run.device``: on CUDA this
    rank takes the GPU of its LOCAL_RANK and the group NCCL; on the CPU gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    from .device import configure, resolve_device
    where = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if where.type == "cuda":
        configure(where)                  # the current device, before NCCL creates its communicators
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    # Share the cores between the ranks of this node instead of oversubscribing them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_size=local, device=where)


def shutdown(world: World) -> None:
    """Leave the group together: rank 0 may still be evaluating, and a peer that disconnects while
    another still holds the group can abort it."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
