"""The phases of one training step before the update: generate, score, select (docs/method.md).

    groups = generate(engine, prompts, cfg, seeds)      # n rollouts per prompt
    scored = score(groups, golds, cfg)                  # rewards [G, n], gathered over ranks
    passing(scored.rewards, cfg)                        # [G] groups the filter keeps (DAPO)
    idx, adv = select_rollouts(scored.rewards, cfg, step)   # [G, m], [G, m]

Selection runs on the gathered [G, n] rewards, identically on every rank, so the rank split
never changes what is kept. `rollout_metrics` summarises a step for metrics.jsonl and
`PhaseTimer` times the phases (the training clock is their sum).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass

import torch
from torch import Tensor

from . import distributed as D
from .advantages import group_advantages
from .config import Config
from .rewards import score_batch
from .rollout import Group, SamplingParams
from .seeding import derive_seed
from .selection import FILTERS, select, subset_variance


@dataclass
class Scored:
    """Everything the selection needs, for all G prompts of the step (gathered over ranks)."""

    rewards: Tensor       # [G, n] weighted reward
    correct: Tensor       # [G, n] correctness 0/1
    lengths: Tensor       # [G, n] completion tokens
    truncated: Tensor     # [G, n] 1 when cut at max_completion_tokens

    @staticmethod
    def cat(parts: list[Scored]) -> Scored:
        """The groups of several rounds, in order."""
        return Scored(*(torch.cat(t) for t in zip(*(astuple(p) for p in parts))))


def generate(engine, prompts: list[str], cfg: Config, seeds: list[int]) -> list[Group]:
    """n rollouts per prompt; prompt i samples from seeds[i] only."""
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_tokens)
    return engine.generate(prompts, n=cfg.n, sampling=sampling, seeds=seeds)


def score(groups: list[Group], golds: list[str], cfg: Config) -> Scored:
    """Rewards of every rollout, gathered over ranks into [G, n] tensors."""
    texts = [[c.text for c in g.completions] for g in groups]
    rewards, terms = score_batch(texts, golds, cfg.task, weights=cfg.reward_weights)
    lengths = torch.tensor([[len(c.token_ids) for c in g.completions] for g in groups],
                           dtype=torch.float32)
    truncated = torch.tensor([[c.finish_reason == "length" for c in g.completions]
                              for g in groups], dtype=torch.float32)
    local = torch.stack([rewards.float(), terms["correctness"].float(), lengths, truncated])
    full = D.all_gather_rows(local.transpose(0, 1)).transpose(0, 1)   # [4, G, n]
    return Scored(*full)


def passing(rewards: Tensor, cfg: Config) -> Tensor:
    """rewards [G, n] -> [G] bool, the groups cfg.group_filter keeps (all for 'none')."""
    return FILTERS.get(cfg.group_filter)(rewards)


def select_rollouts(rewards: Tensor, cfg: Config, step: int) -> tuple[Tensor, Tensor]:
    """rewards [G, n] -> (idx [G, m], advantages [G, m]); the same on every rank. Advantages
    are computed over the selected m (the paper) or, with adv_over == 'all', with the mean and
    std of all n rewards of the group."""
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "select", step))
    idx = (torch.arange(cfg.n).expand(rewards.shape[0], cfg.n).clone() if cfg.m == cfg.n
           else select(rewards, cfg.m, cfg.rule, generator=generator))
    adv = group_advantages(rewards.gather(1, idx), scale=cfg.scale_rewards,
                           pool=rewards if cfg.adv_over == "all" else None)
    return idx, adv


def rollout_metrics(scored: Scored, keep: Tensor, idx: Tensor) -> dict[str, float | None]:
    """Reward / variance / length statistics of one step (over all G prompts)."""
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


def completion_rows(drawn, idx: Tensor, prompts: int) -> list[dict]:
    """The rollouts of the first `prompts` groups of this rank in a step (`trainer.Drawn`) as
    table rows: prompt, completion, reward, correct, selected (among the m), trained (its group
    kept)."""
    rows = []
    for group, row in list(zip(drawn.groups, drawn.mine))[:prompts]:
        chosen = set(idx[row].tolist())
        for i, c in enumerate(group.completions):
            rows.append({"prompt": group.prompt, "completion": c.text,
                         "reward": float(drawn.scored.rewards[row, i]),
                         "correct": bool(drawn.scored.correct[row, i]),
                         "selected": i in chosen, "trained": bool(drawn.keep[row])})
    return rows


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
        self.seconds[f"t_{name}"] = self.seconds.get(f"t_{name}", 0.0) + \
            time.perf_counter() - start
