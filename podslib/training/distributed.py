"""Data parallel over prompts with torch.distributed (launched by `torchrun` or `accelerate launch`).

Each rank generates and scores its own slice of the step's prompts; the small per-rollout
tensors (rewards, lengths) are all-gathered so that selection, advantages and the loss
normalisers are computed on the full batch, identically on every rank; each rank back-propagates
its share of the loss (normalised by the GLOBAL counts) and the gradients are all-reduced with
SUM, so every rank takes the same optimizer step as one process holding the whole batch.

Sharding (`Config.sharding`): 'none' keeps a full replica per rank and all-reduces the summed
gradients (`all_reduce_gradients`); 'fsdp' shards parameters, gradients and optimizer state over
the ranks with PyTorch FSDP2 (`fully_shard` on each decoder layer, then the root), whose
backward reduce-scatters gradients with SUM too (divide factor 1). Every forward and backward of
a sharded model all-gathers, so every rank must run the same number of them; sharded tensors are
gathered (`full_tensor`) for the rollout engine and checkpoints, and scattered back
(`shard_like`) on resume. FSDP2 runs on CPU with gloo and on CUDA with nccl.

Backends: gloo on CPU, nccl on CUDA. A single process (no WORLD_SIZE in the environment) needs
no process group: every helper is then the identity, and nothing is sharded.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

# Imported before `setup` creates the group: torch.distributed.fsdp binds the default group at
# import when one exists (a `process_group=dist.group.WORLD` default argument), which keeps it
# alive after destroy_process_group; its gloo threads then meet interpreter shutdown and can abort
# a finished rank (SIGABRT). transformers imports it, so it must come first.
import torch.distributed.fsdp
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor


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

    @classmethod
    def from_env(cls) -> DistInfo:
        """RANK, WORLD_SIZE and LOCAL_RANK as set by torchrun / accelerate launch (one process
        when absent)."""
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))


def setup(device: str) -> tuple[DistInfo, str]:
    """Join the process group when launched with several processes; returns (info, device) where
    a 'cuda' device becomes 'cuda:<local_rank>' (cuda:0 in one process: torch.cuda.set_device
    refuses a device without an index)."""
    info = DistInfo.from_env()
    if device == "cuda":
        device = f"cuda:{info.local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info, device


def teardown() -> None:
    """Leave the process group `setup` joined, if it joined one. A single process leaves
    alone any group a library made for itself (vLLM's engine does): its owner destroys it."""
    if DistInfo.from_env().enabled and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """End this rank's process: run the atexit handlers, flush stdout and stderr, then leave
    without interpreter finalization (`os._exit`).

    Once FSDP2 has run, DTensor's caches keep the default process group alive past
    `destroy_process_group`, and gloo threads still running at interpreter shutdown can abort a
    rank that has finished and written everything (SIGABRT, "terminate called without an active
    exception"), failing the launch. The launcher entry point (`podslib.training.trainer.main`) ends each
    rank of a multi-process run this way.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


# ----------------------------------------------------------------------------------------------
# sharding (FSDP2)
# ----------------------------------------------------------------------------------------------

def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (the classes in its `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"sharding 'fsdp' needs a transformers model whose _no_split_modules "
                         f"name its decoder layers; got {type(model).__name__} with {names or None}")
    return layers


def shard(model: nn.Module, device: str) -> None:
    """FSDP2 in place over all ranks: each decoder layer, then the root (embeddings, final
    norm, lm_head). Gradients are reduce-scattered with a plain SUM (no division by the world
    size): the loss is already normalised by the global batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def is_sharded(model: nn.Module) -> bool:
    """True when `model` went through `shard` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free the gathered weights a no-grad pass left behind (FSDP2 keeps the root's after a
    forward; a later forward with grad would reuse them and give the root parameters no
    gradient). Nothing to do for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_tensor(x: Tensor) -> Tensor:
    """The whole tensor behind a shard (collective: every rank must call it, in the same order);
    a plain tensor is returned detached."""
    return x.detach().full_tensor() if isinstance(x, DTensor) else x.detach()


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """`full` (the whole tensor, the same on every rank) cut like the sharded `like`; a plain
    `like` gets `full` itself, moved to its device."""
    full = full.detach().to(like.device)
    return distribute_tensor(full, like.device_mesh, like.placements) \
        if isinstance(like, DTensor) else full


def local_numel(tensors: Iterable[Tensor]) -> int:
    """Elements this rank holds of `tensors` (the local shard of a DTensor)."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def copy_trainable(src: nn.Module, dst: nn.Module) -> None:
    """Copy the trainable parameters of `src` (gathered when sharded: every rank takes part)
    into the same-named parameters of the unsharded `dst`."""
    targets = dict(dst.named_parameters())
    with torch.no_grad():
        for name, p in src.named_parameters():
            if p.requires_grad:
                targets[name].copy_(full_tensor(p))


# ----------------------------------------------------------------------------------------------
# the state of a possibly sharded policy (checkpoints hold whole tensors)
# ----------------------------------------------------------------------------------------------

def gathered_trainable(policy: nn.Module) -> dict[str, Tensor]:
    """The trainable weights {name: whole CPU tensor}, sharded or not (under fsdp every rank
    must call it), so a checkpoint loads with any sharding."""
    return {k: full_tensor(p).cpu() for k, p in policy.named_parameters() if p.requires_grad}


def gathered_optimizer(optimizer) -> dict:
    """optimizer.state_dict() with whole CPU tensors (collective under fsdp)."""
    optim = optimizer.state_dict()
    optim["state"] = {i: {k: full_tensor(v).cpu() if isinstance(v, Tensor) else v
                          for k, v in entry.items()} for i, entry in optim["state"].items()}
    return optim


def load_state(policy: nn.Module, optimizer, trainable: dict[str, Tensor],
               saved: dict | None) -> None:
    """Load what `gathered_trainable` / `gathered_optimizer` gave into a sharded or unsharded
    policy (and optimizer, when `saved` is given): every parameter-shaped optimizer state is
    cut like its parameter (state ids number the parameters in param_groups order)."""
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(shard_like(value, params[name]))
    if saved is None:
        return
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    saved["state"] = {i: {k: shard_like(v, ordered[i])
                          if isinstance(v, Tensor) and v.shape == ordered[i].shape else v
                          for k, v in entry.items()} for i, entry in saved["state"].items()}
    optimizer.load_state_dict(saved)


def numel_per_rank(policy: nn.Module, optimizer) -> dict[str, list[int]]:
    """Elements of the policy's parameters and of the optimizer state held by each rank (its
    shards under fsdp): the training memory per rank, rollout copy aside."""
    optim = [t for entry in optimizer.state.values() for t in entry.values()
             if isinstance(t, Tensor)]
    local = torch.tensor([[local_numel(policy.parameters()), local_numel(optim)]])
    per_rank = all_gather_rows(local)                                       # [world, 2]
    return {"param_numel_per_rank": per_rank[:, 0].tolist(),
            "optimizer_numel_per_rank": per_rank[:, 1].tolist()}
