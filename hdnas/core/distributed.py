"""Data parallelism under ``torchrun``: gloo on CPU, NCCL on GPU, same update as one process.

The bilevel search has two parameter groups stepped at different times, and its second-order step
differentiates through a virtual weight update; wrapping the supernet in ``DistributedDataParallel``
would all-reduce on every backward, including the ones the architect runs on perturbed weights. So
gradients are averaged explicitly, in flat buckets, exactly where a step needs them: each process
takes an equal shard of the global batch, and the mean of per-shard mean losses is the global mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from hdnas.core.errors import HdnasError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This process's slice of a global batch; the batch must split evenly."""
        if batch % self.world_size:
            raise ValueError(f"global batch {batch} does not split evenly over {self.world_size} processes")
        per = batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """Average tensors (typically gradients) in place across processes, one flat bucket per dtype."""
        if not self.enabled:
            return
        present = [t for t in tensors if t is not None]
        if not present:
            return
        flat = torch.cat([t.reshape(-1) for t in present])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for t in present:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def all_reduce_scalar(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without it is an error, not a crash."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HdnasError(f"device: '{name}' asked for but CUDA is not available")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment; start a process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)

