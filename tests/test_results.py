"""podslib.analysis.results: seed aggregation and speedup on synthetic curves with hand-derived answers,
the verdicts in words, run-folder I/O, the experiment record (rounding, determinism, size, a
fresh clone), the main and pairwise summaries, and every committed experiment regenerated from
its record byte for byte."""

import gzip
import io
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from podslib.analysis import results as R
from podslib.config import run_id
from podslib.files import REPO
from podslib.lab import pipeline


def curve(variant, seed, t, acc, n=4, m=4, s_per_step=1.0):
    """Evaluation rows of one run; step = t / s_per_step."""
    return pd.DataFrame({"variant": variant, "seed": seed, "train_time_s": t,
                         "step": np.asarray(t, float) / s_per_step, "accuracy": acc,
                         "n": n, "m": m, "rule": "none" if n == m else "max_variance"})


def test_aggregate_two_seeds_hand_derived():
    """Seed 0: t 0,10,20 acc .1,.3,.5; seed 1: t 0,15,25 acc .1,.2,.6.
    Grid = union of eval times up to the earliest last one (20): 0, 10, 15, 20.
    Values on the lines between evaluations: seed 0 -> .1, .3, .4, .5; seed 1 -> .1, .1667,
    .2, .4. mean = .1, .2333, .3, .45; std (ddof 1) of two values = |a - b| / sqrt 2 = 0,
    .1333 / sqrt 2, .2 / sqrt 2, .1 / sqrt 2; sem = std / sqrt 2; min/max the smaller / larger
    value."""
    curves = pd.concat([curve("grpo", 0, [0, 10, 20], [0.1, 0.3, 0.5]),
                        curve("grpo", 1, [0, 15, 25], [0.1, 0.2, 0.6])])
    agg = R.aggregate(curves)
    s1 = 0.1 + 0.1 / 1.5
    np.testing.assert_allclose(agg["train_time_s"], [0, 10, 15, 20])
    np.testing.assert_allclose(agg["mean"], [0.1, (0.3 + s1) / 2, 0.3, 0.45])
    spread = np.array([0, 0.3 - s1, 0.2, 0.1])
    np.testing.assert_allclose(agg["std"], spread / math.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(agg["sem"], spread / 2, atol=1e-12)
    np.testing.assert_allclose(agg["min"], [0.1, s1, 0.2, 0.4])
    np.testing.assert_allclose(agg["max"], [0.1, 0.3, 0.4, 0.5])
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
    """The paper's crossing. GRPO mean .1,.25,.4: threshold .396 reached at 20 s = step 20.
    PODS mean .1,.45,.45 reaches it at 10 s = step 5: wall-clock 2, per step 4, c = 2 s / 1 s,
    predicted 4 / 2 = 2.
    Two seeds, paired: the resamples are (0,0), (0,1), (1,0), (1,1). Speedups: seed 0 alone
    (GRPO .495 at 20; PODS at 10) 2, seed 1 alone (.297 at 20; PODS at 10) 2, both 2: interval
    [2, 2], 'faster' (per step [4, 4]). Peak differences: 0 (seed 0), .1 (seed 1), .05 (both):
    interval [0, .1] touches 0: 'not distinguishable'. The baseline row: 1x, 'baseline'."""
    metrics = pd.DataFrame({"variant": ["grpo"] * 2 + ["pods"] * 2, "seed": [0, 1, 0, 1],
                            "step": [20, 20, 10, 10], "t_generate": [1.0, 1.0, 2.0, 2.0],
                            "t_update": [0.5, 0.5, 0.25, 0.25]})
    table = R.summary_table(two_seed_study(), metrics, n_boot=400, crossing="first_eval")
    table = table.set_index("variant")
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
    assert (grpo["baseline"], pods["crossing"]) == ("grpo", "first_eval")
    md = R.markdown_table(table.reset_index())
    assert md.splitlines()[0].startswith("| variant | baseline |") and "| pods | grpo |" in md
    with pytest.raises(ValueError, match="baseline"):
        R.summary_table(two_seed_study(), metrics, baseline="nope")
    with pytest.raises(ValueError, match="crossing must be one of"):
        R.summary_table(two_seed_study(), metrics, crossing="linear")


def test_summary_table_interpolated_crossing_hand_derived():
    """The kit's crossing on the same study. GRPO's mean line from (10, .25) to (20, .4)
    reaches .396 at 10 + .146 / .15 x 10; PODS's from (0, .1) to (10, .45) at .296 / .35 x 10:
    speedup 19.733 / 8.457 = 2.333 (per step the same over steps 0, 5, 10 vs 0, 10, 20: x2).
    Per seed: seed 0 (.495: GRPO at 10 + .195 / .2 x 10 = 19.75, PODS at .395 / .4 x 10) 2.00,
    seed 1 (.297: 19.7 vs .197 / .3 x 10) 3.00."""
    table = R.summary_table(two_seed_study(), pd.DataFrame(), n_boot=50).set_index("variant")
    base, pods = 10 + 1.46 / .15, 2.96 / .35
    assert table.loc["pods", "speedup"] == pytest.approx(base / pods)
    assert table.loc["pods", "step_speedup"] == pytest.approx(2 * base / pods)
    assert table.loc["pods", "speedup_per_seed"] == "2.00 3.00"


def test_peak_and_final_are_points_of_one_curve():
    """Seeds evaluated at slightly different times, rising to their end: the final accuracy is
    the end of the seed-mean curve, not the mean of the seeds' own last evaluations, so every
    row has peak >= final (the old definition gave final .5 > peak .4 here). Seed 1 on its line
    from (11, .3) to (21, .5) at the common end 20: .48; final (.5 + .48) / 2 = .49."""
    curves = pd.concat([curve("grpo", 0, [0, 10, 20], [.1, .3, .5]),
                        curve("grpo", 1, [0, 11, 21], [.1, .3, .5]),
                        curve("pods", 0, [0, 9, 19], [.1, .35, .55], n=16),
                        curve("pods", 1, [0, 12, 22], [.1, .3, .6], n=16)])
    table = R.summary_table(curves, pd.DataFrame(), n_boot=50).set_index("variant")
    assert (table["peak_acc"] >= table["final_acc"]).all()
    assert table.loc["grpo", "final_acc"] == pytest.approx(0.49) == table.loc["grpo", "peak_acc"]
    assert table.loc["grpo", "final_acc_std"] == pytest.approx(0.02 / math.sqrt(2))


def test_zero_variance_share_and_the_budget_marks():
    """zero_var_share: the mean of zero_var_frac over every step of every run of a variant
    (GRPO .5, .25 and .75 -> .5). Marks: a step budget (max_steps 20, no time budget) gives
    steps 0, 5, 10, 15, 20 and the seed-mean curve there (GRPO .1 + .02 x step on both seeds);
    a time budget of 20 s gives 0, 5, ..., 20 s; without budget columns, up to the earliest
    end of the variants' curves."""
    curves = two_seed_study().assign(max_steps=20, max_train_seconds=0)
    curves.loc[curves["variant"] == "grpo", "accuracy"] = [.1, .3, .5, .1, .3, .5]
    metrics = pd.DataFrame({"variant": ["grpo"] * 3 + ["pods"], "seed": [0, 0, 1, 0],
                            "step": [1, 2, 1, 1], "zero_var_frac": [.5, .25, .75, 0.0]})
    table = R.summary_table(curves, metrics, baseline=None).set_index("variant")
    assert table.loc["grpo", "zero_var_share"] == 0.5 and table.loc["pods", "zero_var_share"] == 0
    marks = [c for c in table.columns if c.startswith("acc_")]
    assert marks == ["acc_step_0", "acc_step_5", "acc_step_10", "acc_step_15", "acc_step_20"]
    np.testing.assert_allclose(table.loc["grpo", marks].astype(float), [.1, .2, .3, .4, .5])
    assert math.isnan(table.loc["pods", "acc_step_20"])                # PODS ran 10 steps
    assert R.budget_marks(curves.assign(max_steps=0, max_train_seconds=20))[0] == "train_time_s"
    x, points = R.budget_marks(two_seed_study())
    assert x == "train_time_s" and points.tolist() == [0, 5, 10, 15, 20]
    assert R.mark_name("train_time_s", 45.0) == "acc_45s"


def test_verdicts_in_words_come_first():
    """The hand-derived study in words: faster per step and in wall-clock time (2.00x), then
    the numbers; a censored variant says it did not reach the level and its bound; the
    baseline row says what its level is; in a terminal, one wrapped paragraph per variant."""
    table = R.summary_table(two_seed_study(), pd.DataFrame(), n_boot=400, crossing="first_eval")
    words = R.verdict_table(table).set_index("variant")
    assert words.loc["pods", "verdict"].startswith(
        "Per step it reached grpo's level 4.00x sooner; in wall-clock time it reached it 2.00x "
        "sooner. At equal steps (10) ")
    assert words.loc["grpo", "verdict"] == "The baseline: its level is 99% of its peak, 39.6%."
    assert words.loc["pods", "wall-clock speedup"] == "2.00x [2.00, 2.00]"
    assert words.loc["grpo", "wall-clock speedup"] == ""
    assert list(words.columns[:4]) == ["n -> m", "rule", "verdict", "per-step speedup"]
    slow = pd.concat([two_seed_study()[lambda d: d["variant"] == "grpo"],
                      curve("pods", 0, [0, 10], [0.1, 0.2], n=16, s_per_step=2.0),
                      curve("pods", 1, [0, 10], [0.1, 0.25], n=16, s_per_step=2.0)])
    row = R.summary_table(slow, pd.DataFrame(), n_boot=50).iloc[1]
    assert R.verdict_words(row).startswith(
        "Per step it did not reach grpo's level within its 5 steps (at most 3.95x); in "
        "wall-clock time it did not reach it within its training time (at most 1.97x).")
    text = R.report_text(table, "synth", width=80)
    assert text.splitlines()[0] == "synth: 2 variants against grpo"
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "  pods (16 -> 4, max_variance, 2 seeds): Per step it reached" in text
    assert "wall-clock 2.00x [2.00, 2.00]" in text


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
    table = R.summary_table(two_seed_study(), pd.DataFrame(), n_boot=400, crossing="first_eval")
    R.write_summary(table, tmp_path, experiment="synth", command="pods report synth")
    back = R.read_summary(tmp_path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    for t in (table, back):
        pods = R.compact_table(t).loc["pods"]
        assert pods["peak"] == "45.0%" and pods["n/m"] == "16/4"
        assert pods["per-step speedup"] == "4.00x [4.00, 4.00]"
        assert pods["wall-clock speedup"] == "2.00x [2.00, 2.00]"
        assert pods["peak diff (pt)"] == "+5.0 [+0.0, +10.0]"
        cost = R.cost_table(t).loc["pods"]
        assert (cost["c"], cost["predicted at c"], cost["inside"]) == \
            ("2.00", "2.00x [2.00, 2.00]", True)
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# synth: 2 variants against grpo\n\n`pods report synth` regenerates")
    assert "## Verdicts" in md and "## Accuracy and cost" in md and "## Cost regime" in md
    assert "| pods | 16 -> 4 | max_variance | Per step it reached grpo's level 4.00x sooner" in md
    with pytest.raises(FileNotFoundError, match="pods report"):
        R.read_summary(tmp_path / "absent")


def test_regime_maps_for_down_sampling_variants():
    """PODS (n > m) against GRPO: per-step speedup 4, so the map is 4 / c from c = 1 to the
    measured 2 (the paper's 1.35 lies inside), the measured point 2x at c = 2."""
    curves = two_seed_study()
    table = R.summary_table(curves, pd.DataFrame(), n_boot=100, crossing="first_eval")
    maps, measured = R.regime_maps(curves, table, "grpo", n_boot=100, crossing="first_eval")
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


# ----------------------------------------------------------------------------------------------
# the experiment record
# ----------------------------------------------------------------------------------------------

def record_run(exp_dir, variant, seed, n, m, evals, steps, **config):
    """A run folder with config.yaml (the identity and `config`), eval.jsonl (`evals` records)
    and metrics.jsonl (`steps` records), complete."""
    run = exp_dir / run_id(variant, seed)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"experiment": exp_dir.name, "seed": seed, "n": n, "m": m, "rule": "max_variance",
         **config}))
    for name, records in [("eval.jsonl", evals), ("metrics.jsonl", steps)]:
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text("{}")
    return run


def test_record_rounds_each_column_and_reads_back(tmp_path):
    """Clock readings to 1 ms (wall_s to 10 ms), phase times to 0.1 ms, accuracy to 1e-6, other
    metrics to 3 significant digits, ints and config values as they are; eval rows and step
    rows come back as the two frames, with the run columns on every row."""
    exp = tmp_path / "exp"
    record_run(exp, "pods", 0, 16, 4,
               [{"step": 0, "train_time_s": 0.0, "accuracy": 0.3123456789, "n_problems": 3000,
                 "repeats": 1, "greedy": False, "eval_s": 4.123456}],
               [{"step": 1, "wall_s": 1.23456, "train_time_s": 0.2501234, "t_generate": 0.123456,
                 "t_select": 0.000123456, "reward_mean_all": 0.1875, "reward_std_all": 0.4330127,
                 "loss": -1.23456e-05, "tokens_generated": 123, "lr": 5e-05}],
               max_train_seconds=180, eval_temperature=0.9, engine="vllm")
    R.experiment_record(exp)
    text = gzip.decompress((exp / R.RECORD).read_bytes()).decode()
    assert text.splitlines()[0].startswith("record,experiment,variant,seed,run_id,n,m,rule,")
    curves, metrics = R.read_record(exp / R.RECORD)
    e, s = curves.iloc[0], metrics.iloc[0]
    assert (e["accuracy"], e["eval_s"], e["n_problems"], e["greedy"]) == (0.312346, 4.123, 3000,
                                                                         False)
    assert (s["wall_s"], s["train_time_s"], s["t_generate"], s["t_select"]) == \
        (1.23, 0.25, 0.1235, 0.0001)
    assert (s["reward_mean_all"], s["reward_std_all"], s["loss"]) == (0.188, 0.433, -1.23e-05)
    assert (s["tokens_generated"], s["lr"]) == (123, 5e-05)
    for row in (e, s):
        assert (row["variant"], row["seed"], row["n"], row["m"], row["rule"], row["complete"],
                row["max_train_seconds"], row["eval_temperature"], row["engine"]) == \
            ("pods", 0, 16, 4, "max_variance", True, 180, 0.9, "vllm")
    assert "accuracy" not in metrics.columns and "t_generate" not in curves.columns


def test_record_is_deterministic_and_sorted(tmp_path):
    """The same runs give the same bytes (no time stamp in the gzip header); rows by n, m
    descending, variant, seed, then evaluations before steps."""
    exp = tmp_path / "exp"
    for variant, n, m in [("pods", 16, 4), ("grpo", 4, 4), ("m2", 16, 2)]:
        for seed in (1, 0):
            record_run(exp, variant, seed, n, m, [{"step": 0, "accuracy": 0.1}],
                       [{"step": 1, "t_generate": 0.1}, {"step": 2, "t_generate": 0.2}])
    runs = sorted(exp.iterdir())
    data = R.record_bytes(runs)
    assert data == R.record_bytes(list(reversed(runs))) and data[4:8] == b"\0\0\0\0"
    table = pd.read_csv(io.BytesIO(gzip.decompress(data)))
    assert table["run_id"].drop_duplicates().tolist() == [
        "grpo-s0", "grpo-s1", "pods-s0", "pods-s1", "m2-s0", "m2-s1"]
    assert table["record"].head(3).tolist() == ["eval", "step", "step"]


def test_experiment_record_from_folders_then_from_the_record_alone(tmp_path):
    """With run folders the record is written (and not rewritten when nothing changed); a fresh
    clone (the record, no folders) reads the same frames; with neither, a clear error."""
    exp = tmp_path / "exp"
    for seed in (0, 1):
        record_run(exp, "grpo", seed, 4, 4, [{"step": 0, "train_time_s": 0.0, "accuracy": .1},
                                             {"step": 5, "train_time_s": 1.5, "accuracy": .2}],
                   [{"step": i, "t_generate": 0.1 * i} for i in range(1, 6)])
    curves, metrics = R.experiment_record(exp)
    stamp = (exp / R.RECORD).stat().st_mtime_ns
    R.experiment_record(exp)
    assert (exp / R.RECORD).stat().st_mtime_ns == stamp
    assert R.experiment_variants(exp) == ["grpo"]
    for run in R.find_runs(exp):
        shutil.rmtree(run)
    again = R.experiment_record(exp)
    pd.testing.assert_frame_equal(again[0], curves)
    pd.testing.assert_frame_equal(again[1], metrics)
    assert R.experiment_variants(exp) == ["grpo"]
    (exp / R.RECORD).unlink()
    with pytest.raises(FileNotFoundError, match="no runs under .* and no record runs.csv.gz"):
        R.experiment_record(exp)


def test_record_of_a_48_run_study_is_under_a_megabyte(tmp_path):
    """The tiny study's shape: 6 variants x 8 seeds, 700, 555, 395 and 258 steps per run (n = 4,
    8, 16, 32), every metric of a step noisy, an evaluation every 20 s: the record stays under
    1 MB (measured 0.80 MB), so the committed results stay a few MB."""
    rng = np.random.default_rng(0)
    exp = tmp_path / "study"
    variants = {"grpo": 4, "n8": 8, "pods": 16, "random": 16, "max_reward": 16, "n32": 32}
    for variant, n in variants.items():
        for seed in range(8):
            count = {4: 700, 8: 555, 16: 395, 32: 258}[n]
            rewards = (rng.random((count, 4, n)) < 0.4).astype(float)
            t = np.cumsum(rng.normal(0.027 * n + 0.12, 0.01, count))
            steps = [{"step": i + 1, "wall_s": t[i] * 1.1, "train_time_s": t[i],
                      "t_generate": rng.normal(0.027 * n, 0.01), "t_score": rng.normal(2e-3, 3e-4),
                      "t_select": rng.normal(3e-4, 5e-5), "t_update": rng.normal(0.12, 0.01),
                      "t_sync": rng.normal(1e-4, 2e-5), "reward_mean_all": r.mean(),
                      "reward_std_all": r.std(axis=1).mean(), "reward_mean_sel": r[:, :4].mean(),
                      "reward_std_sel": r[:, :4].std(axis=1).mean(),
                      "sel_var": r[:, :4].var(axis=1).mean(),
                      "zero_var_frac": float((r.std(axis=1) == 0).mean()),
                      "accuracy_all": r.mean(), "tokens_generated": int(rng.integers(32, 56) * n),
                      "completion_len": float(rng.integers(32 * n, 56 * n)) / (4 * n),
                      "trunc_rate": float(rng.integers(0, 3)) / (4 * n), "gen_rounds": 1,
                      "groups_trained": int(rng.integers(1, 5)),
                      "tokens_trained": int(rng.integers(100, 200)),
                      "loss": rng.normal(0, 0.01), "kl": 0.0, "clip_frac": 0.0,
                      "entropy": rng.normal(1.2, 0.1), "grad_norm": abs(rng.normal(0.5, 0.2)),
                      "blank_micro_batches": 0, "lr": 5e-5} for i, r in enumerate(rewards)]
            marks = np.searchsorted(t, np.arange(0, t[-1], 20.0))
            evals = [{"step": int(i), "train_time_s": float(t[i]), "accuracy": rng.integers(900,
                      1500) / 3000, "n_problems": 3000, "repeats": 1, "greedy": False,
                      "eval_s": rng.normal(4, 0.3)} for i in marks]
            record_run(exp, variant, seed, n, 4, evals, steps, max_train_seconds=180,
                       max_steps=0, test_size=3000, eval_repeats=1, eval_temperature=0.9,
                       eval_greedy=False, engine="vllm", task="arith")
    size = len(R.record_bytes(R.find_runs(exp)))
    assert size < 1_000_000, size


# ----------------------------------------------------------------------------------------------
# experiments, their main and pairwise summaries
# ----------------------------------------------------------------------------------------------

def test_experiments_are_marked_folders_or_records(tmp_path):
    for name, marker in [("a", "experiment.json"), ("b", R.RECORD), ("c", "notes.txt")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / marker).write_text("{}")
    assert pipeline.experiments(tmp_path) == ["a", "b"]


def test_the_main_baseline_is_kept_and_others_are_added(tmp_path):
    """No summary yet: the requested baseline (else grpo) is the main one. Once summary.csv
    names one, it stays the main one and another requested baseline, like every
    summary_vs_*.csv already written, is compared beside it. A summary from before the
    baseline column names it by its row's 'baseline' verdicts; one without speedups, none."""
    assert pipeline.baselines(tmp_path, None) == ("grpo", [])
    assert pipeline.baselines(tmp_path, "lr5e-5") == ("lr5e-5", [])
    pd.DataFrame({"baseline": ["lr5e-5", "lr5e-5"], "variant": ["a", "b"]}).to_csv(
        tmp_path / "summary.csv", index=False)
    assert pipeline.baselines(tmp_path, None) == ("lr5e-5", [])
    assert pipeline.baselines(tmp_path, "lr5e-5") == ("lr5e-5", [])
    (tmp_path / "summary_vs_max_reward.csv").write_text("")
    assert pipeline.baselines(tmp_path, "random") == ("lr5e-5", ["max_reward", "random"])
    pd.DataFrame({"variant": ["a", "b"], "speedup_verdict": ["faster", "baseline"]}).to_csv(
        tmp_path / "summary.csv", index=False)                    # before the baseline column
    assert pipeline.baselines(tmp_path, "random") == ("b", ["max_reward", "random"])
    pd.DataFrame({"variant": ["a"]}).to_csv(tmp_path / "summary.csv", index=False)
    assert pipeline.baselines(tmp_path, "random") == ("random", ["max_reward"])


COMMITTED = sorted(p for p in (REPO / "results").iterdir()
                   if (p / "summary.md").is_file() and p.name != "paper")     # paper: test_paper


@pytest.mark.slow
@pytest.mark.parametrize("exp", COMMITTED, ids=lambda p: p.name)
def test_committed_experiment_regenerates_from_its_record(exp, tmp_path):
    """A fresh clone: only the record and the summaries (which name the baselines) of a
    committed experiment; `pods report` regenerates every summary and figure byte for byte.
    Under CI=true an experiment without a record is a failure."""
    from podslib.lab.cli import main

    if not (exp / R.RECORD).is_file():
        msg = (f"results/{exp.name} has a summary.md but no record {R.RECORD}: run the "
               f"experiment, `pods report {exp.name}` and commit the record")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    clone = tmp_path / exp.name
    clone.mkdir()
    shutil.copy(exp / R.RECORD, clone)
    for csv in exp.glob("summary*.csv"):
        shutil.copy(csv, clone)
    assert main(["report", exp.name, "--results-root", str(tmp_path), "--no-progress"]) == 0
    committed = sorted([p.name for p in exp.glob("summary*")] +
                       [f"figures/{p.name}" for p in (exp / "figures").glob("*.png")])
    made = sorted([p.name for p in clone.glob("summary*")] +
                  [f"figures/{p.name}" for p in (clone / "figures").glob("*.png")])
    assert made == committed
    for name in committed:
        assert (clone / name).read_bytes() == (exp / name).read_bytes(), name
