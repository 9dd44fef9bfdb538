"""The PODS authors' published evaluation logs through the kit's own analysis (`pods paper`).

`data/pods_official/results/` (Apache-2.0, see its NOTICE) holds the logs; `load(study)` turns
them into the kit's curve frames (one row per evaluation: variant, seed, step, train_time_s,
accuracy, n, m, rule), with the authors' time axes:
- one-GPU runs (`<setting>-Run<k>.json`, k = seed): checkpoint i (1-based, sorted by global
  step) at i x 30 min up to 6 h (Llama: i x 10 min up to 1.5 h, metric both_acc, else
  ans_acc), accuracy = the mean over the 5 evaluation repeats; the base model
  (`base-qwen.json`, `base-llama.json`) at t = 0, step 0, in every run;
- eight-GPU runs (`{h100s,a100s}-{acc,length}.csv`, wandb exports): for each seed present in
  the accuracy, `_step` and length columns, the row nearest to 0, 2, ..., 30 min (eval/time);
  step = wandb's _step / gradient accumulation (global optimizer steps).
Seconds per step then come out as the authors compute them: the time of the last point over
its step count (the checkpoint step at 6 h for the one-GPU runs).

The summary uses the paper's definition of the speedup (`stats.CROSSINGS`: 'first_eval', the
first evaluation at or above 99% of GRPO's peak), which reproduces the printed 2.00x, 3.00x,
1.71x, 1.75x; the printed-vs-recomputed table adds the kit's interpolated crossing beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from podslib.analysis import plots
from podslib.analysis import results as R
from podslib.files import REPO, atomic_write
from podslib.rundir import find_runs

DATA = REPO / "data" / "pods_official"
OUT = REPO / "results" / "paper"


@dataclass(frozen=True)
class Study:
    """One set of runs that share a baseline, a benchmark and a time axis."""

    title: str
    hardware: str               # for the time axis label
    every_min: float            # evaluation interval (checkpoints / target rows)
    horizon_min: float
    settings: dict              # one-GPU: file prefix -> (variant, n, m, rule)
    dataset: str = "gsm8k"      # one-GPU benchmark key
    metric: str = "ans_acc"
    base_file: str = "base-qwen.json"
    csv: str = ""               # eight-GPU: csv prefix ("h100s", "a100s")


def _gsm8k(n: int, m: int) -> str:
    return f"Instruct-GSM8K-512-{n}-{m}"


STUDIES = {
    "gsm8k": Study("GSM8K, Qwen2.5-3B-Instruct", "one L40S", 30, 360, {
        _gsm8k(16, 16): ("grpo", 16, 16, "none"),
        _gsm8k(32, 16): ("n32", 32, 16, "max_variance"),
        _gsm8k(64, 16): ("pods", 64, 16, "max_variance"),
        _gsm8k(128, 16): ("n128", 128, 16, "max_variance"),
        _gsm8k(256, 16): ("n256", 256, 16, "max_variance"),
        _gsm8k(64, 8): ("m8", 64, 8, "max_variance"),
        _gsm8k(64, 4): ("m4", 64, 4, "max_variance"),
        _gsm8k(64, 2): ("m2", 64, 2, "max_variance"),
        "Instruct-GSM8K-Rand-512-64-16": ("random", 64, 16, "random"),
        "Instruct-GSM8K-MaxR-512-64-16": ("max_reward", 64, 16, "max_reward")}),
    "math": Study("MATH train -> MATH-500, Qwen2.5-3B-Instruct", "one L40S", 30, 360, {
        "Instruct-MATH-NF-512-8-8": ("grpo", 8, 8, "none"),
        "Instruct-MATH-NF-512-32-8": ("pods", 32, 8, "max_variance")}, dataset="math500"),
    "llama": Study("GSM8K, Llama 3B (answer and format)", "one L40S", 10, 90, {
        "Instruct-Llama-512-16-16-0.04": ("grpo", 16, 16, "none"),
        "Instruct-Llama-512-64-16-0.04": ("pods", 64, 16, "max_variance")},
        metric="both_acc", base_file="base-llama.json"),
    "h100s": Study("GSM8K, Qwen2.5-3B-Instruct", "8 x H100", 2, 30, {
        (32, 32): ("grpo", 32, 32, "none"), (128, 32): ("pods", 128, 32, "max_variance")},
        csv="h100s"),
    "a100s": Study("GSM8K, 7B", "8 x A100", 2, 30, {
        (32, 32): ("grpo", 32, 32, "none"), (128, 32): ("pods", 128, 32, "max_variance")},
        csv="a100s"),
}


def _check_data(data_dir: Path) -> Path:
    folder = Path(data_dir) / "results"
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {str(data_dir)!r} has no results/ folder of the "
                                "authors' logs (default: the repository's data/pods_official)")
    return folder


def _mean(block: dict, metric: str, where: str) -> float:
    if metric not in block:
        raise ValueError(f"{where} has no {metric!r} (keys: {', '.join(block)})")
    return float(np.mean(block[metric]))


def _one_gpu(folder: Path, study: Study) -> pd.DataFrame:
    base_log = json.loads((folder / study.base_file).read_text())
    base = _mean(base_log[study.dataset], study.metric, study.base_file)
    rows = []
    for prefix, (variant, n, m, rule) in study.settings.items():
        runs = sorted(folder.glob(f"{prefix}-Run*.json"))
        if not runs:
            raise FileNotFoundError(f"no runs {prefix}-Run*.json in {str(folder)!r}")
        for path in runs:
            seed = int(path.stem.rsplit("-Run", 1)[1])
            info = {"variant": variant, "seed": seed, "n": n, "m": m, "rule": rule}
            rows.append({**info, "step": 0, "train_time_s": 0.0, "accuracy": base})
            log = json.loads(path.read_text())
            for i, ckpt in enumerate(sorted(log, key=lambda k: int(k.rsplit("-", 1)[1])), 1):
                if i * study.every_min > study.horizon_min:
                    break
                rows.append({**info, "step": int(ckpt.rsplit("-", 1)[1]),
                             "train_time_s": i * study.every_min * 60.0,
                             "accuracy": _mean(log[ckpt][study.dataset], study.metric,
                                               f"{path.name} {ckpt}")})
    return pd.DataFrame(rows)


RUN_COLUMN = re.compile(r"data/(\S+-s(\d+)-p\d+-n(\d+)-m(\d+)-ga(\d+)) - (.+)")


def _columns(csv: pd.DataFrame) -> dict[tuple, dict[str, pd.Series]]:
    """{(n, m, seed, ga): {metric: non-empty values indexed by eval/time in minutes}}."""
    out: dict[tuple, dict[str, pd.Series]] = {}
    minutes = csv["eval/time"].to_numpy(float) / 60
    for col in csv.columns:
        hit = RUN_COLUMN.fullmatch(col)
        if hit and not col.endswith(("__MIN", "__MAX")):
            key = (int(hit[3]), int(hit[4]), int(hit[2]), int(hit[5]))
            values = pd.Series(csv[col].to_numpy(float), index=minutes).dropna()
            out.setdefault(key, {})[hit[6]] = values
    return out


def _eight_gpu(folder: Path, study: Study) -> pd.DataFrame:
    acc = _columns(pd.read_csv(folder / f"{study.csv}-acc.csv"))
    length = _columns(pd.read_csv(folder / f"{study.csv}-length.csv"))
    targets = np.arange(0, study.horizon_min + 1e-9, study.every_min)
    accuracy_key = "eval/rewards/accuracy_reward/mean"
    rows = []
    for (n, m, seed, ga), cols in sorted(acc.items()):
        if (n, m) not in study.settings or not {accuracy_key, "_step"} <= set(cols) \
                or "eval/completions/mean_length" not in length.get((n, m, seed, ga), {}):
            continue
        variant, n, m, rule = study.settings[(n, m)]
        for target in targets:
            a = cols[accuracy_key]
            s = cols["_step"]
            rows.append({"variant": variant, "seed": seed, "n": n, "m": m, "rule": rule,
                         "step": s.iloc[np.abs(s.index - target).argmin()] / ga,
                         "train_time_s": target * 60.0,
                         "accuracy": a.iloc[np.abs(a.index - target).argmin()]})
    return pd.DataFrame(rows)


def load(study: str, data_dir: str | Path = DATA) -> pd.DataFrame:
    """The curves of one study (a key of STUDIES) as a kit curve frame (see module docstring)."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}; got {study!r}")
    folder, spec = _check_data(Path(data_dir)), STUDIES[study]
    frame = _eight_gpu(folder, spec) if spec.csv else _one_gpu(folder, spec)
    frame.insert(0, "study", study)
    return frame


# ----------------------------------------------------------------------------------------------
# figures and the summary table
# ----------------------------------------------------------------------------------------------

# figure -> (study, title, {variant: legend name}), in the paper's order of lines
FIGURES = {
    "gsm8k_main": ("gsm8k", "GRPO vs GRPO-PODS",
                   {"grpo": "GRPO 16/16", "pods": "GRPO-PODS 64/16"}),
    "math_main": ("math", "GRPO vs GRPO-PODS", {"grpo": "GRPO 8/8", "pods": "GRPO-PODS 32/8"}),
    "llama_main": ("llama", "GRPO vs GRPO-PODS",
                   {"grpo": "GRPO 16/16", "pods": "GRPO-PODS 64/16"}),
    "n_ablation": ("gsm8k", "n at m = 16", {"grpo": "n = 16 (GRPO)", "n32": "n = 32",
                                           "pods": "n = 64", "n128": "n = 128",
                                           "n256": "n = 256"}),
    "m_ablation": ("gsm8k", "m at n = 64",
                   {"pods": "m = 16", "m8": "m = 8", "m4": "m = 4", "m2": "m = 2"}),
    "rule_ablation": ("gsm8k", "down-sampling rule at 64/16",
                      {"pods": "max-variance", "max_reward": "max-reward", "random": "random"}),
    "h100s": ("h100s", "GRPO vs GRPO-PODS",
              {"grpo": "GRPO 32/32 (GA 16)", "pods": "GRPO-PODS 128/32 (GA 4)"}),
    "a100s": ("a100s", "GRPO vs GRPO-PODS",
              {"grpo": "GRPO 32/32 (GA 16)", "pods": "GRPO-PODS 128/32 (GA 4)"}),
}

# Every variant of the studies, so that a variant looks the same in every figure.
STYLES = plots.variant_styles(("grpo", "pods", "n32", "n128", "n256", "m8", "m4", "m2", "random",
                               "max_reward"), baseline="grpo")
PAPER_CROSSING = "first_eval"

# What the paper prints (accuracy in %, speedup in x, seconds per step), for the comparison.
PRINTED = {
    ("gsm8k", "grpo"): {"peak": 81.64, "s_per_step": 7.5},
    ("gsm8k", "n32"): {"peak": 82.44, "s_per_step": 7.9},
    ("gsm8k", "pods"): {"peak": 82.63, "speedup": 2.00, "s_per_step": 10.1},
    ("gsm8k", "n128"): {"peak": 82.68, "s_per_step": 13.6},
    ("gsm8k", "n256"): {"peak": 82.18, "s_per_step": 21.2},
    ("gsm8k", "m8"): {"peak": 82.84}, ("gsm8k", "m4"): {"peak": 82.86},
    ("gsm8k", "m2"): {"peak": 81.62}, ("gsm8k", "random"): {"peak": 81.62},
    ("gsm8k", "max_reward"): {"peak": 67.28},
    ("math", "grpo"): {"peak": 48.90}, ("math", "pods"): {"peak": 50.35, "speedup": 2.00},
    ("llama", "grpo"): {"peak": 39.13}, ("llama", "pods"): {"peak": 55.88, "speedup": 3.00},
    ("h100s", "grpo"): {"peak": 82.56}, ("h100s", "pods"): {"peak": 84.12, "speedup": 1.71},
    ("a100s", "grpo"): {"peak": 87.04}, ("a100s", "pods"): {"peak": 87.94, "speedup": 1.75},
}


def figure(key: str, data_dir: str | Path = DATA, path: str | Path | None = None,
           overlay: pd.DataFrame | None = None):
    """The paper figure `key` (a key of FIGURES) from the logs; `overlay`: curves of one's own
    runs (`results.load_runs`) drawn on the same accuracy axis."""
    if key not in FIGURES:
        raise ValueError(f"figure must be one of {', '.join(FIGURES)}; got {key!r}")
    study, title, names = FIGURES[key]
    spec = STUDIES[study]
    curves = load(study, data_dir)
    agg = R.aggregate(curves[curves["variant"].isin(names)])
    agg = pd.concat([agg[agg["variant"] == v] for v in names], ignore_index=True)
    return plots.paper_curves(
        agg, names, path, title=f"{spec.title}, {spec.hardware}: {title}",
        unit="h" if spec.horizon_min > 60 else "min", hardware=spec.hardware,
        overlay=R.aggregate(overlay) if overlay is not None else None, styles=STYLES)


def summary(data_dir: str | Path = DATA, n_boot: int = 2000, seed: int = 0,
            studies: tuple[str, ...] = tuple(STUDIES), crossing: str = PAPER_CROSSING
            ) -> pd.DataFrame:
    """`results.summary_table` of each study against its GRPO run (unpaired bootstrap: the
    runs are independent; the paper's crossing unless `crossing` says otherwise), one row per
    (study, variant), with a study column first."""
    tables = []
    for study in studies:
        table = R.summary_table(load(study, data_dir), pd.DataFrame(), baseline="grpo",
                                paired=False, n_boot=n_boot, seed=seed, crossing=crossing)
        table.insert(0, "study", study)
        tables.append(table.drop(columns=["generate_s", "update_s"]))
    return pd.concat(tables, ignore_index=True)


def figure_table(key: str, data_dir: str | Path = DATA, n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """`printed_vs_kit` for the variants of figure `key` (and their GRPO baseline)."""
    if key not in FIGURES:
        raise ValueError(f"figure must be one of {', '.join(FIGURES)}; got {key!r}")
    study, _, names = FIGURES[key]
    keep = [*names, "grpo"]
    table = summary(data_dir, n_boot, seed, studies=(study,))
    interpolated = summary(data_dir, n_boot, seed, studies=(study,), crossing="interpolated")
    return printed_vs_kit(table[table["variant"].isin(keep)],
                          interpolated[interpolated["variant"].isin(keep)])


def user_runs(results_root: str | Path, experiment: str) -> pd.DataFrame:
    """The complete runs of one's own experiment, to overlay: from its run folders
    (`results.load_runs`), else from its committed record (runs.csv.gz)."""
    exp_dir = Path(results_root) / experiment
    if find_runs(exp_dir) or not (exp_dir / R.RECORD).is_file():
        curves = R.load_runs(results_root, experiment)
    else:
        curves = R.read_record(exp_dir / R.RECORD)[0]
    if not len(curves):
        raise FileNotFoundError(f"no runs of experiment {experiment!r} under "
                                f"{str(results_root)!r} (results/<experiment>/<variant>-s<seed>/)")
    return curves[curves["complete"].astype(bool)]


def _interval(row: pd.Series, name: str, scale: float = 1.0, unit: str = "x") -> str:
    value, low, high = (scale * row[f"{name}{s}"] for s in ("", "_ci_low", "_ci_high"))
    return f"{value:.2f}{unit} [{low:.2f}, {high:.2f}]"


def printed_vs_kit(table: pd.DataFrame, interpolated: pd.DataFrame) -> pd.DataFrame:
    """The paper's printed numbers beside the kit's recomputation (`summary` output with the
    paper's crossing, and with the interpolated one), with the kit's 95% intervals (peak
    difference and speedups against the study's GRPO)."""
    rows = []
    other = interpolated.set_index(["study", "variant"])
    for _, r in table.iterrows():
        i = other.loc[(r["study"], r["variant"])]
        printed = PRINTED.get((r["study"], r["variant"]), {})
        base = r["variant"] == "grpo"
        rows.append({
            "study": f"{r['study']} ({STUDIES[r['study']].hardware})",
            "variant": f"{r['variant']} {r['n']}/{r['m']}",
            "peak (paper)": f"{printed['peak']:.2f}" if "peak" in printed else "",
            "peak (kit)": f"{100 * r['peak_acc']:.2f}",
            "peak - GRPO (pt)": "" if base else _interval(r, "peak_diff", 100, ""),
            "speedup (paper)": f"{printed['speedup']:.2f}x" if "speedup" in printed else "",
            "speedup (kit, paper's crossing)": "" if base else _interval(r, "speedup"),
            "verdict": "" if base else r["speedup_verdict"],
            "speedup (kit, interpolated)": "" if base else _interval(i, "speedup"),
            "per-step speedup (kit, interpolated)": "" if base else _interval(i, "step_speedup"),
            "s/step (paper)": f"{printed['s_per_step']:.1f}" if "s_per_step" in printed else "",
            "s/step (kit)": f"{r['s_per_step']:.2f}", "c (kit)": f"{r['cost_ratio']:.2f}"})
    return pd.DataFrame(rows)


def regime_figure(table: pd.DataFrame, data_dir: str | Path = DATA,
                  path: str | Path | None = None, n_boot: int = 2000, seed: int = 0):
    """The cost-regime map of the one-GPU main comparisons (PODS vs GRPO, `summary` rows):
    wall-clock speedup predicted from the per-step curves for c from 1 to 3, with the
    measured points."""
    maps, measured = {}, {}
    for study in ("gsm8k", "math", "llama"):
        rows = table[(table["study"] == study) & (table["variant"] == "pods")]
        m, p = R.regime_maps(load(study, data_dir), rows, "grpo", paired=False, n_boot=n_boot,
                             seed=seed, costs=np.linspace(1, 3, 81), crossing=PAPER_CROSSING)
        maps[study], measured[study] = m["pods"], p["pods"]
    return plots.cost_regime(maps, measured, paper_cost=None, path=path,
                             title="The paper's one-GPU runs: PODS vs GRPO (paper's crossing)")


def write(data_dir: str | Path = DATA, out_dir: str | Path = OUT, n_boot: int = 2000,
          seed: int = 0) -> list[Path]:
    """`pods paper`: the eight figures and the cost-regime map under out_dir/figures/, the
    summary as summary.csv (every column) and summary.md (printed vs recomputed, then every
    variant); returns the paths written."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    paths = []
    for key in FIGURES:
        paths.append(fig_dir / f"{key}.png")
        plt.close(figure(key, data_dir, paths[-1]))
    table = summary(data_dir, n_boot, seed)
    interpolated = summary(data_dir, n_boot, seed, crossing="interpolated")
    paths.append(fig_dir / "cost_regime.png")
    plt.close(regime_figure(table, data_dir, paths[-1], n_boot, seed))
    csv, md = out_dir / "summary.csv", out_dir / "summary.md"
    atomic_write(csv, table.to_csv(index=False, lineterminator="\n"))
    atomic_write(md, _markdown(table, interpolated))
    return [*paths, csv, md]


def _markdown(table: pd.DataFrame, interpolated: pd.DataFrame) -> str:
    return ("# The PODS authors' logs recomputed by pods-kit (`pods paper`)\n\n"
            "`pods paper` regenerates this file, summary.csv and figures/ from "
            "data/pods_official. Accuracy in %, differences in points, 95% bootstrap intervals "
            "over the runs (unpaired, 2000 resamples) in brackets; speedups against each "
            "study's GRPO. The paper's crossing (the first evaluation at or above 99% of GRPO's "
            "peak) gives the printed speedups; the kit's default interpolates the crossing "
            "between evaluations (its column here; summary.csv and the section below: the "
            "paper's).\n\n"
            "## As printed in the paper vs recomputed\n\n"
            + R.markdown_table(printed_vs_kit(table, interpolated))
            + "\n## Every variant (summary.csv has every column)\n\n"
            + R.markdown_table(R.compact_table(table).reset_index().assign(
                study=table["study"]).set_index("study").reset_index()))
