"""The `pods` command and grid files: every config validates, a grid runs through papermill
(failures reported, the others go on, completed runs skipped on re-run, nothing under results/
overwritten), and bad input gives one clear error before anything runs."""

import hashlib
import json
import re
import subprocess
import sys

import pytest
import yaml

from podslib import rundir
from podslib.config import Config
from podslib.lab import pipeline
from podslib.lab.cli import main

CONFIG_FILES = sorted(pipeline.CONFIGS.glob("*.yaml"))
TINY_BASE = {"engine": "hf", "max_steps": 2, "max_train_seconds": 0, "train_size": 50,
             "test_size": 4, "eval_repeats": 1, "eval_every_s": 0, "checkpoint_every_s": 0,
             "prompts_per_step": 2, "max_completion_tokens": 12,
             "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}


def write_grid(path, grid, experiment="clitest", base=None):
    path.write_text(yaml.safe_dump({"experiment": experiment, "seeds": [0],
                                    "base": {**TINY_BASE, **(base or {})}, "grid": grid}))
    return path


def snapshot(root):
    """{relative path: (mtime_ns, sha256)} of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes())
                                       .hexdigest()) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_validates(path):
    grid = pipeline.load_grid(path)
    runs = grid.runs()
    assert len(runs) == len(grid.variants) * len(grid.seeds)
    for spec in runs:
        cfg = spec.config()
        assert isinstance(cfg, Config) and cfg.experiment == grid.experiment
        assert cfg.run_id == spec.run_id


def test_paper_settings():
    """Spot checks of the configs against the paper's setup (docs/method.md)."""
    one = pipeline.load_grid(pipeline.CONFIGS / "gsm8k_1gpu.yaml")
    grpo, pods = one.config("grpo", 0), one.config("pods", 0)
    assert (grpo.n, grpo.m, pods.n, pods.m) == (16, 16, 64, 16)
    assert (pods.lora_r, pods.lora_alpha, pods.lr, pods.weight_decay, pods.max_grad_norm) == \
        (64, 64.0, 5e-6, 0.1, 0.1)
    assert (pods.optimizer, pods.temperature, pods.max_completion_tokens, pods.eval_repeats) == \
        ("adamw_8bit", 0.9, 512, 5)
    assert pods.max_train_seconds == 6 * 3600 and len(one.seeds) == 10
    math = pipeline.load_grid(pipeline.CONFIGS / "math_1gpu.yaml")
    assert (math.config("pods", 0).n, math.config("pods", 0).m, math.config("pods", 0).lr) == \
        (32, 8, 5e-6)                                               # inherited from gsm8k_1gpu
    eight = pipeline.load_grid(pipeline.CONFIGS / "gsm8k_8gpu.yaml").config("pods", 0)
    assert (eight.n, eight.m, eight.lora_r, eight.lr_schedule, eight.max_train_seconds,
            eight.eval_every_s) == (128, 32, 0, "cosine", 1800, 120)
    tiny = pipeline.load_grid(pipeline.CONFIGS / "tiny.yaml")
    g, p = tiny.config("grpo", 0), tiny.config("pods", 0)
    assert g.n == g.m == p.m < p.n and g.max_train_seconds == p.max_train_seconds
    assert tiny.seeds == [0, 1, 2, 3, 4] and g.lr == p.lr == 5e-5


def test_relative_paths_are_taken_from_the_repository_root():
    values = pipeline.resolve_paths({"results_root": "results", "model": "Qwen/Qwen2.5-3B",
                                     "train_source": "configs", "cache_dir": "~/.cache/x"})
    assert values["results_root"] == str(pipeline.REPO / "results")
    assert values["train_source"] == str(pipeline.REPO / "configs")
    assert values["model"] == "Qwen/Qwen2.5-3B" and values["cache_dir"] == "~/.cache/x"


def test_grid_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline.load_grid(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"experiment": "x", "grid": {"a": {}}, "sweep": 1}))
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['sweep'\]"):
        pipeline.load_grid(bad)
    write_grid(bad, {"ok": {"n": 4, "m": 2}, "broken": {"n": 2, "m": 4}})
    with pytest.raises(ValueError, match="variant 'broken': m must be <= n"):
        pipeline.load_grid(bad)
    write_grid(bad, {"ok": {"n": 4, "m": 2}})
    with pytest.raises(ValueError, match="--only must name variants among 'ok'"):
        pipeline.load_grid(bad).runs(only=["nope"])


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--results-root", str(tmp_path)]) == 2
    assert "config file" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_results_folder_of_another_experiment(tmp_path, capsys):
    """A results/<experiment>/ folder holding runs of another experiment: one clear error, and
    nothing there is touched."""
    grid = write_grid(tmp_path / "g.yaml", {"pods": {"n": 4, "m": 2}})
    run = tmp_path / "res" / "clitest" / "pods-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"experiment": "other", "seed": 0}))
    before = snapshot(tmp_path / "res")
    assert main(["run", str(grid), "--results-root", str(tmp_path / "res")]) == 2
    assert "holds runs of experiment 'other'" in capsys.readouterr().err
    assert snapshot(tmp_path / "res") == before


def test_run_folder_with_another_config(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml", {"pods": {"n": 4, "m": 2}})
    spec = pipeline.load_grid(grid).runs()[0]
    run = tmp_path / "res" / "clitest" / spec.run_id
    run.mkdir(parents=True)
    spec.config(n=8).to_yaml(run / "config.yaml")
    rundir.claim_experiment(run.parent, "clitest", "g.yaml")
    before = snapshot(tmp_path / "res")
    assert main(["run", str(grid), "--results-root", str(tmp_path / "res")]) == 2
    assert "holds a run with a different config (fields n)" in capsys.readouterr().err
    assert snapshot(tmp_path / "res") == before


def test_pods_config_prints_a_valid_run_config(capsys):
    assert main(["config", str(pipeline.CONFIGS / "gsm8k_8gpu.yaml"), "pods", "--seed", "3"]) == 0
    cfg = Config.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (cfg.n, cfg.m, cfg.seed, cfg.run_id) == (128, 32, 3, "pods-s3")


def test_python_m_podslib():
    out = subprocess.run([sys.executable, "-m", "podslib", "--help"], check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert all(cmd in out.stdout for cmd in ("run", "report", "reproduce"))


@pytest.mark.slow
def test_run_reports_failures_goes_on_and_skips_completed_runs(tmp_path, capsys):
    """Variant 'broken' fails in the training cell (no such model folder): reported with the
    cell's error, 'pods' still runs, exit status 1. A re-run skips the completed run and leaves
    every file under the results root as it was."""
    grid = write_grid(tmp_path / "g.yaml",
                      {"broken": {"n": 2, "m": 2, "model": str(tmp_path / "no-model")},
                       "pods": {"n": 4, "m": 2}}, base={"cache_dir": str(tmp_path / "cache")})
    root = tmp_path / "res"
    assert main(["run", str(grid), "--results-root", str(root), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "broken-s0: FAILED: 03_train.ipynb failed in cell" in captured.out
    assert "1 run(s) failed: broken-s0" in captured.err
    assert "[2/2] pods-s0: done" in captured.out
    assert rundir.is_complete(root / "clitest" / "pods-s0")
    assert (root / "clitest" / "broken-s0" / "03_train.ipynb").exists()

    before = snapshot(root)
    assert main(["run", str(grid), "--results-root", str(root), "--only", "pods"]) == 0
    assert "[skip] clitest/pods-s0: complete" in capsys.readouterr().out
    assert snapshot(root) == before


@pytest.mark.slow
def test_reproduce_end_to_end_then_rerun_changes_nothing(tmp_path, capsys):
    """`pods reproduce` on a one-seed tiny grid: rollouts, down-sampling, both runs, figures and
    the summary table; a second call skips every step and leaves every file as it was."""
    grid = write_grid(tmp_path / "g.yaml", {"grpo": {"n": 2, "m": 2}, "pods": {"n": 4, "m": 2}},
                      experiment="repro", base={"cache_dir": str(tmp_path / "cache")})
    root = tmp_path / "res"
    args = ["reproduce", "--config", str(grid), "--results-root", str(root), "--no-progress"]
    assert main(args) == 0
    exp = root / "repro"
    assert (exp / "rollouts" / "rollouts.npz").exists()
    assert (exp / "downsampling" / "rule_statistics.csv").exists()
    assert rundir.is_complete(exp / "grpo-s0") and rundir.is_complete(exp / "pods-s0")
    assert (exp / "summary.csv").exists() and (exp / "figures" / "accuracy_vs_time.png").exists()
    out = capsys.readouterr().out
    assert "repro: 2 variants against grpo" in out
    assert re.search(r"^  pods \(4 -> 2, max_variance, 1 seed\): Per step it ", out, re.MULTILINE)
    timing = json.loads((exp / "reproduce.json").read_text())
    assert list(timing["phases_s"]) == ["model", "rollouts", "downsampling", "runs", "report"]
    assert timing["runs"] == {"done": 2, "skipped": 0, "failed": 0, "interrupted": 0,
                              "not_started": 0} and not timing["skipped"]
    before = snapshot(root)
    assert main(args) == 0
    assert capsys.readouterr().out.count("[skip]") == 5          # 01, 02, two runs, report
    assert snapshot(root) == before
