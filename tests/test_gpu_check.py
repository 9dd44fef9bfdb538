"""bench/gpu_check.py, the prepared GPU check: its CPU smoke form end to end (so the GPU form
cannot rot between GPU loans), its Qwen2.5-3B configuration against the model card, its bad
input, a run cut short, and the CUDA device the trainer's setup hands to torch."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module            # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke form run as a subprocess from another folder: (JSON, markdown, tmp folder)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out" / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out),
         "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache")],
        check=False, capture_output=True, text=True, cwd=tmp, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "done: ok" in proc.stdout
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), tmp


@pytest.mark.slow
def test_smoke_environment(smoke):
    data, _, _ = smoke
    assert (data["form"], data["status"]) == ("smoke", "ok")
    env = data["env"]
    assert (env["device"], env["torch"]) == ("cpu", torch.__version__)
    assert datetime.fromisoformat(env["started_utc"]) <= datetime.fromisoformat(env["updated_utc"])


@pytest.mark.slow
def test_smoke_trains_grpo_and_pods_through_the_trainer(smoke):
    data, _, tmp = smoke
    part = data["train"]
    assert part["ok"] and part["cuda_peak_gib"] is None
    assert {k: (r["n"], r["m"]) for k, r in part["runs"].items()} == {"grpo": (4, 4),
                                                                      "pods": (16, 4)}
    for name, run in part["runs"].items():
        assert run["problems"] == [] and run["steps"] == 3
        assert 0 <= run["base_accuracy"] <= 1 and 0 <= run["final_accuracy"] <= 1
        assert math.isclose(run["s_per_step"], run["train_time_s"] / 3)
        folder = tmp / "runs" / name
        assert (folder / "summary.json").is_file() and any((folder / "checkpoints").iterdir())
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_smoke_bench_steps(smoke):
    """Every rollout runs to the token limit, m rows are trained, phases add up to the step."""
    data, _, _ = smoke
    part = data["bench"]
    model = part["model"]
    # hand-derived for hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads, vocab 256:
    # embedding 256*64 + 2 * (q 64*64+64, k and v 64*32+32, o 64*64, MLP 3*64*128, 2 norms 64)
    # + final norm 64; LoRA r=8 per layer: 8 * (q 128 + k 96 + v 96 + o 128 + 3 * MLP 192).
    assert model["params"] == 256 * 64 + 2 * (4160 + 2 * 2080 + 4096 + 24576 + 128) + 64
    assert model["trainable"] == 2 * 8 * (128 + 96 + 96 + 128 + 3 * 192)
    assert part["ok"] and part["stopped_early"] is None
    for name, (n, m) in {"grpo": (4, 4), "pods": (16, 4)}.items():
        setting = part["settings"][name]
        assert (setting["n"], setting["m"]) == (n, m)
        assert [s["warmup"] for s in setting["steps"]] == [True, False, False]
        for s in setting["steps"]:
            assert s["ran_to_limit"] and s["tokens_generated"] == n * model["completion_tokens"]
            assert s["rows_trained"] == m
            assert all(math.isfinite(s[k]) and s[k] >= 0
                       for k in ("t_generate", "t_select", "t_update", "grad_norm"))
            assert math.isfinite(s["loss"])
            assert math.isclose(s["t_step"], s["t_generate"] + s["t_select"] + s["t_update"])
            assert s["peak_gib_generate"] is None and s["peak_gib_update"] is None   # no CUDA


@pytest.mark.slow
def test_smoke_ratio_is_pods_over_grpo_of_medians(smoke):
    data, markdown, _ = smoke
    part = data["bench"]

    def median(name, key):
        return statistics.median(s[key] for s in part["settings"][name]["steps"]
                                 if not s["warmup"])

    for key in ("step", "generate", "update"):
        want = median("pods", f"t_{key}") / median("grpo", f"t_{key}")
        assert math.isclose(part["ratio"][key], want, rel_tol=1e-12)
        assert math.isclose(part["settings"]["pods"]["summary"][f"t_{key}_median"],
                            median("pods", f"t_{key}"))
    assert f"**{part['ratio']['step']:.2f}**" in markdown
    assert "| grpo | 4 -> 4 | 2 |" in markdown and "| pods | 16 -> 4 | 2 |" in markdown
    assert "| grpo | 4 -> 4 | 3 |" in markdown            # the tiny runs' table
    assert "status: ok" in markdown and "1.35" in markdown


def test_qwen25_3b_config_matches_the_model_card(gpu_check):
    """The model card: 3.09B parameters, 2.77B without the (tied) embedding."""
    config = gpu_check.qwen_config(gpu_check.QWEN25_3B)
    assert config.eos_token_id is None
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert (round(total / 1e9, 2), round((total - embedding) / 1e9, 2)) == (3.09, 2.77)


def test_full_form_configs_are_valid(gpu_check):
    """The GPU form's Config values (never run here) pass Config's checks."""
    from podslib.config import Config

    full = gpu_check.FULL
    for n, m in gpu_check.TRAIN_RUNS.values():
        assert Config(device="cuda", n=n, m=m, **full.train).max_steps == 30
    for n, m in full.settings.values():
        cfg = gpu_check.bench_config(full, n, m, "cuda", full.micro_batch_size)
        assert (cfg.n, cfg.m, cfg.max_completion_tokens, cfg.lora_r) == (n, m, 512, 64)


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "--device must be 'cpu' or 'cuda[:k]'; got 'tpu'"),
    (["--device", "cpu", "--parts", "train,eval"], "--parts must be"),
    (["--device", "cpu", "--timed-steps", "0"], "--timed-steps and --micro-batch-size"),
])
def test_bad_arguments_name_the_option(gpu_check, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        gpu_check.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_runs_dir_must_be_new_or_empty(gpu_check, capsys, tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--runs-dir", str(tmp_path)])
    assert "--runs-dir must be a new or empty folder" in capsys.readouterr().err
    assert (tmp_path / "old.txt").read_text() == "kept"


def test_a_run_cut_short_still_reports(gpu_check, tmp_path):
    """Past the time budget the bench starts no step: the JSON and markdown say so, and the
    exit status is 1."""
    out = tmp_path / "gpu_check.json"
    code = gpu_check.main(["--device", "cpu", "--smoke", "--parts", "bench", "--budget-s",
                           "1e-9", "--out", str(out), "--runs-dir", str(tmp_path / "runs")])
    data = json.loads(out.read_text())
    assert code == 1 and data["status"] == "failed" and "train" not in data
    assert data["bench"]["ratio"] is None and "before step 0" in data["bench"]["stopped_early"]
    markdown = out.with_suffix(".md").read_text()
    assert "not measured" in markdown and "Stopped early" in markdown


def test_single_process_cuda_device_gets_an_index(monkeypatch):
    """torch.cuda.set_device refuses 'cuda' without an index, so the trainer's setup must hand
    it 'cuda:0' in one process (checked here through torch's own index rule, no GPU needed)."""
    from torch.cuda._utils import _get_device_index

    from podslib.training import distributed as D

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(_get_device_index(d)))
    info, device = D.setup("cuda")
    assert (device, seen, info.enabled) == ("cuda:0", [0], False)
