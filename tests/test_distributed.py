"""Data parallel over prompts: `torchrun --nproc_per_node 2` on CPU (gloo) ends with the same
parameters and the same per-step rollout statistics as one process over the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_trainer import easy

from podslib import distributed as D


def run(args: list[str], cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=400,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_single_process_helpers_are_identities():
    x = torch.arange(6.0).reshape(3, 2)
    assert D.all_gather_rows(x) is x and torch.equal(D.all_reduce_sum(x.clone()), x)
    assert D.all_reduce_max(2.5) == 2.5 and D.world_size_from_env() in (1, int(
        os.environ.get("WORLD_SIZE", "1")))


@pytest.mark.slow
def test_distributed_two_ranks_match_one_process(tmp_path, tmp_path_factory):
    """4 prompts per step: rank 0 takes prompts 0-1, rank 1 prompts 2-3, each with the
    per-prompt seeds one process uses, so the rollouts are identical; the loss shares use the
    global counts and gradients are summed, so the parameters agree to float tolerance.
    micro_batch_size 3 makes the micro-batches differ between the two layouts."""
    cache = tmp_path_factory.getbasetemp() / "pods-cache"
    cfg = easy(cache, max_steps=3, eval_every_steps=0, micro_batch_size=3, test_size=8)
    config = tmp_path / "config.yaml"
    cfg.to_yaml(config)
    trainer = ["-m", "podslib.trainer", str(config)]
    run([sys.executable, *trainer, str(tmp_path / "one"), "--no-progress"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *trainer, str(tmp_path / "two"), "--no-progress"], tmp_path)

    def params(name):
        (ckpt,) = (tmp_path / name / "checkpoints").glob("step-*")
        return torch.load(ckpt / "trainable.pt")

    def metrics(name):
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    one, two = params("one"), params("two")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
    m1, m2 = metrics("one"), metrics("two")
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2):
        for key in ("reward_mean_all", "reward_std_all", "sel_var", "tokens_generated",
                    "tokens_trained", "accuracy_all"):
            assert a[key] == b[key], key
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert any(m["grad_norm"] > 0 for m in m1)
