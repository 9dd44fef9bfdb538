"""The GRPO / GRPO-PODS training loop (PAPER.md; Xu et al. 2025, Algorithm 1).

One step, for a batch of G prompts (this rank's slice under data parallel):

    groups   = generate(engine, prompts, n)                  # n rollouts per prompt
    rewards  = score(groups, golds)                          # [G, n]
    keep     = group filter (optional, DAPO: drop all-equal groups)
    idx      = select(rewards, m, rule)                      # [G, m]  (m == n: vanilla GRPO)
    adv      = advantages over the selected m (or all n)     # [G, m]
    update(policy, selected rollouts, adv)                   # micro-batched, mu iterations
    engine.sync_weights(policy)

Reference log-probs are computed for the selected rollouts only, and only when beta > 0. With
mu == 1 the old policy is the current one (ratio == 1, no clipping in effect, as the one-GPU
recipe); with mu > 1 the old log-probs come from one no-grad pass before the first iteration.
The loss of each micro-batch is normalised by the GLOBAL totals (sequences and tokens over all
micro-batches and ranks) so the accumulated gradient equals the full-batch gradient.

A run folder holds config.yaml, metrics.jsonl (one line per step), eval.jsonl, checkpoints/
and summary.json. The training clock (train_time_s) counts the phases of the steps only:
evaluation and checkpoint writes are excluded, as in the paper. Checkpoints are written at step
boundaries with every RNG state, so a resumed run repeats the uninterrupted one exactly.

Scale-out (see `podslib.distributed`): `torchrun --nproc_per_node K -m podslib.trainer CONFIG
RUN_DIR` runs K data-parallel ranks; sampling seeds are derived from (seed, step, global prompt
index), so the rollouts do not depend on the rank split. With sharding 'fsdp' the update runs on
FSDP2 shards (each rank holds 1/K of the weights, gradients and optimizer state): every rank runs
as many micro-batches as the busiest one (blank ones pad), the engine samples from an unsharded
copy refreshed after each update with the gathered weights, and checkpoints hold whole tensors
in the same format either way (so a run may resume with the other sharding).

The tiny default (Config defaults: 8 prompts per step, PODS 16 -> 4 vs GRPO 4/4, arith with 1-3
operations on 1..19, warm-started until 30% sampled accuracy). Step-time split measured on the
2-core CPU (median of 11 steps, warm-started model, ~28 completion tokens, one thread):
    GRPO 4/4:    generate 0.17 s, update 0.15 s    (37% of groups all-equal)
    PODS 16->4:  generate 0.41 s, update 0.15 s    (12% of groups all-equal)
    GRPO 16/16:  generate 0.43 s, update 0.60 s
Generation of 4x the rollouts costs 2.4x here; on the paper's GPUs the update dominates. (One
machine, the fixed-step warm-start; the latest `make reproduce`, per step over 90 s runs: GRPO
4/4 generate 0.34 s + update 0.24 s, PODS 16->4 0.82 s + 0.26 s: results/tiny/summary.md.)

Paper's 8-GPU recipe (Qwen2.5-3B-Instruct, GSM8K, full fine-tune, 30 min):
    GRPO: n = m = 32,  PODS: n = 128, m = 32 (max_variance); lr 2e-5 cosine, warmup 0.1, beta 0,
    max_completion_tokens 1024, one prompt per GPU per step (prompts_per_step 8); the paper's
    gradient accumulation 16 (GRPO) vs 4 (PODS) over 8 GPUs corresponds to micro_batch_size 2 vs 8
    here (32 selected rollouts per prompt per rank):
    torchrun --nproc_per_node 8 -m podslib.trainer configs/gsm8k_8gpu.yaml results/gsm8k/pods-s0
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed as D
from .config import Config

METRIC_KEYS = (
    "step", "wall_s", "train_time_s", "t_generate", "t_score", "t_select", "t_update", "t_sync",
    "reward_mean_all", "reward_std_all", "reward_mean_sel", "reward_std_sel", "sel_var",
    "zero_var_frac", "accuracy_all", "tokens_generated", "tokens_trained", "completion_len",
    "trunc_rate", "loss", "kl", "clip_frac", "grad_norm", "blank_micro_batches", "lr",
)
EVAL_KEYS = ("step", "train_time_s", "accuracy", "n_problems", "repeats", "greedy", "eval_s")


def derive_seed(*parts: Any) -> int:
    """A stable 62-bit seed from any tuple of values (same on every rank, every run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


# ----------------------------------------------------------------------------------------------
# setup: model, data, optimizer
# ----------------------------------------------------------------------------------------------

def resolve_model(cfg: Config) -> str:
    """The policy's folder or hub id: cfg.model, or for 'tiny' the cached (warm-started) model."""
    if cfg.model != "tiny":
        return cfg.model
    from .sft import tiny_base, warm_start

    cache = Path(cfg.cache_dir).expanduser()
    return str(warm_start(cfg, cache) if cfg.warm_start else tiny_base(cfg, cache))


def load_examples(cfg: Config, split: str) -> list:
    """The task's examples for `split` (train_size / test_size of them). Arith problems come from
    a fixed seed, so every run of an experiment sees the same problems whatever cfg.seed."""
    from .sft import arith_examples
    from .tasks import load_task

    limit = cfg.train_size if split == "train" else cfg.test_size
    if cfg.task == "arith":
        return arith_examples(cfg, split, limit)
    task = "math500" if cfg.task == "math" and split == "test" else cfg.task
    source = cfg.train_source if split == "train" else cfg.test_source
    return load_task(task, split, source=source, limit=limit, seed=0)


def make_optimizer(cfg: Config, policy: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in policy.parameters() if p.requires_grad]
    kwargs = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2),
              "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    """Linear warmup over warmup_ratio of the optimizer steps, then constant or cosine to 0.
    Optimizer steps = max_steps * mu (when max_steps is 0, warmup counts from an estimate of 0
    steps, i.e. none, and the schedule is constant)."""
    total = cfg.max_steps * cfg.mu
    warmup = math.ceil(cfg.warmup_ratio * total)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        if cfg.lr_schedule == "cosine":
            progress = min(1.0, (i - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_prompt_indices(step: int, prompts_per_step: int, n_prompts: int, seed: int) -> list[int]:
    """Global dataset indices of the prompts of `step` (0-based): walk through a fresh seeded
    permutation of the data set per epoch. Depends only on its arguments, so the data position
    is just the step."""
    out = []
    for pos in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(pos, n_prompts)
        order = np.random.default_rng(derive_seed(seed, "epoch", epoch)).permutation(n_prompts)
        out.append(int(order[offset]))
    return out


# ----------------------------------------------------------------------------------------------
# the phases of one step
# ----------------------------------------------------------------------------------------------

@dataclass
class Scored:
    """Everything the selection needs, for all G prompts of the step (gathered over ranks)."""

    rewards: Tensor       # [G, n] weighted reward
    correct: Tensor       # [G, n] correctness 0/1
    lengths: Tensor       # [G, n] completion tokens
    truncated: Tensor     # [G, n] 1 when cut at max_completion_tokens


@dataclass
class Batch:
    """This rank's selected rollouts, flattened to B = (kept groups) * m rows."""

    input_ids: Tensor       # [B, P + C] prompt left-padded to P, completion right-padded to C
    attention_mask: Tensor  # [B, P + C]
    completion_mask: Tensor  # [B, C] 1 on completion tokens (EOS included)
    advantages: Tensor      # [B]
    prompt_len: int         # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.attention_mask[start:stop],
                     self.completion_mask[start:stop], self.advantages[start:stop], self.prompt_len)


def generate(engine, prompts: list[str], cfg: Config, seeds: list[int]) -> list:
    """n rollouts per prompt; prompt i samples from seeds[i] only."""
    from .rollout import SamplingParams

    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_tokens)
    return engine.generate(prompts, n=cfg.n, sampling=sampling, seeds=seeds)


def score(groups: list, golds: list[str], cfg: Config) -> Scored:
    """Rewards of every rollout, gathered over ranks into [G, n] tensors."""
    from .rewards import score_batch

    texts = [[c.text for c in g.completions] for g in groups]
    rewards, terms = score_batch(texts, golds, cfg.task, weights=cfg.reward_weights)
    lengths = torch.tensor([[len(c.token_ids) for c in g.completions] for g in groups],
                           dtype=torch.float32)
    truncated = torch.tensor([[c.finish_reason == "length" for c in g.completions] for g in groups],
                             dtype=torch.float32)
    local = torch.stack([rewards.float(), terms["correctness"].float(), lengths, truncated])
    full = D.all_gather_rows(local.transpose(0, 1)).transpose(0, 1)   # [4, G, n]
    return Scored(*full)


def select_rollouts(rewards: Tensor, cfg: Config, step: int) -> tuple[Tensor, Tensor, Tensor]:
    """rewards [G, n] -> (keep [G] bool, idx [G, m], advantages [G, m]); the same on every rank.

    The group filter drops groups before selection; advantages are computed over the selected m
    (the paper) or, with adv_over == 'all', with the mean/std of all n rewards of the group.
    """
    from .advantages import group_advantages
    from .selection import filter_groups, select

    keep = (filter_groups(rewards) if cfg.group_filter == "zero_variance"
            else torch.ones(rewards.shape[0], dtype=torch.bool))
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "select", step))
    idx = (torch.arange(cfg.n).expand(rewards.shape[0], cfg.n).clone() if cfg.m == cfg.n
           else select(rewards, cfg.m, cfg.rule, generator=generator))
    selected = rewards.gather(1, idx)
    if cfg.adv_over == "all":
        adv = advantages_from_pool(rewards, selected, cfg.scale_rewards)
    else:
        adv = group_advantages(selected, scale=cfg.scale_rewards)
    return keep, idx, adv


def advantages_from_pool(pool: Tensor, selected: Tensor, scale: str, eps: float = 1e-4) -> Tensor:
    """Advantages of `selected` [G, m] with the mean and std of the full `pool` [G, n]."""
    centred = selected - pool.mean(dim=1, keepdim=True)
    if scale == "group":
        return centred / (pool.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (pool.std() + eps)
    return centred


def build_batch(groups: list, idx: Tensor, adv: Tensor, keep: Tensor, pad_id: int) -> Batch:
    """Tensors of the selected rollouts of the kept groups of this rank (idx, adv, keep are this
    rank's rows): prompt left-padded, completion right-padded."""
    prompts, completions, advantages = [], [], []
    for g, group in enumerate(groups):
        if not keep[g]:
            continue
        for j, i in enumerate(idx[g].tolist()):
            prompts.append(group.prompt_token_ids)
            completions.append(group.completions[i].token_ids)
            advantages.append(float(adv[g, j]))
    if not prompts:
        empty = torch.zeros((0, 1), dtype=torch.long)
        return Batch(empty, empty, empty.float(), torch.zeros(0), 0)
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    ids = torch.full((len(prompts), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros((len(prompts), C))
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids[r, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[r, P - len(p):P + len(c)] = 1
        if c:
            ids[r, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
            cmask[r, :len(c)] = 1
    return Batch(ids, attn, cmask, torch.tensor(advantages), P)


def completion_logprobs(model, batch: Batch) -> Tensor:
    """log pi(token) of each completion position, [B, C], from one forward pass (raw logits,
    temperature 1, as the engines report; position ids follow the left padding as in generate)."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    attn = batch.attention_mask.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits
    logits = logits[:, batch.prompt_len - 1:-1].float()                      # [B, C, V]
    targets = ids[:, batch.prompt_len:]                                      # [B, C]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def micro_batches(batch: Batch, size: int) -> list[Batch]:
    return [batch.rows(s, s + size) for s in range(0, len(batch), size)]


def blank_batch() -> Batch:
    """One row with no completion token: its GRPO loss and gradient are exactly 0. Pads a rank's
    micro-batches to the count of the busiest rank (each pass of a sharded model is collective)."""
    return Batch(torch.zeros((1, 2), dtype=torch.long), torch.ones((1, 2), dtype=torch.long),
                 torch.zeros((1, 1)), torch.zeros(1), 1)


@torch.no_grad()
def _no_grad_logprobs(model, parts: list[Batch]) -> list[Tensor]:
    was_training = model.training
    model.eval()
    try:
        return [completion_logprobs(model, mb) for mb in parts]
    finally:
        model.train(was_training)
        D.reshard(model)


def update(policy: nn.Module, optimizer, scheduler, batch: Batch, cfg: Config, reference,
           total_sequences: int, total_tokens: int) -> dict[str, float]:
    """mu optimizer steps on the selected rollouts, each accumulating gradients over
    micro-batches of this rank and summing them over ranks (all-reduce, or FSDP's
    reduce-scatter in backward); returns loss/kl/clip/grad stats. Every rank runs as many
    micro-batches as the busiest one, even with no rows of its own: blank ones pad, counted over
    ranks in blank_micro_batches (per iteration)."""
    from .loss import grpo_loss

    device = next(policy.parameters()).device
    parts = micro_batches(batch, cfg.micro_batch_size)
    counts = D.all_gather_rows(torch.tensor([len(parts)]))                   # [world]
    parts += [blank_batch()] * (int(counts.max()) - len(parts))
    ref = reference_logprobs(reference, parts) if cfg.beta > 0 else [None] * len(parts)
    old = _no_grad_logprobs(policy, parts) if cfg.mu > 1 else [None] * len(parts)
    params = [p for p in policy.parameters() if p.requires_grad]
    sums = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
    for _ in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        local = torch.zeros(4, dtype=torch.float64)            # loss, kl*tok, clip*tok, tokens
        for mb, mb_old, mb_ref in zip(parts, old, ref):
            logprobs = completion_logprobs(policy, mb)
            mask = mb.completion_mask.to(device)
            loss, stats = grpo_loss(
                logprobs, logprobs.detach() if mb_old is None else mb_old,
                mb.advantages.to(device), mask, ref_logprobs=mb_ref, beta=cfg.beta,
                eps_low=cfg.eps_low, eps_high=cfg.eps_high, aggregation=cfg.aggregation,
                max_len=cfg.max_completion_tokens, total_sequences=total_sequences,
                total_tokens=total_tokens)
            loss.backward()
            tokens = float(mask.sum())
            local += torch.tensor([loss.item(), stats["kl_mean"] * tokens,
                                   stats["clip_frac"] * tokens, tokens], dtype=torch.float64)
        if not D.is_sharded(policy):
            D.all_reduce_gradients(policy)
        glob = D.all_reduce_sum(local)
        limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = D.full_tensor(torch.nn.utils.clip_grad_norm_(params, limit))  # global norm
        optimizer.step()
        scheduler.step()
        tokens = max(float(glob[3]), 1.0)
        sums["loss"] += float(glob[0])
        sums["kl"] += float(glob[1]) / tokens
        sums["clip_frac"] += float(glob[2]) / tokens
        sums["grad_norm"] += float(grad_norm)
    return {**{k: v / cfg.mu for k, v in sums.items()},
            "blank_micro_batches": int((counts.max() - counts).sum())}


@torch.no_grad()
def reference_logprobs(reference, parts: list[Batch]) -> list[Tensor]:
    """pi_ref log-probs [B, C] per micro-batch: the policy with its LoRA adapter disabled, or
    the frozen copy (`models.Reference`)."""
    if reference.adapter_off:
        with reference.model.disable_adapter():
            return _no_grad_logprobs(reference.model, parts)
    return _no_grad_logprobs(reference.model, parts)


def sync(engine, policy: nn.Module, rollout_policy: nn.Module) -> None:
    """Make the engine sample from the updated policy (vLLM: push merged weights). Under fsdp
    the engine samples from an unsharded copy, first refreshed with the gathered trainable
    weights (every rank takes part)."""
    if rollout_policy is not policy:
        D.copy_trainable(policy, rollout_policy)
    engine.sync_weights(rollout_policy)


# ----------------------------------------------------------------------------------------------
# metrics of a step
# ----------------------------------------------------------------------------------------------

def rollout_metrics(scored: Scored, keep: Tensor, idx: Tensor) -> dict[str, float | None]:
    """Reward / variance / length statistics of one step (over all G prompts)."""
    from .selection import subset_variance

    r = scored.rewards
    sel = r.gather(1, idx)[keep]
    sel_var = subset_variance(r, idx)[keep] if idx.shape[1] > 1 else torch.zeros(0)
    return {
        "reward_mean_all": float(r.mean()),
        "reward_std_all": float(r.std()) if r.numel() > 1 else 0.0,
        "reward_mean_sel": float(sel.mean()) if sel.numel() else None,
        "reward_std_sel": float(sel.std()) if sel.numel() > 1 else None,
        "sel_var": float(sel_var.mean()) if sel_var.numel() else None,
        "zero_var_frac": float((r.amax(1) == r.amin(1)).float().mean()),
        "accuracy_all": float(scored.correct.mean()),
        "tokens_generated": int(scored.lengths.sum()),
        "completion_len": float(scored.lengths.mean()),
        "trunc_rate": float(scored.truncated.mean()),
    }


class PhaseTimer:
    """Wall-clock seconds per named phase (CUDA synchronised so GPU work is counted)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[f"t_{name}"] = time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# run folder: logs, checkpoints, resume
# ----------------------------------------------------------------------------------------------

def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to the OS (survives a kill of this process)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def set_aside_after(path: Path, last_step: int) -> int:
    """Keep the lines of `path` with step <= last_step; move the others (and any torn line) to
    '<name>.orphaned.jsonl' beside it, appended, never deleted. Returns how many were moved."""
    if not path.exists():
        return 0
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            ok = json.loads(line)["step"] <= last_step and line.endswith("\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        (kept if ok else moved).append(line if line.endswith("\n") else line + "\n")
    if moved:
        with open(path.with_suffix(".orphaned.jsonl"), "a") as f:
            f.writelines(moved)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return len(moved)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_state(policy: nn.Module, optimizer) -> tuple[dict[str, Tensor], dict]:
    """(trainable weights {name: tensor}, optimizer.state_dict()) with whole CPU tensors, sharded
    or not, so a checkpoint loads with any sharding (under fsdp every rank must call it)."""
    trainable = {k: D.full_tensor(p).cpu() for k, p in policy.named_parameters()
                 if p.requires_grad}
    optim = optimizer.state_dict()
    optim["state"] = {i: {k: D.full_tensor(v).cpu() if isinstance(v, Tensor) else v
                          for k, v in entry.items()} for i, entry in optim["state"].items()}
    return trainable, optim


def shard_optimizer_state(saved: dict, optimizer) -> dict:
    """A saved optimizer.state_dict() (whole tensors) with every parameter-shaped state cut like
    its parameter (state ids number the parameters in param_groups order)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved["state"] = {i: {k: D.shard_like(v, params[i])
                          if isinstance(v, Tensor) and v.shape == params[i].shape else v
                          for k, v in entry.items()} for i, entry in saved["state"].items()}
    return saved


def save_checkpoint(run_dir: Path, state: dict, trainable: dict[str, Tensor], optimizer_state: dict,
                    scheduler) -> Path:
    """Write checkpoints/step-XXXXXX atomically (tmp folder + rename) and drop older ones:
    trainable weights (the LoRA adapter or the full model) and optimizer state (whole tensors, see
    `gathered_state`), scheduler, RNG states and the loop state (step = data position, training
    clock, eval/checkpoint schedule)."""
    root = run_dir / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, policy: nn.Module, optimizer, scheduler) -> dict:
    """Restore what `save_checkpoint` wrote into a sharded or unsharded policy and optimizer
    (every rank loads); returns the loop state."""
    trainable = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(D.shard_like(value, params[name]))
    saved = torch.load(path / "optimizer.pt", map_location="cpu")
    optimizer.load_state_dict(shard_optimizer_state(saved, optimizer))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())


def check_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Before any model loads: a resumed folder must hold the same config (budget fields
    aside); a fresh run must not overwrite an existing run, nor a config.yaml with other values
    (the same config, left by a run that stopped before its first step, is reused)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        if resume:
            raise FileNotFoundError(f"resume: {str(saved_path)!r} does not exist; nothing to "
                                    "resume (run without resume first)")
        return
    if resume:
        differ = cfg.differing_fields(Config.from_yaml(saved_path))
        if differ:
            raise ValueError(f"resume: the config differs from {str(saved_path)!r} in field(s) "
                             f"{', '.join(differ)}; resume with the same values (only "
                             "budgets and checkpoint cadence may change)")
    elif (run_dir / "metrics.jsonl").exists() or latest_checkpoint(run_dir) is not None:
        raise ValueError(f"run_dir {str(run_dir)!r} already holds a run; pass resume=True or "
                         "choose another run_name")
    else:
        differ = cfg.differing_fields(Config.from_yaml(saved_path), ignore=())
        if differ:
            raise ValueError(f"run_dir {str(run_dir)!r} holds a config.yaml that differs in "
                             f"field(s) {', '.join(differ)}; choose another run_name (it is "
                             "not overwritten)")


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def check_packages(cfg: Config) -> None:
    """The optional packages the config needs must be importable (checked before any load)."""
    import importlib.util

    if cfg.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("optimizer 'adamw_8bit' needs the bitsandbytes package (GPU extra: "
                         "pip install 'pods-kit[gpu]'); use optimizer 'adamw'")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("engine 'vllm' needs the vllm package (make setup installs it); use "
                         "engine 'hf'")


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train per `cfg`, writing the run folder `run_dir`; returns the summary (summary.json).

    Every config error (including prompts_per_step not divisible by the number of ranks and a
    resume folder with a different config) is raised before any model is loaded.
    """
    run_dir = Path(run_dir)
    world = D.DistInfo.from_env().world_size
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step must be divisible by the number of processes "
                         f"({world}); got {cfg.prompts_per_step}")
    check_run_dir(cfg, run_dir, resume)
    check_packages(cfg)
    info, device = D.setup(cfg.device)
    try:
        return Trainer(cfg, run_dir, info, device, progress).run(resume)
    finally:
        D.teardown()


class Trainer:
    """Holds the policy, engine, data and loop state of one run (see `train`)."""

    def __init__(self, cfg: Config, run_dir: Path, info: D.DistInfo, device: str, progress: bool):
        from .models import LoraSettings, load_policy, load_reference
        from .rollout import make_engine
        from .tasks import build_prompts

        self.cfg, self.run_dir, self.info, self.device = cfg, run_dir, info, device
        self.progress = progress
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if info.is_main:
            self.model_path = resolve_model(cfg)
        D.barrier()
        if not info.is_main:
            self.model_path = resolve_model(cfg)
        lora = (LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             target_modules=tuple(cfg.lora_target_modules)) if cfg.lora_r else None)
        self.policy, self.tokenizer = load_policy(self.model_path, dtype=cfg.dtype, device=device,
                                                  trust_remote_code=cfg.trust_remote_code,
                                                  lora=lora)
        self.policy.train()
        self.rollout_policy = self.policy       # what the engine samples from (see `sync`)
        if cfg.sharding == "fsdp" and info.enabled:
            self.rollout_policy = copy.deepcopy(self.policy).requires_grad_(False)
            D.shard(self.policy, device)
        self.reference = (load_reference(self.policy, self.model_path, cfg.dtype, device)
                          if cfg.beta > 0 else None)
        self.engine = make_engine(cfg.engine, model_path=self.model_path,
                                  policy=self.rollout_policy,
                                  tokenizer=self.tokenizer, device=device, dtype=cfg.dtype,
                                  seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization)
        train_examples = load_examples(cfg, "train")
        self.prompts, kept, self.n_dropped = build_prompts(
            train_examples, cfg.template, self.tokenizer, cfg.max_prompt_tokens)
        if not self.prompts:
            raise ValueError(f"max_prompt_tokens={cfg.max_prompt_tokens} drops every training "
                             "prompt; raise it")
        self.golds = [e.gold for e in kept]
        self.test_examples = load_examples(cfg, "test")
        self.optimizer = make_optimizer(cfg, self.policy)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.pad_id = self.tokenizer.pad_token_id
        self.state = {"step": 0, "train_time_s": 0.0, "wall_s": 0.0, "last_eval_step": -1,
                      "next_eval_s": cfg.eval_every_s, "next_ckpt_s": cfg.checkpoint_every_s,
                      "last_ckpt_step": 0}

    # --- one step ----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """Run step number state['step'] + 1 on this rank's prompts; returns its metrics."""
        cfg, step, rank = self.cfg, self.state["step"], self.info.rank
        g = cfg.prompts_per_step // self.info.world_size
        chosen = step_prompt_indices(step, cfg.prompts_per_step, len(self.prompts), cfg.seed)
        mine = chosen[rank * g:(rank + 1) * g]
        seeds = [derive_seed(cfg.seed, "rollout", step, rank * g + j) for j in range(g)]
        timer = PhaseTimer(self.device)
        with timer("generate"):
            groups = generate(self.engine, [self.prompts[i] for i in mine], cfg, seeds)
        with timer("score"):
            scored = score(groups, [self.golds[i] for i in mine], cfg)
        with timer("select"):
            keep, idx, adv = select_rollouts(scored.rewards, cfg, step)
            rows = slice(rank * g, (rank + 1) * g)
            batch = build_batch(groups, idx[rows], adv[rows], keep[rows], self.pad_id)
            total_sequences = int(keep.sum()) * cfg.m
            total_tokens = int(scored.lengths.gather(1, idx)[keep].sum())
        lr = self.optimizer.param_groups[0]["lr"]
        with timer("update"):
            stats = (update(self.policy, self.optimizer, self.scheduler, batch, cfg,
                            self.reference, total_sequences, total_tokens)
                     if total_sequences else
                     {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "grad_norm": 0.0,
                      "blank_micro_batches": 0})
        with timer("sync"):
            sync(self.engine, self.policy, self.rollout_policy)
        return {**timer.seconds, **rollout_metrics(scored, keep, idx),
                "tokens_trained": total_tokens, **stats, "lr": lr}

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Test accuracy of the current policy; each rank takes every world_size-th problem and
        the counts are summed."""
        from .evaluate import evaluate

        cfg, rank, world = self.cfg, self.info.rank, self.info.world_size
        mine = list(range(rank, len(self.test_examples), world))
        start = time.perf_counter()
        result = evaluate(self.engine, [self.test_examples[i] for i in mine], cfg.template,
                          self.tokenizer, repeats=cfg.eval_repeats,
                          temperature=cfg.eval_temperature, greedy=cfg.eval_greedy,
                          max_tokens=cfg.max_completion_tokens, task=cfg.task,
                          seed=derive_seed(cfg.seed, "eval", rank))
        counts = D.all_reduce_sum(torch.tensor([result["n_correct"], result["n_samples"]],
                                               dtype=torch.float64))
        return {"step": self.state["step"], "train_time_s": self.state["train_time_s"],
                "accuracy": float(counts[0] / counts[1]), "n_problems": len(self.test_examples),
                "repeats": result["repeats"], "greedy": cfg.eval_greedy,
                "eval_s": D.all_reduce_max(time.perf_counter() - start)}

    def eval_due(self) -> bool:
        cfg, s = self.cfg, self.state
        return bool((cfg.eval_every_steps and s["step"] % cfg.eval_every_steps == 0)
                    or (cfg.eval_every_s and s["train_time_s"] >= s["next_eval_s"]))

    def checkpoint_due(self) -> bool:
        cfg, s = self.cfg, self.state
        return bool((cfg.checkpoint_every_steps and s["step"] % cfg.checkpoint_every_steps == 0)
                    or (cfg.checkpoint_every_s and s["train_time_s"] >= s["next_ckpt_s"]))

    def budget_left(self) -> bool:
        cfg, s = self.cfg, self.state
        return not ((cfg.max_steps and s["step"] >= cfg.max_steps)
                    or (cfg.max_train_seconds and s["train_time_s"] >= cfg.max_train_seconds))

    def run_eval(self) -> dict[str, Any]:
        record = self.evaluate()
        s, cfg = self.state, self.cfg
        s["last_eval_step"] = s["step"]
        if cfg.eval_every_s:
            s["next_eval_s"] = (math.floor(s["train_time_s"] / cfg.eval_every_s) + 1) \
                * cfg.eval_every_s
        if self.info.is_main:
            append_jsonl(self.run_dir / "eval.jsonl", record)
        return record

    def checkpoint(self) -> None:
        s, cfg = self.state, self.cfg
        s["last_ckpt_step"] = s["step"]
        if cfg.checkpoint_every_s:
            s["next_ckpt_s"] = s["train_time_s"] + cfg.checkpoint_every_s
        s["wall_s"] = time.time() - self.wall_start
        if self.info.is_main or D.is_sharded(self.policy):     # gathering shards is collective
            trainable, optim = gathered_state(self.policy, self.optimizer)
            if self.info.is_main:
                save_checkpoint(self.run_dir, s, trainable, optim, self.scheduler)
        D.barrier()

    # --- the loop ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the last checkpoint; log lines past it are set aside, not deleted."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is not None:
            self.state = load_checkpoint(ckpt, self.policy, self.optimizer, self.scheduler)
            sync(self.engine, self.policy, self.rollout_policy)
        if self.info.is_main:
            last = self.state["step"] if ckpt is not None else -1
            for name in ("metrics.jsonl", "eval.jsonl"):
                set_aside_after(self.run_dir / name, last)
        D.barrier()

    def run(self, resume: bool) -> dict:
        from .progress import TrainingBar

        cfg, s = self.cfg, self.state
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
        if resume:
            self.restore()
            s = self.state
        self.wall_start = time.time() - s["wall_s"]
        bar = TrainingBar(cfg, self.run_dir.name, s, enabled=self.progress and self.info.is_main)
        if s["last_eval_step"] < 0:
            bar.accuracy(self.run_eval()["accuracy"])
        while self.budget_left():
            record = self.step()
            s["step"] += 1
            s["train_time_s"] += D.all_reduce_max(sum(record[k] for k in record
                                                      if k.startswith("t_")))
            record = {"step": s["step"], "wall_s": time.time() - self.wall_start,
                      "train_time_s": s["train_time_s"], **record}
            if self.info.is_main:
                append_jsonl(self.run_dir / "metrics.jsonl", record)
            bar.step(record)
            if self.eval_due():
                bar.accuracy(self.run_eval()["accuracy"])
            if self.checkpoint_due():
                self.checkpoint()
        bar.close()
        if s["last_eval_step"] != s["step"]:
            self.run_eval()
        if s["last_ckpt_step"] != s["step"] or latest_checkpoint(self.run_dir) is None:
            self.checkpoint()
        return self.summarise()

    def numel_per_rank(self) -> dict[str, list[int]]:
        """Elements of the policy's parameters and of the optimizer state held by each rank (its
        shards under fsdp): the training memory per rank, rollout copy aside."""
        optim = [t for entry in self.optimizer.state.values() for t in entry.values()
                 if isinstance(t, Tensor)]
        local = torch.tensor([[D.local_numel(self.policy.parameters()), D.local_numel(optim)]])
        per_rank = D.all_gather_rows(local)                                   # [world, 2]
        return {"param_numel_per_rank": per_rank[:, 0].tolist(),
                "optimizer_numel_per_rank": per_rank[:, 1].tolist()}

    def summarise(self) -> dict:
        evals = [json.loads(x) for x in (self.run_dir / "eval.jsonl").read_text().splitlines()] \
            if self.info.is_main else []
        summary = {
            "run_dir": str(self.run_dir), "model_path": self.model_path,
            "steps": self.state["step"], "train_time_s": self.state["train_time_s"],
            "wall_s": time.time() - self.wall_start, "prompts_dropped": self.n_dropped,
            "base_accuracy": evals[0]["accuracy"] if evals else None,
            "final_accuracy": evals[-1]["accuracy"] if evals else None,
            "best_accuracy": max(e["accuracy"] for e in evals) if evals else None,
            **self.numel_per_rank(),
        }
        if self.info.is_main:
            tmp = self.run_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            tmp.replace(self.run_dir / "summary.json")
        self.engine.close()
        return summary


def _parse_value(text: str) -> Any:
    """A command-line override value: YAML, except that numbers YAML 1.1 reads as strings
    ("2e-4") are numbers."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_command_line(argv: list[str] | None = None) -> tuple[Config, Any]:
    """(config with the overrides applied, parsed flags) of
    `CONFIG.yaml RUN_DIR [--resume] [--no-progress] [key=value ...]`; flags and overrides may
    come in any order."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m podslib.trainer", description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value (value parsed as YAML)")
    args = parser.parse_intermixed_args(argv)
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"overrides must be key=value; got {item!r}")
        overrides[key] = _parse_value(value)
    return Config.from_yaml(args.config, **overrides), args


def main(argv: list[str] | None = None) -> None:
    """python -m podslib.trainer CONFIG.yaml RUN_DIR [--resume] [--no-progress] [key=value ...]
    (the entry point for torchrun / accelerate launch)."""
    cfg, args = parse_command_line(argv)
    summary = train(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    info = D.DistInfo.from_env()
    if info.is_main:
        json.dump(summary, sys.stdout, indent=2)
        print()
    if info.enabled:
        D.exit_process(0)


if __name__ == "__main__":
    main()
