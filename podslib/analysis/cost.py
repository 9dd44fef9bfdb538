"""What a step costs, and the wall-clock speedup it predicts (the statistics of `pods cost`).

The rule (`stats`, "Cost regime"): scaling a curve's step axis by its seconds per step moves no
first-crossing point, so a variant's wall-clock speedup over the baseline is its per-step speedup
(the gain) divided by c, the cost of one of its steps in baseline steps.

Measured c (`round_costs`): `pods cost` runs the variants in rounds, one block of steps per
variant per round, side by side (`podslib.lab.cost`); the blocks of a round ran under the same
conditions, so rounds are the resampling unit. Seconds per step = the blocks' seconds over
their steps; c = variant s/step / baseline s/step; 95% percentile intervals over resampled
rounds, the same rounds for every variant (a paired design).

The gain comes from one's own runs of the experiment (`gain`: paired over seeds), from the
paper's replay of the nearest setting (`nearest_paper`, `paper_gain`: unpaired, the authors'
runs are independent) or from a value given. The prediction (`predict`) divides each bootstrap
replicate of the gain by a replicate of c, so its interval carries both uncertainties; a gain
that was never reached is censored as in `stats.regime`.

A study's own c (`study_costs`): per seed, the variant's seconds per step over the baseline's
(same seed), their mean over seeds, and its percentile bootstrap over seeds. `agreement` sets a
measured c beside it and the prediction from the study's per-step curves beside the study's
measured wall-clock speedup.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from podslib.analysis import paper
from podslib.analysis import stats as S

FRAC = 0.99                     # the paper's threshold: 99% of the baseline's peak


# ----------------------------------------------------------------------------------------------
# measured c
# ----------------------------------------------------------------------------------------------

def round_costs(steps: pd.DataFrame, baseline: str | dict[str, str], n_boot: int = S.N_BOOT,
                seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Seconds per step and c of each variant from timed steps (columns variant, round,
    seconds), over the rounds every variant has: one row per variant (in order of appearance)
    with rounds, steps, s_per_step and c, each with ci_low / ci_high; and the bootstrap
    replicates of c {variant: [n_boot]}. c is counted against `baseline`, one variant for all
    or, per variant, the one at its point of a sweep."""
    names = list(dict.fromkeys(steps["variant"]))
    base_of = baseline if isinstance(baseline, dict) else dict.fromkeys(names, baseline)
    for base in {base_of.get(v) for v in names}:
        if base not in names:
            raise ValueError(f"baseline must be one of the measured variants {names}; "
                             f"got {base!r}")
    blocks = steps.groupby(["variant", "round"])["seconds"].agg(["sum", "count"])
    rounds = sorted(set.intersection(*(set(blocks.loc[v].index) for v in names)))
    if not rounds:
        raise ValueError("no round in which every variant has timed steps")
    seconds = np.stack([blocks.loc[v].loc[rounds, "sum"].to_numpy(float) for v in names])
    count = np.stack([blocks.loc[v].loc[rounds, "count"].to_numpy(float) for v in names])
    idx = S.resamples(len(rounds), n_boot, np.random.default_rng(seed))      # [B + 1, R]
    per_step = seconds[:, idx].sum(axis=2) / count[:, idx].sum(axis=2)       # [V, B + 1]
    c = per_step / per_step[[names.index(base_of[v]) for v in names]]
    rows = []
    for k, name in enumerate(names):
        sps, cost = S.percentile(per_step[k, 0], per_step[k, 1:], 0.0), \
            S.percentile(c[k, 0], c[k, 1:], 1.0)
        rows.append({"variant": name, "rounds": len(rounds), "steps": int(count[k].sum()),
                     "s_per_step": sps.value, "s_per_step_ci_low": sps.low,
                     "s_per_step_ci_high": sps.high, "c": cost.value, "c_ci_low": cost.low,
                     "c_ci_high": cost.high})
    return pd.DataFrame(rows), {name: c[k, 1:] for k, name in enumerate(names)}


# ----------------------------------------------------------------------------------------------
# the gain: one's own runs, the paper's nearest setting, or a value given
# ----------------------------------------------------------------------------------------------

def gain(base: pd.DataFrame, runs: pd.DataFrame, paired: bool = True, n_boot: int = S.N_BOOT,
         seed: int = 0, crossing: str = "interpolated") -> tuple[S.Estimate, dict[str, np.ndarray]]:
    """The per-step speedup of evaluation rows `runs` over `base` (censored Estimate) and its
    replicates {speedup, speedup_at_most: [n_boot]} (`stats.compare` on the step axis, with the
    crossing `pods report` uses for the kit's runs unless told)."""
    est, reps = S.compare(S.arm(base, "step"), S.arm(runs, "step"), paired, FRAC, n_boot, seed,
                          crossing)
    return est["speedup"], {k: reps[k] for k in ("speedup", "speedup_at_most")}


def study_of(task: str, model: str) -> str:
    """The paper's one-GPU study nearest a config: MATH for the math tasks, the Llama runs for a
    Llama model, else GSM8K."""
    if task in ("math", "math500"):
        return "math"
    return "llama" if "llama" in model.lower() else "gsm8k"


def nearest_paper(task: str, model: str, n: int, m: int, rule: str, prefer: str = "n"
                  ) -> tuple[str, str]:
    """(study, variant) of the paper's down-sampling run nearest to n -> m with `rule`, in the
    study of `study_of` (GSM8K when it has no run with that rule; max-variance for a rule the
    paper did not run): the closest n / m on a log scale; among equals, the run with this very
    n and m, then one of the n ablation (m = 16; with prefer='m', of the m ablation: n = 64),
    then the main run, 64 -> 16."""
    if prefer not in ("n", "m"):
        raise ValueError(f"prefer must be 'n' or 'm'; got {prefer!r}")
    rules = {x[3] for s in paper.STUDIES.values() for x in s.settings.values()}
    rule = rule if rule in rules else "max_variance"
    study = study_of(task, model)
    if not any(x[3] == rule for x in paper.STUDIES[study].settings.values()):
        study = "gsm8k"
    runs = [x for x in paper.STUDIES[study].settings.values() if x[1] > x[2] and x[3] == rule]

    def distance(run: tuple) -> tuple:
        _, rn, rm, _ = run
        other_ablation = rm != 16 if prefer == "n" else rn != 64
        return (round(abs(math.log(rn / rm) - math.log(n / m)), 9), (rn, rm) != (n, m),
                other_ablation, (rn, rm) != (64, 16))

    return study, min(runs, key=distance)[0]


def paper_gain(study: str, variant: str, n_boot: int = S.N_BOOT, seed: int = 0,
               data_dir=paper.DATA) -> tuple[S.Estimate, dict[str, np.ndarray]]:
    """The per-step speedup of the paper's `variant` over its GRPO in `study` (unpaired, the
    paper's crossing), as `pods paper` reports it."""
    curves = paper.load(study, data_dir)
    return gain(curves[curves["variant"] == "grpo"], curves[curves["variant"] == variant],
                paired=False, n_boot=n_boot, seed=seed, crossing=paper.PAPER_CROSSING)


def paper_setting(study: str, variant: str) -> str:
    """'GSM8K 64 -> 16' (the rule added unless max-variance) for the paper's run `variant`."""
    (n, m, rule), = [x[1:] for x in paper.STUDIES[study].settings.values() if x[0] == variant]
    name = {"gsm8k": "GSM8K", "math": "MATH", "llama": "Llama"}[study]
    return f"{name} {n} -> {m}" + ("" if rule == "max_variance" else f" {rule}")


# ----------------------------------------------------------------------------------------------
# the prediction
# ----------------------------------------------------------------------------------------------

def predict(gain: S.Estimate, c: float, c_reps: np.ndarray,
            gain_reps: dict[str, np.ndarray] | None = None) -> S.Estimate:
    """Wall-clock speedup = gain / c. Interval: replicate i of the gain (`gain_reps`: speedup,
    speedup_at_most) over replicate i of c (`c_reps`), censored as `stats.regime`; without
    gain replicates (a value given) the gain is taken as exact and the interval is c's alone."""
    c_reps = np.asarray(c_reps, float)
    at_most = gain.value if gain.at_most is None else gain.at_most
    if gain_reps is None:
        fast = bound = np.full(len(c_reps), gain.value)
    else:
        k = min(len(c_reps), len(gain_reps["speedup"]))
        fast, bound, c_reps = gain_reps["speedup"][:k], gain_reps["speedup_at_most"][:k], \
            c_reps[:k]
    return S.censored(gain.value / c, at_most / c, fast / c_reps, bound / c_reps)


def ratio_text(est: S.Estimate) -> str:
    """'1.44x [0.87, 1.88]', or 'never (< 0.94x) [0.00, 0.98]' for a censored speedup."""
    if math.isnan(est.value):
        return "-"
    censored = est.value == 0 and est.at_most is not None and est.at_most > 0
    point = f"never (< {est.at_most:.2f}x)" if censored else f"{est.value:.2f}x"
    return f"{point} [{est.low:.2f}, {est.high:.2f}]"


def sentence(c: S.Estimate, source: str, gain: S.Estimate, speedup: S.Estimate,
             baseline: str = "grpo") -> str:
    """The prediction in words: what a step costs here, the gain and where it comes from, the
    wall-clock speedup to expect, and the rule."""
    base = "GRPO" if baseline == "grpo" else baseline
    return (f"a PODS step costs {c.value:.2f} [{c.low:.2f}, {c.high:.2f}] {base} steps here; "
            f"with {source}, {ratio_text(gain)}, expect {ratio_text(speedup)} in wall-clock "
            f"time; PODS pays while its per-step gain exceeds {c.value:.2f}")


# ----------------------------------------------------------------------------------------------
# against a study's own runs
# ----------------------------------------------------------------------------------------------

def seed_costs(curves: pd.DataFrame, baseline: str, variant: str) -> pd.Series:
    """Per seed common to both: the variant's seconds per step over the baseline's (each
    `stats.seconds_per_step` of that seed's evaluation rows), indexed by seed."""
    def per_seed(name: str) -> pd.Series:
        rows = curves[curves["variant"] == name]
        return pd.Series({s: S.seconds_per_step(g) for s, g in rows.groupby("seed")},
                         dtype=float)

    base, runs = per_seed(baseline), per_seed(variant)
    common = base.index.intersection(runs.index)
    return (runs[common] / base[common]).rename("c")


def study_costs(curves: pd.DataFrame, baseline: str, n_boot: int = S.N_BOOT, seed: int = 0
                ) -> pd.DataFrame:
    """c of every variant of a study (evaluation rows, `results.load_runs`) against `baseline`:
    the mean over seeds of `seed_costs`, with its 95% percentile bootstrap over seeds. One row
    per variant: variant, seeds, c, c_ci_low, c_ci_high."""
    rows = []
    for variant in dict.fromkeys(curves["variant"]):
        per_seed = seed_costs(curves, baseline, variant).to_numpy(float)
        if not per_seed.size:
            continue
        idx = S.resamples(len(per_seed), n_boot, np.random.default_rng(seed))
        est = S.percentile(per_seed.mean(), per_seed[idx[1:]].mean(axis=1), 1.0)
        rows.append({"variant": variant, "seeds": len(per_seed), "c": est.value,
                     "c_ci_low": est.low, "c_ci_high": est.high})
    return pd.DataFrame(rows, columns=["variant", "seeds", "c", "c_ci_low", "c_ci_high"])


def agreement(measured: pd.DataFrame, curves: pd.DataFrame, baseline: str,
              n_boot: int = S.N_BOOT, seed: int = 0) -> pd.DataFrame:
    """The measured c of each variant (`measured`: variant, c, c_ci_low, c_ci_high) beside the
    study's (`study_costs` of the evaluation rows `curves`), and the wall-clock speedup the
    study's per-step curves predict at the measured c (`stats.regime_check`) beside the study's
    measured one (paired over seeds). One row per variant of both but the baseline, with
    c_inside and prediction_inside: the point inside the study's 95% interval."""
    study = study_costs(curves, baseline, n_boot, seed).set_index("variant")
    base = curves[curves["variant"] == baseline]
    rows = []
    for _, row in measured.iterrows():
        name = row["variant"]
        if name == baseline or name not in study.index:
            continue
        runs = curves[curves["variant"] == name]
        wall, _ = S.compare(S.arm(base), S.arm(runs), True, FRAC, n_boot, seed)
        step, step_reps = S.compare(S.arm(base, "step"), S.arm(runs, "step"), True, FRAC,
                                    n_boot, seed)
        check = S.regime_check(step["speedup"], step_reps, wall["speedup"], row["c"])
        ref = study.loc[name]
        rows.append({
            "variant": name, "seeds": int(ref["seeds"]), "c": row["c"],
            "c_ci_low": row["c_ci_low"], "c_ci_high": row["c_ci_high"], "study_c": ref["c"],
            "study_c_ci_low": ref["c_ci_low"], "study_c_ci_high": ref["c_ci_high"],
            "c_inside": bool(ref["c_ci_low"] <= row["c"] <= ref["c_ci_high"]),
            "step_speedup": step["speedup"].value,
            "step_speedup_at_most": step["speedup"].at_most,
            "step_speedup_ci_low": step["speedup"].low,
            "step_speedup_ci_high": step["speedup"].high,
            "predicted": check["predicted"], "predicted_at_most": check["predicted_at_most"],
            "predicted_ci_low": check["predicted_ci_low"],
            "predicted_ci_high": check["predicted_ci_high"],
            "speedup": wall["speedup"].value, "speedup_at_most": wall["speedup"].at_most,
            "speedup_ci_low": wall["speedup"].low, "speedup_ci_high": wall["speedup"].high,
            "prediction_inside": check["inside_measured_ci"]})
    return pd.DataFrame(rows)
