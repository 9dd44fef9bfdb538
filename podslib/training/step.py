"""One training step of GRPO / GRPO-PODS, phase by phase (docs/method.md; Xu et al. 2025,
Algorithm 1). This is the one description of a step; the trainer (`Trainer.step`) runs it:

    drawn  = draw(engine, data, cfg, pos, step, info, timer)   # generate n per prompt, score
                                                              # (refill rounds: group filter)
    chosen = select_batch(drawn, cfg, step, pad_id)            # m of n [G, m], advantages,
                                                              # this rank's training batch
    stats  = update(policy, ..., chosen.batch, ...)            # mu optimizer steps
                                                              # (podslib.training.update)
    sync(engine, policy, rollout_policy)                       # the engine samples the new policy
    record = step_metrics(timer, drawn, chosen, stats, lr)     # one line of metrics.jsonl

Each phase is timed (`PhaseTimer`); the training clock is their sum. Prompts of a step come from
the data position alone and sampling seeds from (seed, step, round, global prompt index), so the
rollouts depend neither on the rank split nor on an interruption. Rewards are gathered over ranks
and selection runs on the full [G, n] rewards, identically on every rank, so the rank split never
changes what is kept. `METRICS` lists the keys of every step's record.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass

import torch
from torch import Tensor, nn

from podslib.config import Config
from podslib.core.advantages import group_advantages
from podslib.core.selection import FILTERS, select, subset_variance
from podslib.rollout import Engine, Group, SamplingParams
from podslib.seeding import derive_seed
from podslib.tasks.rewards import score_batch
from podslib.training import distributed as D
from podslib.training.batch import Batch, build_batch
from podslib.training.data import Data, prompt_indices

# The keys of every line of metrics.jsonl (besides step, wall_s and train_time_s, which the
# trainer adds): phase seconds, rollout statistics over all G prompts, what was trained, and the
# update's statistics (means over its mu optimizer steps).
METRICS = (
    "t_generate", "t_score", "t_select", "t_update", "t_sync",
    "reward_mean_all", "reward_std_all", "reward_mean_sel", "reward_std_sel", "sel_var",
    "zero_var_frac", "accuracy_all", "tokens_generated", "completion_len", "trunc_rate",
    "gen_rounds", "groups_trained", "tokens_trained",
    "loss", "kl", "clip_frac", "entropy", "grad_norm", "blank_micro_batches", "lr",
)


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


def generate(engine: Engine, prompts: list[str], cfg: Config, seeds: list[int]) -> list[Group]:
    """n rollouts per prompt; prompt i samples from seeds[i] only (with the sampler's log-probs
    when an importance correction needs them)."""
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_tokens,
                              logprobs=cfg.is_correction != "none")
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


@dataclass
class Drawn:
    """The rollouts of one step: every round of generation, gathered over ranks."""

    groups: list[Group]           # this rank's groups, in the order of `mine`
    mine: list[int]               # their rows in `scored`
    scored: Scored                # [G, n] over all rounds and ranks
    keep: Tensor                  # [G] bool: the groups trained (passed the filter, in budget)
    rounds: int
    prompts_drawn: int            # data positions used (prompts_per_step per round)


def draw(engine: Engine, data: Data, cfg: Config, pos: int, step: int, info: D.DistInfo,
         timer: PhaseTimer) -> Drawn:
    """Generate and score rounds of prompts_per_step new prompts, from data position `pos`,
    until prompts_per_step groups pass group_filter, at most 1 + refill_rounds rounds (DAPO
    dynamic sampling; one round when nothing is filtered). Each rank takes its share of every
    round."""
    g, total = cfg.prompts_per_step // info.world_size, cfg.prompts_per_step
    groups, mine, scored, keep = [], [], [], []
    for r in range(cfg.refill_rounds + 1):
        chosen = prompt_indices(pos + r * total, total, len(data.prompts), cfg.seed)
        local = chosen[info.rank * g:(info.rank + 1) * g]
        seeds = [derive_seed(cfg.seed, "rollout", step, r, info.rank * g + j) for j in range(g)]
        with timer("generate"):
            new = generate(engine, [data.prompts[i] for i in local], cfg, seeds)
        with timer("score"):
            scored.append(score(new, [data.golds[i] for i in local], cfg))
        groups += new
        mine += [r * total + info.rank * g + j for j in range(g)]
        need = total - sum(int(k.sum()) for k in keep)
        ok = passing(scored[-1].rewards, cfg)
        keep.append(ok & (ok.cumsum(0) <= need))
        if int(keep[-1].sum()) == need:
            break
    return Drawn(groups, mine, Scored.cat(scored), torch.cat(keep), r + 1, (r + 1) * total)


@dataclass
class Chosen:
    """The selected rollouts of a step and this rank's training batch."""

    idx: Tensor                   # [G, m] indices into the n rollouts of each prompt
    adv: Tensor                   # [G, m] advantages
    train: Tensor                 # [G, m] bool: trained (group kept, not a masked truncation)
    batch: Batch                  # this rank's trained rows
    sequences: int                # trained rows over all ranks (the loss normalisers)
    tokens: int                   # their completion tokens


def select_batch(drawn: Drawn, cfg: Config, step: int, pad_id: int) -> Chosen:
    """Select m of the n rollouts of every prompt, their advantages, and this rank's batch of
    the trained ones (with the global sequence and token counts)."""
    idx, adv = select_rollouts(drawn.scored.rewards, cfg, step)
    train = drawn.keep[:, None].expand_as(idx).clone()                      # [G, m]
    if cfg.mask_truncated_completions:
        train &= drawn.scored.truncated.gather(1, idx) == 0
    mine = drawn.mine
    batch = build_batch(drawn.groups, idx[mine], adv[mine], train[mine], pad_id)
    tokens = int(drawn.scored.lengths.gather(1, idx)[train].sum())
    return Chosen(idx, adv, train, batch, int(train.sum()), tokens)


def sync(engine: Engine, policy: nn.Module, rollout_policy: nn.Module) -> None:
    """Make the engine sample from the updated policy (vLLM: push merged weights). Under fsdp
    the engine samples from an unsharded copy, first refreshed with the gathered trainable
    weights (every rank takes part)."""
    if rollout_policy is not policy:
        D.copy_trainable(policy, rollout_policy)
    engine.sync_weights(rollout_policy)


def step_metrics(timer: PhaseTimer, drawn: Drawn, chosen: Chosen, stats: dict,
                 lr: float) -> dict[str, float | None]:
    """The step's record (the keys of METRICS): phase seconds, rollout statistics, what was
    trained, the update's statistics and the learning rate it used."""
    return {**timer.seconds, **rollout_metrics(drawn.scored, drawn.keep, chosen.idx),
            "gen_rounds": drawn.rounds, "groups_trained": int(drawn.keep.sum()),
            "tokens_trained": chosen.tokens, **stats, "lr": lr}


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


def completion_rows(drawn: Drawn, idx: Tensor, prompts: int) -> list[dict]:
    """The rollouts of the first `prompts` groups of this rank in a step as
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
