"""The training bar (budget fraction, its text), the run's one-line summary, and 03_train's
choice between training, resuming and showing a run."""

import io
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from podslib.config import Config
from podslib.lab import notebook
from podslib.training import progress
from podslib.training.trainer import LoopState


def budget(max_steps=0, max_train_seconds=0.0, prompts_per_step=8):
    return SimpleNamespace(max_steps=max_steps, max_train_seconds=max_train_seconds,
                           prompts_per_step=prompts_per_step)


def record(step, seconds, reward=0.5, zero_var_frac=0.25):
    return {"step": step, "train_time_s": seconds, "reward_mean_all": reward,
            "zero_var_frac": zero_var_frac, "loss": 0.0}


def test_fraction_is_the_budget_further_along():
    bar = progress.TrainingBar(budget(10, 100.0), "run", LoopState(),
                               enabled=False)
    assert bar.fraction(5, 20.0) == 0.5               # steps bind
    assert bar.fraction(2, 80.0) == 0.8               # time binds
    assert bar.fraction(20, 200.0) == 1.0             # capped
    only_time = progress.TrainingBar(budget(0, 90.0), "run", LoopState(),
                                     enabled=False)
    assert only_time.fraction(1000, 45.0) == 0.5


def test_budget_text():
    assert progress.budget_text(budget(0, 90.0)) == "90 s of training"
    assert progress.budget_text(budget(100, 90.0)) == "at most 100 steps, 90 s of training"
    assert progress.budget_text(budget(100, 0.0), 17, 3.0) == "step 17/100"
    assert progress.budget_text(budget(0, 90.0), 17, 44.6) == "step 17, 45/90 s of training"
    assert progress.budget_text(budget(0, 3.0), 17, 1.26) == "step 17, 1.3/3 s of training"


def test_time_budget_bar_shows_the_informative_numbers_and_ends_full(capsys):
    """A 90 s budget: after 3 steps of 30 s the bar is full; its text has the latest step's
    reward, the groups with signal (6 of 8: a quarter all-equal), s/step and the accuracy, and
    neither the loss nor a doubled colon."""
    bar = progress.TrainingBar(budget(0, 90.0), "pods-s0", LoopState())
    bar.accuracy(0.25)
    bar.step(record(1, 30.0))
    assert bar.bar.n == progress.SCALE // 3
    bar.accuracy(0.45)
    bar.step(record(2, 60.0))
    bar.step(record(3, 90.0, reward=0.625))
    assert bar.bar.n == progress.SCALE
    bar.close()
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("pods-s0 100%|")
    assert last.endswith("step 3, 90/90 s of training, reward 0.62, signal 6/8 groups, "
                         "30.00 s/step, test accuracy 0.450")
    assert ": :" not in last and "loss" not in last


def test_resumed_bar_starts_where_the_run_is(capsys):
    bar = progress.TrainingBar(budget(40, 0.0), "grpo-s1", LoopState(step=10, train_time_s=12.0))
    assert bar.bar.n == progress.SCALE // 4
    bar.close()
    assert "grpo-s1  25%|" in capsys.readouterr().err


def test_describe():
    summary = {"run_dir": "/x/pods-s0", "steps": 134, "train_time_s": 90.2, "wall_s": 161.4,
               "base_accuracy": 0.3126, "best_accuracy": 0.455, "final_accuracy": 0.44,
               "model_path": "/cache/sft-abc", "param_numel_per_rank": [1000]}
    assert progress.describe(summary) == (
        "pods-s0: 134 steps in 1m30s of training (2m41s wall clock); test accuracy 0.313 at "
        "the start -> 0.455 best -> 0.440 final")
    short = {**summary, "train_time_s": 8.44, "wall_s": 12.0, "base_accuracy": None}
    assert progress.describe(short) == "pods-s0: 134 steps in 8.4 s of training (12.0 s wall clock)"


TINY = {"engine": "hf", "max_steps": 2, "max_train_seconds": 0, "train_size": 50,
        "test_size": 4, "eval_repeats": 1, "eval_every_s": 0, "checkpoint_every_s": 0,
        "checkpoint_every_steps": 1, "prompts_per_step": 2, "max_completion_tokens": 12,
        "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}, "n": 4, "m": 2}


def steps_of(run_dir):
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_or_show_trains_shows_and_resumes(tmp_path, capsys):
    """New folder: trained. Again: shown, nothing trained. Interrupted (no summary.json):
    an error naming resume / run_dir when resume is False, resumed (to a raised step budget)
    when True. Another config: an error naming the notebook's parameters, nothing changed."""
    cfg = Config.from_dict({**TINY, "cache_dir": str(tmp_path / "cache"),
                            "results_root": str(tmp_path)})
    run = tmp_path / "run"
    first = notebook.train_or_show(cfg, run)
    assert first["steps"] == 2 and steps_of(run) == [1, 2]
    metrics = (run / "metrics.jsonl").read_text()

    shown = notebook.train_or_show(cfg, run)
    assert shown == json.loads((run / "summary.json").read_text())
    assert (run / "metrics.jsonl").read_text() == metrics
    assert "holds a complete run: shown below, not trained again" in capsys.readouterr().out

    (run / "summary.json").unlink()                       # as if stopped after step 2
    more = Config.from_dict({**cfg.to_dict(), "max_steps": 3})
    with pytest.raises(ValueError, match=r"interrupted run; set resume = True .* another run_dir"):
        notebook.train_or_show(more, run, resume=False)
    assert steps_of(run) == [1, 2]
    resumed = notebook.train_or_show(more, run)
    assert resumed["steps"] == 3 and steps_of(run) == [1, 2, 3]
    assert "resuming it from its last checkpoint" in capsys.readouterr().out

    other = Config.from_dict({**cfg.to_dict(), "n": 8})
    with pytest.raises(ValueError, match=r"different config \(fields n\).*in 03_train choose "
                                         r"another run_dir, or the config_file, variant, seed"):
        notebook.train_or_show(other, run)
    assert steps_of(run) == [1, 2, 3]


def test_a_bar_into_a_log_writes_plain_lines_at_most_every_interval():
    """A bar over 1000 steps updated in a tight loop, into a log: its first state and its last,
    two plain lines, no carriage return; with no interval, every drawing is a line."""
    from tqdm import tqdm

    for every_s, most in ((progress.LOG_EVERY_S, 2), (0.0, 1002)):
        log = io.StringIO()
        with tqdm(total=1000, desc="work", file=progress.LogLines(log, every_s),
                  mininterval=0) as bar:
            for _ in range(1000):
                bar.update(1)
        lines = log.getvalue().splitlines()
        assert "\r" not in log.getvalue() and 2 <= len(lines) <= most, lines
        assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%"), lines
        assert all(line.strip() for line in lines)


NOTEBOOK_AND_RUN = """
import sys
import nbformat
from podslib.config import Config
from podslib.lab import notebook
from podslib.training.trainer import train

cells = [nbformat.v4.new_code_cell("import time; time.sleep(0.2)") for _ in range(8)]
book = nbformat.v4.new_notebook(cells=cells)
book.metadata.kernelspec = {"name": notebook.default_kernel(), "language": "python",
                            "display_name": "kernel"}
nbformat.write(book, sys.argv[1] + "/cells.ipynb")
notebook.execute(sys.argv[1] + "/cells.ipynb", sys.argv[1] + "/out.ipynb", {})
train(Config.from_yaml(sys.argv[1] + "/config.yaml"), sys.argv[1] + "/run")
"""


@pytest.mark.slow
def test_bars_into_a_log_file_write_few_plain_lines(tmp_path):
    """`make reproduce > log 2>&1` in small: papermill's bar over a notebook's cells, the
    warm-start's bar and the training bar, with stdout and stderr in a file: no carriage return,
    and each bar writes its first and last state and at most one line per LOG_EVERY_S between
    (none when it takes less)."""
    cfg = Config.from_dict({**TINY, "cache_dir": str(tmp_path / "cache"), "max_steps": 6,
                            "tiny": {**TINY["tiny"], "warm_start": True, "warm_start_steps": 40,
                                     "warm_start_target": 0.0}})
    cfg.to_yaml(tmp_path / "config.yaml")
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        done = subprocess.run([sys.executable, "-c", NOTEBOOK_AND_RUN, str(tmp_path)],
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    between = int((time.monotonic() - start) // progress.LOG_EVERY_S)
    text = (tmp_path / "log").read_bytes().decode()           # no newline translation
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    for bar in ("Executing", "warm-start", "run"):
        lines = [line for line in text.splitlines() if line.startswith(bar) and "%|" in line]
        assert 2 <= len(lines) <= 2 + between, (bar, between, lines)
        assert " 0%|" in lines[0] and "100%|" in lines[-1], (bar, lines)
