"""Bad input: one regression test per defect found by probing the kit as a new user would
(issue 12), each asserting what the user sees: the one-line message naming the parameter, or
the behaviour (a grade, a selected subset) that used to be silently wrong."""
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from podslib import rundir
from podslib.config import Config
from podslib.core.selection import select
from podslib.lab import notebook, pipeline
from podslib.lab.cli import main
from podslib.tasks.grading import extract_answer, is_correct
from podslib.tasks.rewards import score_batch
from podslib.training.trainer import train

# Subprocesses import this checkout's podslib.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(pipeline.REPO), os.environ.get("PYTHONPATH")]))}

# --------------------------------------------------------------------------- graders and selection
# Items 1 (hedged answers), 14 (select overflow), 17 (Unicode digits), 18 (score_batch input).


@pytest.mark.parametrize("task", ["gsm8k", "arith"])
def test_hedged_answer_scores_zero(task):
    """Item 1: one completion yields one answer. An answer field with two different numbers is a
    hedge and scores 0 for both; text after the answer field is not a second answer; 1/2 is the
    number 0.5 and 1e5 the number 100000, never a prefix 1."""
    golds = ["5", "7", "1", "2", "0.5", "100000"]
    cases = {
        "#### 5 or 7": None,
        "<answer>5 or 7</answer>": None,
        "The answer is 5. Or maybe 7": None,
        "#### 5 wait no, it is 7": None,
        "<answer>5</answer> 7": "5",
        "#### 1/2": "0.5",
        "#### 1e5": "100000",
        "#### 1e999999": None,
    }
    for completion, answer in cases.items():
        assert [g for g in golds if is_correct(completion, g, task)] == ([answer] if answer else [])
        assert extract_answer(completion, task) == answer
    _, terms = score_batch([list(cases)] * 2, ["5", "7"], task)
    expected = [float(answer == "5") for answer in cases.values()]
    assert terms["correctness"].tolist() == [expected, [0.0] * len(cases)]


def test_hedged_answer_scores_zero_math():
    """Item 1 for MATH: math-verify reads '5 or 7' in an <answer> block as the set {5, 7}, which
    equals neither 5 nor 7; only the block is graded, not a \\boxed{} after it."""
    completions = [["<answer>5 or 7</answer>", "<answer>5</answer> \\boxed{7}"]] * 2
    _, terms = score_batch(completions, ["5", "7"], "math", workers=2)
    assert terms["correctness"].tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_select_is_correct_for_huge_and_tiny_float64_rewards():
    """Item 14: squares of rewards above ~1e154 overflowed and of rewards below ~1e-162
    underflowed, so select silently returned a subset of variance 0.
    [1e160, 0, 0, 1], m = 2: {1e160, 0} and {1e160, 1} agree to a relative 1e-160 (a tie: the
    larger k, i.e. the top two, wins) -> [0, 3], never the two zeros [1, 2].
    [1e-170, 0, 0, 1e-170], m = 2: {1e-170, 0} -> [0, 2], not the two equal rewards [0, 3].
    [1.7e308, 1.7e308, -1.7e308, 0], m = 2: {1.7e308, -1.7e308} -> [0, 2]."""
    f64 = torch.float64
    assert select(torch.tensor([[1e160, 0, 0, 1]], dtype=f64), 2).tolist() == [[0, 3]]
    assert select(torch.tensor([1e-170, 0, 0, 1e-170], dtype=f64), 2).tolist() == [0, 2]
    assert select(torch.tensor([1.7e308, 1.7e308, -1.7e308, 0], dtype=f64), 2).tolist() == [0, 2]


def test_unicode_digits_are_read_as_ascii_digits():
    """Item 17: decimal digits of any script ('٥' Arabic-Indic, '５' fullwidth, '५' Devanagari)
    are read as the ASCII digit of the same value, in every task, and extract_answer returns
    ASCII. Only digits: the Arabic decimal separator '٫' is not a decimal point."""
    assert extract_answer("#### ٥", "gsm8k") == "5"
    assert extract_answer("#### ५०", "arith") == "50"
    assert extract_answer("<answer>\\boxed{٥٠}</answer>", "math") == "50"
    assert is_correct("#### ٥", "5", "gsm8k") and not is_correct("#### ٥", "6", "gsm8k")
    assert is_correct("\\boxed{５}", "5", "math")
    assert extract_answer("#### ١٢٫٥", "gsm8k") is None   # 12 and 5: a hedge, not 12.5


GROUPS = "completions must be a list with one list of completion strings per prompt"
GOLDS = "golds must be a list of gold answer strings, one per prompt"


@pytest.mark.parametrize(("completions", "golds", "message"), [
    ("abc", ["1", "2", "3"], f"{GROUPS}; got str"),
    (["ab", "cd"], ["1", "2"], f"{GROUPS}; completions[0] is str"),
    ([["a", None]], ["1"], f"{GROUPS}; completions[0][1] is NoneType"),
    ([["a"]], "1", f"{GOLDS}; got str"),
    ([["a"]], [1], f"{GOLDS}; golds[0] is int"),
])
def test_score_batch_rejects_anything_but_lists_of_completion_strings(completions, golds, message):
    """Item 18: score_batch('abc', ...) scored 'a', 'b', 'c' as three groups of one completion."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        score_batch(completions, golds, "gsm8k")


# ------------------------------------------------------------------------- run folders and files
# Items 2 to 13: locks, checkpoints, data files, YAML, seeds, the trainer's command line,
# read-only folders and reports. Each test asserts the one line a user sees (and the exit
# status) and that every file already written is unchanged.

EXPERIMENT = "badinput"
TINY_BASE = {"engine": "hf", "max_steps": 3, "max_train_seconds": 0, "train_size": 50, "test_size": 4,
             "eval_repeats": 1, "eval_every_s": 0, "checkpoint_every_s": 0,
             "checkpoint_every_steps": 1, "prompts_per_step": 2, "max_completion_tokens": 12,
             "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}
LOCK_HOLDER = """
import sys, time
from podslib import rundir
with rundir.locked(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def command(argv, cwd=None):
    """Run `argv` (importing this checkout's podslib); its exit status and output."""
    return subprocess.run(argv, check=False, cwd=cwd, env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=600)


def snapshot(root):
    """{relative path: sha256 of a file, 'folder' for a folder} of everything under root: what
    was written (a stray empty folder too), and the contents."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(Path(root).rglob("*"))}


def write_grid(path, base=None, seeds=(0,), experiment=EXPERIMENT):
    path.write_text(yaml.safe_dump({"experiment": experiment, "seeds": list(seeds),
                                    "base": {**TINY_BASE, **(base or {})},
                                    "grid": {"pods": {"n": 4, "m": 2}}}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A grid file and a results root holding its one complete run, pods-s0: 3 steps, a
    checkpoint after each (steps 2 and 3 kept), evaluations at steps 0 and 3."""
    folder = tmp_path_factory.mktemp("finished")
    grid = write_grid(folder / "grid.yaml", {"cache_dir": str(folder / "cache")})
    root = folder / "results"
    cfg = pipeline.load_grid(grid).config("pods", 0, results_root=str(root))
    rundir.claim_experiment(root / EXPERIMENT, EXPERIMENT, grid.name)
    train(cfg, root / EXPERIMENT / "pods-s0", progress=False)
    assert [p.name for p in rundir.checkpoints(root / EXPERIMENT / "pods-s0")] == \
        ["step-000002", "step-000003"]
    return grid, root


@pytest.fixture
def results(finished, tmp_path):
    """(grid file, a copy of the finished results root, its run folder pods-s0)."""
    grid, root = finished
    copy = tmp_path / "results"
    shutil.copytree(root, copy)
    return grid, copy, copy / EXPERIMENT / "pods-s0"


# Item 2: two runners on one folder (locks).

@contextmanager
def lock_holder(folder):
    """A live process holding `folder`'s lock; yields it (killed at the end, leaving the lock
    stale)."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def lock_pid(path):
    """The process id in lock file `path`; None while there is none (or it is being written)."""
    try:
        return json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def in_use(what, folder):
    """The line naming the holder of `folder`'s lock."""
    owner = json.loads((folder / ".lock").read_text())
    return (f"{what} {str(folder)!r} is in use by process {owner['pid']} on {owner['host']} "
            f"since {owner['since']}; wait for it to finish or stop it (nothing was written)")


@pytest.mark.slow
def test_second_pods_run_stops_at_once_and_a_stale_lock_is_taken_over(results, capsys):
    """Item 2: two `pods run` of one experiment ran side by side and mixed their logs. The
    second stops at once, naming the holder, and writes nothing; once the holder is gone
    (killed: its lock stays), the next run warns, takes the lock over and goes on."""
    grid, root, _ = results
    exp = root / EXPERIMENT
    argv = ["run", str(grid), "--results-root", str(root), "--no-progress"]
    with lock_holder(exp) as holder:
        before = snapshot(root)
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"pods run: error: {in_use('experiment folder', exp)}"]
        assert snapshot(root) == before
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        (f"warning: experiment folder {str(exp)!r}: taking over the stale lock of process "
        f"{holder.pid} (no longer running)")]
    assert f"[skip] {EXPERIMENT}/pods-s0: complete" in captured.out
    del before[f"{EXPERIMENT}/.lock"]
    assert snapshot(root) == before


@pytest.mark.slow
def test_two_pods_runs_at_once_the_second_stops_and_the_first_is_clean(tmp_path, capsys):
    """Item 2, the scenario itself: a second `pods run` started while the first trains stops
    naming the first's process; the first completes with each step logged once and one
    executed notebook."""
    grid = write_grid(tmp_path / "grid.yaml", {"cache_dir": str(tmp_path / "cache")})
    root, exp = tmp_path / "results", tmp_path / "results" / EXPERIMENT
    argv = ["run", str(grid), "--results-root", str(root), "--no-progress"]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "podslib", *argv], env=SUBPROCESS_ENV,
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        while first.poll() is None and lock_pid(exp / ".lock") != first.pid:
            time.sleep(0.1)                          # until the first holds the lock
        line = f"pods run: error: {in_use('experiment folder', exp)}"
        assert f"in use by process {first.pid} " in line
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [line]
        assert first.wait(timeout=600) == 0, (tmp_path / "first.err").read_text()
    finally:
        first.kill()
    run = exp / "pods-s0"
    assert [r["step"] for r in rundir.read_log(run / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in rundir.read_log(run / "eval.jsonl")] == [0, 3]
    assert sorted(p.name for p in run.glob("*.ipynb")) == ["03_train.ipynb"]
    assert not (exp / ".lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_second_train_on_a_run_folder_in_use_stops_at_once(results, capsys, resume):
    """Item 2: `pods train` (and trainer.train) on a run folder another process holds: the
    folder is named as in use (not as 'holds a complete run'), before any data or model loads."""
    _, root, run = results
    argv = ["train", str(run / "config.yaml"), str(run), "--no-progress"]
    with lock_holder(run):
        before = snapshot(root)
        assert main(argv + ["--resume"] * resume) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"pods train: error: {in_use('run folder', run)}"]
        with pytest.raises(rundir.LockedError, match=f"^{re.escape(in_use('run folder', run))}$"):
            train(Config.from_yaml(run / "config.yaml"), run, resume=resume)
        assert snapshot(root) == before


# Item 3: a damaged latest checkpoint.

def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trainable.pt", "state.json"])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(results, capsys, name):
    """Item 3: a run killed after its step-3 checkpoint, whose trainable.pt (or state.json) was
    then truncated, failed to resume with an error naming no file. It resumes from step 2 with
    a warning naming the bad checkpoint, repeats step 3 exactly and completes; the logs up to
    step 2 and the step-2 checkpoint are unchanged, the old step-3 lines are set aside."""
    _, _, run = results
    (run / "summary.json").unlink()
    bad = run / "checkpoints" / "step-000003"
    size = (bad / name).stat().st_size
    truncate(bad / name)
    metrics, evals = rundir.read_log(run / "metrics.jsonl"), rundir.read_log(run / "eval.jsonl")
    kept = snapshot(run / "checkpoints" / "step-000002"), (run / "config.yaml").read_text()
    assert main(["train", str(run / "config.yaml"), str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().err.splitlines()
    assert (f"warning: checkpoint {str(bad)!r} is damaged ({name} is truncated or changed "
            f"({size // 2} bytes, manifest {size})); falling back to an older one") in out
    assert rundir.is_complete(run)
    resumed = rundir.read_log(run / "metrics.jsonl")
    assert resumed[:2] == metrics[:2] and [r["step"] for r in resumed] == [1, 2, 3]
    for key in ("reward_mean_all", "tokens_generated", "loss", "grad_norm"):
        assert resumed[2][key] == metrics[2][key]               # step 3 again, from step 2
    assert rundir.read_log(run / "metrics.orphaned.jsonl") == metrics[2:]
    assert rundir.read_log(run / "eval.jsonl")[0] == evals[0]
    assert rundir.read_log(run / "eval.orphaned.jsonl") == evals[1:]
    assert (snapshot(run / "checkpoints" / "step-000002"), (run / "config.yaml").read_text()) \
        == kept
    assert rundir.verify_checkpoint(bad) == ""                  # written again, whole


@pytest.mark.slow
def test_all_checkpoints_damaged_is_one_clear_line(results, capsys):
    """Item 3: when no checkpoint verifies, one line says so and how to restart; each bad
    checkpoint is named in a warning, and nothing is changed."""
    _, root, run = results
    (run / "summary.json").unlink()
    for step in ("step-000002", "step-000003"):
        truncate(run / "checkpoints" / step / "trainable.pt")
    before = snapshot(root)
    assert main(["train", str(run / "config.yaml"), str(run), "--resume", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == (
        f"pods train: error: no valid checkpoint in {str(run / 'checkpoints')!r} (all 2 are "
        "damaged); move that folder away to restart the run from step 0")
    assert "Traceback" not in captured.err
    for step in ("step-000003", "step-000002"):
        assert f"warning: checkpoint {str(run / 'checkpoints' / step)!r} is damaged" \
            in captured.err
    assert snapshot(root) == before


# Items 4 and 5: empty test and training files.

GSM8K_ROWS = [{"question": f"What is {k} + 1?", "answer": f"{k} plus 1.\n#### {k + 1}"}
              for k in range(4)]


@pytest.mark.parametrize("split", ["test", "train"])
def test_empty_data_file_fails_before_any_model_loads(tmp_path, capsys, monkeypatch, split):
    """Items 4 and 5: an empty test file ran to a NaN accuracy and a 'complete' run; an empty
    training file was blamed on max_prompt_tokens. Either is named before any model loads, and
    nothing is written."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "test"):
        (data / f"{name}.jsonl").write_text(
            "" if name == split else "".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        **TINY_BASE, "tiny": {**TINY_BASE["tiny"]}, "task": "gsm8k", "template": "gsm8k",
        "train_source": str(data / "train.jsonl"), "test_source": str(data / "test.jsonl")}))
    monkeypatch.setattr("podslib.training.trainer.build_model", lambda *a: pytest.fail("model loaded"))
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"pods train: error: gsm8k {split} data {str(data / f'{split}.jsonl')!r} holds no "
        "examples")]
    assert snapshot(tmp_path) == before


# Item 6: invalid YAML.

BAD_GRID = """experiment: x
seeds: [0]
base: {max_steps: 2, lr: 1e-4
grid:
  pods: {n: 4, m: 2}
"""


def test_invalid_yaml_grid_file_is_one_line_with_line_and_column(tmp_path, capsys):
    """Item 6: an unclosed flow mapping in a grid file gave a PyYAML traceback. One line: the
    file, where PyYAML stopped and where the unclosed mapping starts; exit 2, nothing written."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(BAD_GRID)
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--results-root", str(tmp_path / "results")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"pods run: error: config file {str(grid)!r} is not valid YAML: line 4, column 5: "
        "expected ',' or '}', but got ':' (while parsing a flow mapping that starts at line 3, "
        "column 7)")]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("text", "problem"), [
    ('n: 4\nmodel: "tiny\n', ("line 3, column 1: found unexpected end of stream (while scanning "
                             "a quoted scalar that starts at line 2, column 8)")),
    ("n: 4\nlr: @1\n", "line 2, column 5: found character '@' that cannot start any token"),
    ("tiny: {hidden: 32\nn: 4\n", ("line 2, column 2: expected ',' or '}', but got ':' (while "
                                  "parsing a flow mapping that starts at line 1, column 7)")),
])
def test_invalid_yaml_config_is_one_line_with_line_and_column(tmp_path, capsys, text, problem):
    """Item 6: scanner errors and an unclosed flow mapping in a Config YAML (`pods train`)."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pods train: error: config file {str(config)!r} is not valid YAML: {problem}"]
    assert snapshot(tmp_path) == before


# Item 7: inherit cycles.

@pytest.mark.parametrize(("files", "cycle"), [
    ({"a": "a"}, "a.yaml -> a.yaml"),
    ({"a": "b", "b": "a"}, "a.yaml -> b.yaml -> a.yaml"),
    ({"a": "b", "b": "c", "c": "b"}, "b.yaml -> c.yaml -> b.yaml"),
])
def test_inherit_cycle_is_named(tmp_path, capsys, files, cycle):
    """Item 7: `inherit:` cycles ended in a RecursionError; the cycle is named."""
    for name, parent in files.items():
        (tmp_path / f"{name}.yaml").write_text(
            f"inherit: {parent}.yaml\nexperiment: x\ngrid: {{pods: {{n: 4, m: 2}}}}\n")
    before = snapshot(tmp_path)
    assert main(["run", str(tmp_path / "a.yaml"), "--results-root", str(tmp_path / "res")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"pods run: error: config file {str(tmp_path / 'a.yaml')!r}: inherit forms a cycle: "
        f"{cycle}")]
    assert snapshot(tmp_path) == before


# Items 8 and 9: duplicate and negative seeds.

SEEDS = "must be a non-empty list of distinct integers in [0, 9223372036854775807]"


@pytest.mark.parametrize(("seeds", "flag", "where", "got"), [
    ([0, 0], [], "config file {grid!r}: seeds", "[0, 0]"),
    ([0], ["--seeds", "-1"], "--seeds", "[-1]"),
    ([0], ["--seeds", "1", "1"], "--seeds", "[1, 1]"),
])
def test_bad_seeds_are_rejected_before_anything_runs(tmp_path, capsys, seeds, flag, where, got):
    """Items 8 and 9: `seeds: [0, 0]` ran seed 0 twice (the second failed, leaving a failed
    notebook); `--seeds -1` started a notebook and left a junk folder grpo-s-1/. Both are
    rejected up front, exit 2, and the results folder (holding a run) is unchanged."""
    grid = write_grid(tmp_path / "grid.yaml", seeds=seeds)
    run = tmp_path / "res" / EXPERIMENT / "pods-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"experiment": EXPERIMENT}))
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--results-root", str(tmp_path / "res"), *flag]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pods run: error: {where.format(grid=str(grid))} {SEEDS}; got {got}"]
    assert snapshot(tmp_path) == before


# Item 10: 1e-4 in a grid file.

def test_scientific_notation_in_a_grid_file_is_a_number(tmp_path, capsys):
    """Item 10: `lr: 1e-4` (YAML 1.1 reads it as a string) was rejected as '1e-4'. It is the
    number, in base and variants alike, as in the trainer's key=value form."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: x\nbase: {lr: 1e-4, max_steps: 2, weight_decay: 1E-2}\n"
                    "grid:\n  pods: {n: 4, m: 2, lr: 3e-6}\n  grpo: {n: 4, m: 4}\n")
    before = snapshot(tmp_path)
    loaded = pipeline.load_grid(grid)
    assert (loaded.config("grpo", 0).lr, loaded.config("pods", 0).lr) == (1e-4, 3e-6)
    assert loaded.config("grpo", 0).weight_decay == 0.01
    assert main(["config", str(grid), "grpo"]) == 0
    assert "\nlr: 0.0001\n" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


# Item 11: the trainer's command line.

@pytest.mark.parametrize(("args", "line"), [
    (["ok.yaml", "run", "nn=3"], ("unknown config key(s): 'nn' (did you mean 'n'?); see Config "
                                 "fields")),
    (["ok.yaml", "run", "n=sixteen"], "n must be an integer; got 'sixteen'"),
    (["ok.yaml", "run", "lr=abc"], "lr must be a finite number; got 'abc'"),
    (["ok.yaml", "run", "lr"], "overrides must be key=value; got 'lr'"),
    (["missing.yaml", "run"], "config file 'missing.yaml' does not exist"),
    (["ok.yaml", "run", "n={"], ("override 'n={': '{' is not a valid YAML value: line 1, column "
                                "2: expected the node content, but found '<stream end>'")),
])
def test_trainer_command_line_errors_are_one_line(tmp_path, args, line):
    """Item 11: `python -m podslib train CONFIG RUN nn=3` and the like printed 19-line
    tracebacks. One line, exit 2, no run folder."""
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"n": 4, "m": 2}))
    before = snapshot(tmp_path)
    out = command([sys.executable, "-m", "podslib", "train", *args], cwd=tmp_path)
    assert (out.returncode, out.stderr.splitlines()) == (2, [f"pods train: error: {line}"])
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(tmp_path) == before


# Item 12: a read-only results folder.

def run_read_only(folder, argv):
    """Run `argv` with `folder` read-only for it: a user's folder made read-only (chmod a-w)
    blocks that user; root ignores permission bits, so for root `folder` is bind-mounted
    read-only in a private mount namespace (`unshare -m`: only that process sees the mount).
    Skips where root may not create a mount namespace."""
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for path in folders:
            path.chmod(path.stat().st_mode & ~0o222)
        try:
            return command(argv)
        finally:
            for path in folders:
                path.chmod(path.stat().st_mode | 0o200)
    mount = ["unshare", "-m", "sh", "-c",
             'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', str(folder)]
    probe = command([*mount, "sh", "-c", '! touch "$0/probe" 2>/dev/null', str(folder)])
    if probe.returncode:
        pytest.skip("as root, a read-only folder needs a read-only bind mount, and `unshare -m "
                    f"mount` is not permitted here: {probe.stderr.strip()}")
    return command([*mount, *argv])


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "resume", "report"])
def test_read_only_results_folder_is_one_line(results, command):
    """Item 12: a read-only results folder gave `OSError: [Errno 30]` tracebacks from run,
    resume and report. One line naming the folder, exit 2, nothing changed."""
    grid, root, run = results
    (run / "summary.json").unlink()                   # an interrupted run: resume has work
    (root / EXPERIMENT / "grpo-s0").mkdir()           # report has a complete run to show
    for name in ("config.yaml", "eval.jsonl", "metrics.jsonl"):
        shutil.copy(run / name, root / EXPERIMENT / "grpo-s0" / name)
    (root / EXPERIMENT / "grpo-s0" / "summary.json").write_text("{}")
    exp = root.resolve() / EXPERIMENT
    folder = {"run": ("results folder", exp), "resume": ("run folder", exp / "pods-s0"),
              "report": ("results folder", exp)}[command]
    argv = {"run": ["run", str(grid), "--results-root", str(root), "--seeds", "0", "1"],
            "resume": ["train", str(run / "config.yaml"), str(run), "--resume"],
            "report": ["report", EXPERIMENT, "--results-root", str(root)]}[command]
    before = snapshot(root)
    out = run_read_only(root, [sys.executable, "-m", "podslib", *argv, "--no-progress"])
    name = "train" if command == "resume" else command
    assert (out.returncode, out.stderr.splitlines()) == (2, [
        (f"pods {name}: error: {folder[0]} {str(folder[1])!r} is not writable "
        f"({str(folder[1])!r}: read-only file system or no write permission); choose another "
        "results_root")])
    assert "Traceback" not in out.stdout
    assert snapshot(root) == before


def test_check_writable_on_a_writable_folder_and_a_missing_one(tmp_path):
    """Item 12: check_writable looks at the nearest existing parent of a folder not made yet."""
    rundir.check_writable(tmp_path / "not" / "yet", "results folder")
    rundir.check_writable(tmp_path, "results folder")
    assert list(tmp_path.iterdir()) == []


# Item 13: `pods report` with no complete run.

def test_report_with_only_unfinished_runs_lists_them(tmp_path, capsys):
    """Item 13: `pods report` on an experiment whose runs are all unfinished failed inside
    04_plots.ipynb with KeyError: 'n'. It says there is no complete run and lists them."""
    for name in ("grpo-s0", "pods-s0"):
        run = tmp_path / EXPERIMENT / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"experiment": EXPERIMENT}))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    before = snapshot(tmp_path)
    assert main(["report", EXPERIMENT, "--results-root", str(tmp_path), "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        (f"pods report: error: experiment {EXPERIMENT!r} has no complete run yet (unfinished: "
        "grpo-s0, pods-s0); finish them with `pods run CONFIG` (interrupted runs resume)")]
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- papermill parameters
# Items 15 and 16: papermill run directly (the README's command form) only warns about a
# parameter the notebook does not define and injects it anyway, and makes a string of any -p
# value but True, False, None and numbers. Every notebook checks what papermill injected
# (notebook.check_injected_parameters) before it reads a parameter.

NOTEBOOKS = sorted(p.name for p in pipeline.NOTEBOOKS.glob("0[1-5]*.ipynb"))
CELL = ('config_file = "../configs/tiny.yaml"  # a comment\nseed = 0\nlr = 0.5\noverrides = {}\n'
        "resume = True\nmodel = None\nsizes = [2, 4]\n")
ACCEPTED = "accepted: config_file, seed, lr, overrides, resume, model, sizes"


def check_injected(values):
    """check_injected_parameters on a kernel history: the parameters cell CELL, then
    papermill's injected cell holding `values`."""
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    notebook.check_injected_parameters(["", "import os", CELL, injected], dict(values))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_checks_its_parameters_before_using_them(name):
    """The cell after the parameters cell calls the check first, after its imports."""
    book = nbformat.read(pipeline.NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    body = ast.parse(book.cells[index + 1].source).body
    first = next(s for s in body if not isinstance(s, ast.Import | ast.ImportFrom))
    assert ast.unparse(first) == "notebook.check_injected_parameters()"


def test_parameters_of_the_default_types_pass_and_jupyterlab_is_left_alone():
    """An int passes for a float, a None default takes anything; without papermill's injected
    cell (JupyterLab, a plain Python process) nothing is checked."""
    check_injected({"seed": 3, "lr": 1, "model": {"any": [1]}, "resume": False, "sizes": [8],
                    "overrides": {"max_steps": 2}, "config_file": "x.yaml"})
    notebook.check_injected_parameters(["", CELL, "seed = 'x'\nsed = 1\n"], {"seed": "x", "sed": 1})
    notebook.check_injected_parameters()                     # no IPython kernel here


NOT_IN_CELL = f"not in this notebook's parameters cell; {ACCEPTED}"
ANY_OTHER = "(any other -p value is a string)"


@pytest.mark.parametrize(("values", "message"), [
    ({"sed": 5}, f"unknown parameter(s) 'sed' (did you mean 'seed'?): {NOT_IN_CELL}"),
    ({"max_steps": 1, "rezume": 1}, (
        "unknown parameter(s) 'max_steps' (a Config field: -y 'overrides: {max_steps: 1}'), "
        f"'rezume' (did you mean 'resume'?): {NOT_IN_CELL}")),
    ({"resume": "false"}, (
        "parameter 'resume' must be True or False; got 'false' (str); pass it as -p resume True "
        f"or -p resume False {ANY_OTHER}")),
    ({"overrides": "max_steps=2,lr=1e-5"}, (
        "parameter 'overrides' must be a mapping; got 'max_steps=2,lr=1e-5' (str); pass it as "
        "-y 'overrides: {max_steps: 2, lr: 1e-5}'")),
    ({"overrides": [1]}, (
        "parameter 'overrides' must be a mapping; got [1] (list); pass it as "
        "-y 'overrides: {field: value}'")),
    ({"seed": 1.5}, "parameter 'seed' must be an integer; got 1.5 (float); pass it as -p seed 0"),
    ({"seed": True}, "parameter 'seed' must be an integer; got True (bool); pass it as -p seed 0"),
    ({"lr": "abc"}, "parameter 'lr' must be a number; got 'abc' (str); pass it as -p lr 0.5"),
    ({"config_file": 3}, (
        "parameter 'config_file' must be a string; got 3 (int); pass it as -r config_file 3 "
        "(-r keeps it a string)")),
    ({"sizes": 4}, "parameter 'sizes' must be a list; got 4 (int); pass it as -y 'sizes: [2, 4]'"),
])
def test_unknown_parameters_and_wrong_types_are_named(values, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_injected(values)


TRAIN_PARAMETERS = "accepted: config_file, variant, seed, overrides, run_dir, resume"


@pytest.mark.slow
@pytest.mark.parametrize(("args", "line"), [
    (["-p", "sed", "5", "-p", "max_steps", "1"],
     ("ValueError: unknown parameter(s) 'sed' (did you mean 'seed'?), 'max_steps' (a Config "
     "field: -y 'overrides: {max_steps: 1}'): not in this notebook's parameters cell; "
     f"{TRAIN_PARAMETERS}")),
    (["-p", "resume", "false"],
     ("ValueError: parameter 'resume' must be True or False; got 'false' (str); pass it as "
     "-p resume True or -p resume False (any other -p value is a string)")),
    (["-p", "overrides", "max_steps=2"],
     ("ValueError: parameter 'overrides' must be a mapping; got 'max_steps=2' (str); pass it as "
     "-y 'overrides: {max_steps: 2}'")),
    (["-p", "resume", "False", "-y", "overrides: {max_steps: 2}", "-r", "variant", "grpo",
      "-p", "seed", "1"], "FileNotFoundError: config file '{missing}' does not exist"),
], ids=["unknown", "resume-false", "overrides-string", "passed-as-the-messages-say"])
def test_papermill_on_the_command_line(tmp_path, args, line):
    """Items 15 and 16, for real: `python -m papermill --cwd notebooks -k KERNEL
    notebooks/03_train.ipynb OUT -p ...` fails in the check cell with the line naming the
    parameter (the grid file does not exist, so a check that let bad values through would
    fail differently). The values passed as the messages say get past the check (and fail on
    the missing grid file). Nothing but the executed notebook is written."""
    missing = tmp_path / "missing.yaml"
    out = tmp_path / "out.ipynb"
    before, notebooks = snapshot(tmp_path), snapshot(pipeline.NOTEBOOKS)
    result = command([sys.executable, "-m", "papermill", "--cwd", "notebooks", "-k",
                      notebook.default_kernel(), "notebooks/03_train.ipynb", str(out),
                      "-p", "config_file", str(missing), *args], cwd=pipeline.REPO)
    assert result.returncode == 1
    assert line.replace("{missing}", str(missing)) in result.stderr.splitlines()
    assert snapshot(pipeline.NOTEBOOKS) == notebooks
    assert {**before, "out.ipynb": snapshot(tmp_path)["out.ipynb"]} == snapshot(tmp_path)
