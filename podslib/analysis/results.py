"""Run folders and the experiment record loaded into pandas frames, and the summary tables.

A run folder is `results/<experiment>/<run_id>/` (run_id = '<variant>-s<seed>') holding what
`podslib.training.trainer.train` writes (see `podslib.rundir`) plus the executed notebook. A run is
complete when summary.json exists. Run folders stay local; the experiment record
(`results/<experiment>/runs.csv.gz`, `RECORD`) is their compact copy that is committed: every
evaluation and every step's metrics of every run, with the run's identifying config fields, one
gzip CSV per experiment (docs/results.md). `experiment_record` writes it from the run folders
when there are any and reads it back, so that the tables and figures of an experiment are always
computed from the record: regenerated on a fresh clone (no run folders) they come out the same.

Seed aggregation, the speedup, bootstrap intervals and verdicts are computed by
`podslib.analysis.stats` (one implementation, generic over the x axis: train_time_s or step);
this module turns the runs into pandas frames and those statistics into the summary tables,
their verdicts in words first.
"""

from __future__ import annotations

import gzip
import io
import math
import sys
import textwrap
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
# Config fields copied into every row of the record (besides seed, n, m, rule): the budget, the
# evaluation's sampling, what ran it (the learning rate of each step is a metric, `lr`).
RUN_CONFIG = ("max_steps", "max_train_seconds", "test_size", "eval_repeats", "eval_temperature",
              "eval_greedy", "engine", "task")
RECORD = "runs.csv.gz"
LOGS = {"eval": "eval.jsonl", "step": "metrics.jsonl"}      # record kind -> run log


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
            "complete": is_complete(run_dir), **{k: cfg.get(k) for k in RUN_CONFIG}}


def _exp_dirs(root: str | Path, experiment: str | None) -> list[Path]:
    root = Path(root)
    if experiment is not None:
        return [root / experiment]
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _left_out(err: ValueError) -> None:
    """The one line naming the file of a damaged run (its config or a log unreadable)."""
    print(f"left out (a damaged run): {err}", file=sys.stderr)


def _frame(runs: list[Path], filename: str, skip_damaged: bool = True) -> pd.DataFrame:
    """The records of `filename` of every run, with the run columns; a damaged run is left out
    with one line naming the file, unless not `skip_damaged`."""
    rows = []
    for run in runs:
        try:
            info = _run_info(run)
            rows += [{**info, **rec} for rec in read_log(run / filename)]
        except ValueError as err:
            if not skip_damaged:
                raise
            _left_out(err)
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
# the experiment record: every run's evaluations and steps in one compressed CSV
# ----------------------------------------------------------------------------------------------

def _rounding(column: str) -> tuple[str, int]:
    """How a float column of the record is rounded: ('decimals', k) or ('digits', k)
    significant, or ('none', 0). Clock readings to 1 ms (wall_s, which includes evaluations, to
    10 ms), phase times to 0.1 ms, accuracy to 1e-6 (3,000 problems: steps of 3.3e-4), every
    other metric to 3 significant digits (means over hundreds of steps keep their precision),
    config values as they are."""
    if column in ("train_time_s", "eval_s"):
        return "decimals", 3
    if column == "wall_s":
        return "decimals", 2
    if column.startswith("t_"):
        return "decimals", 4
    if column == "accuracy":
        return "decimals", 6
    return ("none", 0) if column in RUN_CONFIG else ("digits", 3)


def _cells(column: str, values: list) -> list[str]:
    """The CSV cells of one column: '' for missing, ints, bools and text as they are, floats
    rounded (`_rounding`) and written as the shortest text that reads back to the rounded
    value."""
    how, k = _rounding(column)

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, bool | int | str):
            return str(v)
        v = float(v)
        if not math.isfinite(v) or how == "none":
            return repr(v)
        return repr(round(v, k) if how == "decimals" else float(f"{v:.{k}g}"))

    return [cell(v) for v in values]


def record_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """One row per evaluation ('eval') and per step ('step') of each run folder: the record
    kind, the run columns (RUN_COLUMNS, RUN_CONFIG) and the log's own keys. A damaged run is
    left out with one line naming the file."""
    rows = []
    for run in runs:
        try:
            info = _run_info(run)
            rows += [{"record": kind, **info, **rec}
                     for kind, name in LOGS.items() for rec in read_log(run / name)]
        except ValueError as err:
            _left_out(err)
    return rows


def record_bytes(runs: list[Path]) -> bytes:
    """The record of `runs` (run folders) as gzip CSV bytes, the same for the same runs: rows by
    variant (n, then m descending, then name), seed, kind (eval, step) and step; columns the run
    columns, then the logs' keys in the order they first appear; no time stamp in the gzip."""
    rows = sorted(record_rows(runs), key=lambda r: (r["n"], -r["m"], r["variant"], r["seed"],
                                                    r["record"] == "step", r.get("step", 0)))
    columns = list(dict.fromkeys(["record", *RUN_COLUMNS, *RUN_CONFIG,
                                  *(k for row in rows for k in row)]))
    text = io.StringIO()
    table = pd.DataFrame({c: _cells(c, [r.get(c) for r in rows]) for c in columns})
    table.to_csv(text, index=False, lineterminator="\n")
    return gzip.compress(text.getvalue().encode(), compresslevel=9, mtime=0)


def read_record(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation rows (as `load_runs`) and step rows (as `load_metrics`) of a record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment record {str(path)!r}")
    text = gzip.decompress(path.read_bytes()).decode()
    ids = {c: str for c in ("record", "experiment", "variant", "run_id", "rule", "engine",
                            "task")}
    table = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], dtype=ids)
    frames = []
    for kind in LOGS:
        part = table[table["record"] == kind].drop(columns="record")
        empty = [c for c in part.columns if c not in (*RUN_COLUMNS, *RUN_CONFIG)
                 and part[c].isna().all()]
        frames.append(part.drop(columns=empty).infer_objects().reset_index(drop=True))
    return frames[0], frames[1]


def experiment_variants(exp_dir: str | Path) -> list[str]:
    """The variants of an experiment, sorted: from its run folders when there are any, else
    from its record ([] with neither)."""
    exp_dir = Path(exp_dir)
    runs = find_runs(exp_dir)
    if runs or not (exp_dir / RECORD).is_file():
        variants = set()
        for run in runs:
            try:
                variants.add(_run_info(run)["variant"])
            except ValueError:
                pass                        # a damaged run: the record leaves it out, naming it
        return sorted(variants)
    return sorted(set(pd.read_csv(exp_dir / RECORD, usecols=["variant"], dtype=str,
                                  keep_default_na=False)["variant"]))


def experiment_record(exp_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, metrics) of an experiment, read from its record `exp_dir/runs.csv.gz`, which is
    first rewritten (atomically, only when it changes) from the run folders when there are any:
    the record is the one source of every table and figure. Without run folders the committed
    record is read as it is; with neither, FileNotFoundError."""
    exp_dir = Path(exp_dir)
    runs, path = find_runs(exp_dir), exp_dir / RECORD
    if runs:
        data = record_bytes(runs)
        if not path.is_file() or path.read_bytes() != data:
            atomic_write(path, data)
    elif not path.is_file():
        raise FileNotFoundError(f"no runs under {str(exp_dir)!r} and no record {RECORD} there; "
                                "run `pods run CONFIG` first")
    return read_record(path)


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

def variant_order(curves: pd.DataFrame) -> list[str]:
    """The variants in the order of the ablations: by n, then m descending, then name (the
    order of every table, legend and colour of an experiment)."""
    first = curves.drop_duplicates("variant")
    return first.sort_values(["n", "m", "variant"], ascending=[True, False, True],
                             kind="stable")["variant"].tolist()


def step_times(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per variant (index): mean seconds per step of each phase, 'total', 'steps' (mean number
    of steps per run) and 'zero_var_frac' (the mean share of a step's groups whose n rewards
    are all equal, over every step of every run), where the metrics have it."""
    cols = [p for p in PHASES if p in metrics.columns]
    table = metrics.groupby("variant", sort=False)[cols].mean()
    table["total"] = table[cols].sum(axis=1)
    table["steps"] = metrics.groupby(["variant", "seed"], sort=False)["step"].max() \
        .groupby("variant", sort=False).mean()
    if "zero_var_frac" in metrics.columns:
        table["zero_var_frac"] = metrics.groupby("variant", sort=False)["zero_var_frac"].mean()
    return table


def budget_marks(curves: pd.DataFrame, points: int = 5) -> tuple[str, np.ndarray]:
    """The x axis of the experiment's budget and `points` evenly spaced marks from 0 to it:
    optimizer steps when every run has a step budget and no time budget (max_steps,
    max_train_seconds 0), else training seconds up to the time budget all runs share, else up
    to the earliest end of the variants' seed-mean curves."""
    def shared(column: str) -> float:
        if column not in curves.columns:
            return math.nan
        values = set(pd.to_numeric(curves[column], errors="coerce"))
        return float(values.pop()) if len(values) == 1 else math.nan

    steps, seconds = shared("max_steps"), shared("max_train_seconds")
    if seconds == 0 and steps > 0:
        return "step", np.linspace(0, steps, points).round()
    if not seconds > 0:
        seconds = min(S.arm(runs).x[-1] for _, runs in curves.groupby("variant"))
    return "train_time_s", np.linspace(0, seconds, points)


def mark_name(x: str, mark: float) -> str:
    """The summary column of the seed-mean accuracy at a mark: 'acc_step_600', 'acc_45s'."""
    return f"acc_step_{mark:.0f}" if x == "step" else f"acc_{mark:g}s"


def _put(row: dict, name: str, est: S.Estimate) -> None:
    row.update({name: est.value, f"{name}_ci_low": est.low, f"{name}_ci_high": est.high,
                f"{name}_verdict": est.verdict})
    if est.at_most is not None:
        row[f"{name}_at_most"] = est.at_most


def comparison(base: pd.DataFrame, runs: pd.DataFrame, frac: float = 0.99, paired: bool = True,
               n_boot: int = S.N_BOOT, seed: int = 0, crossing: str = "interpolated"
               ) -> dict[str, Any]:
    """The summary columns of one variant's evaluation rows `runs` against the baseline's
    `base`: wall-clock (speedup*) and per-step (step_speedup*) speedups, peak and final
    differences (peak_diff*, final_diff*), each with ci_low, ci_high and verdict (speedups also
    with at_most: the censoring bound when the variant never reached the threshold); the step-cost
    ratio and the wall-clock speedup it predicts from the per-step curves (predicted_speedup*,
    prediction_in_ci: inside the measured wall-clock interval); at equal steps, both arms cut at
    the shorter one's step horizon: equal_steps_speedup* (threshold 99% of the baseline's peak
    within those steps) and equal_steps_diff* (accuracy difference at that step); equal_steps
    (that horizon)."""
    boot = {"paired": paired, "frac": frac, "n_boot": n_boot, "seed": seed, "crossing": crossing}
    step_base, step_runs = S.arm(base, "step"), S.arm(runs, "step")
    wall, _ = S.compare(S.arm(base), S.arm(runs), **boot)
    step, step_reps = S.compare(step_base, step_runs, **boot)
    horizon = min(step_runs.x[-1], step_base.x[-1])
    equal, _ = S.compare(S.truncate(step_base, horizon), S.truncate(step_runs, horizon), **boot)
    cost = S.seconds_per_step(runs) / S.seconds_per_step(base)
    row: dict[str, Any] = {"cost_ratio": cost, "equal_steps": float(horizon)}
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


def _variant_row(runs: pd.DataFrame, times: pd.DataFrame | None, marks: tuple[str, np.ndarray]
                 ) -> dict[str, Any]:
    """The columns of one variant that need no baseline: peak and final of one seed-mean curve
    (so peak >= final), the seed-mean accuracy at the budget's marks."""
    a = S.arm(runs)
    mean = a.values.mean(axis=0)
    first = runs.iloc[0]
    t = times.loc[first["variant"]] if times is not None and first["variant"] in times.index \
        else pd.Series(dtype=float)
    steps = runs.sort_values("step").groupby("seed")["step"].last()
    x, points = marks
    at = S.arm(runs, x)
    at_mean = np.interp(points, at.x, at.values.mean(axis=0), left=np.nan, right=np.nan)
    return {
        "variant": first["variant"], "n": int(first["n"]), "m": int(first["m"]),
        "rule": first["rule"], "seeds": len(a.seeds), "steps": float(steps.mean()),
        "s_per_step": S.seconds_per_step(runs),
        "generate_s": float(t.get("t_generate", math.nan)),
        "update_s": float(t.get("t_update", math.nan)),
        "zero_var_share": float(t.get("zero_var_frac", math.nan)),
        "peak_acc": float(S.peak(a.x, mean[None])[0]), "final_acc": float(mean[-1]),
        "final_acc_std": float(a.last.std(ddof=1)) if len(a.last) > 1 else 0.0,
        **{mark_name(x, p): float(v) for p, v in zip(points, at_mean, strict=True)}}


def _baseline_columns(base: pd.DataFrame, runs: pd.DataFrame, is_base: bool, frac: float,
                      **boot) -> dict[str, Any]:
    """Threshold time, per-seed speedups (paired only: seed s against seed s) and the
    comparison columns ('baseline' verdicts on the baseline's own row)."""
    b, a = S.arm(base), S.arm(runs)
    crossing = boot["crossing"]
    head = S.speedup(b.x, b.values.mean(axis=0), a.x, a.values.mean(axis=0), frac, crossing)
    per_seed = S.seed_speedups(b, a, frac, crossing)["speedup"] if boot["paired"] else []
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
                  seed: int = 0, crossing: str = "interpolated") -> pd.DataFrame:
    """One row per variant in `variant_order`: baseline (its name, '' when None) and crossing
    (`stats.CROSSINGS`), n, m, rule, seeds, steps, s_per_step (train_time_s / step),
    generate_s and update_s, zero_var_share (metrics), peak and final accuracy of the
    seed-mean curve (peak: its highest point at x > 0; final: its value at the common end, the
    earliest seed's last evaluation with the other seeds on their line there; so peak >=
    final) and the std over seeds of the final values, the seed-mean accuracy at the budget's
    marks (`budget_marks`: acc_step_* or acc_*s), and against `baseline` (nothing when None):
    time to its threshold, per-seed speedups when `paired` ('never' when a seed never reached
    it) and the `comparison` columns (95% bootstrap intervals over seeds, `paired` or not,
    `n_boot` resamples from `seed`)."""
    S.check_crossing(crossing)
    if baseline is not None and baseline not in set(curves["variant"]):
        got = sorted(set(curves["variant"]))
        raise ValueError(f"baseline must be one of the variants {got}; got {baseline!r}")
    times = step_times(metrics) if len(metrics) else None
    base = curves[curves["variant"] == baseline] if baseline is not None else None
    marks = budget_marks(curves)
    rows = []
    for variant in variant_order(curves):
        runs = curves[curves["variant"] == variant]
        row = {"baseline": baseline or "", "crossing": crossing, **_variant_row(runs, times,
                                                                              marks)}
        if base is not None:
            row.update(_baseline_columns(base, runs, variant == baseline, frac, paired=paired,
                                         n_boot=n_boot, seed=seed, crossing=crossing))
        rows.append(row)
    return pd.DataFrame(rows)


def regime_maps(curves: pd.DataFrame, table: pd.DataFrame, baseline: str, frac: float = 0.99,
                paired: bool = True, n_boot: int = S.N_BOOT, seed: int = 0,
                costs: np.ndarray | None = None, crossing: str = "interpolated"
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
                              seed, crossing)
        grid = S.cost_grid(row["cost_ratio"]) if costs is None else costs
        maps[row["variant"]] = S.regime(est["speedup"], reps, grid)
        measured[row["variant"]] = {"cost_ratio": row["cost_ratio"], "speedup": row["speedup"],
                                    "ci_low": row["speedup_ci_low"],
                                    "ci_high": row["speedup_ci_high"]}
    return maps, measured


# ----------------------------------------------------------------------------------------------
# what a person reads: verdicts in words, then the numbers
# ----------------------------------------------------------------------------------------------

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


def _reach(row: pd.Series, name: str, level: str, horizon: str) -> str:
    """How a variant reached `level` (the baseline's), in words: 'reached it 1.31x sooner',
    'did not reach it within its 392 steps (at most 1.68x)', with what the interval says."""
    value, _, _, at_most = _get(row, name)
    verdict = row.get(f"{name}_verdict", "n/a")
    if math.isnan(value):
        return "could not be compared (no evaluation after the start)"
    if value == 0:
        words = f"did not reach {level} within {horizon} (at most {at_most:.2f}x"
        return words + (": slower)" if verdict == "slower" else ")")
    if verdict == "faster":
        return f"reached {level} {value:.2f}x sooner"
    if verdict == "slower":
        return f"reached {level} later ({value:.2f}x: slower)"
    return f"reached {level} at {value:.2f}x, not distinguishable from 1x"


def _difference(row: pd.Series, name: str, base: str) -> str:
    value = float(row.get(name, math.nan))
    verdict = row.get(f"{name}_verdict", "n/a")
    if math.isnan(value):
        return f"no accuracy difference to {base}"
    if verdict in ("higher", "lower"):
        return f"{abs(100 * value):.1f} points {verdict}"
    return f"level with {base} ({100 * value:+.1f} points, not distinguishable)"


def verdict_words(row: pd.Series) -> str:
    """A summary row's verdicts as one sentence (per step, in wall-clock time, at equal steps,
    the final accuracy): 'Per step it reached grpo's level 1.31x sooner; in wall-clock time it
    did not reach it within its training time (at most 0.89x: slower); ...'."""
    base = row.get("baseline", "")
    if not base or "speedup" not in row.index:
        return ""
    if row["speedup_verdict"] == "baseline":
        return f"The baseline: its level is 99% of its peak, {100 * 0.99 * row['peak_acc']:.1f}%."
    step = _reach(row, "step_speedup", f"{base}'s level", f"its {row['steps']:.0f} steps")
    wall = _reach(row, "speedup", "it", "its training time")
    value, verdict = row["equal_steps_speedup"], row["equal_steps_speedup_verdict"]
    at_equal = (f"it did not reach {base}'s level there (at most "
                f"{row['equal_steps_speedup_at_most']:.2f}x)" if not value > 0 else
                f"{value:.2f}x faster" if verdict == "faster" else
                f"slower ({value:.2f}x)" if verdict == "slower" else
                f"not distinguishable ({value:.2f}x)")
    return (f"Per step it {step}; in wall-clock time it {wall}. At equal steps "
            f"({row['equal_steps']:.0f}) {at_equal}, "
            f"{_difference(row, 'equal_steps_diff', base)}; at the end "
            f"{_difference(row, 'final_diff', base)}.")


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


def verdict_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant the verdicts in words first (`verdict_words`), then the numbers they rest
    on: speedups per step, in wall-clock time and at equal steps, the accuracy differences at
    equal steps and at the end (points), with their 95% intervals."""
    rows = []
    for _, row in table.iterrows():
        line = {"variant": row["variant"], "n -> m": f"{row['n']} -> {row['m']}",
                "rule": row["rule"], "verdict": verdict_words(row)}
        numbers = {"per-step speedup": _ratio(*_get(row, "step_speedup")),
                   "wall-clock speedup": _ratio(*_get(row, "speedup")),
                   "at equal steps": _ratio(*_get(row, "equal_steps_speedup")),
                   "diff at equal steps (pt)": _points(*_get(row, "equal_steps_diff")[:3]),
                   "final diff (pt)": _points(*_get(row, "final_diff")[:3])}
        base = row["speedup_verdict"] == "baseline"
        rows.append({**line, **{k: "" if base else v for k, v in numbers.items()}})
    return pd.DataFrame(rows)


def accuracy_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant what needs no baseline: seeds, steps, s/step and its ratio c to the
    baseline's, the share of all-equal-reward groups, peak and final accuracy (%, final with
    its sd over seeds) and the seed-mean accuracy (%) at the budget's marks."""
    marks = [c for c in table.columns if c.startswith("acc_")]
    rows = []
    for _, row in table.iterrows():
        line = {"variant": row["variant"], "n -> m": f"{row['n']} -> {row['m']}",
                "seeds": int(row["seeds"]), "steps": f"{row['steps']:.0f}",
                "s/step": f"{row['s_per_step']:.3f}"}
        if "cost_ratio" in table.columns:
            line["c"] = f"{row['cost_ratio']:.2f}"
        zero = row.get("zero_var_share", math.nan)
        line["all-equal groups"] = "-" if math.isnan(zero) else f"{100 * zero:.0f}%"
        line.update({"peak": f"{100 * row['peak_acc']:.1f}",
                     "final (sd)": f"{100 * row['final_acc']:.1f} ({100 * row['final_acc_std']:.1f})"})
        for c in marks:
            line[c.removeprefix("acc_").replace("step_", "step ")] = \
                "-" if math.isnan(row[c]) else f"{100 * row[c]:.1f}"
        rows.append(line)
    return pd.DataFrame(rows)


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


def _what(table: pd.DataFrame, experiment: str) -> tuple[str, str]:
    """The headline of a summary and how its numbers were made."""
    base = table["baseline"].iloc[0] if len(table) else ""
    seeds = int(table["seeds"].max()) if len(table) else 0
    head = f"{experiment}: {len(table)} variants" + (f" against {base}" if base else
                                                      ", no baseline among them")
    how = (f"95% bootstrap intervals over up to {seeds} seeds in brackets; a speedup is the time "
           f"to {base}'s level (99% of its peak seed-mean accuracy) over the variant's time to "
           f"it (crossing: {table['crossing'].iloc[0]}), 'never (< B)' when the variant did not "
           "reach it (B bounds the speedup); accuracy in %, differences in points") if base \
        else "accuracy in %"
    return head, how


def report_text(table: pd.DataFrame, experiment: str, width: int = 100) -> str:
    """The summary for a terminal: a header, then per variant its verdicts in words and the
    numbers, wrapped to `width` columns."""
    head, how = _what(table, experiment)
    lines = [head, *textwrap.wrap(f"({how})", width)]
    verdicts = verdict_table(table) if "speedup" in table.columns else None
    for i, row in table.iterrows():
        seeds = f"{row['seeds']} seed{'s' if row['seeds'] != 1 else ''}"
        name = f"{row['variant']} ({row['n']} -> {row['m']}, {row['rule']}, {seeds})"
        if verdicts is None:
            lines.append(f"  {name}: peak {100 * row['peak_acc']:.1f}, final "
                         f"{100 * row['final_acc']:.1f}")
            continue
        v = verdicts.iloc[i]
        lines += textwrap.wrap(f"{name}: {v['verdict']}", width, initial_indent="  ",
                               subsequent_indent="    ")
        if row["speedup_verdict"] != "baseline":
            numbers = (f"per step {v['per-step speedup']} | wall-clock {v['wall-clock speedup']}"
                       f" | equal steps {v['at equal steps']} | final {v['final diff (pt)']} pt")
            lines += textwrap.wrap(numbers, width, initial_indent="    ",
                                   subsequent_indent="    ")
    return "\n".join(lines)


def summary_markdown(table: pd.DataFrame, experiment: str, command: str) -> str:
    """summary.md: the headline, the command that regenerates it, the verdicts in words with
    their numbers, accuracy and cost per variant, and the cost regime."""
    head, how = _what(table, experiment)
    parts = [f"# {head}\n\n", f"`{command}` regenerates this file, the CSV beside it (every "
             "column) and, for the main summary, figures/, from runs.csv.gz (written from the "
             "run folders when they are present). " + how[0].upper() + how[1:] + ".\n\n"]
    if "speedup" in table.columns:
        parts += ["## Verdicts\n\n", markdown_table(verdict_table(table)), "\n"]
    accuracy = ("## Accuracy and cost\n\n*steps*: mean optimizer steps per run; *c*: seconds "
                "per step over the baseline's; *all-equal groups*: the mean share of a step's "
                "groups whose n rewards are all equal (no gradient); *peak*, *final*: the "
                "highest point and the end of the seed-mean curve (the earliest seed's last "
                "evaluation); then the seed-mean accuracy at marks of the budget.\n\n")
    parts += [accuracy, markdown_table(accuracy_table(table))]
    if "predicted_speedup" in table.columns:
        regime = ("\n## Cost regime\n\nThe wall-clock speedup predicted at the step-cost ratio "
                  "c from the per-step curves, against the measured one; the equal-steps "
                  f"speedup / c and / the paper's c = {S.PAPER_COST}.\n\n")
        parts += [regime, markdown_table(cost_table(table).reset_index())]
    return "".join(parts)


def read_summary(exp_dir: str | Path, name: str = "summary") -> pd.DataFrame:
    """The summary table written by `write_summary` (<name>.csv in `exp_dir`)."""
    path = Path(exp_dir) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no summary {str(path)!r}; run `pods report` first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""],
                       dtype={"variant": str, "baseline": str, "rule": str})


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


def write_summary(table: pd.DataFrame, out_dir: str | Path, name: str = "summary",
                  experiment: str = "", command: str = "pods report") -> list[Path]:
    """Write `table` as <name>.csv (every column) and <name>.md (`summary_markdown`) in
    `out_dir`, atomically; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    atomic_write(csv, table.to_csv(index=False, lineterminator="\n"))
    atomic_write(md, summary_markdown(table, experiment or out_dir.name, command))
    return [csv, md]
