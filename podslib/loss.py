"""The GRPO surrogate loss on per-token log-probs (docs/method.md, "Advantages and loss").

Per completion token t of sequence b, with A_b the sequence's advantage:
    ratio = exp(logp - old_logp)
    surr  = -min(ratio * A_b, clip(ratio, 1 - eps_low, 1 + eps_high) * A_b)
    kl    = exp(ref - logp) - (ref - logp) - 1              (k3 estimator, when ref is given)
    loss_t = surr + beta * kl
Aggregations over the completion mask (1 = completion token, 0 = prompt or padding), a registry:
    "grpo":          mean over sequences of the per-sequence token mean
    "bnpo", "dapo":  token mean over the whole batch (same formula, both names accepted)
    "dr_grpo":       sum over tokens / (B * max_len)
For gradient accumulation and data parallel, `total_sequences` / `total_tokens` replace the local
normalisers so that the sum of the micro-batch losses is the full-batch loss.
"""

from numbers import Integral

import torch
from torch import Tensor

from .registry import Registry

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
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate with optional k3 KL penalty.

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

    Returns:
        (loss scalar, stats) with stats over this batch's completion tokens: clip_frac,
        clip_frac_low, clip_frac_high, kl_mean (0 without ref_logprobs), ratio_mean.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, ref_logprobs)
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
