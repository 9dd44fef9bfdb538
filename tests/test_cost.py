"""`pods cost`: the statistics (podslib.analysis.cost: c over paired rounds, the study's own c,
the prediction, the paper's nearest setting) against hand-derived values and brute-force loops;
the measurement (podslib.lab.cost: the schedule, peak memory per phase, real steps of the tiny
model side by side); the command's bad inputs; the agreement with one's own runs on a short
study; and the GPU configs with the tiny model substituted."""

import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from podslib.analysis import cost as C
from podslib.analysis import stats as S
from podslib.files import REPO
from podslib.lab import cost as L
from podslib.lab import pipeline
from podslib.lab.cli import main

# ----------------------------------------------------------------------------------------------
# measured c: rounds as the resampling unit
# ----------------------------------------------------------------------------------------------


def steps_frame(blocks: dict[str, list[list[float]]]) -> pd.DataFrame:
    """{variant: [[seconds of each step] per round]} -> the timed-step rows round_costs reads."""
    return pd.DataFrame([{"variant": v, "round": r + 1, "seconds": s}
                         for v, rounds in blocks.items() for r, block in enumerate(rounds)
                         for s in block])


def test_round_costs_hand_derived_and_against_a_loop():
    """GRPO 1 s per step in every round; PODS 2 s in round 1, 4 s in round 2 (2 steps each):
    PODS 3 s/step, c = 3. The bootstrap resamples rounds, the same for both arms: each
    replicate is (PODS seconds / steps) / (GRPO seconds / steps) over the drawn rounds."""
    steps = steps_frame({"grpo": [[1, 1], [1, 1]], "pods": [[2, 2], [4, 4]]})
    table, reps = C.round_costs(steps, "grpo", n_boot=500, seed=3)
    table = table.set_index("variant")
    assert table.loc["pods", "c"] == pytest.approx(3.0)
    assert table.loc["pods", "s_per_step"] == pytest.approx(3.0)
    assert table.loc["grpo", ["c", "c_ci_low", "c_ci_high"]].tolist() == [1.0, 1.0, 1.0]
    assert (table.loc["pods", "rounds"], table.loc["pods", "steps"]) == (2, 4)
    idx = S.resamples(2, 500, np.random.default_rng(3))[1:]
    per_round = np.array([2.0, 4.0])
    loop = np.array([per_round[i].mean() / 1.0 for i in idx])
    np.testing.assert_allclose(reps["pods"], loop)
    low, high = np.quantile(loop, [0.025, 0.975])
    assert (table.loc["pods", "c_ci_low"], table.loc["pods", "c_ci_high"]) == \
        pytest.approx((low, high))
    assert set(np.round(loop, 9)) <= {2.0, 3.0, 4.0}


def test_round_costs_pairs_rounds_so_shared_slowdowns_cancel():
    """Round 2 runs everything twice as slowly (a busy machine): c is 2 in both rounds, so
    every replicate is exactly 2 (paired), while each s/step interval is wide."""
    steps = steps_frame({"grpo": [[1, 1], [2, 2]], "pods": [[2, 2], [4, 4]]})
    table, reps = C.round_costs(steps, "grpo", n_boot=200)
    row = table.set_index("variant").loc["pods"]
    assert (row["c"], row["c_ci_low"], row["c_ci_high"]) == pytest.approx((2, 2, 2))
    np.testing.assert_allclose(reps["pods"], 2.0)
    assert row["s_per_step_ci_high"] - row["s_per_step_ci_low"] > 1


def test_round_costs_against_a_baseline_per_variant():
    """A sweep of the engine: each PODS counted against the GRPO of its own engine. hf: GRPO 1,
    PODS 2 s/step (c 2); vllm: GRPO 0.5, PODS 1.5 (c 3); against the hf GRPO vllm's PODS would
    read 1.5."""
    steps = steps_frame({"grpo hf": [[1], [1]], "pods hf": [[2], [2]],
                         "grpo vllm": [[0.5], [0.5]], "pods vllm": [[1.5], [1.5]]})
    base = {"grpo hf": "grpo hf", "pods hf": "grpo hf", "grpo vllm": "grpo vllm",
            "pods vllm": "grpo vllm"}
    table, reps = C.round_costs(steps, base, n_boot=50)
    assert table.set_index("variant")["c"].to_dict() == pytest.approx(
        {"grpo hf": 1.0, "pods hf": 2.0, "grpo vllm": 1.0, "pods vllm": 3.0})
    np.testing.assert_allclose(reps["pods vllm"], 3.0)
    with pytest.raises(ValueError, match="baseline must be one of the measured variants"):
        C.round_costs(steps, {**base, "pods vllm": "grpo"})


def test_round_costs_uses_rounds_every_variant_has():
    steps = steps_frame({"grpo": [[1], [1], [1]], "pods": [[2], [2]]})
    table, _ = C.round_costs(steps, "grpo", n_boot=50)
    assert table["rounds"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="baseline must be one of the measured variants"):
        C.round_costs(steps, "ref")


# ----------------------------------------------------------------------------------------------
# the prediction
# ----------------------------------------------------------------------------------------------

def test_predict_divides_replicate_by_replicate():
    """Gain 3 with replicates g_i, c 1.5 with replicates c_i: the point is 2, the interval the
    percentiles of g_i / c_i (a loop)."""
    rng = np.random.default_rng(0)
    g, c = rng.uniform(2, 4, 1000), rng.uniform(1.2, 1.8, 1000)
    gain = S.Estimate(3.0, 2.1, 3.9, 1.0, 3.0)
    got = C.predict(gain, 1.5, c, {"speedup": g, "speedup_at_most": g})
    assert got.value == pytest.approx(2.0) and got.at_most == pytest.approx(2.0)
    low, high = np.quantile([gi / ci for gi, ci in zip(g, c, strict=True)], [0.025, 0.975])
    assert (got.low, got.high) == pytest.approx((low, high))


def test_predict_with_a_given_gain_carries_only_c():
    got = C.predict(S.Estimate(2.0, 2.0, 2.0, 1.0, 2.0), 2.0, np.array([1.6, 2.0, 2.5] * 100))
    assert got.value == pytest.approx(1.0)
    assert (got.low, got.high) == pytest.approx((0.8, 1.25))


def test_predict_censored_gain_stays_censored():
    """A gain never reached within the horizon (0, at most 1.5): predicted 0, at most 1.5 / c;
    the interval runs from 0 to the bound's percentile."""
    zeros, bound = np.zeros(100), np.full(100, 1.5)
    got = C.predict(S.Estimate(0.0, 0.0, 1.5, 1.0, 1.5), 1.5, np.full(100, 1.5),
                    {"speedup": zeros, "speedup_at_most": bound})
    assert (got.value, got.at_most, got.low, got.high) == pytest.approx((0, 1, 0, 1))
    assert C.ratio_text(got) == "never (< 1.00x) [0.00, 1.00]"


def test_sentence_reads_as_the_issue_asks():
    c = S.Estimate(1.79, 1.75, 1.83, 1.0)
    got = C.sentence(c, "the paper's per-step gain on GSM8K 64 -> 16",
                     S.Estimate(2.58, 1.56, 3.36, 1.0, 2.58), S.Estimate(1.44, 0.87, 1.88, 1.0, 1.44))
    assert got == ("a PODS step costs 1.79 [1.75, 1.83] GRPO steps here; with the paper's "
                   "per-step gain on GSM8K 64 -> 16, 2.58x [1.56, 3.36], expect 1.44x [0.87, "
                   "1.88] in wall-clock time; PODS pays while its per-step gain exceeds 1.79")


# ----------------------------------------------------------------------------------------------
# the paper's nearest setting
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "want"), [
    (("arith", "tiny", 16, 4, "max_variance"), ("gsm8k", "pods")),        # n / m = 4
    (("arith", "tiny", 8, 4, "max_variance"), ("gsm8k", "n32")),          # 2: n ablation
    (("arith", "tiny", 32, 4, "max_variance"), ("gsm8k", "n128")),        # 8: m = 16 first
    (("arith", "tiny", 32, 4, "max_variance", "m"), ("gsm8k", "m8")),     # ... or n = 64
    (("gsm8k", "Qwen/Qwen2.5-3B-Instruct", 64, 8, "max_variance"), ("gsm8k", "m8")),  # itself
    (("gsm8k", "Qwen/Qwen2.5-3B-Instruct", 64, 16, "random"), ("gsm8k", "random")),
    (("arith", "tiny", 16, 4, "max_reward"), ("gsm8k", "max_reward")),
    (("math", "Qwen/Qwen2.5-3B-Instruct", 32, 8, "max_variance"), ("math", "pods")),
    (("math", "Qwen/Qwen2.5-3B-Instruct", 64, 16, "random"), ("gsm8k", "random")),  # not in MATH
    (("gsm8k", "meta-llama/Llama-3.2-3B-Instruct", 64, 16, "max_variance"), ("llama", "pods")),
    (("arith", "tiny", 16, 4, "lowest_reward"), ("gsm8k", "pods")),       # a rule of one's own
])
def test_nearest_paper_setting(args, want):
    assert C.nearest_paper(*args) == want


def test_paper_gain_is_what_pods_paper_reports():
    """The per-step speedups of results/paper/summary.csv (`pods paper`, 2000 resamples, seed
    0), e.g. GSM8K 64 -> 16: 2.58x [1.56, 3.36]."""
    table = pd.read_csv(REPO / "results" / "paper" / "summary.csv")
    for study, variant in (("gsm8k", "pods"), ("math", "pods"), ("llama", "pods"),
                           ("gsm8k", "max_reward")):
        row = table[(table["study"] == study) & (table["variant"] == variant)].iloc[0]
        est, reps = C.paper_gain(study, variant)
        assert (est.value, est.low, est.high, est.at_most) == pytest.approx(
            (row["step_speedup"], row["step_speedup_ci_low"], row["step_speedup_ci_high"],
             row["step_speedup_at_most"]))
        assert len(reps["speedup"]) == S.N_BOOT
    assert C.paper_setting("gsm8k", "pods") == "GSM8K 64 -> 16"
    assert C.paper_setting("gsm8k", "random") == "GSM8K 64 -> 16 random"
    assert C.paper_setting("math", "pods") == "MATH 32 -> 8"


# ----------------------------------------------------------------------------------------------
# a study's own c, and the agreement
# ----------------------------------------------------------------------------------------------

def curve(variant, seed, s_per_step, accuracy):
    """Evaluation rows at steps 0, 1, ... with train_time_s = step x s_per_step."""
    return pd.DataFrame({"variant": variant, "seed": seed, "step": range(len(accuracy)),
                         "train_time_s": [k * s_per_step for k in range(len(accuracy))],
                         "accuracy": accuracy})


def test_study_costs_per_seed_ratios_and_their_bootstrap():
    """GRPO 10 s/step for seeds 0-2; PODS 20, 30, 25: per-seed c 2, 3, 2.5, mean 2.5; the
    interval: percentiles of the mean over resampled seeds (a loop)."""
    curves = pd.concat([curve("grpo", s, 10, [.2, .4]) for s in range(3)]
                       + [curve("pods", s, sps, [.2, .4]) for s, sps in enumerate([20, 30, 25])])
    table = C.study_costs(curves, "grpo", n_boot=400, seed=1).set_index("variant")
    assert C.seed_costs(curves, "grpo", "pods").tolist() == pytest.approx([2, 3, 2.5])
    assert table.loc["pods", "c"] == pytest.approx(2.5)
    assert table.loc["grpo", ["c", "c_ci_low", "c_ci_high"]].tolist() == [1, 1, 1]
    idx = S.resamples(3, 400, np.random.default_rng(1))[1:]
    loop = [np.mean([[2, 3, 2.5][i] for i in row]) for row in idx]
    assert (table.loc["pods", "c_ci_low"], table.loc["pods", "c_ci_high"]) == \
        pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])))


def test_agreement_hand_derived():
    """Three seeds, GRPO .2 .4 .6 .8 at 10 s/step: threshold .792, reached at step 3 (30 s).
    PODS .2 .8 .8 .8 at 20 s/step reaches it at step 1 (20 s): per-step speedup 3, wall-clock
    1.5, c 2 in every seed. Measured c 2: inside, and the prediction 3 / 2 = 1.5 is the
    measured wall-clock speedup. Measured c 2.5: outside, and so is the prediction 1.2."""
    curves = pd.concat([curve("grpo", s, 10, [.2, .4, .6, .8]) for s in range(3)]
                       + [curve("pods", s, 20, [.2, .8, .8, .8]) for s in range(3)])
    measured = pd.DataFrame({"variant": ["grpo", "pods", "n8"], "c": [1.0, 2.0, 1.5],
                             "c_ci_low": [1.0, 1.9, 1.4], "c_ci_high": [1.0, 2.1, 1.6]})
    got = C.agreement(measured, curves, "grpo", n_boot=200).set_index("variant")
    assert list(got.index) == ["pods"]                  # n8 has no runs, grpo is the baseline
    row = got.loc["pods"]
    assert (row["study_c"], row["step_speedup"], row["speedup"], row["predicted"]) == \
        pytest.approx((2.0, 3.0, 1.5, 1.5))
    assert row["c_inside"] and row["prediction_inside"] and row["seeds"] == 3
    worse = C.agreement(measured.assign(c=[1.0, 2.5, 1.5]), curves, "grpo", n_boot=200).iloc[0]
    assert worse["predicted"] == pytest.approx(1.2)
    assert not worse["c_inside"] and not worse["prediction_inside"]


# ----------------------------------------------------------------------------------------------
# the measurement
# ----------------------------------------------------------------------------------------------

def test_schedule_warm_up_then_turning_rounds():
    blocks = L.schedule(["a", "b", "c"], steps=10, warmup=2, rounds=4)
    assert [(b.variant, b.round, b.steps) for b in blocks[:3]] == \
        [("a", 0, 2), ("b", 0, 2), ("c", 0, 2)]
    rounds = [[(b.variant, b.steps) for b in blocks if b.round == r] for r in (1, 2, 3, 4)]
    assert rounds == [[("a", 3), ("b", 3), ("c", 3)], [("b", 3), ("c", 3), ("a", 3)],
                      [("c", 2), ("a", 2), ("b", 2)], [("a", 2), ("b", 2), ("c", 2)]]
    assert not blocks[0].timed and blocks[3].timed
    assert [b.steps for b in L.schedule(["a", "b"], steps=2, warmup=0)] == [1, 1, 1, 1]


def test_memory_timer_peak_is_per_phase():
    """On CPU: a phase that holds 300 MiB peaks at least that much above one that holds
    nothing (the resident peak is reset at each phase's start); the phases are timed too."""
    timer = L.MemoryTimer("cpu")
    with timer("generate"):
        block = np.ones(300 * 2 ** 20, dtype=np.uint8)
        del block
    with timer("update"):
        pass
    assert set(timer.seconds) == {"t_generate", "t_update"}
    if sys.platform == "linux":
        assert timer.peak["generate"] - timer.peak["update"] > 250 * 2 ** 20


def test_regime_maps_and_the_prediction_figure(tmp_path):
    """Per variant with a gain: the map spans c from 1 (or below the measured interval) to the
    paper's c or the interval's top, and equals gain / c along it; the figure draws it."""
    from podslib.analysis import plots

    table = pd.DataFrame({
        "variant": ["grpo", "pods", "n8"], "c": [1.0, 1.8, 0.9], "c_ci_low": [1.0, 1.6, 0.8],
        "c_ci_high": [1.0, 2.1, 1.0], "predicted": [np.nan, 1.5, 0.0],
        "predicted_ci_low": [np.nan, 1.2, 0.0], "predicted_ci_high": [np.nan, 1.9, 1.1],
        "predicted_at_most": [np.nan, 1.5, 1.2]})
    given = S.Estimate(2.7, 2.7, 2.7, 1.0, 2.7)
    censored = (S.Estimate(0.0, 0.0, 1.2, 1.0, 1.08), {"speedup": np.zeros(50),
                                                       "speedup_at_most": np.full(50, 1.08)})
    report = L.CostReport("x", table, pd.DataFrame(), [], pd.DataFrame(), {},
                          {"pods": ("given", given, None), "n8": ("runs", *censored)}, {})
    maps, points = L.regime_maps(report, points=11)
    assert list(maps) == ["pods", "n8"]
    grid = maps["pods"]["cost_ratio"].to_numpy()
    assert (grid[0], grid[-1]) == pytest.approx((0.8, 2.1))
    np.testing.assert_allclose(maps["pods"]["predicted"], 2.7 / grid)
    assert (maps["n8"]["predicted"] == 0).all()
    np.testing.assert_allclose(maps["n8"]["at_most"], 1.08 / grid)
    assert points["pods"]["c"] == 1.8 and points["n8"]["predicted_at_most"] == 1.2
    fig = plots.cost_prediction(maps, points, tmp_path / "map.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "pods: here (c = 1.80)" in labels and "n8: at most, here (c = 0.90)" in labels
    assert (tmp_path / "map.png").stat().st_size > 0


def test_a_busy_machine_is_named():
    """A load average above half the CPUs before the measurement gets a warning line."""
    meta = {"device": "cpu", "cpus": 2, "jobs": 2, "started": "now", "engine": "vllm",
            "load_before": 8.8, "load_after": 14.4, "warmup": 3, "steps": 40, "seconds": 199}
    assert L.busy_note(meta).startswith("note: the machine was busy (load average 8.8 on 2 CPUs")
    assert "load average 8.8 before, 14.4 after" in L.header(meta)
    assert L.busy_note({**meta, "load_before": 1.0}) == ""


def test_parse_sweep():
    assert L.parse_sweep("n=16,32, 64") == ("n", [16, 32, 64])
    assert L.parse_sweep("rule=random,max_variance") == ("rule", ["random", "max_variance"])
    for bad in ("n", "n=", "=4", "n=4,,8", "n=4,4"):
        with pytest.raises(ValueError, match="--sweep"):
            L.parse_sweep(bad)


def test_plan_variants_and_sweeps():
    grid = pipeline.load_grid(pipeline.CONFIGS / "tiny_study_n.yaml")
    assert [v.name for v in L.plan(grid, only=["n8", "pods"])] == ["grpo", "n8", "pods"]
    swept = L.plan(grid, only=["pods"], sweep="n=8,32")
    assert [(v.name, v.source, v.swept, v.config.n, v.baseline) for v in swept] == [
        ("grpo", "grpo", None, 4, "grpo"), ("pods n=8", "pods", 8, 8, "grpo"),
        ("pods n=32", "pods", 32, 32, "grpo")]
    assert swept[1].config.lr == 5e-5 and swept[1].config.seed == 0
    both = L.plan(grid, only=["pods"], sweep="engine=hf,vllm")      # both sides of c change
    assert [(v.name, v.config.engine, v.config.n, v.baseline) for v in both] == [
        ("grpo engine=hf", "hf", 4, "grpo engine=hf"), ("pods engine=hf", "hf", 16,
                                                        "grpo engine=hf"),
        ("grpo engine=vllm", "vllm", 4, "grpo engine=vllm"),
        ("pods engine=vllm", "vllm", 16, "grpo engine=vllm")]
    assert L.plan(grid, only=["pods"], overrides={"engine": "hf"})[1].config.engine == "hf"
    for kwargs, match in [({"baseline": "ref"}, "--baseline must be one of"),
                          ({"only": ["nope"]}, "--only must name variants among"),
                          ({"only": ["grpo"]}, "--only must name a variant besides"),
                          ({"only": ["pods"], "sweep": "m=32"}, "--sweep m=32 on variant 'pods'"),
                          ({"overrides": {"lr": -1}}, "variant 'grpo': lr")]:
        with pytest.raises(ValueError, match=match):
            L.plan(grid, **kwargs)


def test_check_ready_refuses_vllm_engines_that_cannot_share_one_gpu():
    """ablation_n on one GPU: five vLLM engines at 0.3 each; refused before anything loads."""
    grid = pipeline.load_grid(pipeline.CONFIGS / "ablation_n.yaml")
    with pytest.raises(ValueError, match=r"reserve 1\.50 of its memory; pass "
                                         r"gpu_memory_utilization=0\.18"):
        L.check_ready(L.plan(grid))


# ----------------------------------------------------------------------------------------------
# end to end on the tiny model (untrained, hf engine: quick to start)
# ----------------------------------------------------------------------------------------------

TINY = {"engine": "hf", "max_steps": 4, "max_train_seconds": 0, "train_size": 50,
        "test_size": 4, "eval_repeats": 1, "eval_every_s": 0, "eval_every_steps": 2,
        "checkpoint_every_s": 0, "prompts_per_step": 2, "max_completion_tokens": 12,
        "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}


@pytest.fixture
def grid_file(tmp_path, cache_dir):
    """A grid of GRPO 2/2 and PODS 4/2 on the tiny settings above, seeds 0 and 1."""
    path = tmp_path / "costs.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": "costs", "seeds": [0, 1], "base": {**TINY, "cache_dir": str(cache_dir)},
        "grid": {"grpo": {"n": 2, "m": 2}, "pods": {"n": 4, "m": 2}}}))
    return path


def overlapped(steps: pd.DataFrame, row: pd.Series) -> bool:
    """Whether another variant was stepping during this step."""
    others = steps[steps["variant"] != row["variant"]]
    return bool(((others["start"] < row["end"]) & (others["end"] > row["start"])).any())


@pytest.mark.slow
def test_cost_measures_real_steps_side_by_side(tmp_path, grid_file):
    """Two workers, one thread each, 4 timed steps each after a warm-up step: every timed step
    is a real trainer step (tokens generated, all five phases timed) that ran while the other
    variant was stepping; c of the baseline is 1; the files are written; with no runs of the
    experiment the gain is the paper's nearest setting (4 / 2 -> GSM8K 32 -> 16)."""
    report = L.run(grid_file, steps=4, warmup=1, results_root=tmp_path / "res", log=lambda _: None)
    steps = report.steps
    timed = steps[steps["timed"]]
    assert timed.groupby("variant").size().to_dict() == {"grpo": 4, "pods": 4}
    assert (steps[steps["round"] == 0].groupby("variant").size() == 1).all()
    assert (timed["tokens_generated"] > 0).all() and (timed["t_generate"] > 0).all()
    assert (timed["t_update"] > 0).all() and (timed["peak_generate"] > 0).all()
    assert all(overlapped(steps, row) for _, row in timed.iterrows())
    table = report.table.set_index("variant")
    assert table.loc["grpo", "c"] == 1.0 and table.loc["pods", "c"] > 0
    assert table.loc["pods", "c"] == pytest.approx(
        timed[timed["variant"] == "pods"]["seconds"].mean()
        / timed[timed["variant"] == "grpo"]["seconds"].mean())
    assert table.loc["pods", "gain_source"] == "the paper's per-step gain on GSM8K 32 -> 16"
    assert report.sentences[0].startswith("pods (4 -> 2): a PODS step costs ")
    out = tmp_path / "res" / "costs"
    assert {p.name for p in report.paths} == {"cost.md", "cost.csv"}
    assert "## The prediction" in (out / "cost.md").read_text()
    assert pd.read_csv(out / "cost.csv")["variant"].tolist() == ["grpo", "pods"]
    assert report.check.empty                                      # no runs: no check


@pytest.mark.slow
def test_cost_against_own_runs_short_study(tmp_path, grid_file):
    """The agreement check on a short study: both variants trained for 4 steps with 2 seeds
    (evaluations at steps 0, 2, 4), then `pods cost`: the gain comes from these runs (paired),
    and the check sets c here beside the runs' per-seed c, the prediction beside the runs'
    measured wall-clock speedup (both read through results.load_runs)."""
    from podslib.training.trainer import train

    grid = pipeline.load_grid(grid_file)
    root = tmp_path / "res"
    for spec in grid.runs():
        train(spec.config(results_root=str(root)), root / "costs" / spec.run_id, progress=False)
    report = L.run(grid_file, steps=2, warmup=0, results_root=root, log=lambda _: None)
    row = report.table.set_index("variant").loc["pods"]
    assert row["gain_source"] == "your runs' per-step gain (2 seeds)"
    check = report.check.set_index("variant").loc["pods"]
    assert check["seeds"] == 2 and check["c"] == row["c"]
    assert check["predicted"] == pytest.approx(check["step_speedup"] / row["c"])
    assert isinstance(check["c_inside"], bool | np.bool_)
    written = pd.read_csv(root / "costs" / "cost.csv").set_index("variant")
    assert written.loc["pods", "check_study_c"] == pytest.approx(check["study_c"])
    assert "## Against your runs of the experiment" in (root / "costs" / "cost.md").read_text()
    # A clone holds only the record: the gain and the check come from it, as from the folders.
    assert main(["report", "costs", "--results-root", str(root), "--no-progress"]) == 0
    for spec in grid.runs():
        shutil.rmtree(root / "costs" / spec.run_id)
    again = L.run(grid_file, steps=2, warmup=0, results_root=root, write=False,
                  log=lambda _: None)
    assert again.gains["pods"][0] == "your runs' per-step gain (2 seeds)"
    assert again.gains["pods"][1].value == pytest.approx(report.gains["pods"][1].value, rel=1e-3)
    assert again.check.set_index("variant").loc["pods", "study_c"] == pytest.approx(
        check["study_c"], rel=1e-2)                     # the record keeps times to 1 ms


@pytest.mark.slow
def test_cost_sweep_from_the_command_line(tmp_path, grid_file, capsys):
    """--sweep n=4,8: the baseline and one PODS per n, written to cost_n.{md,csv}, with the n of
    the best predicted speedup named."""
    code = main(["cost", str(grid_file), "--only", "pods", "--sweep", "n=4,8", "--steps", "2",
                 "--warmup", "0", "--per-step", "2", "--results-root", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "costs" / "cost_n.csv")
    assert table["variant"].tolist() == ["grpo", "pods n=4", "pods n=8"]
    assert table["n"].tolist() == [2, 4, 8]
    best = int(table.loc[table["predicted"].idxmax(), "swept"])
    out = capsys.readouterr().out
    assert f"pods: of n = 4, 8, n = {best} has the best predicted wall-clock speedup" in out
    assert "with the per-step gain you gave, 2.00x [2.00, 2.00]" in out
    assert not (tmp_path / "costs" / "cost.md").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps must be an integer >= 1; got 0"),
    (["--warmup", "-1"], "--warmup must be an integer >= 0; got -1"),
    (["--jobs", "0"], "--jobs must be an integer >= 1; got 0"),
    (["--per-step", "0"], "--per-step must be a number > 0; got 0.0"),
    (["--only", "nope"], "--only must name variants among 'grpo', 'pods'; got 'nope'"),
    (["--baseline", "ref"], "--baseline must be one of the variants 'grpo', 'pods'; got 'ref'"),
    (["--sweep", "n:4"], "--sweep must be field=value,value,..."),
    (["--sweep", "m=8"], "--sweep m=8 on variant 'pods': "),
    (["--sweep", "nn=8"], "--sweep nn=8 on variant 'grpo': "),   # the baseline is swept too
    (["lr"], "overrides must be key=value; got 'lr'"),
    (["engine=jax"], "variant 'grpo': engine"),
], ids=lambda x: x[0] if isinstance(x, list) else "")
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, grid_file, capsys, args, message):
    code = main(["cost", str(grid_file), *args, "--results-root", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "res").exists()


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["cost", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the GPU configs, with the tiny model in place of Qwen2.5-3B (so the command works on a GPU)
# ----------------------------------------------------------------------------------------------

def tiny_in_place(data_dir, cache_dir, task: str) -> dict:
    """Overrides that run a GPU config on this CPU with the tiny model: the config's n, m,
    rules, LoRA, template, rewards, micro-batches and schedule stay; model, device, dtype,
    8-bit AdamW, engine and sizes change; data from the local copies."""
    source = str(data_dir / ("math500/test.jsonl" if task == "math" else "gsm8k"))
    return {"model": "tiny", "device": "cpu", "dtype": "float32", "optimizer": "adamw",
            "engine": "hf", "max_prompt_tokens": 480, "max_completion_tokens": 8,
            "train_source": source, "test_source": source, "train_size": 64, "test_size": 8,
            "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2},
            "cache_dir": str(cache_dir)}


@pytest.mark.slow
@pytest.mark.parametrize(("config", "task", "only"), [
    ("gsm8k_1gpu", "gsm8k", None), ("math_1gpu", "math", None), ("gsm8k_8gpu", "gsm8k", None),
    ("ablation_n", "gsm8k", ["n32", "n256"]), ("ablation_m", "gsm8k", ["m16", "m2"]),
    ("ablation_rule", "gsm8k", ["random", "max_reward"]),
])
def test_gpu_configs_run_with_the_tiny_model(tmp_path, data_dir, cache_dir, config, task, only):
    """`pods cost configs/<gpu config> --steps 2` with the tiny model substituted: every
    variant (of an ablation: the baseline and its two ends) steps and gets a finite c and a
    prediction."""
    report = L.run(pipeline.CONFIGS / f"{config}.yaml", steps=2, warmup=0, write=False,
                   only=only, overrides=tiny_in_place(data_dir, cache_dir, task),
                   log=lambda _: None)
    table = report.table.set_index("variant")
    grid = pipeline.load_grid(pipeline.CONFIGS / f"{config}.yaml")
    assert list(table.index) == ["grpo", *(only or [v for v in grid.variants if v != "grpo"])]
    assert np.isfinite(table["c"]).all() and (table["steps"] == 2).all()
    assert np.isfinite(table["predicted"].iloc[1:]).all() and len(report.sentences) == len(table) - 1


@pytest.mark.parametrize(("config", "expect"), [
    ("gsm8k_1gpu", {"pods": "GSM8K 64 -> 16"}),
    ("math_1gpu", {"pods": "MATH 32 -> 8"}),
    ("gsm8k_8gpu", {"pods": "GSM8K 64 -> 16"}),                                 # 128 / 32
    ("ablation_n", {"n32": "GSM8K 32 -> 16", "n64": "GSM8K 64 -> 16",
                    "n128": "GSM8K 128 -> 16", "n256": "GSM8K 256 -> 16"}),
    ("ablation_m", {"m16": "GSM8K 64 -> 16", "m8": "GSM8K 64 -> 8",
                    "m4": "GSM8K 64 -> 4", "m2": "GSM8K 64 -> 2"}),
    ("ablation_rule", {"max_variance": "GSM8K 64 -> 16", "random": "GSM8K 64 -> 16 random",
                       "max_reward": "GSM8K 64 -> 16 max_reward"}),
])
def test_gpu_configs_predict_with_the_paper_run_they_repeat(config, expect):
    """Without runs of one's own, each variant of the paper's configs takes the gain of the
    very run of the paper it repeats."""
    variants = L.plan(pipeline.load_grid(pipeline.CONFIGS / f"{config}.yaml"))
    got = L.gains(variants, "grpo", pd.DataFrame(), None, "n", n_boot=50)
    assert {v: source for v, (source, _, _) in got.items()} == {
        v: f"the paper's per-step gain on {s}" for v, s in expect.items()}
