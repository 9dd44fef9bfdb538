"""podslib.files and podslib.rundir: atomic writes, the JSON-lines reader, experiment claims,
locks and checkpoints (verified, kept two deep, with fallback past a damaged one)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from podslib import files, rundir
from podslib.config import Config


def test_read_jsonl_skips_a_torn_last_line_of_a_log_only(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert rundir.read_log(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match="line 3 is not valid JSON"):
        files.read_jsonl(path)                                  # a data file must be whole
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        rundir.read_log(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        files.read_jsonl(path)
    assert rundir.read_log(tmp_path / "absent.jsonl") == []
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        files.read_jsonl(tmp_path / "absent.jsonl")


def test_atomic_writes_leave_nothing_behind_and_fresh_path(tmp_path):
    files.write_json(tmp_path / "a.json", {"x": 1})
    files.atomic_write(tmp_path / "b.bin", b"\x00\x01")
    files.atomic_folder(tmp_path / "f", lambda tmp: (tmp / "x.txt").write_text("1"))
    files.atomic_folder(tmp_path / "f", lambda tmp: (tmp / "y.txt").write_text("2"))
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "f"]
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["y.txt"]      # replaced whole
    assert rundir.fresh_path(tmp_path / "a.json").name == "a.1.json"
    assert rundir.fresh_path(tmp_path / "c.json").name == "c.json"


def test_claim_experiment_guards_foreign_folders(tmp_path):
    exp = tmp_path / "tiny"
    rundir.claim_experiment(exp, "tiny", "tiny.yaml")
    rundir.claim_experiment(exp, "tiny", "tiny.yaml")                   # same: fine
    with pytest.raises(ValueError, match="holds experiment 'tiny' from 'tiny.yaml'"):
        rundir.claim_experiment(exp, "tiny", "other.yaml")
    other = tmp_path / "old" / "grpo-s0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump({"experiment": "gsm8k"}))
    with pytest.raises(ValueError, match="holds runs of experiment 'gsm8k'"):
        rundir.claim_experiment(other.parent, "old", "old.yaml")
    assert not (other.parent / "experiment.json").exists()


def test_run_state_and_check_run_dir(tmp_path):
    cfg, run = Config(), tmp_path / "run"
    assert rundir.run_state(cfg, run) == "new"
    run.mkdir()
    cfg.to_yaml(run / "config.yaml")
    assert rundir.run_state(cfg.replace(max_steps=9), run) == "new"    # nothing started yet
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert rundir.run_state(cfg, run) == "resume"
    with pytest.raises(ValueError, match="holds an interrupted run; resume it"):
        rundir.check_run_dir(cfg, run, resume=False)
    rundir.check_run_dir(cfg.replace(max_steps=9), run, resume=True)  # budgets may change
    with pytest.raises(ValueError, match=r"different config \(fields n\)"):
        rundir.check_run_dir(cfg.replace(n=32), run, resume=True)
    (run / "summary.json").write_text("{}")
    assert rundir.run_state(cfg, run) == "complete"
    with pytest.raises(ValueError, match="holds a complete run"):
        rundir.check_run_dir(cfg, run, resume=False)


LOCK_HOLDER = """
import sys, time
from podslib import rundir
with rundir.locked(sys.argv[1], "run folder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_stops_at_once_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.LockedError, match=f"in use by process {holder.pid}"), \
                rundir.locked(tmp_path, "run folder"):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid   # left stale
    with rundir.locked(tmp_path, "run folder"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def save(run, step):
    rundir.save_checkpoint(run, {"step": step}, {"w": torch.full((3,), float(step))},
                           {"state": {}, "param_groups": []}, {"last_epoch": step}, {"x": step})


def test_checkpoints_are_verified_kept_two_deep_and_fall_back_past_a_damaged_one(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    names = [p.name for p in rundir.checkpoints(tmp_path)]
    assert names == ["step-000002", "step-000003"]
    newest = rundir.checkpoints(tmp_path)[-1]
    assert rundir.latest_valid_checkpoint(tmp_path) == newest
    loaded = rundir.load_checkpoint_files(newest)
    assert loaded["state"] == {"step": 3} and loaded["rng"] == {"x": 3}
    assert torch.equal(loaded["trainable"]["w"], torch.full((3,), 3.0))

    data = (newest / "trainable.pt").read_bytes()
    (newest / "trainable.pt").write_bytes(data[: len(data) // 2])        # truncated
    warnings = []
    assert rundir.latest_valid_checkpoint(tmp_path, warn=warnings.append).name == "step-000002"
    assert "step-000003" in warnings[0] and "trainable.pt is truncated" in warnings[0]

    (rundir.checkpoints(tmp_path)[0] / "state.json").write_text('{"st')  # both damaged
    with pytest.raises(ValueError, match=r"no valid checkpoint .* \(all 2 are damaged\)"):
        rundir.latest_valid_checkpoint(tmp_path, warn=warnings.append)
