"""The notebooks: committed clean with one literal parameters cell, and each executes under
papermill with tiny parameters (a failing cell fails the test with the cell's error)."""

import ast
import json
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from podslib import rundir
from podslib.analysis import results
from podslib.config import run_id
from podslib.lab import notebook, pipeline

NAMES = ["01_rollouts", "02_downsampling", "03_train", "04_plots", "05_paper", "06_cost"]

# A grid small enough for CPU tests: untrained tiny model (no warm-start), 2 steps, 4 problems.
TINY_BASE = {"engine": "hf", "max_steps": 2, "max_train_seconds": 0, "train_size": 50,
             "test_size": 4, "eval_repeats": 1, "eval_every_s": 0, "checkpoint_every_s": 0,
             "prompts_per_step": 2, "max_completion_tokens": 12,
             "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory):
    """A grid file with variants grpo (2/2) and pods (4/2) on the tiny settings above."""
    folder = tmp_path_factory.mktemp("grid")
    path = folder / "nbtest.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": "nbtest", "seeds": [0],
        "base": {**TINY_BASE, "cache_dir": str(folder / "cache")},
        "grid": {"grpo": {"n": 2, "m": 2}, "pods": {"n": 4, "m": 2}}}))
    return path


def run_notebook(name: str, output, parameters: dict) -> None:
    """Execute notebooks/<name>.ipynb; a failing cell fails the test with its error."""
    try:
        notebook.execute(pipeline.NOTEBOOKS / f"{name}.ipynb", output, parameters,
                         kernel=notebook.default_kernel(), progress=False)
    except notebook.NotebookError as err:
        pytest.fail(f"{name}: cell {err.cell} raised {err.ename}: {err.evalue}", pytrace=False)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean_with_one_literal_parameters_cell(name):
    book = nbformat.read(pipeline.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for stmt in ast.parse(tagged[0].source).body:          # name = literal, nothing else
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        ast.literal_eval(stmt.value)
    index = book.cells.index(tagged[0])
    assert book.cells[index + 1].cell_type == "code"       # derived values come next
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert book.metadata.kernelspec.name == "pods-kit"


def test_unknown_parameter_is_an_error_before_any_kernel_starts(tmp_path):
    out = tmp_path / "out.ipynb"
    with pytest.raises(ValueError, match=r"\['rollout_dir'\] are not in 02_downsampling"):
        notebook.execute(pipeline.NOTEBOOKS / "02_downsampling.ipynb", out,
                         {"rollout_dir": str(tmp_path)})
    assert not out.exists()


@pytest.mark.slow
def test_failing_cell_fails_with_the_cell_error(tmp_path):
    """02 on a folder without rollouts: the load cell raises FileNotFoundError; the helper turns
    it into a test failure that names the error; the executed notebook is kept."""
    params = {"rollouts_dir": str(tmp_path / "none"), "out_dir": str(tmp_path / "out")}
    with pytest.raises(pytest.fail.Exception, match="FileNotFoundError: rollouts file"):
        run_notebook("02_downsampling", tmp_path / "02.ipynb", params)
    assert (tmp_path / "02.ipynb").exists()


@pytest.mark.slow
def test_rollouts_then_downsampling(tmp_path, tiny_grid):
    rollouts, ablation = tmp_path / "rollouts", tmp_path / "downsampling"
    run_notebook("01_rollouts", rollouts / "01.ipynb",
                 {"config_file": str(tiny_grid), "variant": "pods", "num_prompts": 3, "n": 4,
                  "out_dir": str(rollouts)})
    saved = np.load(rollouts / "rollouts.npz")
    assert saved["rewards"].shape == saved["correct"].shape == (3, 4)
    assert len((rollouts / "rollouts.jsonl").read_text().splitlines()) == 3
    assert {p.name for p in (rollouts / "figures").iterdir()} == \
        {"reward_histograms.png", "zero_variance.png"}
    run_notebook("02_downsampling", ablation / "02.ipynb",
                 {"rollouts_dir": str(rollouts), "out_dir": str(ablation), "m_values": [2, 4, 8],
                  "timing_n": [8, 32], "timing_m": 2, "timing_groups": 4})
    stats = pd.read_csv(ablation / "rule_statistics.csv")
    assert len(stats) == 3 * 2                                # 3 rules x m in {2, 4} (8 > n)
    assert set(stats["m"]) == {2, 4}
    assert len(pd.read_csv(ablation / "selection_timing.csv")) == 3 * 2
    assert len(list((ablation / "figures").glob("*.png"))) == 4


@pytest.mark.slow
def test_train_notebook(tmp_path, tiny_grid):
    run_dir = tmp_path / "pods-s0"
    run_notebook("03_train", run_dir / "03_train.ipynb",
                 {"config_file": str(tiny_grid), "variant": "pods", "seed": 0,
                  "run_dir": str(run_dir), "overrides": {"results_root": str(tmp_path)}})
    assert rundir.is_complete(run_dir)
    assert [r["step"] for r in rundir.read_log(run_dir / "metrics.jsonl")] == [1, 2]
    assert {p.name for p in (run_dir / "figures").iterdir()} == {"accuracy.png", "reward.png"}


def write_run(exp_dir, variant, seed, n, m, evals, step_s):
    """A synthetic run folder: config.yaml, eval.jsonl [(t, acc)], metrics.jsonl, summary.json."""
    run = exp_dir / run_id(variant, seed)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"experiment": exp_dir.name, "seed": seed, "n": n, "m": m, "rule": "max_variance"}))
    (run / "eval.jsonl").write_text("".join(
        json.dumps({"step": i, "train_time_s": t, "accuracy": a}) + "\n"
        for i, (t, a) in enumerate(evals)))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "train_time_s": (i + 1) * step_s, "t_generate": step_s / 2,
                    "t_score": 0.0, "t_select": 0.0, "t_update": step_s / 2, "t_sync": 0.0})
        + "\n" for i in range(4)))
    (run / "summary.json").write_text("{}")


def report_files(exp_dir):
    """{name: bytes} of what `pods report` derives: the summaries and the figures."""
    files = [*exp_dir.glob("summary*"), *(exp_dir / "figures").glob("*.png")]
    return {str(p.relative_to(exp_dir)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_plots_notebook_through_pods_report(tmp_path, capsys):
    """GRPO (both seeds) .2, .4, .6, .8 at t = 0, 10, 20, 30: threshold .792, reached on the
    line from (20, .6) at 29.6. PODS .2, .8, .8, .8 reaches it on its line from (0, .2) at
    9.867 -> speedup 3 on the mean curves and for each seed (per step too: evaluations at steps
    0..3, 10 s per step). An unfinished run (no summary.json, one evaluation) is left out: with
    it the common grid would end at t = 0. The record is written; from it alone (a fresh clone)
    the same summaries and figures come out. `--baseline pods` adds summary_vs_pods beside the
    main summary, which stays against grpo; a later plain `pods report` regenerates both; an
    unknown baseline changes nothing."""
    exp = tmp_path / "synth"
    for seed in (0, 1):
        write_run(exp, "grpo", seed, 4, 4, [(0, .2), (10, .4), (20, .6), (30, .8)], 1.0)
        write_run(exp, "pods", seed, 16, 4, [(0, .2), (10, .8), (20, .8), (30, .8)], 2.0)
    write_run(exp, "pods", 2, 16, 4, [(0, .2)], 2.0)
    (exp / "pods-s2" / "summary.json").unlink()
    from podslib.lab.cli import main

    def report(root, *more):
        return main(["report", "synth", "--results-root", str(root), "--no-progress", *more])

    assert report(tmp_path) == 0
    table = pd.read_csv(exp / "summary.csv").set_index("variant")
    assert table.loc["pods", "speedup"] == pytest.approx(3.0)
    assert table.loc["pods", "speedup_per_seed"] == "3.00 3.00"
    assert table.loc["grpo", "s_per_step"] == pytest.approx(10.0)
    assert (table.loc["pods", "step_speedup"], table.loc["pods", "speedup_verdict"]) == \
        (pytest.approx(3.0), "faster")
    out = capsys.readouterr().out
    assert "synth: 2 variants against grpo" in out
    assert "pods (16 -> 4, max_variance, 2 seeds): Per step it reached grpo's level 3.00x" in out
    assert "| pods | 16 -> 4 | max_variance | Per step it reached grpo's level 3.00x sooner" in \
        (exp / "summary.md").read_text()
    made = report_files(exp)
    assert set(made) == {"summary.md", "summary.csv"} | {f"figures/{name}.png" for name in (
        "accuracy_vs_time", "accuracy_vs_step", "peak_accuracy", "final_accuracy", "step_time",
        "cost_regime")}
    assert (exp / "runs.csv.gz").exists()
    executed = nbformat.read(exp / "04_plots.ipynb", as_version=4)     # the kernel shows each
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
             if "image/png" in o.get("data", {})]
    assert len(shown) == 6

    clone = tmp_path / "clone" / "synth"
    clone.mkdir(parents=True)
    for name in ("runs.csv.gz", "summary.csv"):
        shutil.copy(exp / name, clone)
    assert report(clone.parent) == 0
    assert report_files(clone) == made

    assert report(clone.parent, "--baseline", "pods") == 0
    assert report_files(clone) == {**made, **{k: v for k, v in report_files(clone).items()
                                              if k.startswith("summary_vs_pods")}}
    versus = pd.read_csv(clone / "summary_vs_pods.csv").set_index("variant")
    assert versus["baseline"].unique().tolist() == ["pods"]
    assert versus.loc["grpo", "speedup_verdict"] == "slower"
    (clone / "summary_vs_pods.md").unlink()
    assert report(clone.parent) == 0
    assert (clone / "summary_vs_pods.md").read_text().startswith("# synth: 2 variants against pods")
    before = report_files(clone)
    assert report(clone.parent, "--baseline", "nope") == 2
    assert "--baseline must be one of the variants ['grpo', 'pods']; got 'nope'" in \
        capsys.readouterr().err
    assert report_files(clone) == before


@pytest.mark.slow
def test_a_tiny_grid_run_then_reported_from_its_record_alone(tmp_path, tiny_grid):
    """`pods run` on the tiny grid (two variants, two steps each, the hf engine), `pods
    report`: the record holds every evaluation and step of both runs; copied alone into a fresh
    results folder, `pods report` regenerates the same summaries and figures byte for byte."""
    from podslib.lab.cli import main

    root = tmp_path / "res"
    assert main(["run", str(tiny_grid), "--results-root", str(root), "--no-progress"]) == 0
    assert main(["report", "nbtest", "--results-root", str(root), "--no-progress"]) == 0
    exp = root / "nbtest"
    curves, metrics = results.read_record(exp / "runs.csv.gz")
    assert sorted(set(curves["run_id"])) == ["grpo-s0", "pods-s0"]
    assert metrics.groupby("run_id")["step"].apply(list).to_dict() == \
        {"grpo-s0": [1, 2], "pods-s0": [1, 2]}
    assert {"t_generate", "zero_var_frac", "groups_trained", "tokens_generated"} <= \
        set(metrics.columns)
    assert (curves["n_problems"] == 4).all() and set(curves["step"]) == {0, 2}
    clone = tmp_path / "clone" / "nbtest"
    clone.mkdir(parents=True)
    for name in ("runs.csv.gz", "summary.csv"):
        shutil.copy(exp / name, clone)
    assert main(["report", "nbtest", "--results-root", str(clone.parent), "--no-progress"]) == 0
    assert report_files(clone) == report_files(exp)


@pytest.mark.slow
def test_cost_notebook(tmp_path, tiny_grid):
    """06 on the tiny grid: two real steps of each variant side by side, the phase bars and the
    prediction on the cost-regime map saved, and results/<experiment>/cost.md written."""
    run_notebook("06_cost", tmp_path / "06_cost.ipynb",
                 {"config_file": str(tiny_grid), "steps": 2, "warmup": 0, "per_step": 2.0,
                  "results_root": str(tmp_path / "res"), "write": True,
                  "out_dir": str(tmp_path / "figures")})
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"phase_time.png",
                                                                 "cost_regime.png"}
    text = (tmp_path / "res" / "nbtest" / "cost.md").read_text()
    assert "pods (4 -> 2): a PODS step costs" in text
