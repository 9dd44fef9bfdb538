"""Group-relative advantages of GRPO / PODS (PAPER.md, "Advantages and loss").

Each prompt's rewards are centred on their own group mean and optionally scaled:
    "group":  A = (r - mean_g) / (std_g + eps)      std_g: unbiased std of the group (GRPO, PODS)
    "batch":  A = (r - mean_g) / (std_B + eps)      std_B: unbiased std over the whole batch
    "none":   A = r - mean_g                         (Dr. GRPO: no std scaling)
In PODS the groups are the m selected rollouts. The std of a single element is defined as 0
(torch gives NaN), so a one-rollout group gets advantage 0; a group of equal rewards gets
exact zeros.
"""

import math

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std over `dim` (all elements when None); 0 where only one element is reduced."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        shape = () if dim is None else x.sum(dim=dim, keepdim=True).shape
        return x.new_zeros(shape)
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


def group_advantages(rewards: Tensor, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Advantages of each rollout relative to its group.

    Args:
        rewards: [G, m] finite float rewards, one row per prompt.
        scale: "group" (per-row std), "batch" (std of all G * m rewards) or "none".
        eps: added to the std before dividing, >= 0.

    Returns:
        [G, m] advantages in rewards' dtype.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of 'group', 'batch', 'none'; got {scale!r}")
    if not isinstance(rewards, Tensor) or rewards.dim() != 2:
        shape = list(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [G, m] tensor; got {shape}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor; got dtype {rewards.dtype}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards must be finite; got NaN or inf")
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < math.inf):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    equal = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    centred = torch.where(equal, 0.0, centred)  # exact zeros, whatever the rounding of the mean
    if scale == "none":
        return centred
    std = _std(rewards, dim=1) if scale == "group" else _std(rewards)
    if eps == 0.0:
        std = torch.where(std > 0, std, 1.0)  # std 0 only when centred is all zeros
    return centred / (std + eps)
