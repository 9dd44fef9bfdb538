"""Specification of podslib.core.selection: brute-force oracles for max_variance, exact tie rule,
batching, the random rule's reproducibility and uniformity, the group filter, bad input."""

import importlib.util
import itertools
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podslib.core.selection import RULES, TIE_RTOL, filter_groups, select, subset_variance

PROPERTY = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@cache
def combinations(n: int, m: int) -> torch.Tensor:
    """[C(n, m), m] all index subsets."""
    return torch.tensor(list(itertools.combinations(range(n), m)))


def brute_max_variance(r: torch.Tensor, m: int) -> float:
    """Largest unbiased variance over all C(n, m) subsets of r [n] (0 when m = 1)."""
    if m == 1:
        return 0.0
    return float(r.double()[combinations(len(r), m)].var(dim=1).max())


def check_against_brute_force(values: list[float]) -> None:
    """For every m in 1..n: valid distinct indices whose variance is the brute-force maximum."""
    r = torch.tensor(values, dtype=torch.float64)
    for m in range(1, len(values) + 1):
        idx = select(r, m)
        assert idx.dtype == torch.long and idx.shape == (m,)
        assert len(set(idx.tolist())) == m and 0 <= int(idx.min()) and int(idx.max()) < len(r)
        best = brute_max_variance(r, m)
        got = float(subset_variance(r, idx))
        assert got == pytest.approx(best, rel=1e-9, abs=1e-12), (values, m)


@PROPERTY
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n)
    )
)
def test_max_variance_equals_brute_force_binary(values):
    check_against_brute_force(values)


@PROPERTY
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=12))
def test_max_variance_equals_brute_force_continuous(values):
    check_against_brute_force(values)


@PROPERTY
@given(
    st.lists(st.sampled_from([-1.0, 0.25, 3.0]), min_size=1, max_size=12),
)
def test_max_variance_equals_brute_force_heavy_ties(values):
    check_against_brute_force(values)


def exact_variance(values: list[Fraction]) -> Fraction:
    """Unbiased variance in exact arithmetic (0 for one element)."""
    if len(values) < 2:
        return Fraction(0)
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


@PROPERTY
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=12), st.data())
def test_tie_rule_is_largest_k_among_exact_maxima(values, data):
    """With small integer rewards candidate variances tie exactly; the chosen set must be the
    largest k among the exact maxima: the first k of the stable descending order plus its last
    (m - k) positions (the official code starts at k = m and moves only on a strictly larger var)."""
    m = data.draw(st.integers(1, len(values)))
    n = len(values)
    order = sorted(range(n), key=lambda i: -values[i])  # Python's sort is stable
    ranked = [Fraction(values[i]) for i in order]
    var = [exact_variance(ranked[:k] + ranked[n - (m - k) :]) for k in range(m + 1)]
    k = max(k for k in range(m + 1) if var[k] == max(var))
    expected = order[:k] + order[n - (m - k) :]
    assert select(torch.tensor(values, dtype=torch.float32), m).tolist() == expected


def test_hand_derived_subsets():
    """[3, 2, 1, 0, 5, 4], m = 3: sorted 5,4,3,2,1,0 (indices 4,5,0,1,2,3); candidates k=3 {5,4,3}
    var 1, k=2 {5,4,0} var 7, k=1 {5,1,0} var 7, k=0 {2,1,0} var 1: tie -> k=2 -> [4, 5, 3].
    Binary [1,1,1,0,0,0], m = 3: k=2 {1,1,0} and k=1 {1,0,0} both 1/3 -> k=2 -> [0, 1, 5].
    All equal: every candidate has variance 0 -> k = m, the first m indices."""
    assert select(torch.tensor([3.0, 2, 1, 0, 5, 4]), 3).tolist() == [4, 5, 3]
    assert select(torch.tensor([1.0, 1, 1, 0, 0, 0]), 3).tolist() == [0, 1, 5]
    assert select(torch.full((6,), 0.7), 4).tolist() == [0, 1, 2, 3]
    assert select(torch.tensor([0.0, 2.0, 1.0]), 1).tolist() == [1]  # m = 1: top-1
    assert select(torch.tensor([0.0, 2.0, 1.0]), 3).tolist() == [1, 2, 0]


def test_large_offset_has_no_cancellation():
    """Rewards 1e6 + noise of size 1e-3: sum(r^2) ~ 1e13 would swamp a variance of ~1e-6 in
    plain float64 prefix sums; the selected variance must still be the brute-force maximum."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = 1e6 + 1e-3 * torch.randn(10, generator=g, dtype=torch.float64)
        for m in (2, 4, 7):
            got = float(subset_variance(r, select(r, m)))
            assert got == pytest.approx(brute_max_variance(r, m), rel=1e-6)


def check_against_exact_brute_force(values: list[float]) -> None:
    """For every m: the selected subset's exact variance is the exact maximum over all C(n, m)
    subsets, to a relative 1e-9 (the tie tolerance). Exact arithmetic, so rewards near the
    float64 limits (whose squares overflow or underflow) are judged right."""
    r = torch.tensor(values, dtype=torch.float64)
    exact = [Fraction(v) for v in values]
    for m in range(1, len(values) + 1):
        chosen = select(r, m).tolist()
        best = max(exact_variance([exact[i] for i in c])
                   for c in itertools.combinations(range(len(values)), m))
        got = exact_variance([exact[i] for i in chosen])
        assert got >= best * (1 - Fraction(TIE_RTOL)), (values, m, chosen)


MAGNITUDES = [1e-320, 1e-300, 1e-170, 1.0, 1e154, 1e160, 1e300, 1.7e307]


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(-9, 9), st.sampled_from(MAGNITUDES)).map(lambda t: t[0] * t[1]),
        min_size=1,
        max_size=7,
    )
)
def test_max_variance_equals_exact_brute_force_at_float64_extremes(values):
    """Rewards from 1e-320 (subnormal) to 1.5e308, mixed in one row: squares would overflow
    (above ~1e154) or underflow (below ~1e-162) without the per-row power-of-two scaling."""
    check_against_exact_brute_force(values)


@PROPERTY
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=12),
    st.integers(-800, 1000),
    st.data(),
)
def test_max_variance_is_invariant_to_power_of_two_scaling(values, power, data):
    """r * 2**power is exact here, and the variance's argmax does not depend on a positive
    scale, so the selection must be identical (including the tie rule)."""
    r = torch.tensor(values, dtype=torch.float64)
    m = data.draw(st.integers(1, len(values)))
    assert torch.equal(select(r * 2.0**power, m), select(r, m))


@settings(PROPERTY, max_examples=100)
@given(
    st.integers(1, 8),
    st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))),
    st.integers(0, 2**31),
)
def test_batched_equals_per_row(g, n_m, seed):
    """One [G, n] call gives the same indices as G separate [n] calls (deterministic rules)."""
    n, m = n_m
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (g, n), generator=gen).float() / 2  # heavy ties
    rewards[g // 2 :] += torch.rand(g - g // 2, n, generator=gen)  # and some continuous rows
    for rule in ("max_variance", "max_reward"):
        batched = select(rewards, m, rule)
        assert torch.equal(batched, torch.stack([select(row, m, rule) for row in rewards]))


def test_max_reward_is_stable_top_m():
    r = torch.tensor([[0.5, 1.0, 0.5, 1.0, 0.0]])
    assert select(r, 3, "max_reward").tolist() == [[1, 3, 0]]


def test_random_reproducible_from_generator_and_uniform():
    """Same seed -> same subsets; different seed -> different; each of the C(4, 2) = 6 subsets
    appears with frequency 1/6 (4000 rows: std of a frequency ~ 0.006, tolerance 0.03)."""
    r = torch.zeros(4000, 4)
    a = select(r, 2, "random", torch.Generator().manual_seed(1))
    b = select(r, 2, "random", torch.Generator().manual_seed(1))
    c = select(r, 2, "random", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] != a[:, 1]).all()
    subsets = [tuple(sorted(row)) for row in a.tolist()]
    for combo in itertools.combinations(range(4), 2):
        assert subsets.count(combo) / len(subsets) == pytest.approx(1 / 6, abs=0.03)


def test_every_rule_and_the_filter_batched_at_1024_by_64():
    """One call on [1024, 64] -> 16 per rule. Binary rows: the best subset has c ones with c as
    close to m/2 as the row allows, variance c (m - c) / (m (m - 1))."""
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(1024, 1, generator=gen)
    rewards = (torch.rand(1024, 64, generator=gen) < p).float()
    rewards[:4] = torch.tensor([[0.0], [1.0], [0.0], [1.0]])  # some all-equal groups
    m = 16
    for rule in RULES:
        idx = select(rewards, m, rule, torch.Generator().manual_seed(0))
        assert idx.shape == (1024, m) and idx.dtype == torch.long
        assert idx.device == rewards.device
        assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct
    ones = rewards.sum(dim=1)
    c = torch.clamp(torch.full_like(ones, m // 2), min=(m - (64 - ones)).clamp_min(0), max=ones)
    expected = c * (m - c) / (m * (m - 1))
    got = subset_variance(rewards, select(rewards, m))
    torch.testing.assert_close(got, expected)
    keep = filter_groups(rewards)
    assert keep.shape == (1024,) and keep.dtype == torch.bool
    assert torch.equal(keep, (ones > 0) & (ones < 64))


def load_bench():
    """bench/selection.py as a module (it is a script, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "selection.py"
    spec = importlib.util.spec_from_file_location("bench_selection", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_loop_reference_matches_select():
    """The benchmark's per-group loop selects subsets of the same variance as select(), and its
    brute force agrees: the benchmark compares like with like."""
    bench = load_bench()
    rewards = torch.rand(128, 64, generator=torch.Generator().manual_seed(3))
    rewards[:32] = rewards[:32].round()  # binary rows with exact ties
    ours = subset_variance(rewards, select(rewards, 16))
    loop = subset_variance(rewards, bench.loop_reference(rewards, 16))
    torch.testing.assert_close(ours, loop)
    small = rewards[:8, :10]
    torch.testing.assert_close(
        subset_variance(small, select(small, 4)), bench.brute_force(small, 4)
    )


def test_subset_variance_of_one_element_is_zero():
    assert subset_variance(torch.tensor([[1.0, 2.0]]), torch.tensor([[1]])).tolist() == [0.0]


def test_filter_hand_values():
    """Rows: all equal, mixed binary, 0.1 x 3 (mean rounds but the row is constant),
    [0.5, 0.5, 0.6] (std 0.0577). min_std=0.1 drops the last; means 0.333 and 0.533."""
    r = torch.tensor([[1.0, 1, 1], [0, 1, 0], [0.1, 0.1, 0.1], [0.5, 0.5, 0.6]])
    assert filter_groups(r).tolist() == [False, True, False, True]
    assert filter_groups(r, min_std=0.1).tolist() == [False, True, False, False]
    assert filter_groups(r, min_mean=0.4).tolist() == [False, False, False, True]
    assert filter_groups(r, max_mean=0.4).tolist() == [False, True, False, False]
    assert filter_groups(r, min_mean=1 / 3 + 1e-6).tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("rewards", "m", "rule", "match"),
    [
        (torch.rand(2, 4), 5, "max_variance", "m must be an integer with 1 <= m <= n = 4"),
        (torch.rand(2, 4), 0, "max_variance", "m must be"),
        (torch.rand(2, 4), 2.0, "max_variance", "m must be"),
        (torch.rand(2, 4), True, "max_variance", "m must be"),
        (torch.tensor([0.0, float("nan")]), 1, "max_variance", "rewards must be finite"),
        (torch.tensor([0.0, float("inf")]), 1, "max_reward", "rewards must be finite"),
        (torch.tensor([float("-inf"), 0.0]), 1, "random", "rewards must be finite"),
        (torch.tensor(1.0), 1, "max_variance", r"rewards must be a tensor of shape \[n\] or"),
        (torch.rand(2, 3, 4), 1, "max_variance", "rewards must be a tensor of shape"),
        ([0.0, 1.0], 1, "max_variance", "rewards must be a tensor"),
        (torch.tensor([0, 1]), 1, "max_variance", "rewards must be a floating-point tensor"),
        (torch.rand(4), 2, "maxvar", "rule must be one of 'max_variance', 'max_reward', 'random'"),
    ],
)
def test_bad_input_raises(rewards, m, rule, match):
    with pytest.raises(ValueError, match=match):
        select(rewards, m, rule)


def test_filter_bad_input_raises():
    with pytest.raises(ValueError, match="rewards must be a tensor of shape"):
        filter_groups(torch.rand(4))
    with pytest.raises(ValueError, match="min_std must be"):
        filter_groups(torch.rand(2, 4), min_std=-1.0)
    with pytest.raises(ValueError, match="rewards must be finite"):
        filter_groups(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="idx must have shape"):
        subset_variance(torch.rand(2, 4), torch.tensor([0, 1]))
