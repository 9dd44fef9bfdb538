"""podslib.analysis.stats: seed curves, the paper's speedup (hand-derived values), the bootstrap against
a brute-force loop, paired vs unpaired resampling, verdicts, interval coverage on synthetic
studies with a known speedup, and the cost-regime prediction with a known answer."""

import math

import numpy as np
import pandas as pd
import pytest

from podslib.analysis import stats as S


def frame(seed, x, y, variant="v"):
    return pd.DataFrame({"variant": variant, "seed": seed, "train_time_s": x, "step": x,
                         "accuracy": y})


# ----------------------------------------------------------------------------------------------
# seed curves
# ----------------------------------------------------------------------------------------------

def test_hold_last_is_previous_value_and_nan_outside():
    """x = [0, 10, 20], y = [.1, .3, .5]; grid [-1, 0, 5, 10, 19, 20, 21]
    -> [nan, .1, .1, .3, .3, .5, nan] (before the first / after the last evaluation: NaN)."""
    got = S.hold_last([0, 10, 20], [0.1, 0.3, 0.5], [-1, 0, 5, 10, 19, 20, 21])
    np.testing.assert_allclose(got, [np.nan, 0.1, 0.1, 0.3, 0.3, 0.5, np.nan])


def test_arm_union_grid_up_to_earliest_last_and_own_last_values():
    """Seed 0: x 0,10,20 y .1,.3,.5; seed 1: x 0,15,25 y .1,.2,.6. Grid 0,10,15,20 (seed 0
    ends at 20); held rows [.1,.3,.3,.5] and [.1,.1,.2,.2]; last = each seed's own last
    evaluation: .5 and .6 (not the held value at 20)."""
    a = S.arm(pd.concat([frame(0, [0, 10, 20], [.1, .3, .5]), frame(1, [0, 15, 25], [.1, .2, .6])]))
    np.testing.assert_allclose(a.x, [0, 10, 15, 20])
    np.testing.assert_allclose(a.values, [[.1, .3, .3, .5], [.1, .1, .2, .2]])
    np.testing.assert_allclose(a.last, [.5, .6])
    assert a.select(np.array([1])).values.tolist() == [[.1, .1, .2, .2]]
    with pytest.raises(ValueError, match="x must be a column"):
        S.arm(frame(0, [0], [.1]), x="epoch")


def test_seconds_per_step_is_total_time_over_total_steps():
    """Seed 0 ends at 100 s after 50 steps, seed 1 at 100 s after 30: 200 s / 80 steps = 2.5
    (the paper's: the budget over the mean step count; the mean of ratios would be 2.67)."""
    runs = pd.DataFrame({"seed": [0, 0, 1, 1], "step": [0, 50, 0, 30],
                         "train_time_s": [0, 100, 0, 100]})
    assert S.seconds_per_step(runs) == pytest.approx(2.5)


# ----------------------------------------------------------------------------------------------
# the paper's speedup
# ----------------------------------------------------------------------------------------------

def test_speedup_hand_derived():
    """GRPO .2,.4,.6,.7,.8 at x 0..40: peak .8, threshold .792, reached at 40. PODS .2,.5,.8,.81
    at 0..30 reaches .792 at 20 -> speedup 40 / 20 = 2."""
    out = S.speedup([0, 10, 20, 30, 40], [.2, .4, .6, .7, .8], [0, 10, 20, 30], [.2, .5, .8, .81])
    assert out["threshold"] == pytest.approx(0.792)
    assert (out["x_base"], out["x_method"], out["speedup"]) == (40, 20, 2.0)


def test_speedup_threshold_is_99_percent_not_peak():
    """Baseline peak 1.0 at 30 but .99 already at 10: threshold .99 -> x_base = 10. Method
    reaches .99 at 5 -> 2; with frac = 1 the baseline needs 30 and the method (never 1.0) never
    reaches it -> 0."""
    assert S.speedup([0, 10, 30], [0, .99, 1.0], [0, 5], [0, .99])["speedup"] == 2.0
    assert S.speedup([0, 10, 30], [0, .99, 1.0], [0, 5], [0, .99], frac=1.0)["speedup"] == 0.0


def test_speedup_leaves_out_x_zero_as_the_paper():
    """Baseline .9 at x = 0 then .5, .6: the peak is .6 (x > 0 only), threshold .594, reached
    at 20. A method at .95 at x = 0 but .3 after never reaches it (x = 0 does not count) -> 0.
    A method with no evaluation after x = 0, or a baseline without one: NaN."""
    base_x, base_y = [0, 10, 20], [.9, .5, .6]
    assert S.speedup(base_x, base_y, [0, 10], [.95, .3])["speedup"] == 0.0
    assert S.speedup(base_x, base_y, [0, 5], [.1, .6])["speedup"] == 4.0
    assert math.isnan(S.speedup(base_x, base_y, [0], [.95])["speedup"])
    assert math.isnan(S.speedup([0], [.5], [0, 10], [.1, .6])["speedup"])
    with pytest.raises(ValueError, match="frac"):
        S.speedup([0, 1], [1, 1], [0, 1], [1, 1], frac=0)


def test_never_reached_is_censored_at_x_base_over_the_horizon():
    """Baseline reaches .792 at 40. A method that stops at 20 below it (.5, .7) has speedup 0,
    at most 40 / 20 = 2 (it could have crossed just after 20); one that stops at 50 below it,
    at most 40 / 50 = 0.8. A method that reaches it has at_most = its speedup."""
    bx, by = [0, 10, 20, 30, 40], [.2, .4, .6, .7, .8]
    short = S.speedup(bx, by, [0, 10, 20], [.2, .5, .7])
    assert (short["speedup"], short["at_most"]) == (0.0, 2.0)
    long = S.speedup(bx, by, [0, 25, 50], [.2, .5, .7])
    assert (long["speedup"], long["at_most"]) == (0.0, 0.8)
    reached = S.speedup(bx, by, [0, 10, 20], [.2, .5, .8])
    assert reached["at_most"] == reached["speedup"] == 2.0


def test_censored_interval_spans_what_the_data_allow_and_sets_the_verdict():
    """Every seed of a short variant (horizon 20 steps) stays below a baseline that crosses at
    40: the point is 0, at most 2, the interval [0, 2]: not distinguishable, not 'slower'. The
    same variant run to 50 without crossing: at most 0.8 < 1, so 'slower'."""
    base = S.arm(pd.concat([frame(s, [0, 10, 20, 30, 40], [.2, .4, .6, .7, .8]) for s in range(4)]))
    short = S.arm(pd.concat([frame(s, [0, 10, 20], [.2, .5, .7]) for s in range(4)]))
    long = S.arm(pd.concat([frame(s, [0, 25, 50], [.2, .5, .7]) for s in range(4)]))
    est, reps = S.compare(base, short, n_boot=50)
    fast = est["speedup"]
    assert (fast.value, fast.at_most, fast.low, fast.high) == (0.0, 2.0, 0.0, 2.0)
    assert fast.verdict == "not distinguishable"
    np.testing.assert_allclose(reps["speedup_at_most"], 2.0)
    assert S.compare(base, long, n_boot=50)[0]["speedup"].verdict == "slower"
    table = S.regime(fast, reps, np.array([1.0, 2.5]))
    np.testing.assert_allclose(table["at_most"], [2.0, 0.8])
    np.testing.assert_allclose(table["ci_high"], [2.0, 0.8])


def test_equal_steps_comparison_cuts_both_arms_at_the_shorter_horizon():
    """Baseline .2,.4,.6,.7,.8 at 0..40; a variant .2,.5,.7 at 0,10,20. Cut at 20: the
    baseline's peak there is .6 (threshold .594, reached at 20); the variant is at .5 at 10 and
    .7 at 20, so it reaches it at 20 too -> 1x, and its final .7 against the baseline's .6 at
    20 -> +.1. Uncut, the variant never reaches .792 (censored, 0)."""
    base = S.arm(pd.concat([frame(s, [0, 10, 20, 30, 40], [.2, .4, .6, .7, .8]) for s in range(3)]))
    var = S.arm(pd.concat([frame(s, [0, 10, 20], [.2, .5, .7]) for s in range(3)]))
    cut = S.truncate(base, 20)
    assert cut.x.tolist() == [0, 10, 20] and cut.last.tolist() == pytest.approx([.6] * 3)
    est, _ = S.compare(cut, S.truncate(var, 20), n_boot=20)
    assert est["speedup"].value == 1.0 and est["final_diff"].value == pytest.approx(0.1)
    assert S.compare(base, var, n_boot=20)[0]["speedup"].value == 0.0
    with pytest.raises(ValueError, match="end must be"):
        S.truncate(base, -1)


def test_seed_speedups_pair_equal_seeds_with_own_thresholds():
    """Seed 0: base reaches .99*.5 at 20, variant at 10 -> 2. Seed 1: base peak .4 -> .396 at
    30; variant .4 at 10 -> 3. Seed 2 exists for the variant only and is left out."""
    base = S.arm(pd.concat([frame(0, [0, 10, 20, 30], [.1, .3, .5, .5]),
                            frame(1, [0, 10, 20, 30], [.1, .2, .3, .4])]))
    var = S.arm(pd.concat([frame(0, [0, 10, 20], [.1, .5, .5]), frame(1, [0, 10, 20], [.1, .4, .4]),
                           frame(2, [0, 10, 20], [.1, .9, .9])]))
    table = S.seed_speedups(base, var)
    assert table["seed"].tolist() == [0, 1]
    np.testing.assert_allclose(table["speedup"], [2.0, 3.0])


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------

def brute_speedup(bx, by, x, y, frac=0.99):
    """Oracle: the paper's speedup by plain loops."""
    thr = frac * max(v for t, v in zip(bx, by) if t > 0)
    tb = next(t for t, v in zip(bx, by) if t > 0 and v >= thr)
    tm = next((t for t, v in zip(x, y) if t > 0 and v >= thr), None)
    return 0.0 if tm is None else tb / tm


def rise(x, rate):
    return 0.3 + 0.4 * (1 - np.exp(-x * rate / 20))


def random_arms(rng, seeds=5, base_seeds=None):
    xb, xv = np.arange(0, 60, 10.0), np.arange(0, 55, 5.0)
    vb = rise(xb, 1) + rng.normal(0, .03, (base_seeds or seeds, len(xb)))
    vv = rise(xv, 2) + rng.normal(0, .03, (seeds, len(xv)))
    return (S.Arm(xb, vb, np.arange(len(vb)), vb[:, -1]),
            S.Arm(xv, vv, np.arange(seeds), vv[:, -1]))


@pytest.mark.parametrize("paired", [True, False])
def test_compare_equals_a_loop_over_the_same_resamples(paired):
    """Every replicate equals the loop oracle on the seed means of the same resampled indices
    (paired: one index draw for both arms; unpaired: the baseline's draw, then the variant's)."""
    rng = np.random.default_rng(5)
    base, var = random_arms(rng, seeds=5, base_seeds=5 if paired else 4)
    est, reps = S.compare(base, var, paired=paired, n_boot=50, seed=11)
    draw = np.random.default_rng(11)
    ib = S.resamples(len(base.seeds), 50, draw)
    iv = ib if paired else S.resamples(len(var.seeds), 50, draw)
    want = [brute_speedup(base.x, base.values[b].mean(0), var.x, var.values[v].mean(0))
            for b, v in zip(ib, iv)]
    assert est["speedup"].value == pytest.approx(want[0])          # row 0: the sample itself
    np.testing.assert_allclose(reps["speedup"], want[1:])
    peak = [var.values[v].mean(0)[1:].max() - base.values[b].mean(0)[1:].max()
            for b, v in zip(ib, iv)]
    np.testing.assert_allclose(reps["peak_diff"], peak[1:])
    final = [var.last[v].mean() - base.last[b].mean() for b, v in zip(ib, iv)]
    np.testing.assert_allclose(reps["final_diff"], final[1:])
    assert est["final_diff"].low == pytest.approx(np.quantile(final[1:], 0.025))


def test_paired_resampling_uses_the_same_seeds_for_both_arms():
    """An arm against itself: paired resamples give exactly 1x and 0 points in every replicate;
    unpaired ones draw different seeds for the two copies, so the interval is not degenerate."""
    base, _ = random_arms(np.random.default_rng(0), seeds=6)
    paired, _ = S.compare(base, base, paired=True, n_boot=200)
    assert (paired["speedup"].low, paired["speedup"].high) == (1.0, 1.0)
    assert (paired["final_diff"].low, paired["final_diff"].high) == (0.0, 0.0)
    unpaired, _ = S.compare(base, base, paired=False, n_boot=200)
    assert unpaired["final_diff"].low < 0 < unpaired["final_diff"].high
    assert paired["final_diff"].verdict == unpaired["final_diff"].verdict == "not distinguishable"


def test_pairing_removes_shared_seed_effects():
    """Seed s of both arms shares a start offset of sd 5 points; the variant's final accuracy is
    1 point higher with .2 point noise. Paired: the interval is about the noise (narrow, 'higher');
    unpaired: it includes the 5-point seed spread and cannot tell."""
    rng = np.random.default_rng(1)
    shared = rng.normal(0, .05, 10)
    x = np.array([0.0, 10.0])
    vb = np.stack([shared, shared + rng.normal(0, .002, 10)], axis=1) + .5
    vv = np.stack([shared, shared + .01 + rng.normal(0, .002, 10)], axis=1) + .5
    base = S.Arm(x, vb, np.arange(10), vb[:, -1])
    var = S.Arm(x, vv, np.arange(10), vv[:, -1])
    paired, _ = S.compare(base, var, paired=True)
    unpaired, _ = S.compare(base, var, paired=False)
    assert paired["final_diff"].high - paired["final_diff"].low < .005
    assert paired["final_diff"].verdict == "higher"
    assert unpaired["final_diff"].verdict == "not distinguishable"


def test_paired_uses_common_seeds_only():
    base, var = random_arms(np.random.default_rng(2), seeds=4)
    var = S.Arm(var.x, var.values, np.array([2, 3, 4, 5]), var.last)
    est, _ = S.compare(base, var, paired=True, n_boot=20)
    b, v = base.select(np.array([2, 3])), var.select(np.array([2, 3]))
    want = brute_speedup(b.x, b.values.mean(0), v.x, v.values.mean(0))
    assert est["speedup"].value == pytest.approx(want)
    other = S.Arm(var.x, var.values, np.array([7, 8, 9, 10]), var.last)
    with pytest.raises(ValueError, match="common to both"):
        S.compare(base, other, paired=True)


def test_percentile_interval_and_verdicts():
    """Replicates 1..1001: numpy's linear quantiles at 2.5% and 97.5% are 26 and 976; NaN
    replicates are left out. Verdicts: the interval against 1 (speedups) or 0 (differences);
    touching the null is 'not distinguishable'."""
    est = S.percentile(5.0, np.r_[np.arange(1, 1002.0), np.nan], null=1.0)
    assert (est.low, est.high) == pytest.approx((26.0, 976.0))
    assert S.Estimate(1.5, 1.1, 2.0, 1.0).verdict == "faster"
    assert S.Estimate(0.5, 0.0, 0.9, 1.0).verdict == "slower"
    assert S.Estimate(2.0, 1.0, 2.7, 1.0).verdict == "not distinguishable"
    assert S.Estimate(.01, .002, .02, 0.0).verdict == "higher"
    assert S.Estimate(-.01, -.02, -.001, 0.0).verdict == "lower"
    assert S.Estimate(0.0, -.01, .01, 0.0).verdict == "not distinguishable"
    assert S.percentile(1.0, np.array([np.nan]), 1.0).verdict == "n/a"


# ----------------------------------------------------------------------------------------------
# coverage on synthetic studies with a known speedup
# ----------------------------------------------------------------------------------------------

def synthetic_study(rng, k, seeds=8, evals=12, start=0.25, gain=0.10, horizon=5.0, eval_se=0.01,
                    seed_sd=0.01, rate_sd=0.15):
    """Baseline and variant arms whose expected curves are f(x) and f(k x), so that every
    threshold gives speedup k. f rises from `start` by `gain` (per-seed gain sd `seed_sd`, rate
    factor exp(N(0, rate_sd))) and is flat by the horizon (5 time constants); every evaluation
    has `eval_se` noise (1 point), seed s of both arms shares a start offset (sd `seed_sd`).
    The variant is evaluated k times as often, so the evaluation grid itself brings no
    rounding: in grid index both expected curves are equal."""
    shared = rng.normal(0, seed_sd, seeds)

    def arm(x, speed):
        top = gain + rng.normal(0, seed_sd, (seeds, 1))
        rate = np.exp(rng.normal(0, rate_sd, (seeds, 1)))
        y = start + shared[:, None] + top * (1 - np.exp(-speed * rate * x[None, :]))
        y = y + rng.normal(0, eval_se, y.shape)
        return S.Arm(x, y, np.arange(seeds), y[:, -1])

    return (arm(np.linspace(0, horizon, evals + 1), 1.0),
            arm(np.linspace(0, horizon, round(evals * k) + 1), k))


@pytest.mark.parametrize("paired", [True, False])
def test_interval_covers_the_true_speedup_in_200_studies(paired):
    """95% nominal: the interval holds k = 2 in at least 90% of 200 studies of 8 seeds
    (measured: 95% paired, 99% unpaired; the basic bootstrap, exp(2 log est - log q), holds
    it in only 82% paired, so this test can tell a wrong method)."""
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        base, var = synthetic_study(rng, 2.0)
        est, _ = S.compare(base, var, paired=paired, n_boot=1000, seed=i)
        hits += est["speedup"].low <= 2.0 <= est["speedup"].high
    assert hits >= 180


# ----------------------------------------------------------------------------------------------
# cost regime
# ----------------------------------------------------------------------------------------------

def regime_runs(rng, k, cost, seeds=8, noise=0.0):
    """Curves with a known answer: per step the variant's expected curve is the baseline's with
    steps scaled by k (evaluated k times as often, so exactly), one step takes 1 s for the
    baseline and `cost` s for the variant: wall-clock speedup k / cost."""
    rows = []
    for variant, every, s_per_step in [("grpo", 20, 1.0), ("pods", 20 / k, cost)]:
        steps = np.arange(0, 241, every)
        for seed in range(seeds):
            acc = 0.3 + 0.2 * (1 - np.exp(-steps * (k if variant == "pods" else 1) / 60))
            acc = acc + rng.normal(0, noise, len(steps))
            rows.append(pd.DataFrame({"variant": variant, "seed": seed, "step": steps,
                                      "train_time_s": steps * s_per_step, "accuracy": acc}))
    return pd.concat(rows)


def test_regime_prediction_known_answer():
    """Noise-free, k = 2, c = 1.6: per-step speedup 2, measured wall-clock 2 / 1.6 = 1.25; the
    map is 2 / c: 2 at c = 1, 1 at c = 2 (break-even), 1.25 at the measured c."""
    curves = regime_runs(np.random.default_rng(0), 2.0, 1.6)
    base, pods = (curves[curves["variant"] == v] for v in ("grpo", "pods"))
    step, reps = S.compare(S.arm(base, "step"), S.arm(pods, "step"), n_boot=100)
    wall, _ = S.compare(S.arm(base), S.arm(pods), n_boot=100)
    cost = S.seconds_per_step(pods) / S.seconds_per_step(base)
    assert (step["speedup"].value, cost, wall["speedup"].value) == pytest.approx((2, 1.6, 1.25))
    table = S.regime(step["speedup"], reps, np.array([1.0, 1.6, 2.0]))
    np.testing.assert_allclose(table["predicted"], [2.0, 1.25, 1.0])
    check = S.regime_check(step["speedup"], reps, wall["speedup"], cost)
    assert check["predicted"] == pytest.approx(1.25) and check["inside_measured_ci"]
    with pytest.raises(ValueError, match="step-cost ratios"):
        S.regime(step["speedup"], reps, np.array([0.0]))


def test_regime_prediction_with_noise_matches_the_measured_interval():
    """With 1-point evaluation noise and a constant s/step per variant, scaling the step axis
    moves no first crossing: the prediction at the measured c equals the measured wall-clock
    speedup replicate by replicate (same resamples), so it lies inside the measured interval
    and both intervals coincide."""
    curves = regime_runs(np.random.default_rng(1), 3.0, 2.2, noise=0.01)
    base, pods = (curves[curves["variant"] == v] for v in ("grpo", "pods"))
    step, reps = S.compare(S.arm(base, "step"), S.arm(pods, "step"), n_boot=500)
    wall, _ = S.compare(S.arm(base), S.arm(pods), n_boot=500)
    check = S.regime_check(step["speedup"], reps, wall["speedup"], 2.2)
    assert check["predicted"] == pytest.approx(wall["speedup"].value)
    assert (check["predicted_ci_low"], check["predicted_ci_high"]) == \
        pytest.approx((wall["speedup"].low, wall["speedup"].high))
    assert check["inside_measured_ci"]


def test_cost_grid_spans_one_the_measured_and_the_paper_cost():
    np.testing.assert_allclose(S.cost_grid(2.0, 3), [1.0, 1.5, 2.0])
    np.testing.assert_allclose(S.cost_grid(1.1, 3)[[0, -1]], [1.0, S.PAPER_COST])
    np.testing.assert_allclose(S.cost_grid(0.5, 2), [0.5, S.PAPER_COST])
