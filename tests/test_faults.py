"""Faults a user meets (issue 21): signals, names that would escape the results folder, folders
and files the kit did not write, a full disk, dead kernels, the documented argument orders,
damaged runs and data. Each test asserts the line the user sees, the exit status, and that
nothing the kit did not write is changed (`snapshot` compares folders too)."""
import argparse
import errno
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_bad_input as B
import yaml
from test_bad_input import (
    EXPERIMENT,
    GSM8K_ROWS,
    SUBPROCESS_ENV,
    TINY_BASE,
    command,
    snapshot,
    write_grid,
)

from podslib import files, rundir
from podslib.config import Config
from podslib.lab import cli, notebook, pipeline
from podslib.lab.cli import main
from podslib.training import data as training_data
from podslib.training import trainer as T

finished, results = B.finished, B.results      # a complete run (fixtures), and a copy of it
NOT_DETERMINISTIC = ("wall_s", "train_time_s", "eval_s")
SLOW_GRID = {"max_steps": 40, "checkpoint_every_steps": 10, "eval_every_steps": 5}


def records(path: Path) -> list[dict]:
    """The deterministic fields of a log's records (times left out)."""
    return [{k: v for k, v in r.items() if k not in NOT_DETERMINISTIC and not k.startswith("t_")}
            for r in rundir.read_log(path)]


def pods(*args, cwd=None) -> subprocess.Popen:
    """`python -m podslib ARGS` in a new session, as a terminal runs a command: a signal sent to
    its process group is what Ctrl-C sends (the notebook kernels have groups of their own)."""
    return subprocess.Popen([sys.executable, "-m", "podslib", *map(str, args)], cwd=cwd,
                            env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_steps(proc: subprocess.Popen, metrics: Path, steps: int) -> None:
    """Until `metrics` holds `steps` lines (the run is training); fails if `proc` ends first."""
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no training step within 300 s"
        time.sleep(0.05)


def no_traceback(*texts: str) -> None:
    assert not any("Traceback" in t for t in texts), texts


# ------------------------------------------------------------------------------------------
# 1. Ctrl-C and SIGTERM
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A grid of two seeds, and the uninterrupted run of its seed 0 through `pods run`."""
    folder = tmp_path_factory.mktemp("straight")
    grid = write_grid(folder / "grid.yaml", {**SLOW_GRID, "cache_dir": str(folder / "cache")},
                      seeds=(0, 1))
    out = command([sys.executable, "-m", "podslib", "run", grid, "--results-root",
                   folder / "results", "--seeds", "0", "--no-progress"])
    assert out.returncode == 0, out.stderr
    return grid, folder / "results" / EXPERIMENT / "pods-s0"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_pods_run_and_the_run_resumes_exactly(straight, tmp_path, signum):
    """Issue 21, item 1: with runs queued, one Ctrl-C (or SIGTERM) let every queued run start,
    then printed a KeyboardInterrupt traceback. Now no run starts after it, the running one
    ends its step and writes a checkpoint there, one line per interrupted run and one saying
    how to resume; exit 130, no traceback. `pods run` again resumes it to the metrics and
    evaluations of the uninterrupted run (the kernels are stopped with SIGTERM whatever signal
    `pods` got, so one resume shows it for both)."""
    grid, uninterrupted = straight
    root = tmp_path / "results"
    run = root / EXPERIMENT / "pods-s0"
    argv = ["run", grid, "--results-root", root, "--no-progress"]
    proc = pods(*argv)
    wait_for_steps(proc, run / "metrics.jsonl", 3)
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=300)
    name = signal.Signals(signum).name
    steps = [r["step"] for r in rundir.read_log(run / "metrics.jsonl")]
    assert 3 <= steps[-1] < SLOW_GRID["max_steps"], "stopped early, at a step boundary"
    last = rundir.checkpoints(run)[-1]
    assert last.name == f"step-{steps[-1]:06d}" and rundir.verify_checkpoint(last) == ""
    assert proc.returncode == 130
    assert re.search(rf"^\[1/2\] pods-s0: interrupted by {name}; resumes from "
                     rf"checkpoints/{last.name} in ", out, re.MULTILINE), out
    assert json.loads(out.splitlines()[-1]) == {
        "done": [], "skipped": [], "failed": [], "interrupted": ["pods-s0"],
        "not_started": ["pods-s1"], "stopped_by": name}
    assert err.splitlines() == [
        (f"pods run: stopped by {name}: 1 interrupted (pods-s0); 1 not started (pods-s1); "
        f"`{shlex.join(['pods', *map(str, argv)])}` again resumes them")]
    no_traceback(out, err)
    assert not (root / EXPERIMENT / "pods-s1").exists()          # never started
    assert not rundir.is_complete(run)
    if signum == signal.SIGTERM:
        return                  # the kernels get SIGTERM either way: resumed the same as below
    again = command([sys.executable, "-m", "podslib", *map(str, argv), "--seeds", "0"])
    assert again.returncode == 0, again.stderr
    assert f"[{EXPERIMENT}/pods-s0] resuming" in again.stdout.splitlines()
    for log in ("metrics.jsonl", "eval.jsonl"):
        assert records(run / log) == records(uninterrupted / log), log
    assert [r["step"] for r in records(run / "eval.jsonl")] == [0, 5, 10, 15, 20, 25, 30, 35, 40]


@pytest.mark.slow
def test_ctrl_c_on_pods_train_is_one_line_and_resumes_exactly(straight, tmp_path):
    """Item 1 for `pods train`: Ctrl-C gave a full traceback. It says it stops after the step,
    then one line: where it stopped and the command that resumes, exit 130. That command, in
    the documented order `pods train CONFIG RUN --resume max_steps=40` (item 7), completes the
    run with the uninterrupted one's metrics."""
    _grid, uninterrupted = straight
    config = tmp_path / "config.yaml"
    Config.from_yaml(uninterrupted / "config.yaml").to_yaml(config)
    run = tmp_path / "run"
    proc = pods("train", config, run, "--no-progress")
    wait_for_steps(proc, run / "metrics.jsonl", 3)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    step = rundir.read_log(run / "metrics.jsonl")[-1]["step"]
    assert proc.returncode == 130 and step < SLOW_GRID["max_steps"]
    assert err.splitlines() == [
        ("SIGINT: the run stops after this step, with a checkpoint (Ctrl-C again to stop at "
         "once, without one)"),
        (f"pods train: run {str(run)!r} stopped by SIGINT at step {step}, checkpoint written; "
         f"resuming continues it exactly: pods train {config} {run} --resume")]
    no_traceback(out, err)
    resumed = command([sys.executable, "-m", "podslib", "train", config, run, "--resume",
                       "max_steps=40", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    for log in ("metrics.jsonl", "eval.jsonl"):
        assert records(run / log) == records(uninterrupted / log), log


def test_the_first_signal_asks_for_a_stop_and_a_second_ctrl_c_stops_at_once(capsys):
    """The trainer's handlers: the first SIGINT or SIGTERM is recorded (the loop stops at its
    next step boundary) and said once; later SIGTERMs (torchrun and schedulers follow Ctrl-C
    with one) change nothing; a second SIGINT raises KeyboardInterrupt; the handlers before
    the block are back after it."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with T.stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert capsys.readouterr().err.splitlines() == [
        ("SIGTERM: the run stops after this step, with a checkpoint (Ctrl-C again to stop at "
        "once, without one)")]


def test_a_signal_outside_the_loop_is_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C before training starts (loading data here): one line, exit 130, nothing to
    resume, nothing written."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_BASE))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("podslib.training.trainer.load_examples", interrupted)
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "pods train: stopped before its first checkpoint; nothing to resume: run it again"]
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------
# 2. names that become paths
# ------------------------------------------------------------------------------------------

NAME = ("must be a folder name (not '.' or '..', no '/', '\\' or control characters, at most "
        "255 bytes); got {got}: {problem}")
BAD_NAMES = [(".", "it names no folder of its own"), ("..", "it names no folder of its own"),
             ("a/b", "it holds a path separator"), ("a\\b", "it holds a path separator"),
             ("a\x1bb", "it holds a control character"), ("x" * 300, "it is 300 bytes long")]


def shown(name):
    return repr(name) if len(repr(name)) <= 60 else repr(name)[:50] + "..."


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES, ids=["dot", "dotdot", "slash",
                                                               "backslash", "control", "long"])
@pytest.mark.parametrize("where", ["experiment", "variant"])
def test_names_that_are_not_one_folder_are_refused_before_anything_is_written(
        tmp_path, capsys, name, problem, where):
    """Item 2: an experiment '..' wrote experiment.json and a run folder into the results
    root's parent; a 300-character one failed with Errno 36 after writing experiment.json.
    Any experiment or variant name that is not one safe folder name is one line, exit 2, and
    nothing is written (the results root itself is not made)."""
    folder = tmp_path / "inside"
    folder.mkdir()
    grid = folder / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "experiment": name if where == "experiment" else EXPERIMENT, "base": TINY_BASE,
        "grid": {name if where == "variant" else "pods": {"n": 4, "m": 2}}}))
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--results-root", str(folder / "results")]) == 2
    what = "experiment" if where == "experiment" else "variant names"
    assert capsys.readouterr().err.splitlines() == [
        f"pods run: error: config file {str(grid)!r}: {what} "
        + NAME.format(got=shown(name), problem=problem)]
    assert snapshot(tmp_path) == before


def test_report_of_an_experiment_named_dotdot_is_refused(results, capsys):
    """Item 2: `pods report ..` replaced a summary.md and a figure of the user's in the results
    root's parent."""
    _, root, _ = results
    (root / "summary.md").write_text("mine")
    before = snapshot(root.parent)
    assert main(["report", "..", "--results-root", str(root / EXPERIMENT)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "pods report: error: experiment " + NAME.format(got="'..'",
                                                       problem="it names no folder of its own")]
    assert snapshot(root.parent) == before


def test_a_seed_that_makes_the_run_folder_name_too_long(tmp_path, capsys):
    """Item 2: the run folder '<variant>-s<seed>' must fit too (251 + 5 bytes here)."""
    variant = "p" * 251
    grid = write_grid(tmp_path / "grid.yaml")
    grid.write_text(grid.read_text().replace("pods:", variant + ":"))
    before = snapshot(tmp_path)
    assert main(["run", str(grid), "--results-root", str(tmp_path / "r"), "--seeds", "123"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pods run: error: the run folder name of variant {variant!r}, seed 123 "
        + NAME.format(got=shown(variant + "-s123"), problem="it is 256 bytes long")]
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------
# 3. folders the kit did not write
# ------------------------------------------------------------------------------------------

FOREIGN = ("run folder {run!r} holds files the kit did not write ({names}) and no config.yaml; "
           "move them away, or choose another experiment name or results_root (nothing was "
           "changed)")


@pytest.mark.parametrize(("name", "text"), [
    ("eval.jsonl", '{"step":0,"train_time_s":0,"accuracy":0.99}\n'),
    ("metrics.jsonl", "not json\n"),
])
def test_a_run_folder_the_kit_did_not_write_is_refused(tmp_path, capsys, name, text):
    """Item 3: R/usr/pods-s0/eval.jsonl (no config.yaml) was appended to and reported as the
    base accuracy; non-JSON text in metrics.jsonl was changed and the run failed. The folder
    is named, exit 2, and nothing is written (no experiment.json, no lock, no notebook), by
    `pods run` and by `pods train` alike."""
    grid = write_grid(tmp_path / "grid.yaml", experiment="usr")
    run = tmp_path / "res" / "usr" / "pods-s0"
    run.mkdir(parents=True)
    (run / name).write_text(text)
    (run / "notes").mkdir()
    before = snapshot(tmp_path)
    line = FOREIGN.format(run=str(run), names=", ".join(sorted([name, "notes"])))
    assert main(["run", str(grid), "--results-root", str(tmp_path / "res")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pods run: error: {line}"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_BASE))
    before[config.name] = snapshot(tmp_path)[config.name]
    assert main(["train", str(config), str(run)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"pods train: error: {line}"]
    assert snapshot(tmp_path) == before


def test_what_the_kit_writes_before_a_config_is_not_foreign(tmp_path):
    """A run that failed before its config.yaml leaves its executed notebook, perhaps a lock or
    an interrupted write: the folder is taken as a new run, not refused."""
    run = tmp_path / "pods-s0"
    run.mkdir()
    for name in ("03_train.ipynb", "03_train.1.ipynb", ".lock", ".config.yaml.123.tmp"):
        (run / name).write_text("x")
    assert rundir.run_state(Config(), run) == "new"


# ------------------------------------------------------------------------------------------
# 4. test prompts longer than max_prompt_tokens
# ------------------------------------------------------------------------------------------

def gsm8k_config(tmp_path, test_rows, **values):
    """A Config YAML on a local GSM8K folder (train: GSM8K_ROWS, test: `test_rows`)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        **TINY_BASE, "max_steps": 1, "task": "gsm8k", "template": "gsm8k",
        "train_source": str(data / "train.jsonl"), "test_source": str(data / "test.jsonl"),
        "cache_dir": str(tmp_path / "cache"), **values}))
    return config


LONG = {"question": "What is 1 + 1? " * 40, "answer": "1 plus 1.\n#### 2"}


def test_long_test_prompts_are_dropped_and_counted(tmp_path, capsys):
    """Item 4: a 100 KB test question took the engine to 21 GB and a traceback; test prompts
    were never checked against max_prompt_tokens. Those over it are dropped with a warning
    that counts them, and the evaluations' n_problems is the rest."""
    config = gsm8k_config(tmp_path, [*GSM8K_ROWS[:3], LONG], max_prompt_tokens=300)
    assert main(["train", str(config), str(tmp_path / "run"), "--no-progress"]) == 0
    assert ("warning: max_prompt_tokens=300 drops 1 of 4 test problems (prompts too long); "
            "test accuracy is over the other 3") in capsys.readouterr().err.splitlines()
    assert {e["n_problems"] for e in rundir.read_log(tmp_path / "run" / "eval.jsonl")} == {3}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_problems_dropped"] == 1


def test_no_test_prompt_left_is_one_line(tmp_path, capsys):
    config = gsm8k_config(tmp_path, [LONG, LONG], max_prompt_tokens=300)
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "pods train: error: max_prompt_tokens=300 drops all 2 test problems; raise it")
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("cache")} == \
        {k: v for k, v in before.items() if not k.startswith("cache")}


# ------------------------------------------------------------------------------------------
# 5. a full disk
# ------------------------------------------------------------------------------------------

TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


@pytest.mark.parametrize("error", [TORCH_FULL, OSError(errno.ENOSPC, "No space left on device")],
                         ids=["torch", "oserror"])
def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, capsys, monkeypatch, error):
    """Item 5: torch.save on a full disk raised `RuntimeError: [enforce fail ...] unexpected
    pos` with a traceback. One line naming the checkpoint folder and 'no space left', exit 1;
    the previous checkpoint verifies and no temporary folder is left."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY_BASE, "cache_dir": str(tmp_path / "cache"),
                                      "keep_best_checkpoint": False}))
    save = rundir.torch.save

    def full_at_step_2(obj, path, *args, **kwargs):
        if ".step-000002." in str(path):
            raise error
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", full_at_step_2)
    run = tmp_path / "run"
    assert main(["train", str(config), str(run), "--no-progress"]) == 1
    folder = run / "checkpoints" / "step-000002"
    assert capsys.readouterr().err.splitlines() == [
        (f"pods train: error: [Errno 28] no space left on device writing checkpoint "
        f"{str(folder)!r}")]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    assert rundir.verify_checkpoint(run / "checkpoints" / "step-000001") == ""


def test_a_full_disk_in_logs_and_reports_names_the_path(tmp_path, monkeypatch):
    """Item 5: `[Errno 28] No space left on device` named no file. A log line (/dev/full: every
    write fails with ENOSPC), a figure and a whole-file write name their path."""
    import matplotlib.pyplot as plt

    from podslib.analysis import plots

    with pytest.raises(files.NoSpaceError, match=re.escape(
            "[Errno 28] no space left on device writing '/dev/full'")):
        files.append_jsonl("/dev/full", {"step": 1})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plt.Figure, "savefig", full)
    with pytest.raises(files.NoSpaceError, match=re.escape(
            f"[Errno 28] no space left on device writing figure {str(tmp_path / 'a.png')!r}")):
        plots.save(plt.figure(), tmp_path / "a.png")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(files.NoSpaceError, match=re.escape(
            f"[Errno 28] no space left on device writing {str(tmp_path / 'summary.md')!r}")):
        files.atomic_write(tmp_path / "summary.md", "| a |")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_stale_temporary_checkpoint_folders_are_removed_on_resume(results, capsys):
    """Item 5: a SIGKILL during a checkpoint left checkpoints/.step-000042.<pid>.tmp forever.
    Resuming removes such folders; the run completes."""
    _, _, run = results
    (run / "summary.json").unlink()
    stale = run / "checkpoints" / ".step-000004.4242.tmp"
    stale.mkdir()
    (stale / "trainable.pt").write_bytes(b"half")
    assert main(["train", str(run / "config.yaml"), str(run), "--resume", "--no-progress"]) == 0
    assert not stale.exists() and rundir.is_complete(run)
    assert not list((run / "checkpoints").glob(".*"))


def in_small_tmpfs(folder, kilobytes, argv):
    """Run `argv` with a `kilobytes` tmpfs mounted on `folder` (a private mount namespace:
    only that process sees it), then copy what it wrote to folder.parent/'copy'. Skips where
    `unshare -m mount` is not permitted."""
    script = ('mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; shift 3; "$@"; rc=$?; '
              'cp -a "$0/." "$0.copy/"; exit $rc')
    out = command(["unshare", "-m", "sh", "-c", script, str(folder), str(kilobytes), str(folder),
                   "--", *map(str, argv)])
    if out.returncode == 99 or "unshare:" in out.stderr:
        pytest.skip(f"a small tmpfs needs `unshare -m mount`, not permitted here: {out.stderr}")
    return out


@pytest.mark.slow
def test_pods_run_starts_no_run_once_the_disk_is_full(tmp_path):
    """Item 5: `pods run` started the next runs on a full disk. The run that met it fails with
    the line naming the path, and no other run starts."""
    grid = write_grid(tmp_path / "grid.yaml", {"cache_dir": str(tmp_path / "cache")},
                      seeds=(0, 1))
    pipeline.prepare_models([pipeline.load_grid(grid).config("pods", 0)], progress=False)
    root = tmp_path / "results"
    root.mkdir()
    (tmp_path / "results.copy").mkdir()
    out = in_small_tmpfs(root, 64, [sys.executable, "-m", "podslib", "run", grid,
                                    "--results-root", root, "--no-progress"])
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("[1/2] pods-s0: FAILED"))
    assert re.match(r"\[1/2\] pods-s0: FAILED: 03_train.ipynb failed( in cell \d)?: "
                    r"NoSpaceError: \[Errno 28\] no space left on device writing [a-z ]*'"
                    + re.escape(str(root)), lines[failed]), lines   # the kernel's write or ours
    assert lines[failed + 1] == ("no space left on device: no new run starts; free some space, "
                                 "then `pods run` again resumes")
    assert json.loads(out.stdout.splitlines()[-1])["not_started"] == ["pods-s1"]
    assert out.stderr.splitlines() == ["pods run: 1 run(s) failed: pods-s0"]
    copy = tmp_path / "results.copy" / EXPERIMENT
    assert not (copy / "pods-s1").exists()
    assert not list((copy / "pods-s0").rglob(".*.tmp"))


# ------------------------------------------------------------------------------------------
# 6. dead kernels, unknown kernels
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_kernel_is_a_failed_run_and_the_others_go_on(tmp_path):
    """Item 6: a kernel killed as the out-of-memory killer does crashed `pods run` with a
    DeadKernelError traceback, without the failed run or the JSON summary. It is one failed
    run, named with how its kernel died; the next run goes on; exit 1. `pods run` again would
    resume the killed run (as after any SIGKILL: tests/test_trainer_resume.py)."""
    grid = write_grid(tmp_path / "grid.yaml", {**SLOW_GRID, "cache_dir": str(tmp_path / "c")},
                      seeds=(0, 1))
    root = tmp_path / "results"
    run = root / EXPERIMENT / "pods-s0"
    proc = pods("run", grid, "--results-root", root, "--no-progress")
    wait_for_steps(proc, run / "metrics.jsonl", 3)
    kernels = kernel_processes(proc.pid)
    assert len(kernels) == 1
    os.kill(kernels[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1
    assert re.search(
        r"^\[1/2\] pods-s0: FAILED: 03_train.ipynb failed in cell 4: DeadKernelError: the "
        r"kernel died \(killed by SIGKILL, as the out-of-memory killer does\) \(executed "
        rf"notebook: {re.escape(str(run / '03_train.ipynb'))}\) in ", out, re.MULTILINE), out
    assert re.search(r"^\[2/2\] pods-s1: done", out, re.MULTILINE), out
    assert json.loads(out.splitlines()[-1]) == {
        "done": ["pods-s1"], "skipped": [], "failed": ["pods-s0"], "interrupted": [],
        "not_started": []}
    assert err.splitlines() == ["pods run: 1 run(s) failed: pods-s0"]
    no_traceback(out, err)
    assert rundir.run_state(Config.from_yaml(run / "config.yaml"), run) == "resume"


def kernel_processes(parent: int) -> list[int]:
    """The process ids of the notebook kernels `parent` started (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue                                    # a process that just ended
        if ppid == parent and b"ipykernel" in cmdline:
            out.append(int(stat.parent.name))
    return out


KERNEL = ("--kernel must be an installed Jupyter kernel ({specs}; `jupyter kernelspec list` "
          "shows them); got 'nosuchkernel'")


@pytest.mark.parametrize("argv", [["run", "{grid}"], ["report", EXPERIMENT],
                                  ["reproduce", "--config", "{grid}"]])
def test_an_unknown_kernel_is_one_line_and_writes_nothing(tmp_path, capsys, argv):
    """Item 6: `--kernel nosuchkernel` gave a NoSuchKernel traceback and left an unexecuted
    03_train.ipynb in the run folder."""
    from jupyter_client.kernelspec import find_kernel_specs

    grid = write_grid(tmp_path / "grid.yaml")
    run = tmp_path / "res" / EXPERIMENT / "pods-s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"experiment": EXPERIMENT}))
    (run / "summary.json").write_text("{}")
    before = snapshot(tmp_path)
    args = [a.format(grid=grid) for a in argv]
    assert main([*args, "--results-root", str(tmp_path / "res"), "--kernel", "nosuchkernel"]) == 2
    line = KERNEL.format(specs=", ".join(sorted(find_kernel_specs())))
    assert capsys.readouterr().err.splitlines() == [f"pods {argv[0]}: error: {line}"]
    assert snapshot(tmp_path) == before


def test_a_kernel_that_cannot_start_fails_the_run_and_leaves_no_notebook(tmp_path, capsys,
                                                                         monkeypatch):
    """Item 6: a kernel whose program does not exist: the run fails in one line, the JSON
    summary is printed, and no unexecuted notebook (nor an empty run folder) is left."""
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(tmp_path / "no-python"), "-m", "ipykernel", "-f", "{connection_file}"],
        "display_name": "broken", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    grid = write_grid(tmp_path / "grid.yaml")
    root = tmp_path / "res"
    assert main(["run", str(grid), "--results-root", str(root), "--kernel", "broken",
                 "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"^\[1/1\] pods-s0: FAILED: 03_train.ipynb failed: FileNotFoundError: the "
                     r"kernel could not start: .*no-python", out, re.MULTILINE), out
    assert json.loads(out.splitlines()[-1])["failed"] == ["pods-s0"]
    assert err.splitlines() == ["pods run: 1 run(s) failed: pods-s0"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        EXPERIMENT, f"{EXPERIMENT}/experiment.json"]


# ------------------------------------------------------------------------------------------
# 7. the documented command lines
# ------------------------------------------------------------------------------------------

PLACEHOLDERS = {"CONFIG.yaml": "configs/tiny.yaml", "CONFIG": "configs/tiny.yaml",
                "config": "configs/tiny.yaml", "RUN_DIR": "results/tiny/pods-s0",
                "run_dir": "results/tiny/pods-s0", "EXPERIMENT": "tiny", "experiments": "tiny",
                "VARIANT": "pods", "variant": "pods", "DIR": "/tmp/dir", "DATA": "/tmp/dir",
                "OUT": "/tmp/dir", "RESULTS_ROOT": "/tmp/results", "KERNEL": "python3",
                "S": "3", "SEED": "3", "SEEDS": "3", "JOBS": "2", "BASELINE": "grpo",
                "{best,latest}": "best", "key=value": "max_steps=60", "K": "3", "STEPS": "3",
                "WARMUP": "1", "GAIN": "1.5", "FIELD=V1,V2,": "n=8,16"}


def help_usages() -> list[str]:
    """The usage line of every `pods` command's --help, without its -h."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [" ".join(p.format_usage().removeprefix("usage: pods ").replace("[-h]", "").split())
            for p in commands.choices.values()]


def documented_command_lines() -> list[str]:
    """Every `pods ...` (or `python -m podslib ...`) command of the fenced bash blocks of
    README.md and docs/*.md and of the `pods` command's docstring, and the usage lines of its
    --help texts."""
    texts = [pipeline.REPO / "README.md", *sorted((pipeline.REPO / "docs").glob("*.md"))]
    blocks = [b for path in texts
              for b in re.findall(r"^```bash\n(.*?)^```", path.read_text(), re.DOTALL | re.MULTILINE)]
    blocks.append(cli.__doc__)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split("#")[0]):
                match = re.search(r"(?:^|\s)(?:pods|-m podslib)\s+(.*)$", part.strip())
                if match:               # the docstring's description follows two spaces
                    lines.append(re.split(r"\s{2,}", match.group(1).strip())[0])
    return lines + help_usages()


def as_argv(line: str) -> list[str]:
    """A documented line as arguments: no output redirection, optional parts [...] included,
    '...' dropped, placeholders filled in."""
    command_only = line.split(" > ")[0].replace("[", " ").replace("]", " ").replace("...", " ")
    name, *rest = shlex.split(command_only)
    return [name, *(PLACEHOLDERS.get(t, t) for t in rest)]


DOCUMENTED = documented_command_lines()


def test_the_documented_command_lines_are_found():
    """The extraction finds the README's command table (and the two forms of item 7)."""
    assert len(DOCUMENTED) >= 15
    assert "evaluate RUN_DIR --checkpoint best test_size=1000" in DOCUMENTED
    assert "train CONFIG.yaml RUN_DIR [--resume] [key=value ...]" in DOCUMENTED
    assert "train [--resume] [--no-progress] config run_dir [key=value ...]" in DOCUMENTED


@pytest.mark.parametrize("line", DOCUMENTED)
def test_every_documented_command_line_parses(line):
    """Item 7: `pods train CONFIG RUN --resume max_steps=60` and `pods evaluate RUN
    --checkpoint best test_size=1000` ended in `unrecognized arguments`. Every command line
    the README, docs/ and --help show parses, and its key=value items are overrides."""
    argv = as_argv(line)
    args = cli.parse_args(argv)
    assert args.command == argv[0]
    given = [t for before, t in itertools.pairwise(argv)       # --sweep's value: no override
             if "=" in t and not t.startswith("-") and not before.startswith("--sweep")]
    assert getattr(args, "overrides", []) == given


def test_key_value_anywhere_and_other_leftovers_still_refused(capsys):
    args = cli.parse_args(["train", "c.yaml", "r", "lr=1e-4", "--resume", "max_steps=60"])
    assert (args.resume, args.overrides) == (True, ["lr=1e-4", "max_steps=60"])
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["train", "c.yaml", "r", "--resume", "oops"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "pods: error: unrecognized arguments: oops"]
    with pytest.raises(SystemExit):
        cli.parse_args(["config", "g.yaml", "pods", "max_steps=60"])


@pytest.mark.slow
def test_pods_evaluate_in_the_documented_order_reports_the_checkpoints_training_time(
        results, capsys):
    """Items 7 and 'also': `pods evaluate RUN --checkpoint best test_size=N` failed to parse,
    and reported train_time_s 0.0 for any checkpoint. It evaluates, with the training clock
    at which that checkpoint was saved."""
    _, root, run = results
    before = snapshot(root)
    assert main(["evaluate", str(run), "--checkpoint", "best", "test_size=2"]) == 0
    result = json.loads(capsys.readouterr().out)
    best = json.loads((run / "checkpoints" / "best" / "state.json").read_text())
    at_best = [e for e in rundir.read_log(run / "eval.jsonl") if e["step"] == best["step"]]
    assert result["train_time_s"] == at_best[-1]["train_time_s"] == best["train_time_s"]
    assert (result["step"], result["n_problems"]) == (best["step"], 2)
    assert main(["evaluate", str(run), "--checkpoint", "latest", "test_size=2"]) == 0
    latest = json.loads((rundir.checkpoints(run)[-1] / "state.json").read_text())
    assert json.loads(capsys.readouterr().out)["train_time_s"] == latest["train_time_s"] > 0
    assert snapshot(root) == before


def test_a_best_checkpoint_without_its_clock_takes_it_from_the_evaluation_log(tmp_path):
    """Best checkpoints written before the training clock was saved in them: the evaluation
    log's record of that step gives it; None when there is none."""
    files.append_jsonl(tmp_path / "eval.jsonl", {"step": 0, "train_time_s": 0.0})
    files.append_jsonl(tmp_path / "eval.jsonl", {"step": 3, "train_time_s": 4.5})
    assert T._train_time(tmp_path, {"step": 3, "accuracy": 0.5}) == 4.5
    assert T._train_time(tmp_path, {"step": 2, "accuracy": 0.5}) is None
    assert T._train_time(tmp_path, {"step": 3, "train_time_s": 4.25}) == 4.25


# ------------------------------------------------------------------------------------------
# 8 and 9. damaged runs and a summary that is not the kit's
# ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_damaged_run_is_left_out_of_the_report(results, capsys):
    """Item 8: a zero-byte config.yaml in one run folder made 04_plots fail with
    `AttributeError: 'NoneType' object has no attribute 'get'`, naming no file. The run is
    left out with one line naming the file; the report is made from the others."""
    _, root, run = results
    damaged = root / EXPERIMENT / "grpo-s0"
    shutil.copytree(run, damaged)
    (damaged / "config.yaml").write_text("")
    runs = {p: snapshot(p) for p in (run, damaged)}
    assert main(["report", EXPERIMENT, "--results-root", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (f"left out of the report (a damaged run): config file "
            f"{str(damaged / 'config.yaml')!r} is empty or not a mapping") in out
    assert (root / EXPERIMENT / "figures" / "accuracy_vs_time.png").is_file()
    from podslib.analysis import results as R

    assert R.read_summary(root / EXPERIMENT)["variant"].tolist() == ["pods"]
    assert {p: snapshot(p) for p in runs} == runs


@pytest.fixture
def kit_summary(results):
    """The results copy with the summary.csv the kit writes of its run, as its own baseline."""
    from podslib.analysis import results as R

    _, root, _ = results
    exp = root / EXPERIMENT
    curves, metrics = R.experiment_record(exp)
    R.write_summary(R.summary_table(curves, metrics, baseline="pods", n_boot=20), exp)
    return exp


@pytest.mark.slow
@pytest.mark.parametrize(("change", "problem"), [
    ({}, ""),
    ({"rename": ("variant", "name")}, "no column 'variant'"),
    ({"rename": ("speedup", "speed")}, "no column 'speedup'"),
    ({"set": ("peak_acc", "high")}, "column 'peak_acc' not numbers"),
    ({"no_baseline": True}, ""),
])
def test_summary_problem(kit_summary, change, problem):
    """Item 9: what the skip path of `pods reproduce` reads of a summary.csv is checked: the
    kit's own passes, with its baseline or without one; a renamed or non-numeric column does
    not."""
    import pandas as pd

    from podslib.analysis import results as R

    path = kit_summary / "summary.csv"
    table = pd.read_csv(path)
    if "rename" in change:
        table = table.rename(columns=dict([change["rename"]]))
    if "set" in change:
        table[change["set"][0]] = change["set"][1]
    if "no_baseline" in change:
        table = R.summary_table(*R.experiment_record(kit_summary), baseline=None)
    table.to_csv(path, index=False)
    assert pipeline.summary_problem(kit_summary) == problem


@pytest.mark.slow
def test_reproduce_rebuilds_a_summary_that_is_not_the_kits(results, capsys, monkeypatch):
    """Item 9: on the skip path of `pods reproduce` (no new run) a renamed `variant` column gave
    a KeyError traceback, a renamed `speedup` column the false line "no baseline 'grpo' among
    the variants" and exit 0. The summary is checked; one that is not the kit's is built
    again (by `pods report`, replaced here by a recorder)."""
    grid, root, _ = results
    exp = root / EXPERIMENT
    (exp / "rollouts").mkdir()
    (exp / "rollouts" / "rollouts.npz").write_bytes(b"")
    (exp / "downsampling").mkdir()
    (exp / "downsampling" / "02_downsampling.ipynb").write_text("{}")
    (exp / "summary.md").write_text("| variant |\n")
    (exp / "summary.csv").write_text("name,baseline,n,m,rule,seeds,peak_acc,final_acc\n"
                                     "pods,,4,2,max_variance,1,0.5,0.5\n")
    reports = []
    monkeypatch.setattr(pipeline, "report", lambda *args, **kwargs: reports.append(args))
    assert main(["reproduce", "--config", str(grid), "--results-root", str(root),
                 "--no-progress"]) == 0
    assert (f"   {exp / 'summary.csv'} is not the kit's summary (no column 'variant'): "
            "building the report again") in capsys.readouterr().out.splitlines()
    assert reports == [(EXPERIMENT, root.resolve())]


# ------------------------------------------------------------------------------------------
# 10 and 'also': data files, seeds, test_size, pods config
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "line"), [
    ([{"question": "q", "answer": "x\n#### "}, {"question": "q", "answer": "x\n#### five"}],
     ("2 of 6 gold answers can never be matched: row 5 ('': empty), row 6 ('five': not a "
     "number); fix or remove those rows")),
    ([{"question": "q", "answer": 12}],
     "(row 5): field 'answer' is not text: 12 (int); write it as a JSON string"),
], ids=["gold", "number"])
def test_gold_answers_no_completion_can_match_are_refused(tmp_path, capsys, rows, line):
    """Item 10: gold answers '#### ' and '#### five' passed the data checks, so those problems
    counted as wrong whatever the model said. Also: `"answer": 12` was reported as a missing
    text field. One line naming the file and rows, exit 2, nothing written."""
    config = gsm8k_config(tmp_path, GSM8K_ROWS)
    train = tmp_path / "data" / "train.jsonl"
    with open(train, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run")]) == 2
    where = f"gsm8k train data {str(train)!r}: " if "gold" in line else f"{train} "
    assert capsys.readouterr().err.splitlines() == [f"pods train: error: {where}{line}"]
    assert snapshot(tmp_path) == before


def test_non_utf8_bytes_name_the_file_and_row(tmp_path, capsys):
    """Also: non-UTF-8 bytes in a data file gave only 'byte 0xff in position 14'."""
    config = gsm8k_config(tmp_path, GSM8K_ROWS)
    train = tmp_path / "data" / "train.jsonl"
    train.write_bytes(train.read_bytes() + b'{"question": "\xff", "answer": "#### 1"}\n')
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pods train: error: {str(train)!r} line 5 is not UTF-8 text (byte 0xff at column 15)"]
    assert snapshot(tmp_path) == before


def test_seeds_are_bounded_where_they_are_checked(tmp_path, capsys):
    """Also: a seed of 2**64 passed the checks and failed in training with 'Overflow when
    unpacking long long'."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_BASE))
    grid = write_grid(tmp_path / "grid.yaml")
    before = snapshot(tmp_path)
    assert main(["train", str(config), str(tmp_path / "run"), f"seed={2**64}"]) == 2
    assert main(["run", str(grid), "--results-root", str(tmp_path / "r"), "--seeds",
                 str(2**64)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pods train: error: seed must be in [0, {2**63 - 1}]; got {2**64}",
        (f"pods run: error: --seeds must be a non-empty list of distinct integers in "
         f"[0, {2**63 - 1}]; got [{2**64}]")]
    assert snapshot(tmp_path) == before


def test_the_largest_seed_trains(tmp_path):
    """The bound is the largest seed the run accepts (torch and the engine take int64)."""
    cfg = Config.from_dict({**TINY_BASE, "max_steps": 1, "seed": 2**63 - 1,
                            "cache_dir": str(tmp_path / "cache")})
    assert T.train(cfg, tmp_path / "run", progress=False)["steps"] == 1


def test_a_test_size_above_the_problems_there_are_is_said_once(tmp_path):
    """Also: test_size 100000 was capped silently."""
    config = gsm8k_config(tmp_path, GSM8K_ROWS, test_size=100000)
    notes = []
    examples = training_data.load_examples(Config.from_yaml(config), "test", notes.append)
    assert len(examples) == 4
    assert notes == [("note: test_size=100000 is more than the 4 test problems there are; the "
                     "evaluation uses all 4")]
    training_data.load_examples(Config.from_yaml(config, test_size=4), "test", notes.append)
    assert len(notes) == 1


def test_pods_config_honours_results_root(tmp_path, capsys):
    """Also: `pods config --results-root X` printed results_root of the grid file."""
    grid = write_grid(tmp_path / "grid.yaml")
    assert main(["config", str(grid), "pods", "--results-root", str(tmp_path / "x")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["results_root"] == str(tmp_path / "x")


def test_notebook_kernels_are_stopped_only_once_each():
    """`stop_kernels` asks each kernel once (SIGTERM), so a running training is never told
    twice; `force` kills them all."""
    class Process:
        def __init__(self):
            self.pid, self.sent = 0, []

        def send_signal(self, signum):
            self.sent.append(signum)

    one = Process()
    with notebook._LIVE_LOCK:
        notebook._LIVE[-1] = {"process": one, "stopped": False}
    try:
        assert notebook.stop_kernels() == 1 and notebook.stop_kernels() == 0
        assert one.sent == [signal.SIGTERM]
    finally:
        notebook._LIVE.pop(-1)


def test_the_papermill_section_says_what_pods_sets_for_its_kernels(monkeypatch):
    """Also: papermill called directly warns about unencrypted TCP and gives a traceback for
    `-k nosuchkernel`; the kit's way is documented, with the environment `pods` gives its
    kernels (what `kernel_environment` sets, named as it sets it)."""
    names = ("VLLM_ENABLE_V1_MULTIPROCESSING", "TORCH_CPP_LOG_LEVEL", "OMP_NUM_THREADS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    notebook.kernel_environment()
    text = " ".join((pipeline.REPO / "docs" / "troubleshooting.md").read_text().split())
    assert "Kernel is running over TCP without encryption" in text and "NoSuchKernel" in text
    for name in names:
        if name in os.environ:
            assert f"`{name}={os.environ[name]}`" in text, name


def test_a_run_without_test_problems_builds_its_data():
    """A run with no test problems at all (bench/peer_trl.py's trainer) is not 'all dropped':
    its data builds, and the engine's limits come from the training prompts alone."""
    from podslib.models.tiny import char_tokenizer
    from podslib.tasks.datasets import make_arith
    from podslib.training.data import build_data, engine_limits

    tok = char_tokenizer()
    train = make_arith(8, seed=0, split="train", steps=(1, 1), operand_range=(1, 9))
    data = build_data(Config(), tok, train, [])
    assert (data.test_examples, data.n_test_dropped) == ([], 0)
    assert data.longest_prompt == max(len(tok(p, add_special_tokens=False)["input_ids"])
                                      for p in data.prompts)
    limits = engine_limits(Config(), data, world_size=1)
    assert limits["max_num_seqs"] == Config().prompts_per_step * Config().n


def test_a_train_stopped_at_once_resumes_with_its_overrides(tmp_path):
    """`pods train C R lr=1e-4` stopped by a second Ctrl-C (no step-boundary checkpoint) after
    an earlier checkpoint: the resume command it prints carries lr=1e-4, as the one printed at
    a step boundary does (without it the resumed config would differ from the run's)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    args = cli.parse_args(["train", "c.yaml", str(run), "lr=1e-4", "max_steps=60"])
    line = cli._interrupted(args, KeyboardInterrupt(), [])
    assert line.startswith("stopped at once; the run resumes from ")
    assert line.endswith(f"pods train c.yaml {run} --resume lr=1e-4 max_steps=60"), line
    assert cli._interrupted(cli.parse_args(["train", "c.yaml", str(tmp_path / "new")]),
                            KeyboardInterrupt(), []).startswith("stopped before its first")


def test_ctrl_c_during_pods_doctor_is_one_line(monkeypatch, capsys):
    """Ctrl-C while `pods doctor` starts an engine (seconds, more when vLLM compiles): one line
    and exit status 130, as every other command, not a traceback."""
    from podslib.lab import doctor

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(doctor, "main", interrupted)
    assert cli.main(["doctor"]) == 130
    assert capsys.readouterr().err.splitlines() == ["pods doctor: stopped"]
