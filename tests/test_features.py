"""What every GRPO framework has (off by default where it changes the algorithm): importance
correction for the sampler/trainer mismatch, DAPO refill, entropy (metric and bonus), masking
truncated completions, trackers, the completions table and the best checkpoint."""

import json
import math
import subprocess
import sys

import pytest
import torch
from test_trainer import easy

from podslib import rundir
from podslib.core.loss import grpo_loss, importance_weights
from podslib.training import batch as B
from podslib.training import trainer as T


def metrics(run):
    return rundir.read_log(run / "metrics.jsonl")


# ------------------------------------------------------------------------------------------------
# hand-derived values
# ------------------------------------------------------------------------------------------------

class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at every position are `row` (V = len(row))."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(row))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = self.row.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": logits})()


def one_row_batch(tokens):
    ids = torch.tensor([[0] + tokens])
    return B.Batch(ids, torch.ones_like(ids), torch.ones(1, len(tokens)), torch.ones(1),
                   torch.zeros(1, len(tokens)), 1)


def test_entropy_and_sampling_logprobs_match_hand_values():
    """logits [0, ln 3, ln 6] -> p = [1/10, 3/10, 6/10]: H = -sum p ln p = 0.8979 nats; at
    T = 0.5, q ~ [1, 9, 36] / 46; with top_p = 0.6 only token 2 (mass 0.6 >= 0.6) is kept, so
    its sampling log-prob is 0 and token 1 is outside (-inf). The training log-probs and the
    entropy follow the training temperature, the sampling log-probs the sampler's."""
    model = FixedLogits([0.0, math.log(3), math.log(6)])
    out = B.completion_outputs(model, one_row_batch([2, 1]), 1.0, sampler=(1.0, 0.6))
    p = torch.tensor([1, 3, 6]) / 10
    assert torch.allclose(out.entropy, torch.full((1, 2), float(-(p * p.log()).sum())))
    assert torch.allclose(out.logprobs, torch.tensor([[math.log(0.6), math.log(0.3)]]))
    assert out.sampling_logprobs[0, 0] == 0 and out.sampling_logprobs[0, 1] == float("-inf")
    q = torch.tensor([1.0, 9, 36]) / 46
    cold = B.completion_outputs(model, one_row_batch([2]), 0.5, sampler=(0.5, 1.0))
    assert torch.allclose(cold.entropy, -(q * q.log()).sum().reshape(1, 1))
    assert torch.allclose(cold.logprobs, torch.tensor([[math.log(36 / 46)]]))
    assert torch.allclose(cold.sampling_logprobs, torch.tensor([[math.log(36 / 46)]]))
    unit = B.completion_outputs(model, one_row_batch([2]), 1.0, sampler=(0.5, 1.0))
    assert torch.allclose(unit.entropy, -(p * p.log()).sum().reshape(1, 1))
    assert torch.allclose(unit.logprobs, torch.tensor([[math.log(0.6)]]))
    assert torch.allclose(unit.sampling_logprobs, torch.tensor([[math.log(36 / 46)]]))
    assert B.completion_outputs(model, one_row_batch([2]), 0.5).sampling_logprobs is None
    assert torch.allclose(B.completion_logprobs(model, one_row_batch([2]), 0.5), cold.logprobs)


def test_importance_weights_truncate_or_mask():
    """Token ratios exp(old - sampler): row 0 [e, 1/e] (geometric mean 1), row 1 [e^2, e^2]
    (geometric mean e^2), padding ignored. tis, cap 2: weights [2, 1/e] and [2, 2], and 3 of
    the 4 tokens truncated (e and e^2 exceed 2). mis, cap 2: row 0 kept, row 1 dropped."""
    old = torch.tensor([[1.0, -1.0, 5.0], [2.0, 2.0, 0.0]])
    sampler = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w, stats = importance_weights("tis", old, sampler, mask, cap=2.0)
    assert torch.allclose(w[:, :2], torch.tensor([[2.0, math.exp(-1)], [2.0, 2.0]]))
    assert stats["rejected"] == 3 and stats["tokens"] == 4
    assert stats["ratio_max"] == pytest.approx(math.exp(2))
    assert stats["ratio_sum"] == pytest.approx(math.e + math.exp(-1) + 2 * math.exp(2))
    w, stats = importance_weights("mis", old, sampler, mask, cap=2.0)
    assert w[0].tolist() == [1, 1, 1] and w[1].tolist() == [0, 0, 0] and stats["rejected"] == 2
    w, _ = importance_weights("none", old, sampler, mask, cap=2.0)
    assert (w == 1).all()


def test_entropy_bonus_and_token_weights_in_the_loss():
    """Ratio 1, advantages +-1 over one token each: surrogate loss -(1 - 1)/2 = 0; a bonus of
    0.1 x entropy (0.5 and 1.5) lowers it by 0.1; weights [2, 1] make the surrogate -(2 - 1)/2."""
    lp = torch.zeros(2, 1)
    mask, adv = torch.ones(2, 1), torch.tensor([1.0, -1.0])
    base, _ = grpo_loss(lp, lp, adv, mask)
    bonus, _ = grpo_loss(lp, lp, adv, mask, entropy=torch.tensor([[0.5], [1.5]]),
                         entropy_coef=0.1)
    weighted, _ = grpo_loss(lp, lp, adv, mask, token_weights=torch.tensor([[2.0], [1.0]]))
    assert float(base) == 0 and float(bonus) == pytest.approx(-0.1)
    assert float(weighted) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="entropy must be given"):
        grpo_loss(lp, lp, adv, mask, entropy_coef=0.1)


# ------------------------------------------------------------------------------------------------
# through the trainer (the warm-started easy model, hf engine)
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tis_weight_is_one_with_the_hf_engine(tmp_path, cache_dir):
    """The hf engine samples from the policy itself: pi_old / pi_sampler is 1 up to the float
    rounding of cached vs uncached forward passes, so TIS changes neither the weights nor the
    trained parameters (beyond that rounding)."""
    runs = {}
    for name, extra in (("plain", {}), ("tis", {"is_correction": "tis"})):
        cfg = easy(cache_dir, max_steps=3, eval_every_steps=0, temperature=0.8, top_p=0.9,
                   **extra)
        T.train(cfg, tmp_path / name, progress=False)
        runs[name] = tmp_path / name
    for line in metrics(runs["tis"]):
        assert line["is_ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert line["is_ratio_max"] == pytest.approx(1.0, abs=1e-4)
        assert line["is_rejected_frac"] == 0
    for a, b in zip(metrics(runs["plain"]), metrics(runs["tis"])):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["reward_mean_all"] == b["reward_mean_all"]            # the same rollouts
    last = [torch.load(rundir.checkpoints(r)[-1] / "trainable.pt") for r in runs.values()]
    assert all(torch.allclose(last[0][k], last[1][k], atol=1e-5) for k in last[0])


@pytest.mark.slow
@pytest.mark.vllm
def test_tis_ratio_statistics_are_logged_with_vllm(tmp_path, cache_dir):
    """vLLM samples with its own kernels: its sampling log-probs (tempered, nucleus) differ
    from the trainer's by float rounding, so the ratio is near 1 but not exactly; its mean, max
    and the fraction truncated are logged each step. One attention head of 32 dimensions (vLLM's
    CPU attention has no kernel for 16)."""
    cfg = easy(cache_dir, engine="vllm", max_steps=3,
               eval_every_steps=0, temperature=0.8, top_p=0.9, is_correction="tis",
               **{"tiny.heads": 1})
    T.train(cfg, tmp_path / "run", progress=False)
    lines = metrics(tmp_path / "run")
    assert len(lines) == 3
    for line in lines:
        assert 0.9 < line["is_ratio_mean"] < 1.1 and line["is_ratio_max"] >= 1.0
        assert 0 <= line["is_rejected_frac"] < 0.05
        assert math.isfinite(line["loss"]) and line["grad_norm"] > 0


@pytest.mark.slow
def test_refill_reaches_the_groups_with_signal_and_stops_at_the_cap(tmp_path, cache_dir):
    """n = 2 rollouts per prompt: many groups are all-right or all-wrong. With the zero-variance
    filter and up to 20 refill rounds every step trains prompts_per_step groups with signal,
    drawing (and dropping) more; with n = 1 no group ever has signal: each step stops after
    1 + refill_rounds rounds, training nothing."""
    cfg = easy(cache_dir, n=2, m=2, max_steps=3, eval_every_steps=0,
               group_filter="zero_variance", refill_rounds=20)
    T.train(cfg, tmp_path / "refill", progress=False)
    lines = metrics(tmp_path / "refill")
    assert all(x["groups_trained"] == cfg.prompts_per_step for x in lines)
    assert sum(x["gen_rounds"] for x in lines) > len(lines)        # some steps refilled
    assert all(x["zero_var_frac"] > 0 for x in lines if x["gen_rounds"] > 1)
    flat = easy(cache_dir, n=1, m=1, rule="random", max_steps=2, eval_every_steps=0,
                group_filter="zero_variance", refill_rounds=1)
    T.train(flat, tmp_path / "flat", progress=False)
    assert [(x["gen_rounds"], x["groups_trained"], x["grad_norm"])
            for x in metrics(tmp_path / "flat")] == [(2, 0, 0.0), (2, 0, 0.0)]


@pytest.mark.slow
def test_truncated_completions_can_leave_the_loss(tmp_path, cache_dir):
    """Three completion tokens: every completion is cut at the limit, so with masking nothing is
    trained (no gradient), without it every selected token is."""
    for mask in (False, True):
        cfg = easy(cache_dir, max_completion_tokens=3, max_steps=2, eval_every_steps=0,
                   mask_truncated_completions=mask)
        T.train(cfg, tmp_path / str(mask), progress=False)
        lines = metrics(tmp_path / str(mask))
        assert all(x["trunc_rate"] == 1.0 for x in lines)
        assert all((x["tokens_trained"] == 0) == mask for x in lines)


@pytest.mark.slow
def test_tensorboard_completions_table_best_checkpoint_and_its_evaluation(tmp_path, cache_dir):
    """report_to tensorboard: the per-step metrics and evaluations read back from the event
    files; completions.jsonl holds each evaluation's rows of one prompt (n rows, m selected);
    checkpoints/best holds the best evaluation; `pods evaluate` scores it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = easy(cache_dir, max_steps=4, eval_every_steps=2, report_to="tensorboard")
    summary = T.train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/reward_mean_all")] == [1, 2, 3, 4]
    evals = rundir.read_log(run / "eval.jsonl")
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx(
        [e["accuracy"] for e in evals])
    rows = rundir.read_log(run / "completions.jsonl")
    assert sorted({r["step"] for r in rows}) == [2, 4]
    for step in (2, 4):
        mine = [r for r in rows if r["step"] == step]
        assert len(mine) == cfg.n and sum(r["selected"] for r in mine) == cfg.m
        assert set(mine[0]) == {"step", "prompt", "completion", "reward", "correct", "selected",
                                "trained"}
    best = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    assert best["accuracy"] == max(e["accuracy"] for e in evals) == summary["best_accuracy"]
    assert best["step"] == summary["best_step"]
    out = subprocess.run([sys.executable, "-m", "podslib", "evaluate", str(run), "test_size=16"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["n_problems"] == 16 and 0 <= result["accuracy"] <= 1
    assert result["checkpoint"].endswith("best") and result["step"] == best["step"]
