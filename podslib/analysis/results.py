"""Run folders loaded into pandas frames, and the summary table of an experiment.

A run folder is `results/<experiment>/<run_id>/` (run_id = '<variant>-s<seed>') holding what
`podslib.training.trainer.train` writes (see `podslib.rundir`) plus the executed notebook. A run is
complete when summary.json exists.

Seed aggregation, the paper's speedup, bootstrap intervals and verdicts are computed by
`podslib.analysis.stats` (one implementation, generic over the x axis: train_time_s or step); this module
turns run folders into pandas frames and those statistics into the summary table.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podslib.analysis import stats as S
from podslib.config import load_yaml
from podslib.files import atomic_write
from podslib.rundir import find_runs, is_complete, read_log

PHASES = ("t_generate", "t_score", "t_select", "t_update", "t_sync")
RUN_COLUMNS = ("experiment", "variant", "seed", "run_id", "n", "m", "rule", "complete")


# ----------------------------------------------------------------------------------------------
# loading runs into pandas
# ----------------------------------------------------------------------------------------------

def _run_info(run_dir: Path) -> dict[str, Any]:
    cfg = load_yaml(run_dir / "config.yaml")
    if not isinstance(cfg, dict):
        raise ValueError(f"config file {str(run_dir / 'config.yaml')!r} is empty or not a "  # noqa: TRY004
                         "mapping")
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


def _frame(runs: list[Path], filename: str, skip_damaged: bool = True) -> pd.DataFrame:
    """The records of `filename` of every run, with the run columns; a damaged run (its config
    or log unreadable) is left out with one line naming the file, unless not `skip_damaged`."""
    rows = []
    for run in runs:
        try:
            info = _run_info(run)
            rows += [{**info, **rec} for rec in read_log(run / filename)]
        except ValueError as err:
            if not skip_damaged:
                raise
            print(f"left out (a damaged run): {err}", file=sys.stderr)
    if not rows:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "step", "train_time_s"])
    return pd.DataFrame(rows)


def load_run(run_dir: str | Path, filename: str = "eval.jsonl") -> pd.DataFrame:
    """One run's records of `filename` (eval.jsonl or metrics.jsonl) with the run columns."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no config.yaml")
    return _frame([run_dir], filename, skip_damaged=False)


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

def aggregate(curves: pd.DataFrame, value: str = "accuracy", x: str = "train_time_s"
              ) -> pd.DataFrame:
    """Seed statistics per variant on its common grid (`stats.arm`): one row per (variant, x)
    with mean, std (ddof 1; 0 for one seed), sem, min, max, seeds."""
    out = []
    for variant, runs in curves.groupby("variant", sort=False):
        a = S.arm(runs, x, value)
        k = len(a.seeds)
        std = a.values.std(axis=0, ddof=1) if k > 1 else np.zeros(len(a.x))
        out.append(pd.DataFrame({
            "variant": variant, x: a.x, "mean": a.values.mean(axis=0), "std": std,
            "sem": std / math.sqrt(k), "min": a.values.min(axis=0),
            "max": a.values.max(axis=0), "seeds": k}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["variant", x, "mean", "std", "sem", "min", "max", "seeds"])


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


def _put(row: dict, name: str, est: S.Estimate) -> None:
    row.update({name: est.value, f"{name}_ci_low": est.low, f"{name}_ci_high": est.high,
                f"{name}_verdict": est.verdict})
    if est.at_most is not None:
        row[f"{name}_at_most"] = est.at_most


def comparison(base: pd.DataFrame, runs: pd.DataFrame, frac: float = 0.99, paired: bool = True,
               n_boot: int = S.N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The summary columns of one variant's evaluation rows `runs` against the baseline's
    `base`: wall-clock (speedup*) and per-step (step_speedup*) speedups, peak and final
    differences (peak_diff*, final_diff*), each with ci_low, ci_high and verdict (speedups also
    with at_most: the censoring bound when the variant never reached the threshold); the step-cost
    ratio and the wall-clock speedup it predicts from the per-step curves (predicted_speedup*,
    prediction_in_ci: inside the measured wall-clock interval); at equal steps, both arms cut at
    the shorter one's step horizon: equal_steps_speedup* (threshold 99% of the baseline's peak
    within those steps) and equal_steps_diff* (accuracy difference at that step)."""
    step_base, step_runs = S.arm(base, "step"), S.arm(runs, "step")
    wall, _ = S.compare(S.arm(base), S.arm(runs), paired, frac, n_boot, seed)
    step, step_reps = S.compare(step_base, step_runs, paired, frac, n_boot, seed)
    horizon = min(step_runs.x[-1], step_base.x[-1])
    equal, _ = S.compare(S.truncate(step_base, horizon), S.truncate(step_runs, horizon), paired,
                         frac, n_boot, seed)
    cost = S.seconds_per_step(runs) / S.seconds_per_step(base)
    row: dict[str, Any] = {"cost_ratio": cost}
    for name, est in [("speedup", wall["speedup"]), ("step_speedup", step["speedup"]),
                      ("peak_diff", wall["peak_diff"]), ("final_diff", wall["final_diff"]),
                      ("equal_steps_speedup", equal["speedup"]),
                      ("equal_steps_diff", equal["final_diff"])]:
        _put(row, name, est)
    check = S.regime_check(step["speedup"], step_reps, wall["speedup"], cost) \
        if math.isfinite(cost) else {}
    row.update({"predicted_speedup": check.get("predicted", math.nan),
                "predicted_speedup_at_most": check.get("predicted_at_most", math.nan),
                "predicted_speedup_ci_low": check.get("predicted_ci_low", math.nan),
                "predicted_speedup_ci_high": check.get("predicted_ci_high", math.nan),
                "prediction_in_ci": check.get("inside_measured_ci", "")})
    return row


def _variant_row(runs: pd.DataFrame, times: pd.DataFrame | None) -> dict[str, Any]:
    """The columns of one variant that need no baseline."""
    a = S.arm(runs)
    first = runs.iloc[0]
    t = times.loc[first["variant"]] if times is not None and first["variant"] in times.index \
        else pd.Series(dtype=float)
    steps = runs.sort_values("step").groupby("seed")["step"].last()
    return {
        "variant": first["variant"], "n": int(first["n"]), "m": int(first["m"]),
        "rule": first["rule"], "seeds": len(a.seeds), "steps": float(steps.mean()),
        "s_per_step": S.seconds_per_step(runs),
        "generate_s": float(t.get("t_generate", math.nan)),
        "update_s": float(t.get("t_update", math.nan)),
        "peak_acc": float(S.peak(a.x, a.values.mean(axis=0)[None])[0]),
        "final_acc": float(a.last.mean()),
        "final_acc_std": float(a.last.std(ddof=1)) if len(a.last) > 1 else 0.0}


def _baseline_columns(base: pd.DataFrame, runs: pd.DataFrame, is_base: bool, frac: float,
                      **boot) -> dict[str, Any]:
    """Threshold time, per-seed speedups (paired only: seed s against seed s) and the
    comparison columns ('baseline' verdicts on the baseline's own row)."""
    b, a = S.arm(base), S.arm(runs)
    head = S.speedup(b.x, b.values.mean(axis=0), a.x, a.values.mean(axis=0), frac)
    per_seed = S.seed_speedups(b, a, frac)["speedup"] if boot["paired"] else []
    row = {"t_threshold_s": head["x_method"],
           "speedup_per_seed": " ".join("never" if x == 0 else f"{x:.2f}" for x in per_seed)}
    if is_base:                        # itself, paired: 1x and 0 points, exactly
        row.update(comparison(base, runs, frac, **{**boot, "paired": True}))
        row.update({k: "baseline" for k in row if k.endswith("_verdict")})
    else:
        row.update(comparison(base, runs, frac, **boot))
    return row


def summary_table(curves: pd.DataFrame, metrics: pd.DataFrame, baseline: str | None = "grpo",
                  frac: float = 0.99, paired: bool = True, n_boot: int = S.N_BOOT,
                  seed: int = 0) -> pd.DataFrame:
    """One row per variant, ordered by n, then m descending (the order of the ablations): n, m,
    rule, seeds, steps, s_per_step (train_time_s / step), generate_s and update_s (metrics),
    peak accuracy of the seed-mean curve (x > 0), final accuracy (mean and std over seeds), and
    against `baseline` (nothing when None): time to its threshold, per-seed speedups when
    `paired` ('never' when a seed never reached it) and the `comparison` columns (95% bootstrap
    intervals over seeds, `paired` or not, `n_boot` resamples from `seed`)."""
    if baseline is not None and baseline not in set(curves["variant"]):
        got = sorted(set(curves["variant"]))
        raise ValueError(f"baseline must be one of the variants {got}; got {baseline!r}")
    times = step_times(metrics) if len(metrics) else None
    base = curves[curves["variant"] == baseline] if baseline is not None else None
    rows = []
    for variant, runs in curves.groupby("variant", sort=False):
        row = _variant_row(runs, times)
        if base is not None:
            row.update(_baseline_columns(base, runs, variant == baseline, frac, paired=paired,
                                         n_boot=n_boot, seed=seed))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["n", "m", "variant"], ascending=[True, False, True],
                             ignore_index=True)


def regime_maps(curves: pd.DataFrame, table: pd.DataFrame, baseline: str, frac: float = 0.99,
                paired: bool = True, n_boot: int = S.N_BOOT, seed: int = 0,
                costs: np.ndarray | None = None
                ) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """The cost-regime map of every down-sampling variant (n > m) of `table` (a
    `summary_table`) against `baseline`: {variant: `stats.regime` table over `costs` (default
    `stats.cost_grid` of its measured c)} and {variant: the measured point (cost_ratio,
    speedup, ci_low, ci_high)}; empty when the baseline is absent."""
    maps, measured = {}, {}
    if baseline not in set(curves["variant"]):
        return maps, measured
    base = curves[curves["variant"] == baseline]
    for _, row in table[table["n"] > table["m"]].iterrows():
        runs = curves[curves["variant"] == row["variant"]]
        est, reps = S.compare(S.arm(base, "step"), S.arm(runs, "step"), paired, frac, n_boot,
                              seed)
        grid = S.cost_grid(row["cost_ratio"]) if costs is None else costs
        maps[row["variant"]] = S.regime(est["speedup"], reps, grid)
        measured[row["variant"]] = {"cost_ratio": row["cost_ratio"], "speedup": row["speedup"],
                                    "ci_low": row["speedup_ci_low"],
                                    "ci_high": row["speedup_ci_high"]}
    return maps, measured


def _ratio(value: float, low: float, high: float, at_most: float = math.nan) -> str:
    """'1.50x [1.20, 1.80]', or 'never (< 1.67x) [0.00, 1.71]' when censored."""
    if math.isnan(value):
        return "-"
    point = f"never (< {at_most:.2f}x)" if value == 0 and at_most > 0 else f"{value:.2f}x"
    return f"{point} [{low:.2f}, {high:.2f}]"


def _get(row: pd.Series, name: str) -> list[float]:
    """Value, ci_low, ci_high (and at_most, when the table has it) of one summary estimate."""
    return [float(row.get(f"{name}{s}", math.nan)) for s in ("", "_ci_low", "_ci_high", "_at_most")]


def _points(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def compact_table(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict columns of a `summary_table` as short strings indexed by variant, for a
    notebook pane or a terminal: accuracy in %, differences in points, speedups as
    'value x [95% CI]'."""
    out = []
    for _, row in table.iterrows():
        line = {"variant": row["variant"], "n/m": f"{row['n']}/{row['m']}",
                "seeds": row["seeds"], "peak": f"{100 * row['peak_acc']:.1f}%"}
        if "speedup" in table.columns:
            line.update({
                "peak diff (pt)": _points(*_get(row, "peak_diff")[:3]),
                "per-step speedup": _ratio(*_get(row, "step_speedup")),
                "verdict (step)": row["step_speedup_verdict"],
                "at equal steps": _ratio(*_get(row, "equal_steps_speedup")),
                "verdict (equal steps)": row["equal_steps_speedup_verdict"],
                "wall-clock speedup": _ratio(*_get(row, "speedup")),
                "verdict (wall)": row["speedup_verdict"]})
        out.append(line)
    return pd.DataFrame(out).set_index("variant")


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """The step-cost columns of a `summary_table` as short strings indexed by variant: s/step, the
    step-cost ratio c, the wall-clock speedup predicted at c from the per-step curves and
    whether it lies inside the measured wall-clock interval; and the equal-steps speedup / c
    and / the paper's c: the wall-clock speedup to the level both arms reach in steps, at each
    cost (exact for a fixed level: time = steps x s/step)."""
    out = []
    for _, row in table.iterrows():
        line = {"variant": row["variant"], "s/step": f"{row['s_per_step']:.3g}"}
        if "predicted_speedup" in table.columns:
            equal, c = _get(row, "equal_steps_speedup"), row["cost_ratio"]
            if row["speedup_verdict"] == "baseline":
                equal = [math.nan] * 4
            line.update({"c": f"{c:.2f}",
                         "predicted at c": _ratio(*_get(row, "predicted_speedup")),
                         "measured": _ratio(*_get(row, "speedup")),
                         "inside": row["prediction_in_ci"],
                         "equal steps / c": _ratio(*(v / c for v in equal)),
                         f"equal steps / {S.PAPER_COST}": _ratio(*(v / S.PAPER_COST
                                                                   for v in equal))})
        out.append(line)
    return pd.DataFrame(out).set_index("variant")


def report_text(table: pd.DataFrame, experiment: str, baseline: str | None) -> str:
    """Per variant, the per-step and wall-clock speedups with intervals and verdicts (the
    `compact_table` columns that say it), under a header line, as plain text for a terminal."""
    keep = ["variant", "n/m", "seeds", "per-step speedup", "verdict (step)", "at equal steps",
            "verdict (equal steps)",
            "wall-clock speedup", "verdict (wall)"]
    compact = compact_table(table).reset_index()
    head = (f"{experiment}: speedups over {baseline} (95% bootstrap intervals over seeds)"
            if "speedup" in table.columns
            else f"{experiment}: no baseline {baseline!r} among the variants, no speedups")
    return head + "\n" + compact[[c for c in keep if c in compact.columns]].to_string(index=False)


def read_summary(exp_dir: str | Path, name: str = "summary") -> pd.DataFrame:
    """The summary table written by `write_summary` (<name>.csv in `exp_dir`)."""
    path = Path(exp_dir) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no summary {str(path)!r}; run `pods report` first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


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
