"""Offline rollout analysis (notebooks 01 and 02): sample n rollouts per prompt once, save them,
then study the down-sampling rules on the saved rewards without any training.

Saved rollouts (`save_rollouts`): rollouts.npz with rewards, correct, lengths ([G, n] each) and
rollouts.jsonl with one line per prompt (prompt, gold, completions).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from podslib.config import Config
from podslib.core.advantages import group_advantages
from podslib.core.selection import RULES, select, subset_variance
from podslib.files import atomic_write
from podslib.models.loading import load_policy
from podslib.rollout import SamplingParams, make_engine
from podslib.seeding import derive_seed
from podslib.tasks.rewards import score_batch
from podslib.tasks.templates import build_prompts
from podslib.training.data import load_examples
from podslib.training.warmstart import policy_path

ARRAYS = ("rewards", "correct", "lengths")


def sample_rollouts(cfg: Config, num_prompts: int, n: int) -> dict[str, Any]:
    """n rollouts for each of `num_prompts` training prompts of `cfg` (its model, warm-start,
    engine, sampling and reward settings; prompts drawn with cfg.seed). Returns rewards,
    correct, lengths ([G, n] numpy arrays), prompts, golds and texts ([G][n])."""
    if not isinstance(num_prompts, int) or num_prompts < 1:
        raise ValueError(f"num_prompts must be an integer >= 1; got {num_prompts!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    model_path = policy_path(cfg)
    policy, tokenizer = load_policy(model_path, dtype=cfg.dtype, device=cfg.device)
    policy.eval()
    examples = load_examples(cfg, "train")
    order = np.random.default_rng(cfg.seed).permutation(len(examples))[:num_prompts]
    prompts, kept, _, longest = build_prompts([examples[i] for i in order], cfg.template,
                                              tokenizer, cfg.max_prompt_tokens)
    engine = make_engine(cfg.engine, model_path=model_path, policy=policy, tokenizer=tokenizer,
                         device=cfg.device, dtype=cfg.dtype, seed=cfg.seed,
                         gpu_memory_utilization=cfg.gpu_memory_utilization,
                         kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
                         enforce_eager=cfg.enforce_eager,
                         max_model_len=longest + cfg.max_completion_tokens,
                         max_num_seqs=max(len(prompts) * n, 1))
    try:
        sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_tokens=cfg.max_completion_tokens)
        seeds = [derive_seed(cfg.seed, "offline", i) for i in range(len(prompts))]
        groups = engine.generate(prompts, n=n, sampling=sampling, seeds=seeds)
    finally:
        engine.close()
    texts = [[c.text for c in g.completions] for g in groups]
    golds = [e.gold for e in kept]
    rewards, terms = score_batch(texts, golds, cfg.task, weights=cfg.reward_weights)
    lengths = [[len(c.token_ids) for c in g.completions] for g in groups]
    return {"rewards": rewards.numpy(), "correct": terms["correctness"].numpy(),
            "lengths": np.asarray(lengths), "prompts": prompts, "golds": golds, "texts": texts}


def save_rollouts(rollouts: dict[str, Any], out_dir: str | Path) -> Path:
    """Write rollouts.npz and rollouts.jsonl into `out_dir` (atomically); returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = io.BytesIO()
    np.savez_compressed(arrays, **{k: rollouts[k] for k in ARRAYS})
    atomic_write(out_dir / "rollouts.npz", arrays.getvalue())
    lines = [json.dumps({"prompt": p, "gold": g, "completions": t})
             for p, g, t in zip(rollouts["prompts"], rollouts["golds"], rollouts["texts"])]
    atomic_write(out_dir / "rollouts.jsonl", "\n".join(lines) + "\n")
    return out_dir


def save_tables(out_dir: str | Path, **tables: pd.DataFrame) -> None:
    """Write each table as <name>.csv in `out_dir`, atomically and in the order given (so the
    last one marks a complete set)."""
    for name, table in tables.items():
        atomic_write(Path(out_dir) / f"{name}.csv", table.to_csv(index=False))


def load_rollouts(out_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays saved by `save_rollouts` (rewards, correct, lengths: [G, n])."""
    path = Path(out_dir) / "rollouts.npz"
    if not path.is_file():
        raise FileNotFoundError(f"rollouts file {str(path)!r} does not exist; run notebook "
                                "01_rollouts with this out_dir first")
    with np.load(path) as data:
        return {k: data[k] for k in ARRAYS}


def zero_variance_fraction(rewards: np.ndarray, sizes: Sequence[int]) -> pd.DataFrame:
    """rewards [G, n]: for each group size k in `sizes` (<= n), the fraction of groups whose first
    k rewards are all equal (they give all-zero advantages: no gradient). Rollouts are i.i.d., so
    the first k are a fair sample of size k."""
    rewards = np.asarray(rewards)
    rows = []
    for k in sizes:
        if not 1 <= k <= rewards.shape[1]:
            raise ValueError(f"sizes must lie in 1..n = {rewards.shape[1]}; got {k}")
        part = rewards[:, :k]
        rows.append({"group_size": k,
                     "zero_var_frac": float((part.max(1) == part.min(1)).mean())})
    return pd.DataFrame(rows)


def rule_statistics(rewards: np.ndarray, m_values: Sequence[int], rules: Sequence[str],
                    seed: int = 0) -> pd.DataFrame:
    """Apply each rule with each m to saved rewards [G, n]. One row per (rule, m): the mean
    selected variance (unbiased), mean |advantage| (group-normalised within the m), the fraction
    of groups left with a gradient (selected rewards not all equal) and the mean selected reward."""
    r = torch.as_tensor(np.asarray(rewards), dtype=torch.float32)
    rows = []
    for rule in rules:
        RULES.check(rule)
        for m in m_values:
            idx = select(r, m, rule, generator=torch.Generator().manual_seed(seed))
            sel = r.gather(1, idx)
            rows.append({"rule": rule, "m": m,
                         "sel_var": float(subset_variance(r, idx).mean()),
                         "adv_abs": float(group_advantages(sel).abs().mean()),
                         "with_gradient": float((sel.amax(1) > sel.amin(1)).float().mean()),
                         "reward_sel": float(sel.mean())})
    return pd.DataFrame(rows)


def selection_timing(n_values: Sequence[int], m: int, rules: Sequence[str], groups: int = 64,
                     repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Seconds per `select` call on [groups, n] uniform random rewards (best of `repeats`), one
    row per (rule, n) with n >= m."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in n_values:
        if n < m:
            continue
        r = torch.rand(groups, n, generator=gen)
        for rule in rules:
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                select(r, m, rule, generator=gen)
                best = min(best, time.perf_counter() - start)
            rows.append({"rule": rule, "n": n, "seconds": best})
    return pd.DataFrame(rows)
