"""The policy update of one step: mu optimizer steps on the selected rollouts.

Each optimizer step accumulates the gradient of the GRPO loss over this rank's micro-batches
(`accumulate`), then sums it over ranks and steps the optimizer (`optimizer_step`). The loss of
each micro-batch is normalised by the GLOBAL totals (sequences and tokens over all micro-batches
and ranks), so the accumulated gradient equals the full-batch gradient. With mu == 1 the old
policy is the current one (ratio 1, no clipping in effect); with mu > 1 the old log-probs come
from one no-grad pass before the first step. Reference log-probs are computed only when
beta > 0. Optimizers and learning-rate schedules are registries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import distributed as D
from .batch import Batch, blank_batch, completion_logprobs, micro_batches
from .config import Config
from .loss import grpo_loss
from .registry import Registry

# name -> fn(params, cfg) -> torch.optim.Optimizer
OPTIMIZERS = Registry("optimizer")
# name -> fn(i, warmup, total) -> learning-rate factor after the warmup
SCHEDULES = Registry("lr_schedule")
STATS = ("loss", "kl", "clip_frac", "grad_norm")


@OPTIMIZERS.register("adamw")
def _adamw(params: list[Tensor], cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw_8bit")
def _adamw_8bit(params: list[Tensor], cfg: Config) -> torch.optim.Optimizer:
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                               weight_decay=cfg.weight_decay)


@SCHEDULES.register("constant")
def _constant(i: int, warmup: int, total: int) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def _cosine(i: int, warmup: int, total: int) -> float:
    progress = min(1.0, (i - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(cfg: Config, policy: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    """Linear warmup over warmup_ratio of the optimizer steps (max_steps * mu), then the
    schedule (with no max_steps there is no warmup)."""
    total = cfg.max_steps * cfg.mu
    warmup = math.ceil(cfg.warmup_ratio * total)
    after = SCHEDULES.get(cfg.lr_schedule)

    def factor(i: int) -> float:
        return (i + 1) / (warmup + 1) if i < warmup else after(i, warmup, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def no_grad_logprobs(model: nn.Module, parts: list[Batch]) -> list[Tensor]:
    """[B, C] log-probs of each micro-batch without grad, in eval mode (sharded models are
    resharded afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [completion_logprobs(model, mb) for mb in parts]
    finally:
        model.train(was_training)
        D.reshard(model)


def accumulate(policy: nn.Module, parts: list[Batch], old: list, ref: list, cfg: Config,
               total_sequences: int, total_tokens: int) -> Tensor:
    """Forward and backward of every micro-batch (gradients accumulate); returns this rank's
    [loss, kl * tokens, clip_frac * tokens, tokens] sums (float64)."""
    device = next(policy.parameters()).device
    local = torch.zeros(4, dtype=torch.float64)
    for mb, mb_old, mb_ref in zip(parts, old, ref):
        logprobs = completion_logprobs(policy, mb)
        mask = mb.completion_mask.to(device)
        loss, stats = grpo_loss(
            logprobs, logprobs.detach() if mb_old is None else mb_old, mb.advantages.to(device),
            mask, ref_logprobs=mb_ref, beta=cfg.beta, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
            aggregation=cfg.aggregation, max_len=cfg.max_completion_tokens,
            total_sequences=total_sequences, total_tokens=total_tokens)
        loss.backward()
        tokens = float(mask.sum())
        local += torch.tensor([loss.item(), stats["kl_mean"] * tokens,
                               stats["clip_frac"] * tokens, tokens], dtype=torch.float64)
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
    """mu optimizer steps on this rank's selected rollouts; returns the mean loss, kl, clip
    fraction and gradient norm over them. Every rank runs as many micro-batches as the busiest
    one, even with no rows of its own: blank ones pad (counted over ranks in
    blank_micro_batches)."""
    parts = micro_batches(batch, cfg.micro_batch_size)
    counts = D.all_gather_rows(torch.tensor([len(parts)]))                   # [world]
    parts += [blank_batch()] * (int(counts.max()) - len(parts))
    ref = [None] * len(parts)
    if cfg.beta > 0:
        with reference.active() as model:
            ref = no_grad_logprobs(model, parts)
    old = no_grad_logprobs(policy, parts) if cfg.mu > 1 else [None] * len(parts)
    sums = dict.fromkeys(STATS, 0.0)
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        local = accumulate(policy, parts, old, ref, cfg, total_sequences, total_tokens)
        glob = D.all_reduce_sum(local)
        tokens = max(float(glob[3]), 1.0)
        sums["grad_norm"] += optimizer_step(policy, optimizer, scheduler, cfg.max_grad_norm)
        sums["loss"] += float(glob[0])
        sums["kl"] += float(glob[1]) / tokens
        sums["clip_frac"] += float(glob[2]) / tokens
    return {**{k: v / cfg.mu for k, v in sums.items()},
            "blank_micro_batches": int((counts.max() - counts).sum())}
