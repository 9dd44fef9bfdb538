"""The GRPO surrogate loss on per-token log-probs (docs/method.md, "Advantages and loss").

Per completion token t of sequence b, with A_b the sequence's advantage:
    ratio = exp(logp - old_logp)
    surr  = -min(ratio * A_b, clip(ratio, 1 - eps_low, 1 + eps_high) * A_b)
    kl    = exp(ref - logp) - (ref - logp) - 1              (k3 estimator, when ref is given)
    loss_t = w_t * (surr + beta * kl) - entropy_coef * H_t   (w_t: importance weights, below)
Aggregations over the completion mask (1 = completion token, 0 = prompt or padding), a registry:
    "grpo":          mean over sequences of the per-sequence token mean
    "bnpo", "dapo":  token mean over the whole batch (both names accepted: TRL's "dapo"; TRL's
                     "bnpo" is a token mean per micro-batch, the same with one micro-batch)
    "dr_grpo":       sum over tokens / (B * max_len)
For gradient accumulation and data parallel, `total_sequences` / `total_tokens` replace the local
normalisers so that the sum of the micro-batch losses is the full-batch loss.
The log-probs (policy, old policy, reference) and the entropy are all those of one distribution,
softmax(logits / T) with one T (Config.logprob_temperature: 1 as the paper's code, or the
sampling temperature as TRL and verl).

Importance-sampling correction (`IS_CORRECTIONS`): the engine samples with its own kernels, so
its token probabilities differ slightly from the trainer's; with r_t = pi_old(t) / pi_sampler(t),
both under the sampling distribution (temperature and top-p applied),
    "tis":  w_t = min(r_t, cap)                                   (truncated, per token)
    "mis":  w_t = 1 if the sequence's geometric-mean ratio lies in [1 / cap, cap], else 0
    "none": w_t = 1.
"""

import math
from numbers import Integral

import torch
from torch import Tensor

from podslib.registry import Registry

# name -> fn(per_token [B, T], mask [B, T], sequences, tokens, max_len) -> scalar loss
AGGREGATIONS = Registry("aggregation")


def _check_inputs(logprobs, old_logprobs, advantages, mask, ref_logprobs) -> None:
    """ValueError unless every tensor has the shape the loss expects."""
    if not isinstance(logprobs, Tensor) or logprobs.dim() != 2:
        shape = list(logprobs.shape) if isinstance(logprobs, Tensor) else type(logprobs).__name__
        raise ValueError(f"logprobs must be a [B, T] tensor; got {shape}")
    if not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating-point tensor; got dtype {logprobs.dtype}")
    shape = list(logprobs.shape)
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if x is not None and (not isinstance(x, Tensor) or list(x.shape) != shape):
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must have the shape of logprobs {shape}; got {got}")
    if not isinstance(advantages, Tensor) or list(advantages.shape) != shape[:1]:
        got = (
            list(advantages.shape) if isinstance(advantages, Tensor) else type(advantages).__name__
        )
        raise ValueError(f"advantages must have shape [B] = {shape[:1]}; got {got}")


def _check_positive_int(name: str, value: int | None) -> None:
    """ValueError unless value is None or an integer >= 1."""
    if value is not None and (
        not isinstance(value, Integral) or isinstance(value, bool) or value < 1
    ):
        raise ValueError(f"{name} must be an integer >= 1 or None; got {value!r}")


def _check_settings(beta, eps_low, eps_high, aggregation, ref_logprobs, counts) -> None:
    """ValueError for an unknown aggregation or an out-of-range coefficient."""
    AGGREGATIONS.check(aggregation)
    if not 0.0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0; got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs must be given when beta > 0; got None")
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1); got {eps_low}")
    if not 0.0 <= eps_high < float("inf"):
        raise ValueError(f"eps_high must be a finite number >= 0; got {eps_high}")
    for name, value in counts.items():
        _check_positive_int(name, value)


@AGGREGATIONS.register("grpo")
def _grpo(per_token: Tensor, mask: Tensor, sequences: int, tokens: Tensor | int,
          max_len: int) -> Tensor:
    """Mean over sequences of each sequence's token mean."""
    per_seq_mean = per_token.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # [B]
    return per_seq_mean.sum() / sequences


@AGGREGATIONS.register("bnpo", "dapo")
def _token_mean(per_token: Tensor, mask: Tensor, sequences: int, tokens: Tensor | int,
                max_len: int) -> Tensor:
    """Token mean over the whole batch."""
    return per_token.sum() / tokens


@AGGREGATIONS.register("dr_grpo")
def _dr_grpo(per_token: Tensor, mask: Tensor, sequences: int, tokens: Tensor | int,
             max_len: int) -> Tensor:
    """Sum over tokens / (sequences * max_len): no length bias."""
    return per_token.sum() / (sequences * max_len)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    aggregation: str,
    max_len: int | None = None,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
) -> Tensor:
    """Reduce per-token losses [B, T] (zero where mask is 0) to this batch's share of the loss;
    the global counts replace the local ones when given (micro-batches, ranks)."""
    B, T = per_token.shape
    sequences = total_sequences if total_sequences is not None else B
    tokens = total_tokens if total_tokens is not None else mask.sum().clamp_min(1.0)
    return AGGREGATIONS.get(aggregation)(per_token, mask, sequences, tokens,
                                         max_len if max_len is not None else T)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "grpo",
    max_len: int | None = None,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
    token_weights: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate with optional k3 KL penalty, importance weights and entropy bonus.

    Args:
        logprobs: [B, T] log-probs of the completion tokens under the policy (with grad).
        old_logprobs: [B, T] log-probs under the policy that generated them.
        advantages: [B] one advantage per sequence.
        mask: [B, T] 1 for completion tokens, 0 for padding (bool, int or float).
        ref_logprobs: [B, T] reference-model log-probs; required when beta > 0.
        beta: KL coefficient.
        eps_low, eps_high: clip band [1 - eps_low, 1 + eps_high] for the ratio.
        aggregation: "grpo", "bnpo", "dapo" or "dr_grpo".
        max_len: dr_grpo's length normaliser (global max completion length); defaults to T.
        total_sequences: global number of sequences (grpo, dr_grpo) over micro-batches and ranks.
        total_tokens: global number of completion tokens (bnpo, dapo).
        token_weights: [B, T] importance weights (no grad) multiplying each token's loss.
        entropy: [B, T] token entropies of the policy (with grad when entropy_coef > 0).
        entropy_coef: weight of the entropy bonus (subtracted from each token's loss).

    Returns:
        (loss scalar, stats) with stats over this batch's completion tokens: clip_frac,
        clip_frac_low, clip_frac_high, kl_mean (0 without ref_logprobs), ratio_mean.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, ref_logprobs)
    for name, x in (("token_weights", token_weights), ("entropy", entropy)):
        if x is not None and (not isinstance(x, Tensor) or x.shape != logprobs.shape):
            raise ValueError(f"{name} must have the shape of logprobs {list(logprobs.shape)}")
    if entropy_coef and entropy is None:
        raise ValueError("entropy must be given when entropy_coef != 0; got None")
    counts = {"max_len": max_len, "total_sequences": total_sequences, "total_tokens": total_tokens}
    _check_settings(beta, eps_low, eps_high, aggregation, ref_logprobs, counts)
    on = mask.bool()
    weight = on.to(logprobs.dtype)
    # zero the masked positions before exp so padding can never produce inf or NaN (or grads)
    log_ratio = torch.where(on, logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # [B, 1]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        ref_gap = torch.where(on, ref_logprobs - logprobs, 0.0)
        kl = torch.exp(ref_gap) - ref_gap - 1.0
        if beta > 0:
            per_token = per_token + beta * kl
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    if entropy_coef:
        per_token = per_token - entropy_coef * torch.where(on, entropy, 0.0)
    per_token = per_token * weight
    loss = aggregate(per_token, weight, aggregation, max_len, total_sequences, total_tokens)
    return loss, _stats(ratio.detach(), adv, kl.detach(), on, eps_low, eps_high)


def _stats(ratio, adv, kl, on, eps_low, eps_high) -> dict[str, float]:
    """Clip fractions (tokens whose gradient the clip removed), KL and ratio means over mask."""
    tokens = max(int(on.sum()), 1)
    low = (ratio < 1.0 - eps_low) & (adv < 0) & on
    high = (ratio > 1.0 + eps_high) & (adv > 0) & on
    return {
        "clip_frac": float((low | high).sum()) / tokens,
        "clip_frac_low": float(low.sum()) / tokens,
        "clip_frac_high": float(high.sum()) / tokens,
        "kl_mean": float(kl[on].sum()) / tokens,
        "ratio_mean": float(ratio[on].sum()) / tokens,
    }


# ----------------------------------------------------------------------------------------------
# importance-sampling correction for the sampler / trainer mismatch
# ----------------------------------------------------------------------------------------------

# name -> fn(log_ratio [B, T], mask [B, T] bool, cap) -> (weights [B, T], rejected [B, T] bool)
IS_CORRECTIONS = Registry("is_correction")


@IS_CORRECTIONS.register("none")
def _no_correction(log_ratio: Tensor, on: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    return torch.ones_like(log_ratio), torch.zeros_like(on)


@IS_CORRECTIONS.register("tis")
def _truncated(log_ratio: Tensor, on: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Token-level truncated importance sampling: min(r, cap)."""
    ratio = torch.exp(log_ratio)
    return ratio.clamp(max=cap), (ratio > cap) & on


@IS_CORRECTIONS.register("mis")
def _masked(log_ratio: Tensor, on: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Sequence-level masking: drop sequences whose geometric-mean ratio leaves [1/cap, cap]."""
    mean = (log_ratio * on).sum(1) / on.sum(1).clamp_min(1)                # [B]
    keep = mean.abs() <= math.log(cap)
    weights = keep.to(log_ratio.dtype).unsqueeze(1).expand_as(log_ratio)
    return weights, (~keep).unsqueeze(1) & on


def importance_weights(kind: str, old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                       cap: float) -> tuple[Tensor, dict[str, float]]:
    """[B, T] weights of correction `kind` (see module docstring) from the trainer's and the
    sampler's log-probs of the sampled tokens, and sums for the step's statistics over the
    tokens of `mask`: ratio_sum, ratio_max, rejected (tokens truncated or masked), tokens."""
    fn = IS_CORRECTIONS.get(kind)
    on = mask.bool()
    log_ratio = torch.where(on, old_logprobs - sampler_logprobs, 0.0)
    weights, rejected = fn(log_ratio, on, cap)
    ratio = torch.exp(log_ratio)[on]
    return weights, {"ratio_sum": float(ratio.sum()),
                     "ratio_max": float(ratio.max()) if ratio.numel() else 0.0,
                     "rejected": float(rejected.sum()), "tokens": float(on.sum())}
