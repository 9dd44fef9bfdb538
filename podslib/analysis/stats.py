"""Seed-mean curves, the speedup (the paper's and interpolated), bootstrap intervals, verdicts
and the cost-regime map.

Everything here is generic over the x axis of a curve: `train_time_s` gives the paper's
wall-clock speedup, `step` the per-step one (same threshold, counted in optimizer steps).

Seed-mean curve: each seed's curve is the straight line between its evaluations. Per variant
the grid is the union of the seeds' evaluation points from the latest first one to the earliest
last one (the common end), so every grid point averages all seeds and no curve is extrapolated.
On that one grid: peak = the curve's highest point at x > 0, final = its value at the common end
(each seed's last evaluation there, or the line to it for a seed that ran longer), so that
peak >= final always.

Speedup: threshold = frac (0.99) x the baseline's peak; x_base, x_method = where each seed-mean
curve first reaches it at x > 0; speedup = x_base / x_method. Two crossings (`CROSSINGS`):
'first_eval', the paper's, takes the first grid point at or above the threshold; 'interpolated'
(the kit's default) takes the point where the line from the grid point before (below the
threshold) reaches it, so that a crossing is not rounded up to the next evaluation (the two
arms of a comparison are evaluated at different steps, so the rounding differs between them).
The point x = 0 (the model before training) is never a crossing, as in the paper. A method that
never reaches the threshold within its horizon has speedup 0 and is censored: it would have
reached it after its last point x_end, so its speedup is below at_most = x_base / x_end. This
matters for the per-step speedup under a time budget, where the costlier variant runs fewer
steps: never reaching it within its steps is not 'slower' when the baseline needed more steps
than that. The baseline always reaches its own threshold, so the speedup is finite (NaN only
when a curve has no point after x = 0).

Intervals: 95% percentile bootstrap over seeds, vectorised as resamples x seeds x grid. Paired
(the kit's runs: seed s of every variant starts from the same model and is evaluated on the
same problems) resamples seed indices once and uses them for both arms; unpaired (independent
runs, like the paper's 10 per setting) resamples each arm on its own. A censored replicate
counts as 0 for the interval's low end and as its at_most for the high end, so the interval
holds every speedup the data allow. bench/speedup_intervals.py measures coverage, power and
width on synthetic studies with a known speedup (results/bench/speedup_intervals.md), and
tests/test_stats.py holds those checks.

Cost regime: scaling each curve's step axis by its seconds per step moves no crossing point, so
the wall-clock speedup predicted at step-cost ratio c (variant s/step / baseline s/step) is
exactly the per-step speedup / c, replicate by replicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOT = 2000
LEVEL = 0.95
PAPER_COST = 1.35          # the paper's one-GPU step-cost ratio, PODS 64/16 vs GRPO 16/16
CROSSINGS = ("interpolated", "first_eval")      # the kit's default, the paper's


# ----------------------------------------------------------------------------------------------
# seed curves on a common grid
# ----------------------------------------------------------------------------------------------

def interpolate(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Value of the line through the evaluations (x [k] ascending, y [k]) at each grid point
    [g]; NaN before the first and after the last evaluation."""
    x, y, grid = np.asarray(x, float), np.asarray(y, float), np.asarray(grid, float)
    out = np.interp(grid, x, y)
    out[(grid < x[0]) | (grid > x[-1])] = np.nan
    return out


@dataclass(frozen=True)
class Arm:
    """One variant's seeds on its common grid: x [g], values [S, g] (interpolated), seeds [S]."""

    x: np.ndarray
    values: np.ndarray
    seeds: np.ndarray

    @property
    def last(self) -> np.ndarray:
        """Each seed's value at the common end: [S]."""
        return self.values[:, -1]

    def select(self, seeds: np.ndarray) -> Arm:
        """The same arm restricted to `seeds` (in that order)."""
        rows = [int(np.flatnonzero(self.seeds == s)[0]) for s in seeds]
        return Arm(self.x, self.values[rows], np.asarray(seeds))


def truncate(a: Arm, end: float) -> Arm:
    """The arm as if every seed had stopped at x = end: its grid points before end, then end
    itself with each seed's value there (an equal-horizon comparison with a shorter arm)."""
    if not a.x[0] <= end <= a.x[-1]:
        raise ValueError(f"end must be within the arm's grid [{a.x[0]}, {a.x[-1]}]; got {end}")
    keep = a.x < end
    at_end = np.array([np.interp(end, a.x, row) for row in a.values])
    return Arm(np.append(a.x[keep], end), np.column_stack([a.values[:, keep], at_end]), a.seeds)


def arm(runs: pd.DataFrame, x: str = "train_time_s", value: str = "accuracy") -> Arm:
    """The seed curves of one variant's evaluation rows (columns seed, `x`, `value`) on their
    common grid (see the module docstring)."""
    if x not in runs.columns:
        raise ValueError(f"x must be a column of the curves ({', '.join(runs.columns)}); "
                         f"got {x!r}")
    per_seed = [(s, g.sort_values(x, kind="stable")) for s, g in runs.groupby("seed")]
    start = max(g[x].iloc[0] for _, g in per_seed)
    end = min(g[x].iloc[-1] for _, g in per_seed)
    grid = np.unique(np.concatenate([g[x].to_numpy(float) for _, g in per_seed]))
    grid = grid[(grid >= start) & (grid <= end)]
    values = np.stack([interpolate(g[x], g[value], grid) for _, g in per_seed])
    return Arm(grid, values, np.array([s for s, _ in per_seed]))


def seconds_per_step(runs: pd.DataFrame) -> float:
    """Training seconds per optimizer step of one variant's evaluation rows: the seeds' total
    train_time_s over their total steps, both at each seed's last evaluation (the paper's
    seconds per step: the time budget over the mean step count)."""
    last = runs.sort_values(["step", "train_time_s"]).groupby("seed").last()
    steps = last["step"].sum()
    return float(last["train_time_s"].sum() / steps) if steps > 0 else math.nan


# ----------------------------------------------------------------------------------------------
# the paper's statistics, vectorised over resamples
# ----------------------------------------------------------------------------------------------

def peak(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Highest point at x > 0 of each curve. x: [g], means: [B, g] -> [B] (NaN if no x > 0)."""
    pos = np.asarray(x) > 0
    if not pos.any():
        return np.full(len(means), np.nan)
    return means[:, pos].max(axis=1)


def first_reach(x: np.ndarray, means: np.ndarray, threshold: np.ndarray,
                crossing: str = "interpolated") -> np.ndarray:
    """Where each curve first reaches its threshold at x > 0 (`crossing`: 'first_eval', the
    first grid point at or above it; 'interpolated', on the line from the point before when
    that one is below it); inf when it never does. x: [g], means: [B, g], threshold: [B] ->
    [B]."""
    check_crossing(crossing)
    x, threshold = np.asarray(x, float), np.asarray(threshold, float)
    ok = (means >= threshold[:, None]) & (x > 0)[None, :]
    j = ok.argmax(axis=1)
    at = x[j]
    if crossing == "interpolated":
        rows, i = np.arange(len(means)), np.maximum(j - 1, 0)
        y0, y1 = means[rows, i], means[rows, j]
        below = (j > 0) & (y0 < threshold)
        with np.errstate(divide="ignore", invalid="ignore"):
            line = x[i] + (threshold - y0) / (y1 - y0) * (x[j] - x[i])
        at = np.where(below, line, at)
    return np.where(ok.any(axis=1), at, np.inf)


def check_crossing(crossing: str) -> None:
    if crossing not in CROSSINGS:
        raise ValueError(f"crossing must be one of {', '.join(map(repr, CROSSINGS))}; "
                         f"got {crossing!r}")


def speedups(base_x: np.ndarray, base: np.ndarray, x: np.ndarray, means: np.ndarray,
             frac: float = 0.99, crossing: str = "interpolated") -> dict[str, np.ndarray]:
    """The speedup of curves `means` [B, g] (on x [g]) over baseline curves `base` [B, gb] (on
    base_x [gb]), row by row: threshold, x_base, x_method, speedup and at_most (speedup, or
    x_base / the last x where never reached: the censoring bound), each [B]."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1]; got {frac!r}")
    x = np.asarray(x, float)
    threshold = frac * peak(base_x, base)
    x_base = first_reach(base_x, base, threshold, crossing)
    x_method = first_reach(x, means, threshold, crossing)
    never = np.isinf(x_method)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(never, 0.0, x_base / x_method)
        at_most = np.where(never, x_base / x[-1], ratio)
    undefined = np.isnan(threshold) | ~(x > 0).any()        # no point after x = 0 on a side
    ratio[undefined] = at_most[undefined] = np.nan
    return {"threshold": threshold, "x_base": x_base, "x_method": x_method, "speedup": ratio,
            "at_most": at_most}


def speedup(base_x, base_y, x, y, frac: float = 0.99, crossing: str = "interpolated"
            ) -> dict[str, float]:
    """The speedup of one curve (x, y) over one baseline curve: threshold, x_base, x_method,
    speedup, at_most as floats (see the module docstring for the definition)."""
    out = speedups(np.asarray(base_x, float), np.asarray(base_y, float)[None],
                   np.asarray(x, float), np.asarray(y, float)[None], frac, crossing)
    return {k: float(v[0]) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# bootstrap intervals and verdicts
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% interval and the value that means 'no difference' (null); for
    a speedup, at_most is the largest value the data allow (the value itself unless censored)."""

    value: float
    low: float
    high: float
    null: float
    at_most: float | None = None

    @property
    def verdict(self) -> str:
        """'faster'/'slower' (speedups, null 1) or 'higher'/'lower' (differences, null 0) when
        the interval excludes the null, else 'not distinguishable'."""
        up, down = ("faster", "slower") if self.null == 1 else ("higher", "lower")
        if math.isnan(self.low) or math.isnan(self.high):
            return "n/a"
        return up if self.low > self.null else down if self.high < self.null \
            else "not distinguishable"


def percentile(value: float, reps: np.ndarray, null: float, level: float = LEVEL) -> Estimate:
    """Percentile interval of bootstrap replicates `reps` [B] (NaN replicates left out)."""
    reps = np.asarray(reps, float)
    reps = reps[~np.isnan(reps)]
    if not reps.size:
        return Estimate(value, math.nan, math.nan, null)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(value), float(low), float(high), null)


def censored(value: float, at_most: float, reps: np.ndarray, reps_at_most: np.ndarray,
             level: float = LEVEL) -> Estimate:
    """A speedup (null 1) whose replicates may be censored: the interval runs from the low
    percentile of `reps` (never reached = 0) to the high percentile of `reps_at_most` (never
    reached = its bound). value, at_most: the point estimate and its bound; reps: [B]."""
    low = percentile(value, reps, 1.0, level)
    high = percentile(value, reps_at_most, 1.0, level)
    return Estimate(float(value), low.low, high.high, 1.0, float(at_most))


def resamples(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Seed indices of `n_boot` bootstrap resamples: [n_boot, n_seeds], row 0 the sample itself
    (so that replicate 0 is the point estimate)."""
    idx = rng.integers(0, n_seeds, (n_boot + 1, n_seeds))
    idx[0] = np.arange(n_seeds)
    return idx


def statistics(base: Arm, variant: Arm, base_idx: np.ndarray, idx: np.ndarray,
               frac: float = 0.99, crossing: str = "interpolated") -> dict[str, np.ndarray]:
    """Speedup (and its censoring bound speedup_at_most), peak and final differences
    (variant - baseline) of resampled seed means. base_idx: [B, Sb], idx: [B, Sv] -> each
    statistic [B]."""
    base_mean = base.values[base_idx].mean(axis=1)                       # [B, gb]
    mean = variant.values[idx].mean(axis=1)                              # [B, gv]
    fast = speedups(base.x, base_mean, variant.x, mean, frac, crossing)
    return {"speedup": fast["speedup"], "speedup_at_most": fast["at_most"],
            "peak_diff": peak(variant.x, mean) - peak(base.x, base_mean),
            "final_diff": mean[:, -1] - base_mean[:, -1]}


def compare(base: Arm, variant: Arm, paired: bool = True, frac: float = 0.99,
            n_boot: int = N_BOOT, seed: int = 0, crossing: str = "interpolated"
            ) -> tuple[dict[str, Estimate], dict]:
    """Bootstrap comparison of `variant` against `base`: Estimates of speedup (null 1,
    censored), peak_diff and final_diff (null 0: the seed-mean curves' final points), and the
    replicates {name: [n_boot]} (with speedup_at_most). Paired: both arms restricted to their
    common seeds and resampled with the same indices."""
    rng = np.random.default_rng(seed)
    if paired:
        common = np.array([s for s in base.seeds if s in set(variant.seeds)])
        if not common.size:
            raise ValueError("paired comparison needs seeds common to both variants; got "
                             f"{list(base.seeds)} and {list(variant.seeds)}")
        base, variant = base.select(common), variant.select(common)
        base_idx = idx = resamples(len(common), n_boot, rng)
    else:
        base_idx = resamples(len(base.seeds), n_boot, rng)
        idx = resamples(len(variant.seeds), n_boot, rng)
    stats = statistics(base, variant, base_idx, idx, frac, crossing)
    fast, bound = stats["speedup"], stats["speedup_at_most"]
    est = {"speedup": censored(fast[0], bound[0], fast[1:], bound[1:]),
           **{k: percentile(stats[k][0], stats[k][1:], 0.0) for k in ("peak_diff", "final_diff")}}
    return est, {k: v[1:] for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------
# cost regime: wall-clock speedup predicted from the per-step curves
# ----------------------------------------------------------------------------------------------

def regime(step_speedup: Estimate, step_reps: dict[str, np.ndarray], costs: np.ndarray
           ) -> pd.DataFrame:
    """Predicted wall-clock speedup at each step-cost ratio c in `costs` [k]: the per-step
    speedup / c (and its bound at_most / c), with the censored interval of the replicates
    (`compare`'s speedup and speedup_at_most) / c. One row per c."""
    costs = np.asarray(costs, float)
    if (costs <= 0).any():
        raise ValueError(f"step-cost ratios must be > 0; got {costs.tolist()}")
    fast, bound = (np.asarray(step_reps[k]) for k in ("speedup", "speedup_at_most"))
    rows = [censored(step_speedup.value / c, step_speedup.at_most / c, fast / c, bound / c)
            for c in costs]
    return pd.DataFrame({"cost_ratio": costs, "predicted": [r.value for r in rows],
                         "at_most": [r.at_most for r in rows],
                         "ci_low": [r.low for r in rows], "ci_high": [r.high for r in rows]})


def cost_grid(measured: float, points: int = 50) -> np.ndarray:
    """Step-cost ratios for the map: from 1.0 to the measured one, widened to take in the
    paper's PAPER_COST, `points` of them."""
    ends = [1.0, PAPER_COST] + ([measured] if np.isfinite(measured) else [])
    return np.linspace(min(ends), max(ends), points)


def regime_check(step_speedup: Estimate, step_reps: dict[str, np.ndarray], wall: Estimate,
                 cost: float) -> dict[str, float | bool]:
    """The prediction at the measured step-cost ratio against the measured wall-clock speedup:
    predicted value, bound and interval, and whether the prediction lies inside the measured
    interval."""
    row = regime(step_speedup, step_reps, np.array([cost])).iloc[0]
    inside = bool(wall.low <= row["predicted"] <= wall.high)
    return {"cost_ratio": cost, "predicted": float(row["predicted"]),
            "predicted_at_most": float(row["at_most"]),
            "predicted_ci_low": float(row["ci_low"]), "predicted_ci_high": float(row["ci_high"]),
            "inside_measured_ci": inside}


def seed_speedups(base: Arm, variant: Arm, frac: float = 0.99, crossing: str = "interpolated"
                  ) -> pd.DataFrame:
    """Per-seed speedups, pairing equal seeds (seeds of one arm only are left out), each with
    the threshold from the baseline seed's own peak: one row per seed with threshold, x_base,
    x_method, speedup."""
    common = np.array([s for s in base.seeds if s in set(variant.seeds)])
    cols = ["seed", "threshold", "x_base", "x_method", "speedup"]
    if not common.size:
        return pd.DataFrame(columns=cols)
    b, v = base.select(common), variant.select(common)
    return pd.DataFrame({"seed": common, **speedups(b.x, b.values, v.x, v.values, frac,
                                                    crossing)})[cols]
