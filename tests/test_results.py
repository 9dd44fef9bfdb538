"""podslib.analysis.results: seed aggregation and speedup on synthetic curves with hand-derived answers,
run-folder I/O and the experiment guard."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from podslib.analysis import results as R
from podslib.config import run_id


def curve(variant, seed, t, acc, n=4, m=4, s_per_step=1.0):
    """Evaluation rows of one run; step = t / s_per_step."""
    return pd.DataFrame({"variant": variant, "seed": seed, "train_time_s": t,
                         "step": np.asarray(t, float) / s_per_step, "accuracy": acc,
                         "n": n, "m": m, "rule": "none" if n == m else "max_variance"})


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
    by_step = R.aggregate(curves.assign(step=curves["train_time_s"] / 5), x="step")
    np.testing.assert_allclose(by_step["step"], [0, 2, 3, 4])
    np.testing.assert_allclose(by_step["mean"], agg["mean"])


def test_aggregate_one_seed_has_zero_spread():
    agg = R.aggregate(curve("pods", 3, [0, 5], [0.2, 0.4]))
    np.testing.assert_allclose(agg["mean"], [0.2, 0.4])
    np.testing.assert_allclose(agg["std"], [0, 0])


def two_seed_study():
    """GRPO (1 s/step) seeds .1,.3,.5 and .1,.2,.3; PODS (2 s/step) .1,.5,.5 and .1,.4,.4; all
    at t = 0, 10, 20 s."""
    return pd.concat([
        curve("grpo", 0, [0, 10, 20], [0.1, 0.3, 0.5]),
        curve("grpo", 1, [0, 10, 20], [0.1, 0.2, 0.3]),
        curve("pods", 0, [0, 10, 20], [0.1, 0.5, 0.5], n=16, s_per_step=2.0),
        curve("pods", 1, [0, 10, 20], [0.1, 0.4, 0.4], n=16, s_per_step=2.0),
    ])


def test_summary_table_hand_derived():
    """GRPO mean .1,.25,.4: threshold .396 reached at 20 s = step 20. PODS mean .1,.45,.45
    reaches it at 10 s = step 5: wall-clock 2, per step 4, c = 2 s / 1 s, predicted 4 / 2 = 2.
    Two seeds, paired: the resamples are (0,0), (0,1), (1,0), (1,1). Speedups: seed 0 alone
    (GRPO .495 at 20; PODS at 10) 2, seed 1 alone (.297 at 20; PODS at 10) 2, both 2: interval
    [2, 2], 'faster' (per step [4, 4]). Peak differences: 0 (seed 0), .1 (seed 1), .05 (both):
    interval [0, .1] touches 0: 'not distinguishable'. The baseline row: 1x, 'baseline'."""
    metrics = pd.DataFrame({"variant": ["grpo"] * 2 + ["pods"] * 2, "seed": [0, 1, 0, 1],
                            "step": [20, 20, 10, 10], "t_generate": [1.0, 1.0, 2.0, 2.0],
                            "t_update": [0.5, 0.5, 0.25, 0.25]})
    table = R.summary_table(two_seed_study(), metrics, n_boot=400).set_index("variant")
    pods, grpo = table.loc["pods"], table.loc["grpo"]
    assert (pods["speedup"], pods["speedup_ci_low"], pods["speedup_ci_high"]) == (2, 2, 2)
    assert (pods["step_speedup"], pods["step_speedup_ci_low"]) == (4, 4)
    assert pods["speedup_verdict"] == pods["step_speedup_verdict"] == "faster"
    assert (pods["cost_ratio"], pods["predicted_speedup"], pods["prediction_in_ci"]) == \
        (2, 2, True)
    assert pods["peak_diff"] == pytest.approx(0.05)
    assert (pods["peak_diff_ci_low"], pods["peak_diff_ci_high"]) == pytest.approx((0, 0.1))
    assert pods["peak_diff_verdict"] == pods["final_diff_verdict"] == "not distinguishable"
    assert pods["speedup_per_seed"] == "2.00 2.00" and pods["t_threshold_s"] == 10
    assert (grpo["speedup"], grpo["speedup_ci_low"], grpo["speedup_ci_high"]) == (1, 1, 1)
    assert grpo["speedup_verdict"] == grpo["peak_diff_verdict"] == "baseline"
    assert grpo["peak_acc"] == pytest.approx(0.4) and pods["final_acc"] == pytest.approx(0.45)
    assert (grpo["steps"], grpo["s_per_step"], pods["steps"], pods["s_per_step"]) == (20, 1, 10, 2)
    assert pods["generate_s"] == 2.0 and pods["update_s"] == 0.25
    md = R.markdown_table(table.reset_index())
    assert md.splitlines()[0].startswith("| variant | n | m |") and "| pods | 16 | 4 |" in md
    with pytest.raises(ValueError, match="baseline"):
        R.summary_table(two_seed_study(), metrics, baseline="nope")


def test_summary_per_seed_never_and_no_baseline():
    """PODS seed 0 (.1, .2) never reaches GRPO seed 0's .495; seed 1 reaches .297 at 10 vs 20.
    Without a baseline there are no comparison columns."""
    curves = two_seed_study()
    slow = pd.concat([curves[curves["variant"] == "grpo"],
                      curve("pods", 0, [0, 10], [0.1, 0.2], n=16),
                      curve("pods", 1, [0, 10], [0.1, 0.3], n=16)])
    row = R.summary_table(slow, pd.DataFrame(), n_boot=50).set_index("variant").loc["pods"]
    assert row["speedup_per_seed"] == "never 2.00"
    bare = R.summary_table(curves, pd.DataFrame(), baseline=None)
    assert not any("speedup" in c or "verdict" in c for c in bare.columns)
    assert R.compact_table(bare).columns.tolist() == ["n/m", "seeds", "peak"]


def test_compact_and_cost_tables_are_short_strings(tmp_path):
    """The display tables format the hand-derived study above; written and read back, the
    summary gives the same text (verdict strings survive the CSV)."""
    table = R.summary_table(two_seed_study(), pd.DataFrame(), n_boot=400)
    R.write_summary(table, tmp_path)
    back = R.read_summary(tmp_path)
    for t in (table, back):
        pods = R.compact_table(t).loc["pods"]
        assert pods["peak"] == "45.0%" and pods["n/m"] == "16/4"
        assert pods["per-step speedup"] == "4.00x [4.00, 4.00]"
        assert pods["wall-clock speedup"] == "2.00x [2.00, 2.00]"
        assert pods["peak diff (pt)"] == "+5.0 [+0.0, +10.0]"
        cost = R.cost_table(t).loc["pods"]
        assert (cost["c"], cost["predicted at c"], cost["inside"]) == \
            ("2.00", "2.00x [2.00, 2.00]", True)
    text = R.report_text(back, "synth", "grpo")
    assert text.splitlines()[0].startswith("synth: speedups over grpo (95% bootstrap")
    assert "faster" in text and "baseline" in text
    with pytest.raises(FileNotFoundError, match="pods report"):
        R.read_summary(tmp_path / "absent")


def test_regime_maps_for_down_sampling_variants():
    """PODS (n > m) against GRPO: per-step speedup 4, so the map is 4 / c from c = 1 to the
    measured 2 (the paper's 1.35 lies inside), the measured point 2x at c = 2."""
    curves = two_seed_study()
    table = R.summary_table(curves, pd.DataFrame(), n_boot=100)
    maps, measured = R.regime_maps(curves, table, "grpo", n_boot=100)
    assert list(maps) == ["pods"]
    np.testing.assert_allclose(maps["pods"]["predicted"], 4 / maps["pods"]["cost_ratio"])
    assert maps["pods"]["cost_ratio"].iloc[[0, -1]].tolist() == [1.0, 2.0]
    assert measured["pods"] == {"cost_ratio": 2, "speedup": 2, "ci_low": 2, "ci_high": 2}
    assert R.regime_maps(curves, table, "absent") == ({}, {})


def make_run(exp_dir, variant, seed, experiment, evals, n=4, m=4, complete=True):
    run = exp_dir / run_id(variant, seed)
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
