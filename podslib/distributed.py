"""Data parallel over prompts with torch.distributed (launched by `torchrun` or `accelerate launch`).

Each rank generates and scores its own slice of the step's prompts; the small per-rollout
tensors (rewards, lengths) are all-gathered so that selection, advantages and the loss
normalisers are computed on the full batch, identically on every rank; each rank back-propagates
its share of the loss (normalised by the GLOBAL counts) and the gradients are all-reduced with
SUM, so every rank takes the same optimizer step as one process holding the whole batch.

Backends: gloo on CPU, nccl on CUDA. A single process (no WORLD_SIZE in the environment) needs
no process group: every helper is then the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank in [0, world_size), local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    """WORLD_SIZE as set by torchrun / accelerate launch (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched with several processes; returns (info, device) where
    a 'cuda' device becomes 'cuda:<local_rank>'."""
    info = DistInfo(int(os.environ.get("RANK", "0")), world_size_from_env(),
                    int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda" and info.enabled:
        device = f"cuda:{info.local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info, device


def teardown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(x: Tensor) -> Tensor:
    """[g, ...] on each rank -> [world * g, ...] ordered by rank (the same on every rank)."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of `x` over ranks (returned; `x` itself is reduced in place when distributed)."""
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_gradients(model: nn.Module, bucket_numel: int = 1 << 24) -> None:
    """Sum every trainable parameter's gradient over ranks, in flat buckets of about
    `bucket_numel` elements (a parameter without a gradient counts as zeros)."""
    if not dist.is_initialized():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[nn.Parameter] = []
    for i, p in enumerate(params):
        bucket.append(p)
        if sum(q.numel() for q in bucket) >= bucket_numel or i == len(params) - 1:
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for q, g in zip(bucket, flat.split([q.numel() for q in bucket])):
                q.grad.copy_(g.view_as(q.grad))
            bucket = []


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: float) -> float:
    """The largest `value` over ranks (so that time-based decisions agree on every rank)."""
    if not dist.is_initialized():
        return value
    x = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return float(x)
