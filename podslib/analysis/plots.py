"""Matplotlib figures for the notebooks and the README (PNG files).

Every function takes tidy pandas / numpy inputs (from `podslib.analysis.results` or `podslib.lab.offline`),
returns the Figure, and when `path` is given also saves it as PNG (parent folders created).
Outside a Jupyter kernel the Agg backend is used (headless: CLI, papermill-free scripts, tests);
inside one the kernel's inline backend shows each figure under its cell.

A figure is drawn under matplotlib's default style whatever the caller's settings (a kernel's
inline backend changes some), and saved without the matplotlib version in the PNG, so the same
data give the same PNG bytes (a committed figure is regenerated identically). `variant_styles`
gives each variant of an experiment one colour and line style, which every figure of the
experiment uses.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import PercentFormatter

from podslib.files import naming

PHASE_LABELS = {"t_generate": "generate", "t_score": "score", "t_select": "select",
                "t_update": "update", "t_sync": "sync"}
BANDS = {"std": "mean ± std over seeds", "sem": "mean ± sem over seeds",
         "minmax": "min..max over seeds", "ci95": "mean ± 1.96 sem (95%)"}
# Axis labels of the columns the notebooks plot; other columns are shown as they are named.
LABELS = {
    "train_time_s": "training time (s, evaluation excluded)", "step": "optimizer step",
    "accuracy": "test accuracy", "reward_mean_all": "mean reward of all n rollouts",
    "reward_mean_sel": "mean reward of the m selected", "group_size": "group size n",
    "zero_var_frac": "fraction of groups with all-equal rewards", "n": "rollouts per prompt n",
    "m": "rollouts kept m", "seconds": "seconds per call", "variant": "variant",
    "peak_acc": "peak accuracy", "final_acc": "final accuracy", "s_per_step": "seconds per step"}
TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive", "tab:cyan")
LINESTYLES = ("-", "--", "-.", ":")
PHASE_COLORS = {"t_generate": "0.3", "t_score": "0.85", "t_select": "0.55", "t_update": "0.65",
                "t_sync": "0.95"}


def variant_styles(variants, baseline: str | None = None) -> dict[str, dict[str, str]]:
    """{variant: {'color', 'linestyle'}} for `variants` in their order (an experiment's
    `results.variant_order`): the baseline black and solid, the others COLORS and LINESTYLES
    in turn, so that every figure of the experiment draws a variant alike."""
    out, k = {}, 0
    for v in dict.fromkeys(variants):
        if v == baseline:
            out[v] = {"color": "black", "linestyle": "-"}
        else:
            out[v] = {"color": COLORS[k % len(COLORS)],
                      "linestyle": LINESTYLES[k % len(LINESTYLES)]}
            k += 1
    return out


def _styled(fn):
    """Run a figure function under matplotlib's default style (module docstring). Leaving the
    style restores every setting but interactive mode, which a kernel turns on when its first
    figure starts the inline backend (restored, the kernel would stop showing figures)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.style.context("default"):
            fig = fn(*args, **kwargs)
            interactive = matplotlib.is_interactive()
        matplotlib.interactive(interactive)
        return fig
    return wrapper


def label(column: str) -> str:
    """The human axis label of a column (LABELS), else the column name."""
    return LABELS.get(column, column)


def save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    """Save `fig` as PNG at `path` (if given) and return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with naming(path, "figure"):                  # a full disk: the line names the file
            fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    return fig


def _curves(ax: plt.Axes, agg: pd.DataFrame, x: str, scale: float, band: str,
            names: dict | None = None, styles: dict | None = None, **style) -> None:
    """Seed-mean curves of `agg` (`results.aggregate` output: the lines between evaluations) on
    `ax`, x divided by `scale`, each variant in its style (`variant_styles`, `style` on top),
    with a band when a variant has more than one seed."""
    styles = styles or variant_styles(agg["variant"])
    for variant, g in agg.groupby("variant", sort=False):
        t = g[x].to_numpy(float) / scale
        mean = g["mean"].to_numpy()
        seeds = int(g["seeds"].iloc[0])
        name = (names or {}).get(variant, variant)
        (line,) = ax.plot(t, mean, label=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})",
                          **{**styles.get(variant, {}), **style})
        if seeds > 1:
            half = 1.96 * g["sem"] if band == "ci95" else g[band] if band != "minmax" else None
            low, high = (g["min"], g["max"]) if half is None else (mean - half, mean + half)
            ax.fill_between(t, low, high, alpha=0.15, color=line.get_color(), lw=0)


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@_styled
def accuracy_vs_time(agg: pd.DataFrame, path: str | Path | None = None, band: str = "std",
                     title: str = "Test accuracy vs training time", x: str = "train_time_s",
                     unit: str = "min", styles: dict | None = None) -> plt.Figure:
    """Seed-mean accuracy per variant against training time (x = 'train_time_s', shown in
    `unit`: 's', 'min' or 'h') or optimizer steps (x = 'step'), the line between evaluations
    with a shaded band over seeds: std, sem, min..max or 95% normal interval ('ci95'); each
    variant in its style (`styles`, default `variant_styles` in the order of `agg`). The band is
    named in the title only when some variant has more than one seed."""
    _check("band", band, BANDS)
    _check("unit", unit, TIME_UNITS)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    scale = TIME_UNITS[unit] if x == "train_time_s" else 1.0
    _curves(ax, agg, x, scale, band, styles=styles)
    ax.set_xlabel(f"training time ({unit}, evaluation excluded)" if x == "train_time_s"
                  else label(x))
    ax.set_ylabel(label("accuracy"))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    several = len(agg) and agg["seeds"].max() > 1
    ax.set_title(title + (f"\n(band: {BANDS[band]})" if several else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


@_styled
def bars(table: pd.DataFrame, x: str, y: str, err: str | None = None, hue: str | None = None,
         path: str | Path | None = None, title: str = "", ylabel: str | None = None,
         styles: dict | None = None) -> plt.Figure:
    """Bar chart of column `y` per `x` (grouped by `hue` when given), error bars from `err`;
    used for the n / m / rule ablations and the offline selection statistics. Without `hue`,
    a bar whose x value has a style in `styles` (`variant_styles`) takes its colour."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = list(dict.fromkeys(table[x]))
    hues = list(dict.fromkeys(table[hue])) if hue else [None]
    width = 0.8 / len(hues)
    colors = [(styles or {}).get(v, {}).get("color", "tab:blue") for v in xs] if not hue \
        else None
    for k, h in enumerate(hues):
        part = table if h is None else table[table[hue] == h]
        part = part.set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (k - (len(hues) - 1) / 2) * width
        ax.bar(pos, part[y], width, yerr=part[err] if err else None, capsize=3,
               label=None if h is None else f"{hue}={h}", color=colors)
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(label(x))
    ax.set_ylabel(ylabel or label(y))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if hue:
        ax.legend()
    return save(fig, path)


@_styled
def step_time_breakdown(times: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Stacked bars of mean seconds per step by phase, one bar per variant
    (`results.step_times` output: variants as index, t_* columns), the phases in greys (the
    colours belong to the variants)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bottom = np.zeros(len(times))
    for col, label in PHASE_LABELS.items():
        if col in times.columns:
            ax.bar(times.index.astype(str), times[col], bottom=bottom, label=label,
                   color=PHASE_COLORS[col], edgecolor="black", lw=0.5)
            bottom += times[col].to_numpy()
    ax.set_ylabel("seconds per step")
    ax.set_title("Step time by phase")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save(fig, path)


@_styled
def reward_histograms(rewards: np.ndarray, path: str | Path | None = None) -> plt.Figure:
    """rewards [G, n]: histogram of all G*n rewards, and of the per-prompt mean reward (how often
    a group is all wrong or all right)."""
    rewards = np.asarray(rewards, float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.hist(rewards.ravel(), bins=21)
    a.set_xlabel("reward")
    a.set_ylabel("rollouts")
    a.set_title(f"all rollouts ({rewards.shape[0]} prompts x {rewards.shape[1]})")
    b.hist(rewards.mean(axis=1), bins=np.linspace(0, max(1.0, rewards.max()), 21))
    b.set_xlabel("mean reward of a prompt's group")
    b.set_ylabel("prompts")
    b.set_title("per-prompt mean reward")
    fig.tight_layout()
    return save(fig, path)


@_styled
def lines(table: pd.DataFrame, x: str, y: str, hue: str | None = None,
          path: str | Path | None = None, title: str = "", logx: bool = False,
          logy: bool = False, ylabel: str | None = None) -> plt.Figure:
    """Line plot of `y` against `x`, one line per `hue` value (e.g. zero-variance fraction vs
    group size, selection time vs n per rule)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    groups = table.groupby(hue, sort=False) if hue else [(None, table)]
    for h, g in groups:
        ax.plot(g[x], g[y], marker="o", label=None if h is None else f"{hue}={h}")
    if logx:                                             # powers of two: label the values
        ticks = sorted(set(table[x]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(label(x))
    ax.set_ylabel(ylabel or label(y))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if hue:
        ax.legend()
    return save(fig, path)


@_styled
def paper_curves(agg: pd.DataFrame, names: dict[str, str], path: str | Path | None = None,
                 title: str = "", unit: str = "h", hardware: str = "",
                 overlay: pd.DataFrame | None = None, overlay_unit: str = "min",
                 styles: dict | None = None) -> plt.Figure:
    """A paper figure: seed-mean accuracy per variant (`results.aggregate` output, variants
    named by `names`, drawn in `styles`) against training time in `unit`, with the 95% band
    (±1.96 sem, as the authors draw it) and, as theirs, the accuracy axis fitted to the points
    after t = 0 (the base model's point, when below, is named in a note). `overlay` (another
    aggregate, e.g. the user's own runs) is drawn dashed on the same accuracy axis, then fitted
    to both, against its own time axis (top, in `overlay_unit`)."""
    _check("unit", unit, TIME_UNITS)
    _check("overlay_unit", overlay_unit, TIME_UNITS)
    fig, ax = plt.subplots(figsize=(8.4, 4.0))
    _curves(ax, agg, "train_time_s", TIME_UNITS[unit], "ci95", names, styles, marker="o", ms=3)
    ax.set_xlabel(f"training time ({unit}){' on ' + hardware if hardware else ''}")
    ax.set_ylabel(label("accuracy"))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if overlay is None or not len(overlay):
        _fit_after_start(ax, agg)
    else:
        top = ax.twiny()
        _curves(top, overlay, "train_time_s", TIME_UNITS[overlay_unit], "ci95",
                {v: f"yours: {v}" for v in overlay["variant"].unique()}, styles,
                linestyle=(0, (2, 1)), alpha=0.8)
        top.set_xlabel(f"your runs: training time ({overlay_unit}, evaluation excluded)")
        more = top.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    fig.suptitle(title + "\n(band: mean ± 1.96 sem over runs)", fontsize=10)
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return save(fig, path)


def _fit_after_start(ax: plt.Axes, agg: pd.DataFrame) -> None:
    """Accuracy axis over the points after t = 0 (with their bands); a note names the t = 0
    value when it falls below."""
    after = agg[agg["train_time_s"] > 0]
    start = agg[agg["train_time_s"] == 0]["mean"]
    if not len(after) or not len(start):
        return
    low = float((after["mean"] - 1.96 * after["sem"]).min())
    high = float((after["mean"] + 1.96 * after["sem"]).max())
    pad = 0.05 * (high - low or 0.01)
    if start.min() < low - pad:
        ax.set_ylim(low - pad, high + pad)
        ax.text(0.01, 0.02, f"t = 0 (base model): {100 * start.mean():.1f}%, below the axis",
                transform=ax.transAxes, fontsize=8, color="gray")


@_styled
def cost_regime(maps: dict[str, pd.DataFrame], measured: dict[str, dict] | None = None,
                paper_cost: float | None = 1.35, path: str | Path | None = None,
                title: str = "Wall-clock speedup predicted from the per-step curves",
                styles: dict | None = None) -> plt.Figure:
    """Predicted wall-clock speedup (`stats.regime` tables, one per name) against the step-cost
    ratio c with its 95% band, one panel per name (shared axes, in its style from `styles`);
    `measured` {name: {cost_ratio, speedup, ci_low, ci_high}} marks the measured wall-clock
    speedup at the measured c; a dotted line marks the paper's one-GPU c (10.1 s vs 7.5 s per
    step). A variant that never reached the threshold is drawn at its bound (the largest
    speedup the data allow), said in its panel's title."""
    styles = styles or variant_styles(maps)
    cols = min(len(maps), 3)
    rows = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 0.6, 3.0 * rows + 0.9),
                             sharex=True, sharey=True, squeeze=False)
    for ax, (name, table) in zip(axes.flat, maps.items(), strict=False):
        style = styles.get(name, {"color": "tab:blue", "linestyle": "-"})
        never = (table["predicted"] == 0).all()
        y = table["at_most"] if never else table["predicted"]
        ax.plot(table["cost_ratio"], y, label="at most" if never else "predicted", **style)
        ax.fill_between(table["cost_ratio"], table["ci_low"], table["ci_high"], alpha=0.2,
                        color=style["color"], lw=0)
        point = (measured or {}).get(name)
        if point:
            err = [[point["speedup"] - point["ci_low"]], [point["ci_high"] - point["speedup"]]]
            ax.errorbar([point["cost_ratio"]], [point["speedup"]], yerr=err, fmt="o",
                        color=style["color"], capsize=4,
                        label=f"measured (c = {point['cost_ratio']:.2f})")
        ax.axhline(1.0, color="gray", lw=1)
        if paper_cost is not None:
            ax.axvline(paper_cost, color="gray", ls=":", label=f"paper's c = {paper_cost}")
        ax.set_title(name + ("\n(never reached: drawn at its bound)" if never else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(maps):]:
        ax.set_visible(False)
    fig.supxlabel("step-cost ratio c = variant s/step / baseline s/step", fontsize=9)
    fig.supylabel("wall-clock speedup (x)", fontsize=9)
    fig.suptitle(title + "\n(band: 95% bootstrap interval over seeds)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def cost_prediction(maps: dict[str, pd.DataFrame], points: dict[str, dict],
                    path: str | Path | None = None,
                    title: str = "Wall-clock speedup predicted at the c measured here"
                    ) -> plt.Figure:
    """`cost_regime` of each variant's per-step gain, with the prediction at the step-cost ratio
    measured by `pods cost`: `points` {name: {c, c_ci_low, c_ci_high, predicted, predicted_ci_low,
    predicted_ci_high, predicted_at_most}} drawn as a diamond with both 95% intervals (c across,
    the speedup up; a censored prediction at its bound)."""
    fig = cost_regime(maps, None, title=title)
    ax = fig.axes[0]
    for line, (name, p) in zip(ax.get_lines(), points.items(), strict=False):
        never = p["predicted"] == 0
        y = p["predicted_at_most"] if never else p["predicted"]
        xerr = [[max(0, p["c"] - p["c_ci_low"])], [max(0, p["c_ci_high"] - p["c"])]]
        yerr = [[max(0, y - p["predicted_ci_low"])], [max(0, p["predicted_ci_high"] - y)]]
        ax.errorbar([p["c"]], [y], xerr=xerr, yerr=yerr, fmt="D", color=line.get_color(),
                    capsize=4,
                    label=f"{name}: {'at most, ' if never else ''}here (c = {p['c']:.2f})")
    ax.legend(fontsize=8)
    return save(fig, path)
