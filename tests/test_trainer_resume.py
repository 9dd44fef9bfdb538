"""Kill a training process with SIGKILL after a checkpoint, resume it, and get exactly the run an
uninterrupted process gives (hf engine, CPU); nothing written before the kill is lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import easy

from podslib import rundir

NOT_DETERMINISTIC = ("wall_s", "train_time_s", "eval_s")


def launch(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """python -m podslib train in a fresh process, one thread (the same float reductions in
    every process of the test)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "podslib", "train", str(config), str(run_dir),
                             "--no-progress", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items()
             if k not in NOT_DETERMINISTIC and not k.startswith("t_")}
            for x in path.read_text().splitlines()]


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = rundir.checkpoints(run_dir)[-1]
    return torch.load(ckpt / "trainable.pt")


@pytest.mark.slow
def test_resume_after_sigkill_repeats_the_uninterrupted_run(tmp_path, cache_dir):
    cfg = easy(cache_dir, max_steps=8, checkpoint_every_steps=2, eval_every_steps=2)
    config = tmp_path / "config.yaml"
    cfg.to_yaml(config)
    finish(launch(config, tmp_path / "straight"))          # also builds the cached warm start

    run = tmp_path / "killed"
    proc = launch(config, run)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {name: (run / name).read_text().splitlines() for name in ("metrics.jsonl",
                                                                        "eval.jsonl")}
    ckpt = rundir.checkpoints(run)[-1]
    assert int(ckpt.name.split("-")[1]) < 8, "killed after the end: nothing to resume"

    finish(launch(config, run, "--resume"))
    for name, lines in before.items():                      # nothing written before is lost
        after = (run / name).read_text().splitlines()
        orphaned = run / name.replace(".jsonl", ".orphaned.jsonl")
        kept = after + (orphaned.read_text().splitlines() if orphaned.exists() else [])
        assert all(line in kept for line in lines if line.endswith("}")), name
    straight, resumed = tmp_path / "straight", run
    assert records(resumed / "metrics.jsonl") == records(straight / "metrics.jsonl")
    assert [r["step"] for r in records(resumed / "metrics.jsonl")] == list(range(1, 9))
    assert records(resumed / "eval.jsonl") == records(straight / "eval.jsonl")
    a, b = final_params(straight), final_params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(Path(json.loads((straight / "summary.json").read_text())["model_path"])
                     / "model.safetensors")
    assert any(not torch.equal(base[k], a[k]) for k in a if k in base), "training changed nothing"
