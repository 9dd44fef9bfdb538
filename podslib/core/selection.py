"""Down-sampling rules of PODS: choose m of the n rollouts of each prompt (docs/method.md, "Down-sampling").

`select(rewards, m, rule)` works on one group `[n]` or a batch of groups `[G, n]` with no Python
loop over groups; rules live in the `RULES` registry (one function plus one decorator line).

max_variance is the paper's rule. The size-m subset with the largest variance is always the k
highest plus the (m - k) lowest rewards for some k in 0..m, so after one stable descending sort
all m + 1 candidates are scored at once from prefix sums of r and r^2: O(n log n) per group.
Each row is first scaled by a power of two (exact, argmax unchanged), so that r^2 neither
overflows nor underflows for any finite float64 rewards.

Conventions (shared by `subset_variance`):
- variance is the unbiased (ddof = 1) sample variance; a one-element subset has variance 0;
- ties: among candidates whose variance is within a relative 1e-9 of the maximum (float64
  rounding), the largest k wins. This is the official code's order: it starts from the top-m set
  (k = m) and only moves on a strictly larger variance. "Lowest" means the last (m - k) positions
  of the stable descending order, so with equal rewards earlier indices count as higher.

filter_groups is the DAPO zero-variance filter (and the OpenRLHF mean-reward range filter); it is
not PODS, and runs before selection.
"""

from numbers import Integral

import torch
from torch import Generator, Tensor

from podslib.registry import Registry

# name -> fn(rewards [G, n], m, generator) -> indices [G, m]
RULES = Registry("rule")
rule = RULES.register
# name -> fn(rewards [G, n]) -> keep [G] bool: which groups go on to selection (Config.group_filter)
FILTERS = Registry("group_filter")

TIE_RTOL = 1e-9  # candidates within this relative distance of the best variance count as ties


def _check_rewards(rewards: Tensor, ranks: tuple[int, ...] = (1, 2)) -> None:
    """ValueError unless `rewards` is a finite floating tensor of one of the given ranks."""
    if not isinstance(rewards, Tensor) or rewards.dim() not in ranks:
        shapes = " or ".join({1: "[n]", 2: "[G, n]"}[r] for r in ranks)
        got = list(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a tensor of shape {shapes}; got {got}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor; got dtype {rewards.dtype}")
    if rewards.numel() and not torch.isfinite(torch.stack(torch.aminmax(rewards))).all():
        raise ValueError("rewards must be finite; got NaN or inf")  # NaN propagates to min/max


def _check_m(m: int, n: int) -> None:
    """ValueError unless m is an integer with 1 <= m <= n."""
    if not (isinstance(m, Integral) and not isinstance(m, bool) and 1 <= m <= n):
        raise ValueError(f"m must be an integer with 1 <= m <= n = {n}; got {m!r}")


def _pow2(exponent: Tensor) -> Tensor:
    """2.0**exponent as float64, built from its bits (exact), for integers in [-1022, 1023]."""
    return ((exponent + 1023) << 52).view(torch.float64)


def _unit_scale(ranked: Tensor) -> Tensor:
    """[G, n] float64 sorted rows, each multiplied in place by the power of two that brings its largest
    |r| into [0.5, 1).

    The argmax of the variance is invariant to scaling a row by a positive constant, and a power
    of two scales exactly, so every finite input (1e300 or 1e-300 alike) selects what it would
    in exact arithmetic, with no overflow or underflow in the squares. The factor is applied in
    two halves because 2**1073 (for a subnormal peak) is itself not a float64.
    """
    peak = torch.maximum(ranked[:, :1].abs(), ranked[:, -1:].abs())  # [G, 1], rows are sorted
    exponent = torch.frexp(peak).exponent.long()  # peak = mantissa * 2**exponent; 0 for 0
    half = exponent.div(2, rounding_mode="floor")  # both halves lie in [-537, 537]
    return ranked.mul_(_pow2(-half)).mul_(_pow2(half - exponent))


def candidate_variances(rewards: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Variances of the m + 1 candidates "k highest + (m - k) lowest", k = 0..m, each row
    scaled by a power of two (`_unit_scale`: the same argmax, no overflow).

    Only the m highest and m lowest of the sorted rewards enter a candidate, so the prefix sums
    run over those 2m values (in float64, centred on the row mean to avoid cancellation).

    Args:
        rewards: [G, n] float rewards.
        m: subset size.

    Returns:
        (var [G, m + 1] float64 indexed by k, order [G, n] the stable descending sort indices).
    """
    ranked, order = rewards.double().sort(dim=-1, descending=True, stable=True)  # [G, n]
    if m == 1:
        return ranked.new_zeros(ranked.shape[0], 2), order
    ranked = _unit_scale(ranked)
    ranked = ranked - ranked.mean(dim=-1, keepdim=True)  # variance is shift-invariant
    zero = ranked.new_zeros(ranked.shape[0], 1)
    top = ranked[:, :m]  # [G, m] highest first
    low = ranked[:, -m:].flip(-1)  # [G, m] lowest first
    top1 = torch.cat([zero, top.cumsum(-1)], dim=-1)  # [G, m + 1], sum of the k highest
    top2 = torch.cat([zero, (top * top).cumsum(-1)], dim=-1)
    low1 = torch.cat([zero, low.cumsum(-1)], dim=-1).flip(-1)  # [G, m + 1], sum of m - k lowest
    low2 = torch.cat([zero, (low * low).cumsum(-1)], dim=-1).flip(-1)
    total1, total2 = top1 + low1, top2 + low2  # [G, m + 1] indexed by k
    var = ((total2 - total1 * total1 / m) / (m - 1)).clamp_min(0.0)
    return var, order


@rule("max_variance")
def _max_variance(rewards: Tensor, m: int, generator: Generator | None = None) -> Tensor:
    """[G, n] -> [G, m]: the max-variance subset (largest k on ties, see module docstring)."""
    n = rewards.shape[-1]
    var, order = candidate_variances(rewards, m)  # [G, m + 1]
    best = var.max(dim=-1, keepdim=True).values
    ties = var >= best - TIE_RTOL * best
    k = torch.arange(m + 1, device=var.device)
    k_star = torch.where(ties, k, -1).max(dim=-1, keepdim=True).values  # [G, 1]
    j = torch.arange(m, device=var.device)  # slot j takes sorted position j or a low position
    pos = torch.where(j < k_star, j, n - m + j)  # [G, m]
    return order.gather(-1, pos)


@rule("max_reward")
def _max_reward(rewards: Tensor, m: int, generator: Generator | None = None) -> Tensor:
    """[G, n] -> [G, m] indices of the m largest rewards (stable on ties)."""
    return rewards.argsort(dim=-1, descending=True, stable=True)[..., :m]


@rule("random")
def _random(rewards: Tensor, m: int, generator: Generator | None = None) -> Tensor:
    """[G, n] -> [G, m] a uniform random m-subset per group, reproducible from `generator`."""
    device = generator.device if generator is not None else rewards.device
    noise = torch.rand(rewards.shape, generator=generator, device=device)
    return noise.argsort(dim=-1)[..., :m].to(rewards.device)


def select(
    rewards: Tensor, m: int, rule: str = "max_variance", generator: Generator | None = None
) -> Tensor:
    """Indices of the m rollouts to keep per prompt.

    Args:
        rewards: [n] or [G, n] finite float rewards (binary or continuous, any magnitude).
        m: number to keep, 1 <= m <= n.
        rule: a name registered in RULES: "max_variance" (PODS), "max_reward", "random", ...
        generator: torch.Generator for "random" (same seed, same subsets).

    Returns:
        LongTensor [m] or [G, m] of indices into the n rollouts, on rewards' device.
    """
    fn = RULES.get(rule)
    _check_rewards(rewards)
    _check_m(m, rewards.shape[-1])
    if generator is not None and not isinstance(generator, Generator):
        raise ValueError(f"generator must be a torch.Generator or None; got {type(generator)}")
    batch = rewards.reshape(-1, rewards.shape[-1])  # [G, n]
    idx = fn(batch, m, generator)
    return idx.reshape(*rewards.shape[:-1], m)


def subset_variance(rewards: Tensor, idx: Tensor) -> Tensor:
    """Unbiased variance of the selected rewards (0 for one-element subsets).

    Args:
        rewards: [G, n] (or [n]) float rewards.
        idx: [G, m] (or [m]) indices into n, as returned by `select`.

    Returns:
        [G] (or 0-d) variances in rewards' dtype.
    """
    _check_rewards(rewards)
    if idx.dim() != rewards.dim() or idx.shape[:-1] != rewards.shape[:-1]:
        raise ValueError(
            f"idx must have shape [G, m] matching rewards {list(rewards.shape)}; "
            f"got {list(idx.shape)}"
        )
    chosen = rewards.gather(-1, idx)
    if chosen.shape[-1] == 1:
        return torch.zeros(chosen.shape[:-1], dtype=rewards.dtype, device=rewards.device)
    return chosen.var(dim=-1)


def filter_groups(
    rewards: Tensor,
    min_std: float = 0.0,
    min_mean: float | None = None,
    max_mean: float | None = None,
) -> Tensor:
    """Groups worth training on: True = keep.

    DAPO dynamic sampling drops groups whose rewards are all equal (no learning signal); with
    min_std > 0 groups with unbiased std <= min_std are dropped too. OpenRLHF's filter keeps
    groups whose mean reward lies strictly inside (min_mean, max_mean), when given.

    Args:
        rewards: [G, n] finite float rewards.
        min_std: keep only groups whose rewards are not all equal and whose std > min_std.
        min_mean, max_mean: optional exclusive bounds on the group mean reward.

    Returns:
        BoolTensor [G].
    """
    _check_rewards(rewards, ranks=(2,))
    if not min_std >= 0.0 or min_std == float("inf"):
        raise ValueError(f"min_std must be a finite number >= 0; got {min_std}")
    for name, bound in (("min_mean", min_mean), ("max_mean", max_mean)):
        if bound is not None and not abs(bound) < float("inf"):
            raise ValueError(f"{name} must be a finite number or None; got {bound}")
    keep = rewards.amax(dim=-1) > rewards.amin(dim=-1)  # exact test: no rounding of std
    if min_std > 0.0:
        keep &= rewards.std(dim=-1) > min_std
    mean = rewards.mean(dim=-1)
    if min_mean is not None:
        keep &= mean > min_mean
    if max_mean is not None:
        keep &= mean < max_mean
    return keep


@FILTERS.register("none")
def _keep_all(rewards: Tensor) -> Tensor:
    """[G, n] -> [G] all True."""
    return torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)


@FILTERS.register("zero_variance")
def _drop_zero_variance(rewards: Tensor) -> Tensor:
    """[G, n] -> [G] False where the n rewards are all equal (DAPO)."""
    return filter_groups(rewards)
