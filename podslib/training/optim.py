"""Optimizers and learning-rate schedules, as registries of factories taking plain arguments
(so that `Config` can validate its `optimizer` and `lr_schedule` fields against them).

A schedule is a factor of the peak learning rate per optimizer step, after a linear warmup.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from podslib.registry import Registry

# name -> fn(params, lr, betas, weight_decay) -> torch.optim.Optimizer
OPTIMIZERS = Registry("optimizer")
# name -> fn(i, warmup, total) -> learning-rate factor after the warmup
SCHEDULES = Registry("lr_schedule")


@OPTIMIZERS.register("adamw")
def _adamw(params: list[Tensor], lr: float, betas: tuple[float, float],
           weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw_8bit")
def _adamw_8bit(params: list[Tensor], lr: float, betas: tuple[float, float],
                weight_decay: float) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)


@SCHEDULES.register("constant")
def _constant(i: int, warmup: int, total: int) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def _cosine(i: int, warmup: int, total: int) -> float:
    progress = min(1.0, (i - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(name: str, model: nn.Module, lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.Optimizer:
    """Optimizer `name` over the trainable parameters of `model`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(name)(params, lr, betas, weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float,
                   total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_ratio of `total` optimizer steps, then `schedule` (with
    total 0, no step limit, there is no warmup)."""
    warmup = math.ceil(warmup_ratio * total)
    after = SCHEDULES.get(schedule)

    def factor(i: int) -> float:
        return (i + 1) / (warmup + 1) if i < warmup else after(i, warmup, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
