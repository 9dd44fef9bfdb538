"""Matplotlib figures for the notebooks and the README (PNG files).

Every function takes tidy pandas / numpy inputs (from `podslib.results` or `podslib.offline`),
returns the Figure, and when `path` is given also saves it as PNG (parent folders created).
Outside a Jupyter kernel the Agg backend is used (headless: CLI, papermill-free scripts, tests);
inside one the kernel's inline backend shows each figure under its cell.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PHASE_LABELS = {"t_generate": "generate", "t_score": "score", "t_select": "select",
                "t_update": "update", "t_sync": "sync"}
BANDS = ("std", "sem", "minmax")


def save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    """Save `fig` as PNG at `path` (if given) and return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def accuracy_vs_time(agg: pd.DataFrame, path: str | Path | None = None, band: str = "std",
                     title: str = "Test accuracy vs training time") -> plt.Figure:
    """Seed-mean accuracy per variant against training time (`results.aggregate` output), as a
    step function with a shaded band: mean +- std ('std'), +- sem ('sem') or min..max ('minmax')."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(map(repr, BANDS))}; got {band!r}")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant, g in agg.groupby("variant", sort=False):
        t = g["train_time_s"].to_numpy() / 60
        mean = g["mean"].to_numpy()
        low, high = ((g["min"], g["max"]) if band == "minmax"
                     else (mean - g[band], mean + g[band]))
        label = f"{variant} ({int(g['seeds'].iloc[0])} seeds)"
        (line,) = ax.step(t, mean, where="post", label=label)
        ax.fill_between(t, low, high, step="post", alpha=0.2, color=line.get_color(), lw=0)
    ax.set_xlabel("training time (min, evaluation excluded)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title + f" (band: {band})")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def bars(table: pd.DataFrame, x: str, y: str, err: str | None = None, hue: str | None = None,
         path: str | Path | None = None, title: str = "", ylabel: str | None = None
         ) -> plt.Figure:
    """Bar chart of column `y` per `x` (grouped by `hue` when given), error bars from `err`;
    used for the n / m / rule ablations and the offline selection statistics."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = list(dict.fromkeys(table[x]))
    hues = list(dict.fromkeys(table[hue])) if hue else [None]
    width = 0.8 / len(hues)
    for k, h in enumerate(hues):
        part = table if h is None else table[table[hue] == h]
        part = part.set_index(x).reindex(xs)
        pos = np.arange(len(xs)) + (k - (len(hues) - 1) / 2) * width
        ax.bar(pos, part[y], width, yerr=part[err] if err else None, capsize=3,
               label=None if h is None else f"{hue}={h}")
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if hue:
        ax.legend()
    return save(fig, path)


def step_time_breakdown(times: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Stacked bars of mean seconds per step by phase, one bar per variant
    (`results.step_times` output: variants as index, t_* columns)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bottom = np.zeros(len(times))
    for col, label in PHASE_LABELS.items():
        if col in times.columns:
            ax.bar(times.index.astype(str), times[col], bottom=bottom, label=label)
            bottom += times[col].to_numpy()
    ax.set_ylabel("seconds per step")
    ax.set_title("Step time by phase")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return save(fig, path)


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
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if hue:
        ax.legend()
    return save(fig, path)
