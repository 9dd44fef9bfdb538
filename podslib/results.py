"""Runs loaded into pandas, seed aggregation, the paper's speedup and the summary tables.

A run folder is `results/<experiment>/<run_id>/` (run_id = '<variant>-s<seed>') holding what
`podslib.trainer.train` writes (see `podslib.rundir`) plus the executed notebook. A run is
complete when summary.json exists.

Aggregation over seeds (`aggregate`): each seed's accuracy curve is a step function, the accuracy
of its latest evaluation at or before time t ("hold last": what you would have if training
stopped at t). Per variant, the common time grid is the union of the seeds' evaluation times up
to the earliest last evaluation, so every grid point averages all seeds and no curve is
extrapolated; on that grid the mean curve is exact (no interpolation error).

Speedup (the paper's definition): threshold = 0.99 * the baseline's (GRPO's) peak accuracy; speedup = time
for the baseline to first reach the threshold / time for the method to first reach that same
threshold, both measured at evaluation times (no interpolation between evaluations). Headline:
on the seed-mean curves. Per seed: GRPO seed s is paired with PODS seed s (same data order,
same evaluation seed), with the threshold from GRPO seed s's own peak.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import load_yaml
from .files import atomic_write
from .rundir import find_runs, is_complete, read_log

PHASES = ("t_generate", "t_score", "t_select", "t_update", "t_sync")
RUN_COLUMNS = ("experiment", "variant", "seed", "run_id", "n", "m", "rule", "complete")


# ----------------------------------------------------------------------------------------------
# loading runs into pandas
# ----------------------------------------------------------------------------------------------

def _run_info(run_dir: Path) -> dict[str, Any]:
    cfg = load_yaml(run_dir / "config.yaml")
    seed = int(cfg.get("seed", 0))
    n, m = int(cfg.get("n", 0)), int(cfg.get("m", 0))
    suffix = f"-s{seed}"
    variant = run_dir.name.removesuffix(suffix)
    return {"experiment": cfg.get("experiment", run_dir.parent.name), "variant": variant,
            "seed": seed, "run_id": run_dir.name, "n": n, "m": m,
            "rule": "none" if n == m else cfg.get("rule", "max_variance"),
            "complete": is_complete(run_dir)}


def _exp_dirs(root: str | Path, experiment: str | None) -> list[Path]:
    root = Path(root)
    if experiment is not None:
        return [root / experiment]
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _frame(runs: list[Path], filename: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        info = _run_info(run)
        rows += [{**info, **rec} for rec in read_log(run / filename)]
    if not rows:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "step", "train_time_s"])
    return pd.DataFrame(rows)


def load_run(run_dir: str | Path, filename: str = "eval.jsonl") -> pd.DataFrame:
    """One run's records of `filename` (eval.jsonl or metrics.jsonl) with the run columns."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no config.yaml")
    return _frame([run_dir], filename)


def load_runs(root: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """Evaluation curves of every run under `root` (or `root/experiment`): one row per
    evaluation with experiment, variant, seed, run_id, n, m, rule, complete, step,
    train_time_s, accuracy, ... (eval.jsonl keys)."""
    return _frame([r for d in _exp_dirs(root, experiment) for r in find_runs(d)], "eval.jsonl")


def load_metrics(root: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """Per-step training metrics (metrics.jsonl) of every run, with the same run columns."""
    return _frame([r for d in _exp_dirs(root, experiment) for r in find_runs(d)],
                  "metrics.jsonl")


# ----------------------------------------------------------------------------------------------
# seed aggregation
# ----------------------------------------------------------------------------------------------

def hold_last(t: np.ndarray, acc: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Step-function value at each `grid` time: acc of the latest t <= grid time; NaN before the
    first and after the last evaluation. t: [k] ascending, acc: [k], grid: [g] -> [g]."""
    t, acc, grid = np.asarray(t, float), np.asarray(acc, float), np.asarray(grid, float)
    pos = np.searchsorted(t, grid, side="right") - 1
    out = acc[np.clip(pos, 0, len(acc) - 1)].astype(float)
    out[(pos < 0) | (grid > t[-1])] = np.nan
    return out


def aggregate(curves: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Seed statistics per variant on the common grid (see module docstring): one row per
    (variant, train_time_s) with mean, std (ddof 1; 0 for one seed), sem, min, max, seeds."""
    out = []
    for variant, runs in curves.groupby("variant", sort=False):
        per_seed = [g.sort_values("train_time_s") for _, g in runs.groupby("seed")]
        end = min(g["train_time_s"].iloc[-1] for g in per_seed)
        grid = np.unique(np.concatenate([g["train_time_s"].to_numpy() for g in per_seed]))
        grid = grid[grid <= end]
        vals = np.stack([hold_last(g["train_time_s"], g[value], grid) for g in per_seed])  # [S, g]
        k = vals.shape[0]
        std = vals.std(axis=0, ddof=1) if k > 1 else np.zeros(len(grid))
        out.append(pd.DataFrame({
            "variant": variant, "train_time_s": grid, "mean": vals.mean(axis=0), "std": std,
            "sem": std / math.sqrt(k), "min": vals.min(axis=0), "max": vals.max(axis=0),
            "seeds": k}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["variant", "train_time_s", "mean", "std", "sem", "min", "max", "seeds"])


# ----------------------------------------------------------------------------------------------
# speedup to 99% of the baseline's peak
# ----------------------------------------------------------------------------------------------

def time_to_reach(t: np.ndarray, acc: np.ndarray, threshold: float) -> float:
    """First evaluation time with acc >= threshold; inf when never reached."""
    hit = np.flatnonzero(np.asarray(acc, float) >= threshold)
    return float(np.asarray(t, float)[hit[0]]) if hit.size else math.inf


def speedup(base_t: np.ndarray, base_acc: np.ndarray, t: np.ndarray, acc: np.ndarray,
            frac: float = 0.99) -> dict[str, float]:
    """The paper's speedup of curve (t, acc) over the baseline curve (base_t, base_acc).

    threshold = frac * max(base_acc); speedup = time_to_reach(baseline) / time_to_reach(method).
    Edge cases: method never reaches it -> 0.0; both at time 0 -> nan; only the method at 0 ->
    inf. Returns threshold, t_base, t_method, speedup.
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1]; got {frac!r}")
    threshold = frac * float(np.max(base_acc))
    t_base = time_to_reach(base_t, base_acc, threshold)
    t_method = time_to_reach(t, acc, threshold)
    if math.isinf(t_method):
        ratio = 0.0
    elif t_method == 0:
        ratio = math.nan if t_base == 0 else math.inf
    else:
        ratio = t_base / t_method
    return {"threshold": threshold, "t_base": t_base, "t_method": t_method, "speedup": ratio}


def seed_speedups(curves: pd.DataFrame, baseline: str, variant: str,
                  frac: float = 0.99) -> pd.DataFrame:
    """Per-seed speedups of `variant` over `baseline`, pairing equal seeds (seeds present in
    only one of them are left out): one row per seed with threshold, t_base, t_method, speedup."""
    rows = []
    base = {s: g.sort_values("train_time_s") for s, g in
            curves[curves["variant"] == baseline].groupby("seed")}
    for seed, g in curves[curves["variant"] == variant].groupby("seed"):
        if seed in base:
            g = g.sort_values("train_time_s")
            b = base[seed]
            rows.append({"seed": seed, **speedup(b["train_time_s"], b["accuracy"],
                                                  g["train_time_s"], g["accuracy"], frac)})
    return pd.DataFrame(rows, columns=["seed", "threshold", "t_base", "t_method", "speedup"])


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def step_times(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per step of each phase, per variant (index), plus 'total' and 'steps'
    (mean number of steps per run)."""
    cols = [p for p in PHASES if p in metrics.columns]
    table = metrics.groupby("variant", sort=False)[cols].mean()
    table["total"] = table[cols].sum(axis=1)
    table["steps"] = metrics.groupby(["variant", "seed"], sort=False)["step"].max() \
        .groupby("variant", sort=False).mean()
    return table


def summary_table(curves: pd.DataFrame, metrics: pd.DataFrame, baseline: str | None = "grpo",
                  frac: float = 0.99) -> pd.DataFrame:
    """One row per variant, ordered by n, then m descending (the order of the ablations): n, m,
    rule, seeds, steps, s/step (generate, update), peak accuracy of the seed-mean curve, final
    accuracy (mean and std over seeds), time to the threshold and the speedup over `baseline`
    (mean curves, and per seed: 'never' when that seed never reached the threshold; NaN / empty
    when baseline is None)."""
    if baseline is not None and baseline not in set(curves["variant"]):
        got = sorted(set(curves["variant"]))
        raise ValueError(f"baseline must be one of the variants {got}; got {baseline!r}")
    agg = aggregate(curves)
    times = step_times(metrics) if len(metrics) else None
    b = agg[agg["variant"] == baseline] if baseline is not None else None
    rows = []
    for variant, runs in curves.groupby("variant", sort=False):
        a = agg[agg["variant"] == variant]
        finals = runs.sort_values("train_time_s").groupby("seed")["accuracy"].last()
        head = (speedup(b["train_time_s"], b["mean"], a["train_time_s"], a["mean"], frac)
                if b is not None else {"t_method": math.nan, "speedup": math.nan})
        per_seed = (seed_speedups(curves, baseline, variant, frac)["speedup"]
                    if b is not None else [])
        first = runs.iloc[0]
        t = times.loc[variant] if times is not None and variant in times.index else pd.Series()
        rows.append({
            "variant": variant, "n": int(first["n"]), "m": int(first["m"]), "rule": first["rule"],
            "seeds": int(runs["seed"].nunique()), "steps": float(t.get("steps", math.nan)),
            "s_per_step": float(t.get("total", math.nan)),
            "generate_s": float(t.get("t_generate", math.nan)),
            "update_s": float(t.get("t_update", math.nan)),
            "peak_acc": float(a["mean"].max()), "final_acc": float(finals.mean()),
            "final_acc_std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
            "t_threshold_s": head["t_method"], "speedup": head["speedup"],
            "speedup_per_seed": " ".join("never" if x == 0 else f"{x:.2f}" for x in per_seed),
        })
    table = pd.DataFrame(rows)
    return table.sort_values(["n", "m", "variant"], ascending=[True, False, True],
                             ignore_index=True)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of `df` (floats rounded to `digits`)."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "-" if math.isnan(x) else f"{x:.{digits}f}" if math.isfinite(x) else str(x)
        return str(x)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_summary(table: pd.DataFrame, out_dir: str | Path, name: str = "summary") -> list[Path]:
    """Write `table` as <name>.csv and <name>.md in `out_dir` (atomically); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    atomic_write(csv, table.to_csv(index=False))
    atomic_write(md, markdown_table(table))
    return [csv, md]
