"""Specification of podslib.core.loss.grpo_loss: hand-derived values for every aggregation, clip side
and beta; gradients (hand values and gradcheck); padding; micro-batch sums; bad input."""

import math

import pytest
import torch

from podslib.core.loss import grpo_loss

LN2 = math.log(2.0)


def hand_batch(dtype=torch.float64):
    """B = 2, T = 3. Sequence 0: A = +1, mask [1, 1, 0], ratios 1.5, 0.5 (+ padding).
    Sequence 1: A = -2, mask [1, 1, 1], ratios 0.5, 1.5, 1.0. old_logprobs = -1 everywhere."""
    old = torch.full((2, 3), -1.0, dtype=dtype)
    log_ratio = torch.tensor(
        [[math.log(1.5), math.log(0.5), 7.0], [math.log(0.5), math.log(1.5), 0.0]], dtype=dtype
    )
    logprobs = (old + log_ratio).requires_grad_(True)
    advantages = torch.tensor([1.0, -2.0], dtype=dtype)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return logprobs, old, advantages, mask


# Per-token losses with eps 0.2 (band [0.8, 1.2]), -min(ratio * A, clip(ratio) * A):
#   seq 0 (A = +1): ratio 1.5 -> -min(1.5, 1.2) = -1.2 (clipped high); ratio 0.5 -> -0.5
#   seq 1 (A = -2): ratio 0.5 -> -min(-1.0, -1.6) = 1.6 (clipped low); 1.5 -> -min(-3, -2.4) = 3;
#                   1.0 -> 2
# Sums: seq 0 = -1.7 over 2 tokens, seq 1 = 6.6 over 3 tokens, all = 4.9 over 5 tokens.
EXPECTED = {
    "grpo": (-1.7 / 2 + 6.6 / 3) / 2,  # 0.675
    "bnpo": 4.9 / 5,
    "dapo": 4.9 / 5,
    "dr_grpo": 4.9 / (2 * 3),
}


@pytest.mark.parametrize("aggregation", list(EXPECTED))
def test_hand_values_every_aggregation(aggregation):
    logprobs, old, adv, mask = hand_batch()
    loss, stats = grpo_loss(logprobs, old, adv, mask, aggregation=aggregation)
    assert loss.item() == pytest.approx(EXPECTED[aggregation])
    # one token clipped on each side out of 5; ratios 1.5 + 0.5 + 0.5 + 1.5 + 1 average to 1
    assert stats["clip_frac_high"] == pytest.approx(0.2)
    assert stats["clip_frac_low"] == pytest.approx(0.2)
    assert stats["clip_frac"] == pytest.approx(0.4)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["kl_mean"] == 0.0


def test_dr_grpo_max_len():
    """sum / (B * max_len) = 4.9 / (2 * 10)."""
    logprobs, old, adv, mask = hand_batch()
    loss, _ = grpo_loss(logprobs, old, adv, mask, aggregation="dr_grpo", max_len=10)
    assert loss.item() == pytest.approx(4.9 / 20)


def test_asymmetric_clip_eps_high():
    """eps_high = 0.28 (DAPO clip-higher): seq 0's ratio 1.5 now clips at 1.28, so seq 0 sums to
    -1.28 - 0.5; eps_low = 0.1: seq 1's ratio 0.5 clips at 0.9 -> 1.8; bnpo over 5 tokens."""
    logprobs, old, adv, mask = hand_batch()
    loss, stats = grpo_loss(
        logprobs, old, adv, mask, eps_low=0.1, eps_high=0.28, aggregation="bnpo"
    )
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.8 + 3.0 + 2.0) / 5)
    assert stats["clip_frac"] == pytest.approx(0.4)


def test_hand_gradients():
    """grpo: d loss / d logp_t = (1 / B) (1 / len_b) * d(-min(...))/d logp_t. Clipped tokens get 0.
    Unclipped: d(-ratio * A)/d logp = -ratio * A. seq 0 tok 1: -0.5 * 1 / (2 * 2) = -0.125;
    seq 1 tok 1: 1.5 * 2 / (2 * 3) = 0.5; seq 1 tok 2: 1 * 2 / 6 = 1/3; padding 0."""
    logprobs, old, adv, mask = hand_batch()
    loss, _ = grpo_loss(logprobs, old, adv, mask)
    loss.backward()
    expected = torch.tensor([[0.0, -0.125, 0.0], [0.0, 0.5, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)


def test_kl_penalty_beta_positive_and_zero():
    """ref - logp = [[ln2, -ln2, pad], [0, ln2, 0]] -> k3 = exp(d) - d - 1:
    [[1 - ln2, ln2 - 0.5], [0, 1 - ln2, 0]]; kl_mean = (2 (1 - ln2) + ln2 - 0.5) / 5.
    grpo with beta 0.1 adds 0.1 * ((1 - ln2 + ln2 - 0.5) / 2 + (1 - ln2) / 3) / 2.
    With beta = 0 the reference only feeds the kl statistic."""
    logprobs, old, adv, mask = hand_batch()
    gap = torch.tensor([[LN2, -LN2, 5.0], [0.0, LN2, 0.0]], dtype=torch.float64)
    ref = logprobs.detach() + gap
    kl_mean = (2 * (1 - LN2) + LN2 - 0.5) / 5
    loss, stats = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.675 + 0.1 * (0.5 / 2 + (1 - LN2) / 3) / 2)
    assert stats["kl_mean"] == pytest.approx(kl_mean)
    loss0, stats0 = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, beta=0.0)
    assert loss0.item() == pytest.approx(0.675)
    assert stats0["kl_mean"] == pytest.approx(kl_mean)
    bnpo, _ = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, beta=0.1, aggregation="bnpo")
    assert bnpo.item() == pytest.approx((4.9 + 0.1 * (2 * (1 - LN2) + LN2 - 0.5)) / 5)


def random_batch(B=6, T=7, seed=0):
    """Random float64 batch with ragged masks (one empty row) and ratios within exp(+-0.4)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logprobs = (old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.8).detach()
    ref = old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.tensor([T, 3, 1, 0, 5, 6])[:B]
    mask = (torch.arange(T) < lengths[:, None]).long()
    return logprobs.requires_grad_(True), old, adv, mask, ref


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_gradcheck(aggregation):
    logprobs, old, adv, mask, ref = random_batch()

    def fn(lp):
        return grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.05, aggregation=aggregation)[
            0
        ]

    assert torch.autograd.gradcheck(fn, (logprobs,))


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo"])
def test_padding_changes_nothing(aggregation):
    """Overwriting padded positions (even with -inf and huge values) leaves loss, grads, stats."""
    logprobs, old, adv, mask, ref = random_batch()
    kwargs = {"ref_logprobs": ref, "beta": 0.05, "aggregation": aggregation}
    loss, stats = grpo_loss(logprobs, old, adv, mask, **kwargs)
    (grad,) = torch.autograd.grad(loss, logprobs)
    noisy = logprobs.detach().clone()
    noisy[mask == 0] = (
        torch.tensor([-math.inf, 1e4, -1e4, 30.0]).double().repeat(20)[: int((mask == 0).sum())]
    )
    noisy.requires_grad_(True)
    loss2, stats2 = grpo_loss(noisy, old, adv, mask, **kwargs)
    (grad2,) = torch.autograd.grad(loss2, noisy)
    assert loss2.item() == loss.item()
    assert torch.equal(grad2, grad) and (grad2[mask == 0] == 0).all()
    assert stats2 == stats


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("splits", [[2, 4], [1, 2, 3]])
def test_micro_batches_sum_to_full_batch(aggregation, splits):
    """Summing micro-batch losses computed with the global totals gives the full-batch loss and,
    accumulated, the same gradient."""
    logprobs, old, adv, mask, ref = random_batch()
    B, T = mask.shape
    totals = {"total_sequences": B, "total_tokens": int(mask.sum()), "max_len": T}
    kwargs = {"beta": 0.05, "aggregation": aggregation}
    full, _ = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, **kwargs)
    (full_grad,) = torch.autograd.grad(full, logprobs)
    leaf = logprobs.detach().clone().requires_grad_(True)
    total = 0.0
    for part in torch.arange(B).split(splits):
        loss, _ = grpo_loss(
            leaf[part], old[part], adv[part], mask[part], ref_logprobs=ref[part], **kwargs, **totals
        )
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full.item(), rel=1e-12)
    torch.testing.assert_close(leaf.grad, full_grad)


def test_local_normalisers_differ_from_global():
    """Without the totals, grpo micro-batch losses are local means and do not sum to the full
    loss: the totals are what make accumulation correct."""
    logprobs, old, adv, mask, _ = random_batch()
    full, _ = grpo_loss(logprobs, old, adv, mask)
    parts = [grpo_loss(logprobs[p], old[p], adv[p], mask[p])[0] for p in torch.arange(6).split(3)]
    assert sum(parts).item() != pytest.approx(full.item())


def test_accepts_bool_mask_and_float32():
    logprobs, old, adv, mask = hand_batch(torch.float32)
    loss, _ = grpo_loss(logprobs, old, adv, mask.bool())
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.675, rel=1e-6)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mask": torch.ones(2, 4)}, r"mask must have the shape of logprobs \[2, 3\]"),
        ({"old_logprobs": torch.ones(3, 3)}, "old_logprobs must have the shape of logprobs"),
        ({"ref_logprobs": torch.ones(2, 2), "beta": 0.1}, "ref_logprobs must have the shape"),
        ({"advantages": torch.ones(2, 1)}, r"advantages must have shape \[B\] = \[2\]"),
        ({"logprobs": torch.ones(6)}, r"logprobs must be a \[B, T\] tensor"),
        ({"logprobs": torch.ones(2, 3, dtype=torch.long)}, "logprobs must be a floating-point"),
        ({"aggregation": "mean"}, "aggregation must be one of 'grpo', 'bnpo', 'dapo', 'dr_grpo'"),
        ({"beta": 0.1}, "ref_logprobs must be given when beta > 0"),
        ({"beta": -0.1}, "beta must be a finite number >= 0"),
        ({"eps_low": 1.0}, r"eps_low must be in \[0, 1\)"),
        ({"eps_high": -0.2}, "eps_high must be"),
        ({"total_tokens": 0}, "total_tokens must be an integer >= 1 or None"),
        ({"total_sequences": 2.5}, "total_sequences must be an integer >= 1 or None"),
        ({"max_len": 0, "aggregation": "dr_grpo"}, "max_len must be an integer >= 1"),
    ],
)
def test_bad_input_raises(change, match):
    logprobs, old, adv, mask = hand_batch()
    args = {"logprobs": logprobs, "old_logprobs": old, "advantages": adv, "mask": mask}
    args.update({k: v for k, v in change.items() if k in args})
    kwargs = {k: v for k, v in change.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        grpo_loss(
            args["logprobs"], args["old_logprobs"], args["advantages"], args["mask"], **kwargs
        )
