"""Specification of podslib.core.advantages.group_advantages: hand-derived values for every scale,
one-element and all-equal groups, bad input."""

import pytest
import torch

from podslib.core.advantages import group_advantages

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]])


def test_group_scale_hand_values():
    """Row 0: mean 0.5, deviations +-0.5, unbiased var (4 * 0.25) / 3 = 1/3, std 0.57735.
    Row 1: mean 5, deviations -3,-1,1,3, var 20/3, std 2.58199. A = dev / (std + 1e-4)."""
    s0, s1 = (1 / 3) ** 0.5, (20 / 3) ** 0.5
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [-3.0, -1.0, 1.0, 3.0]]) / torch.tensor(
        [[s0 + 1e-4], [s1 + 1e-4]]
    )
    torch.testing.assert_close(group_advantages(REWARDS), expected)


def test_batch_scale_hand_values():
    """Per-row mean, std over all 8 rewards: mean 22 / 8 = 2.75, squared deviations
    2 * 1.75^2 + 2 * 2.75^2 + 0.75^2 + 1.25^2 + 3.25^2 + 5.25^2 = 61.5, var 61.5 / 7."""
    values = [1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0]
    assert sum((v - 2.75) ** 2 for v in values) == pytest.approx(61.5)
    std = (61.5 / 7) ** 0.5
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [-3.0, -1.0, 1.0, 3.0]]) / (std + 1e-4)
    torch.testing.assert_close(group_advantages(REWARDS, scale="batch"), expected)


def test_none_scale_is_centred_rewards():
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [-3.0, -1.0, 1.0, 3.0]])
    torch.testing.assert_close(group_advantages(REWARDS, scale="none"), expected)


def test_eps_changes_the_denominator():
    """Row [0, 2]: std sqrt(2), A = +-1 / (sqrt(2) + 0.5)."""
    got = group_advantages(torch.tensor([[0.0, 2.0]]), eps=0.5)
    torch.testing.assert_close(got, torch.tensor([[-1.0, 1.0]]) / (2**0.5 + 0.5))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_one_rollout_groups_get_zero_advantage(scale):
    """m = 1: torch's unbiased std of one element is NaN; defined here as 0, so A = 0 exactly."""
    got = group_advantages(torch.tensor([[3.0], [-1.0]]), scale=scale)
    assert got.tolist() == [[0.0], [0.0]]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_all_equal_group_gets_exact_zeros(scale, eps):
    """[0.1, 0.1, 0.1]: the float mean rounds, but the advantages are exactly 0 (even eps = 0)."""
    got = group_advantages(torch.tensor([[0.1, 0.1, 0.1], [0.0, 1.0, 1.0]]), scale, eps)
    assert got[0].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(got).all() and (got[1] != 0).all()


def test_keeps_dtype_and_shape():
    r = torch.rand(5, 3, dtype=torch.float64)
    got = group_advantages(r)
    assert got.dtype == torch.float64 and got.shape == (5, 3)
    torch.testing.assert_close(got.sum(dim=1), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rewards": torch.rand(4)}, r"rewards must be a \[G, m\] tensor"),
        ({"rewards": torch.rand(2, 2, 2)}, r"rewards must be a \[G, m\] tensor"),
        ({"rewards": torch.ones(2, 2, dtype=torch.long)}, "rewards must be a floating-point"),
        ({"rewards": torch.tensor([[0.0, float("nan")]])}, "rewards must be finite"),
        ({"rewards": torch.rand(2, 2), "scale": "std"}, "scale_rewards must be one of 'group', 'batch'"),
        ({"rewards": torch.rand(2, 2), "eps": -1.0}, "eps must be a finite number >= 0"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(**kwargs)
