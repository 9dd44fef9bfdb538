"""podslib.results: seed aggregation and speedup on synthetic curves with hand-derived answers,
run-folder I/O and the experiment guard."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from podslib import results as R
from podslib import rundir


def curve(variant, seed, t, acc, n=4, m=4):
    return pd.DataFrame({"variant": variant, "seed": seed, "train_time_s": t, "accuracy": acc,
                         "n": n, "m": m, "rule": "none" if n == m else "max_variance"})


def test_hold_last_is_previous_value_and_nan_outside():
    """t = [0, 10, 20], acc = [.1, .3, .5]; grid [-1, 0, 5, 10, 19, 20, 21]
    -> [nan, .1, .1, .3, .3, .5, nan] (before the first / after the last evaluation: NaN)."""
    got = R.hold_last([0, 10, 20], [0.1, 0.3, 0.5], [-1, 0, 5, 10, 19, 20, 21])
    np.testing.assert_allclose(got, [np.nan, 0.1, 0.1, 0.3, 0.3, 0.5, np.nan])


def test_aggregate_two_seeds_hand_derived():
    """Seed 0: t 0,10,20 acc .1,.3,.5; seed 1: t 0,15,25 acc .1,.2,.6.
    Grid = union of eval times up to the earliest last one (20): 0, 10, 15, 20.
    Held values: seed 0 -> .1, .3, .3, .5; seed 1 -> .1, .1, .2, .2.
    mean = .1, .2, .25, .35; std (ddof 1) of two values = |a - b| / sqrt 2 = 0, .1414, .0707,
    .2121; sem = std / sqrt 2; min/max the smaller / larger value."""
    curves = pd.concat([curve("grpo", 0, [0, 10, 20], [0.1, 0.3, 0.5]),
                        curve("grpo", 1, [0, 15, 25], [0.1, 0.2, 0.6])])
    agg = R.aggregate(curves)
    np.testing.assert_allclose(agg["train_time_s"], [0, 10, 15, 20])
    np.testing.assert_allclose(agg["mean"], [0.1, 0.2, 0.25, 0.35])
    np.testing.assert_allclose(agg["std"], np.array([0, 0.2, 0.1, 0.3]) / math.sqrt(2))
    np.testing.assert_allclose(agg["sem"], np.array([0, 0.2, 0.1, 0.3]) / 2)
    np.testing.assert_allclose(agg["min"], [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(agg["max"], [0.1, 0.3, 0.3, 0.5])
    assert (agg["seeds"] == 2).all()


def test_aggregate_one_seed_has_zero_spread():
    agg = R.aggregate(curve("pods", 3, [0, 5], [0.2, 0.4]))
    np.testing.assert_allclose(agg["mean"], [0.2, 0.4])
    np.testing.assert_allclose(agg["std"], [0, 0])


def test_speedup_hand_derived():
    """GRPO acc .2,.4,.6,.7,.8 at t 0..40: peak .8, threshold .792, reached at t=40.
    PODS acc .2,.5,.8,.81 at t 0..30 reaches .792 at t=20 -> speedup 40 / 20 = 2."""
    out = R.speedup([0, 10, 20, 30, 40], [0.2, 0.4, 0.6, 0.7, 0.8],
                    [0, 10, 20, 30], [0.2, 0.5, 0.8, 0.81])
    assert out["threshold"] == pytest.approx(0.792)
    assert (out["t_base"], out["t_method"], out["speedup"]) == (40, 20, 2.0)


def test_speedup_threshold_is_99_percent_not_peak():
    """Baseline peak 1.0 at t=30 but .99 already at t=10: threshold .99 -> t_base = 10.
    Method reaches .99 at 5 -> speedup 2; with frac=1.0 the baseline needs 30 and the method
    (never 1.0) never reaches it -> 0."""
    assert R.speedup([0, 10, 30], [0, 0.99, 1.0], [0, 5], [0, 0.99])["speedup"] == 2.0
    assert R.speedup([0, 10, 30], [0, 0.99, 1.0], [0, 5], [0, 0.99], frac=1.0)["speedup"] == 0.0


def test_speedup_edge_cases():
    assert math.isnan(R.speedup([0, 10], [0.5, 0.5], [0, 10], [0.5, 0.1])["speedup"])
    assert math.isinf(R.speedup([0, 10], [0.1, 0.5], [0, 10], [0.6, 0.6])["speedup"])
    with pytest.raises(ValueError, match="frac"):
        R.speedup([0], [1], [0], [1], frac=0)


def test_seed_speedups_pair_equal_seeds():
    """Seed 0: GRPO reaches .99*.5 at 20, PODS at 10 -> 2. Seed 1: GRPO peak .4 -> threshold .396
    reached at 30; PODS at 10 -> 3. Seed 2 exists for PODS only and is left out."""
    curves = pd.concat([
        curve("grpo", 0, [0, 10, 20], [0.1, 0.3, 0.5]),
        curve("grpo", 1, [0, 10, 20, 30], [0.1, 0.2, 0.3, 0.4]),
        curve("pods", 0, [0, 10, 20], [0.1, 0.5, 0.5], n=16),
        curve("pods", 1, [0, 10, 20], [0.1, 0.4, 0.4], n=16),
        curve("pods", 2, [0, 10], [0.1, 0.9], n=16),
    ])
    table = R.seed_speedups(curves, "grpo", "pods")
    assert table["seed"].tolist() == [0, 1]
    np.testing.assert_allclose(table["speedup"], [2.0, 3.0])


def test_summary_table_headline_uses_mean_curves():
    """Two seeds each, same eval times. GRPO mean .1,.25,.4 -> threshold .396 reached at 20.
    PODS mean .1,.45,.45 reaches it at 10 -> headline speedup 2. Per seed: GRPO seed 0 peak .5
    (threshold .495, t 20), PODS seed 0 .5 at 10 -> 2; GRPO seed 1 peak .3 (.297 at 20), PODS
    seed 1 .4 at 10 -> 2."""
    curves = pd.concat([
        curve("grpo", 0, [0, 10, 20], [0.1, 0.3, 0.5]),
        curve("grpo", 1, [0, 10, 20], [0.1, 0.2, 0.3]),
        curve("pods", 0, [0, 10, 20], [0.1, 0.5, 0.5], n=16),
        curve("pods", 1, [0, 10, 20], [0.1, 0.4, 0.4], n=16),
    ])
    metrics = pd.DataFrame({"variant": ["grpo"] * 2 + ["pods"] * 2, "seed": [0, 1, 0, 1],
                            "step": [5, 7, 3, 3], "t_generate": [1.0, 1.0, 2.0, 2.0],
                            "t_update": [0.5, 0.5, 0.25, 0.25]})
    table = R.summary_table(curves, metrics).set_index("variant")
    assert table.loc["pods", "speedup"] == pytest.approx(2.0)
    assert table.loc["grpo", "speedup"] == pytest.approx(1.0)
    assert table.loc["pods", "speedup_per_seed"] == "2.00 2.00"
    assert table.loc["grpo", "peak_acc"] == pytest.approx(0.4)
    assert table.loc["pods", "final_acc"] == pytest.approx(0.45)
    assert table.loc["grpo", "steps"] == 6 and table.loc["pods", "s_per_step"] == 2.25
    md = R.markdown_table(table.reset_index())
    assert md.splitlines()[0].startswith("| variant | n | m |") and "| pods | 16 | 4 |" in md
    with pytest.raises(ValueError, match="baseline"):
        R.summary_table(curves, metrics, baseline="nope")
    slow = pd.concat([curves[curves["variant"] == "grpo"],
                      curve("pods", 0, [0, 10], [0.1, 0.2], n=16),
                      curve("pods", 1, [0, 10], [0.1, 0.3], n=16)])
    assert R.summary_table(slow, metrics).set_index("variant").loc["pods", "speedup_per_seed"] \
        == "never 2.00"       # seed 0 never reaches .495; seed 1 reaches .297 at 10 vs 20


def make_run(exp_dir, variant, seed, experiment, evals, n=4, m=4, complete=True):
    run = exp_dir / rundir.run_id(variant, seed)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"experiment": experiment, "seed": seed, "n": n, "m": m, "rule": "max_variance"}))
    (run / "eval.jsonl").write_text("".join(
        json.dumps({"step": i, "train_time_s": t, "accuracy": a}) + "\n"
        for i, (t, a) in enumerate(evals)))
    if complete:
        (run / "summary.json").write_text("{}")
    return run


def test_load_runs_reads_run_folders(tmp_path):
    make_run(tmp_path / "tiny", "grpo", 0, "tiny", [(0, 0.1), (10, 0.2)])
    make_run(tmp_path / "tiny", "pods", 1, "tiny", [(0, 0.1)], n=16, complete=False)
    df = R.load_runs(tmp_path, "tiny")
    assert len(df) == 3
    pods = df[df["variant"] == "pods"].iloc[0]
    assert (pods["seed"], pods["n"], pods["m"], pods["rule"], pods["complete"]) == \
        (1, 16, 4, "max_variance", False)
    assert set(df[df["variant"] == "grpo"]["rule"]) == {"none"}
    assert len(R.load_runs(tmp_path, "absent")) == 0


def test_summary_rows_follow_the_ablation_order():
    """Variants sorted by n, then m descending: grpo 16/16, m16 64/16, m8 64/8, n128 128/16."""
    curves = pd.concat([curve(v, 0, [0, 10], [0.1, 0.2], n=n, m=m) for v, n, m in
                        [("n128", 128, 16), ("m8", 64, 8), ("grpo", 16, 16), ("m16", 64, 16)]])
    table = R.summary_table(curves, pd.DataFrame())
    assert table["variant"].tolist() == ["grpo", "m16", "m8", "n128"]
