"""Group-relative advantages of GRPO / PODS (docs/method.md, "Advantages and loss").

Each prompt's rewards are centred on their group mean and scaled by a rule of the `SCALES`
registry:
    "group":  A = (r - mean_g) / (std_g + eps)      std_g: unbiased std of the group (GRPO, PODS)
    "batch":  A = (r - mean_g) / (std_B + eps)      std_B: unbiased std over the whole batch
    "none":   A = r - mean_g                         (Dr. GRPO: no std scaling)
In PODS the group is the m selected rollouts; with `pool` the mean and std come from all n
rollouts of the prompt instead (Config.adv_over = 'all'). The std of a single element is
defined as 0 (torch gives NaN), so a one-rollout group gets advantage 0; a group whose
statistics rows are all equal gets exact zeros.
"""

import math

import torch
from torch import Tensor

from podslib.registry import Registry

# name -> fn(centred [G, m], pool [G, n]) -> the std to divide by ([G, 1], a scalar, or None)
SCALES = Registry("scale_rewards")


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std over `dim` (all elements when None); 0 where only one element is reduced."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        shape = () if dim is None else x.sum(dim=dim, keepdim=True).shape
        return x.new_zeros(shape)
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


@SCALES.register("group")
def _group(pool: Tensor) -> Tensor:
    """[G, n] -> [G, 1] each group's own std."""
    return _std(pool, dim=1)


@SCALES.register("batch")
def _batch(pool: Tensor) -> Tensor:
    """[G, n] -> scalar std over the whole batch."""
    return _std(pool)


@SCALES.register("none")
def _none(pool: Tensor) -> None:
    """No scaling (Dr. GRPO)."""
    return


def _check(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [G, m] tensor; got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite; got NaN or inf")


def group_advantages(rewards: Tensor, scale: str = "group", eps: float = 1e-4,
                     pool: Tensor | None = None) -> Tensor:
    """Advantages of each rollout relative to its group.

    Args:
        rewards: [G, m] finite float rewards, one row per prompt.
        scale: a name in SCALES ("group", "batch", "none").
        eps: added to the std before dividing, >= 0.
        pool: [G, n] rewards whose mean and std are used (default: `rewards` itself).

    Returns:
        [G, m] advantages in rewards' dtype.
    """
    scale_fn = SCALES.get(scale)
    _check("rewards", rewards)
    pool = rewards if pool is None else pool
    _check("pool", pool)
    if pool.shape[0] != rewards.shape[0]:
        raise ValueError(f"pool must have one row per group ({rewards.shape[0]}); got "
                         f"{pool.shape[0]}")
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < math.inf):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    centred = rewards - pool.mean(dim=1, keepdim=True)
    equal = pool.amax(dim=1, keepdim=True) == pool.amin(dim=1, keepdim=True)
    centred = torch.where(equal, 0.0, centred)  # exact zeros, whatever the rounding of the mean
    std = scale_fn(pool)
    if std is None:
        return centred
    if eps == 0.0:
        std = torch.where(std > 0, std, 1.0)  # std 0 only where centred is all zeros
    return centred / (std + eps)
