"""The policy update of one step: mu optimizer steps on the selected rollouts.

Each optimizer step accumulates the gradient of the GRPO loss over this rank's micro-batches
(`accumulate`), then sums it over ranks and steps the optimizer (`optimizer_step`). The loss of
each micro-batch is normalised by the GLOBAL totals (sequences and tokens over all micro-batches
and ranks), so the accumulated gradient equals the full-batch gradient. With mu == 1 the old
policy is the current one (ratio 1, no clipping in effect); with mu > 1 the old log-probs come
from one no-grad pass before the first step. Reference log-probs are computed only when
beta > 0. The policy's, the old policy's and the reference's log-probs and the entropy are all
those of softmax(logits / T), T = Config.training_temperature (1, or the sampling temperature).
With an importance correction (Config.is_correction) one no-grad pass before the
first optimizer step gives the old policy's log-probs under the sampling distribution, and the
weights pi_old / pi_sampler (see podslib.core.loss). Optimizers and learning-rate schedules are
registries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from podslib.config import Config
from podslib.core.loss import grpo_loss, importance_weights
from podslib.training import distributed as D
from podslib.training.batch import (
    Batch,
    blank_batch,
    completion_logprobs,
    completion_outputs,
    micro_batches,
)
from podslib.training.optim import make_optimizer, make_scheduler

STATS = ("loss", "kl", "clip_frac", "entropy", "grad_norm")


def optimizer_and_scheduler(cfg: Config, policy: nn.Module) -> tuple:
    """cfg's optimizer over the policy's trainable parameters and its learning-rate schedule
    (warmup over warmup_ratio of max_steps * mu optimizer steps)."""
    optimizer = make_optimizer(cfg.optimizer, policy, cfg.lr, (cfg.adam_beta1, cfg.adam_beta2),
                               cfg.weight_decay)
    return optimizer, make_scheduler(optimizer, cfg.lr_schedule, cfg.warmup_ratio,
                                     cfg.max_steps * cfg.mu)


def no_grad(model: nn.Module, parts: list[Batch], fn):
    """[fn(model, mb) for each micro-batch] without grad, in eval mode (sharded models are
    resharded afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [fn(model, mb) for mb in parts]
    finally:
        model.train(was_training)
        D.reshard(model)


def importance(policy: nn.Module, parts: list[Batch], cfg: Config) -> tuple[list, list, dict]:
    """Before the first optimizer step: the old policy's log-probs [B, C] per micro-batch (for
    the ratio when mu > 1) and the importance weights [B, C] of cfg.is_correction (all ones
    when 'none'), with the step's ratio statistics summed over ranks."""
    n = len(parts)
    if cfg.mu == 1 and cfg.is_correction == "none":
        return [None] * n, [None] * n, {}
    sampling = cfg.is_correction != "none"
    sampler = (cfg.temperature, cfg.top_p) if sampling else None
    outs = no_grad(policy, parts, lambda model, mb: completion_outputs(
        model, mb, cfg.training_temperature, sampler))
    old = [o.logprobs for o in outs] if cfg.mu > 1 else [None] * n
    if not sampling:
        return old, [None] * n, {}
    weights, sums = [], torch.zeros(4, dtype=torch.float64)   # ratio sum, rejected, tokens, max
    for o, mb in zip(outs, parts):
        w, stats = importance_weights(cfg.is_correction, o.sampling_logprobs,
                                      mb.sampler_logprobs.to(o.logprobs.device),
                                      mb.completion_mask.to(o.logprobs.device), cfg.is_cap)
        weights.append(w)
        sums += torch.tensor([stats["ratio_sum"], stats["rejected"], stats["tokens"], 0.0],
                             dtype=torch.float64)
        sums[3] = max(float(sums[3]), stats["ratio_max"])
    total = D.all_reduce_sum(sums[:3])
    tokens = max(float(total[2]), 1.0)
    return old, weights, {"is_ratio_mean": float(total[0]) / tokens,
                          "is_ratio_max": D.all_reduce_max(float(sums[3])),
                          "is_rejected_frac": float(total[1]) / tokens}


def accumulate(policy: nn.Module, parts: list[Batch], old: list, ref: list, weights: list,
               cfg: Config, total_sequences: int, total_tokens: int) -> Tensor:
    """Forward and backward of every micro-batch (gradients accumulate); returns this rank's
    [loss, kl * tokens, clip_frac * tokens, entropy * tokens, tokens] sums (float64)."""
    device = next(policy.parameters()).device
    local = torch.zeros(5, dtype=torch.float64)
    for mb, mb_old, mb_ref, mb_w in zip(parts, old, ref, weights):
        out = completion_outputs(policy, mb, cfg.training_temperature)
        logprobs, mask = out.logprobs, mb.completion_mask.to(device)
        entropy = out.entropy if cfg.entropy_coef else out.entropy.detach()
        loss, stats = grpo_loss(
            logprobs, logprobs.detach() if mb_old is None else mb_old, mb.advantages.to(device),
            mask, ref_logprobs=mb_ref, beta=cfg.beta, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
            aggregation=cfg.aggregation, max_len=cfg.max_completion_tokens,
            total_sequences=total_sequences, total_tokens=total_tokens, token_weights=mb_w,
            entropy=entropy, entropy_coef=cfg.entropy_coef)
        loss.backward()
        tokens = float(mask.sum())
        local += torch.tensor([loss.item(), stats["kl_mean"] * tokens, stats["clip_frac"] * tokens,
                               float((out.entropy.detach() * mask).sum()), tokens],
                              dtype=torch.float64)
    return local


def optimizer_step(policy: nn.Module, optimizer, scheduler, max_grad_norm: float) -> float:
    """Sum the gradients over ranks (FSDP already reduce-scattered them in backward), clip the
    global norm, step; returns the global gradient norm before clipping."""
    if not D.is_sharded(policy):
        D.all_reduce_gradients(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    limit = max_grad_norm if max_grad_norm > 0 else math.inf
    grad_norm = D.full_tensor(torch.nn.utils.clip_grad_norm_(params, limit))
    optimizer.step()
    scheduler.step()
    return float(grad_norm)


def update(policy: nn.Module, optimizer, scheduler, batch: Batch, cfg: Config, reference,
           total_sequences: int, total_tokens: int) -> dict[str, float]:
    """mu optimizer steps on this rank's selected rollouts, the loss normalised by the global
    counts; returns the means over them of the loss, kl, clip fraction, entropy and gradient
    norm (and the importance ratio statistics). Nothing to train on any rank (every group
    filtered out): no step, zeros. Every rank runs as many micro-batches as the busiest one,
    even with no rows of its own: blank ones pad (counted over ranks in blank_micro_batches)."""
    if not total_sequences:
        return {**dict.fromkeys(STATS, 0.0), "entropy": None, "blank_micro_batches": 0}
    parts = micro_batches(batch, cfg.micro_batch_size)
    counts = D.all_gather_rows(torch.tensor([len(parts)]))                   # [world]
    parts += [blank_batch()] * (int(counts.max()) - len(parts))
    ref = [None] * len(parts)
    if cfg.beta > 0:
        with reference.active() as model:
            ref = no_grad(model, parts, lambda model, mb: completion_logprobs(
                model, mb, cfg.training_temperature))
    old, weights, is_stats = importance(policy, parts, cfg)
    sums = dict.fromkeys(STATS, 0.0)
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        local = accumulate(policy, parts, old, ref, weights, cfg, total_sequences, total_tokens)
        glob = D.all_reduce_sum(local)
        tokens = max(float(glob[4]), 1.0)
        sums["grad_norm"] += optimizer_step(policy, optimizer, scheduler, cfg.max_grad_norm)
        sums["loss"] += float(glob[0])
        sums["kl"] += float(glob[1]) / tokens
        sums["clip_frac"] += float(glob[2]) / tokens
        sums["entropy"] += float(glob[3]) / tokens
    return {**{k: v / cfg.mu for k, v in sums.items()}, **is_stats,
            "blank_micro_batches": int((counts.max() - counts).sum())}
