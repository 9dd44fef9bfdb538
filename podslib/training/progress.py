"""What a person sees of one training run: the live bar while it trains, and a short summary
after it.

The bar counts the budget, not iterations: its fraction is that of max_steps or of
max_train_seconds (the training clock, evaluation excluded), whichever is further along, so its
ETA is the wall time to the end of the budget. It shows what moves during GRPO: the mean reward,
the groups with signal (rewards not all equal), seconds per step and the latest test accuracy.
The loss is left out: with mu = 1 the surrogate's value is 0 by construction (ratio 1, the
advantages of a group sum to zero), only its gradient is not.

Where nobody watches (stderr is a file or a pipe: CI, `make reproduce > log 2>&1`), every bar
of the kit (this one, the warm-start's, papermill's) writes plain lines instead of redrawing
itself with carriage returns: its first state, then at most one line every LOG_EVERY_S seconds,
and its last state (`bar_options`); transformers' bars are off (`library_bars`).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
SCALE = 1000     # the bar counts thousandths of the budget (integers: it ends exactly full)
LOG_EVERY_S = 30.0


class LogLines(io.TextIOBase):
    """A stream for one tqdm bar that writes to a log: each drawing (tqdm starts one with a
    carriage return and pads it with spaces) becomes a plain line, the first at once, then at
    most one every `every_s` seconds; the bar's closing newline writes its last drawing if that
    was held back."""

    def __init__(self, stream, every_s: float = LOG_EVERY_S):
        self.stream, self.every_s = stream, every_s
        self.last_s = -float("inf")
        self.held = ""                          # the latest drawing not written yet

    def write(self, text: str) -> int:
        drawing = text.replace("\r", "").rstrip()
        now = time.monotonic()
        if drawing:
            self.held = drawing
        if self.held and (now - self.last_s >= self.every_s or text.endswith("\n")):
            self.stream.write(self.held + "\n")
            self.stream.flush()
            self.held, self.last_s = "", now
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def watched() -> bool:
    """True where bars are live: stderr is a terminal, or this is a notebook (tqdm.auto draws a
    widget there)."""
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as widget

    return issubclass(tqdm, widget) or sys.stderr.isatty()


def bar_options() -> dict[str, Any]:
    """Extra tqdm options for a bar of the kit: none where it is `watched`, else a `LogLines`
    stream on stderr."""
    return {} if watched() else {"file": LogLines(sys.stderr)}


def library_bars(progress: bool) -> None:
    """Turn off transformers' own bars (loading and saving weights) unless `progress` is asked
    for and `watched`: they redraw with carriage returns, which a log keeps."""
    from transformers.utils import logging as hf_logging

    if not (progress and watched()):
        hf_logging.disable_progress_bar()


def budget_text(cfg: Any, step: int | None = None, seconds: float | None = None) -> str:
    """'step 17/100, 45/90 s of training' (a budget left at 0 is not shown); without step and
    seconds, the budget alone: 'at most 100 steps, 90 s of training'."""
    if step is None:
        parts = ([f"at most {cfg.max_steps} steps"] if cfg.max_steps else []) + \
            ([f"{cfg.max_train_seconds:g} s of training"] if cfg.max_train_seconds else [])
        return ", ".join(parts)
    parts = [f"step {step}/{cfg.max_steps}" if cfg.max_steps else f"step {step}"]
    if cfg.max_train_seconds:
        digits = 0 if cfg.max_train_seconds >= 60 else 1
        parts.append(f"{seconds:.{digits}f}/{cfg.max_train_seconds:g} s of training")
    return ", ".join(parts)


class TrainingBar:
    """A tqdm bar over one run's budget (a widget in a notebook, text elsewhere); see module
    docstring. `state` is the trainer's LoopState (step, train_time_s) when the bar starts."""

    def __init__(self, cfg: Any, name: str, state: Any, enabled: bool = True):
        from tqdm.auto import tqdm

        self.cfg = cfg
        self.latest = ""                       # reward, signal, s/step of the latest step
        self.test_accuracy: float | None = None
        self.bar = tqdm(total=SCALE, desc=name, bar_format=BAR_FORMAT, dynamic_ncols=True,
                        disable=not enabled, **bar_options())
        self._move(state.step, state.train_time_s, refresh=True)

    def fraction(self, step: int, seconds: float) -> float:
        """Share of the budget used: the larger of the step and the training-clock shares."""
        shares = [step / self.cfg.max_steps if self.cfg.max_steps else 0.0,
                  seconds / self.cfg.max_train_seconds if self.cfg.max_train_seconds else 0.0]
        return min(1.0, max(shares))

    def text(self, step: int, seconds: float) -> str:
        parts = [budget_text(self.cfg, step, seconds), self.latest]
        if self.test_accuracy is not None:
            parts.append(f"test accuracy {self.test_accuracy:.3f}")
        return ", ".join(p for p in parts if p)

    def _move(self, step: int, seconds: float, refresh: bool = False) -> None:
        """Show (step, seconds); tqdm redraws at most every 0.1 s unless `refresh`."""
        self.position = (step, seconds)
        self.bar.set_postfix_str(self.text(step, seconds), refresh=False)
        self.bar.update(round(self.fraction(step, seconds) * SCALE) - self.bar.n)
        if refresh:
            self.bar.refresh()

    def step(self, record: dict[str, Any]) -> None:
        """After a step; `record` is its metrics.jsonl line (step, train_time_s,
        reward_mean_all, zero_var_frac)."""
        groups = self.cfg.prompts_per_step
        signal = round((1.0 - record["zero_var_frac"]) * groups)
        self.latest = (f"reward {record['reward_mean_all']:.2f}, signal {signal}/{groups} "
                       f"groups, {record['train_time_s'] / record['step']:.2f} s/step")
        self._move(record["step"], record["train_time_s"])

    def accuracy(self, value: float) -> None:
        """After an evaluation: its test accuracy."""
        self.test_accuracy = value
        self._move(*self.position, refresh=True)

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """'8.4 s' under a minute, else '2m41s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def describe(summary: dict[str, Any]) -> str:
    """One line for a person from a run's summary (summary.json): steps, training time and the
    test accuracy at the start, its best and at the end."""
    name = Path(summary["run_dir"]).name
    line = (f"{name}: {summary['steps']} steps in {duration(summary['train_time_s'])} of "
            f"training ({duration(summary['wall_s'])} wall clock)")
    start, best, final = (summary.get(k) for k in
                          ("base_accuracy", "best_accuracy", "final_accuracy"))
    if start is None:
        return line
    return line + (f"; test accuracy {start:.3f} at the start -> {best:.3f} best -> "
                   f"{final:.3f} final")
