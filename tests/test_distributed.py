"""Data parallel over prompts: `torchrun --nproc_per_node 2` (or `accelerate launch`) on CPU
(gloo) ends with the same parameters and the same per-step rollout statistics as one process
over the same global batch, with full replicas (sharding 'none') and with FSDP2 shards
(sharding 'fsdp'); the same with an in-process vLLM engine on each rank (the `vllm` tests: in CI,
CI=true, a missing vllm is a failure, not a skip)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_checks import require_vllm
from test_trainer import easy

from podslib import rundir
from podslib.training import distributed as D

ROLLOUT_KEYS = ("reward_mean_all", "reward_std_all", "sel_var", "tokens_generated",
                "tokens_trained", "accuracy_all")


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=400,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def launcher(name: str, ranks: int) -> list[str]:
    """The command line that starts `ranks` processes: torchrun, or accelerate launch (its
    --multi_gpu launcher is torchrun's; on a CPU-only machine the ranks use gloo)."""
    if ranks == 1:
        return [sys.executable]
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(ranks)]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
            "--num_processes", str(ranks), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"]


def train(config: Path, run_dir: Path, ranks: int, *extra: str, via: str = "torchrun") -> None:
    """python -m podslib train CONFIG RUN_DIR [key=value ...] in 1 process or `ranks` ranks
    started by `via` ('torchrun' or 'accelerate')."""
    run([*launcher(via, ranks), "-m", "podslib", "train", str(config), str(run_dir), *extra,
         "--no-progress"], config.parent)


def checkpoint(run_dir: Path, name: str) -> dict:
    ckpt = rundir.checkpoints(run_dir)[-1]
    return torch.load(ckpt / name)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, two: Path, steps: int) -> None:
    """Same rollouts every step, parameters and optimizer state equal to float tolerance, in
    checkpoints of the same format."""
    a, b = checkpoint(one, "trainable.pt"), checkpoint(two, "trainable.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    a, b = checkpoint(one, "optimizer.pt"), checkpoint(two, "optimizer.pt")
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, x in a["state"][i].items():
            assert type(x) is type(b["state"][i][k]) and torch.allclose(
                x, b["state"][i][k], atol=1e-6, rtol=1e-4), (i, k)
    m1, m2 = metrics(one), metrics(two)
    assert len(m1) == len(m2) == steps
    for x, y in zip(m1, m2):
        assert {k: x[k] for k in ROLLOUT_KEYS} == {k: y[k] for k in ROLLOUT_KEYS}
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-6)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    assert any(m["grad_norm"] > 0 for m in m1)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_single_process_helpers_are_identities():
    x = torch.arange(6.0).reshape(3, 2)
    assert D.all_gather_rows(x) is x and torch.equal(D.all_reduce_sum(x.clone()), x)
    assert D.all_reduce_max(2.5) == 2.5
    assert torch.equal(D.full_tensor(x), x) and not D.is_sharded(torch.nn.Linear(2, 2))
    assert torch.equal(D.shard_like(x, x), x) and D.local_numel([x, x[0]]) == 8


def test_dist_info_reads_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    one = D.DistInfo.from_env()
    assert one == D.DistInfo(0, 1, 0) and one.is_main and not one.enabled
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank = D.DistInfo.from_env()
    assert rank == D.DistInfo(5, 8, 1) and rank.enabled and not rank.is_main


def test_single_process_teardown_leaves_a_library_group_alone(tmp_path, monkeypatch):
    """Without a launcher (no WORLD_SIZE) `setup` joins nothing, so `teardown` destroys nothing:
    a group made by a library (vLLM's engine makes one) is its owner's to destroy; destroyed
    under it, the engine's own cleanup at exit fails on it."""
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0,
                            world_size=1)
    try:
        D.teardown()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


GLOO_THREADS_AFTER_TEARDOWN = """
import os, sys
import torch
from podslib.training import distributed as D
from podslib.rollout import vllm_available

D.setup("cpu")
from transformers import AutoModelForCausalLM  # imports torch.distributed.fsdp
assert D.all_reduce_sum(torch.ones(1)).item() == 2
D.teardown()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
sys.exit(f"gloo threads outlived teardown: {names}" if any("gloo" in n for n in names) else 0)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names in /proc")
def test_teardown_stops_the_gloo_threads(tmp_path):
    """transformers imports torch.distributed.fsdp, which binds the default group at import; had
    the group been created first it would outlive destroy_process_group, and its live gloo threads
    at interpreter shutdown abort a finished rank now and then (SIGABRT). `setup` imports fsdp
    before creating the group, so `teardown` ends the threads on both ranks."""
    script = tmp_path / "probe.py"
    script.write_text(GLOO_THREADS_AFTER_TEARDOWN)
    run([*launcher("torchrun", 2), str(script)], tmp_path)


def test_exit_process_runs_atexit_handlers_and_flushes_output(tmp_path):
    """What a rank prints, and what its atexit handlers (e.g. the MATH grading pool's close) do,
    survive the exit without interpreter finalization; the exit code is the one given."""
    code = ("import atexit, sys; from podslib.training.distributed import exit_process; "
            "atexit.register(lambda: print('closed', file=sys.stderr)); "
            "print('summary', end=''); exit_process(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (3, "summary", "closed")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """(config, run folder) of 3 steps in one process, 4 prompts per step. micro_batch_size 3
    makes the micro-batches differ from those of two ranks (2 prompts x 4 selected each)."""
    tmp = tmp_path_factory.mktemp("dp")
    cfg = easy(cache_dir, max_steps=3, eval_every_steps=0,
               micro_batch_size=3, test_size=8)
    config = tmp / "config.yaml"
    cfg.to_yaml(config)
    train(config, tmp / "one", 1)
    return config, tmp / "one"


@pytest.mark.slow
@pytest.mark.parametrize("via", ["torchrun", "accelerate"])
def test_distributed_two_ranks_match_one_process(one_process, via):
    """Rank 0 takes prompts 0-1, rank 1 prompts 2-3, each with the per-prompt seeds one process
    uses, so the rollouts are identical; the loss shares use the global counts and gradients are
    summed, so the parameters agree to float tolerance. The same with `accelerate launch`."""
    config, one = one_process
    train(config, one.parent / via, 2, via=via)
    assert_same_run(one, one.parent / via, steps=3)
    (total,) = summary(one)["param_numel_per_rank"]
    assert summary(one.parent / via)["param_numel_per_rank"] == [total, total]


@pytest.mark.slow
def test_distributed_fsdp_matches_one_process_with_half_the_memory_per_rank(one_process):
    """sharding=fsdp: the same run, its checkpoint in the same format (whole tensors), and each
    rank holds half of the parameters and of the AdamW moments (2 per parameter, plus one step
    counter per tensor: 26 here)."""
    config, one = one_process
    train(config, one.parent / "fsdp", 2, "sharding=fsdp")
    assert_same_run(one, one.parent / "fsdp", steps=3)
    full, shard = summary(one), summary(one.parent / "fsdp")
    total, counters = full["param_numel_per_rank"][0], len(checkpoint(one, "trainable.pt"))
    assert full["optimizer_numel_per_rank"] == [2 * total + counters]
    assert shard["param_numel_per_rank"] == [total // 2] * 2
    assert shard["optimizer_numel_per_rank"] == [total + counters] * 2


@pytest.mark.slow
def test_distributed_fsdp_uneven_micro_batches_and_sharded_resume(tmp_path, cache_dir):
    """Groups of n = 2 with the zero-variance filter, one rollout per micro-batch: the ranks keep
    different numbers of rollouts (about 3 groups in 4 are all-equal and dropped; one rank may
    keep none), so blank micro-batches pad, a whole group (2 rows) per missing group; mu = 2
    (no-grad old log-probs through the shards) and beta > 0 (reference). Two sharded ranks stop
    after step 2, resume from their checkpoint and end where one process does after 3 steps."""
    cfg = easy(cache_dir, max_steps=3, eval_every_steps=0,
               test_size=8, n=2, m=2, group_filter="zero_variance", micro_batch_size=1, mu=2,
               beta=0.04, sharding="fsdp")
    config = tmp_path / "config.yaml"
    cfg.to_yaml(config)
    train(config, tmp_path / "one", 1)
    train(config, tmp_path / "two", 2, "max_steps=2")
    assert len(metrics(tmp_path / "two")) == 2
    train(config, tmp_path / "two", 2, "--resume")
    assert_same_run(tmp_path / "one", tmp_path / "two", steps=3)
    assert [m["blank_micro_batches"] for m in metrics(tmp_path / "one")] == [0, 0, 0]
    blanks = [m["blank_micro_batches"] for m in metrics(tmp_path / "two")]
    assert any(blanks) and all(b % 2 == 0 for b in blanks), blanks


# ----------------------------------------------------------------------------------------------
# vLLM inside the group: one in-process engine per rank
# ----------------------------------------------------------------------------------------------

VLLM_ENGINE_IN_A_GROUP = """
import os, sys
import torch
from podslib.training import distributed as D
from podslib.rollout import SamplingParams, make_engine

D.setup("cpu")
prompts = [f"Q:{i}+{2 * i}\\nA:" for i in range(6)]
greedy = SamplingParams(temperature=0, max_tokens=8)

def engine():
    return make_engine("vllm", model_path=sys.argv[1], seed=0, max_model_len=64, max_num_seqs=6,
                       enforce_eager=True)

def tokens(e):
    return [c.token_ids for g in e.generate(prompts, 1, greedy) for c in g.completions]

def gloo_groups():   # each gloo process group runs one gloo_tcp_loop thread (Linux, as vLLM CPU)
    names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
    return sum(name.strip() == "gloo_tcp_loop" for name in names)

assert gloo_groups() == 1
first = engine()
assert os.environ["LOCAL_WORLD_SIZE"] == "1" and gloo_groups() > 1
greedy_tokens = tokens(first)
first.close()
assert D.all_reduce_sum(torch.ones(1)).item() == 2, "closing the engine destroyed the ranks' group"
assert os.environ["LOCAL_WORLD_SIZE"] == "2", "torchrun's environment is not restored"
assert gloo_groups() == 1, f"{gloo_groups() - 1} of vLLM's groups outlived the engine"
second = engine()
assert tokens(second) == greedy_tokens
D.teardown()   # `second` stays open: vLLM shuts it down at exit, after the group is gone
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_in_a_process_group_leaves_the_group_to_its_owner(tmp_path):
    """On each of two ranks: an engine joins the ranks' gloo group (vLLM's external_launcher
    executor), generates, and closing it destroys the groups vLLM made (their gloo threads end)
    but not the ranks' group, which still all-reduces, and restores torchrun's LOCAL_WORLD_SIZE
    (vLLM's CPU platform sets 1). A second engine then starts in the same group and generates the
    same tokens; left open over the ranks' teardown, it is shut down at exit without an error."""
    require_vllm()
    from podslib.models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model")   # head_dim 32: vLLM's CPU attention needs >= 32
    script = tmp_path / "probe.py"
    script.write_text(VLLM_ENGINE_IN_A_GROUP)
    proc = run([*launcher("torchrun", 2), str(script), str(model)], tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_distributed_fsdp_matches_one_process(tmp_path, cache_dir):
    """configs/gsm8k_8gpu.yaml in small: engine vllm with FSDP2 over two ranks, each rank's
    engine sampling its 2 prompts per step (and its share of the evaluations at steps 0 and 3)
    from the unsharded copy synced after every update. After 3 steps: the same rollouts,
    parameters and optimizer state as one process with engine vllm, and each rank holds half of
    the parameters. One attention head of 32 dimensions: vLLM's CPU attention has no kernel for
    head_dim 16 (the 2 heads of the hf tests' model)."""
    require_vllm()
    cfg = easy(cache_dir, max_steps=3, eval_every_steps=0,
               micro_batch_size=3, test_size=8, engine="vllm", enforce_eager=True,
               **{"tiny.heads": 1})
    config = tmp_path / "config.yaml"
    cfg.to_yaml(config)
    train(config, tmp_path / "one", 1)
    train(config, tmp_path / "two", 2, "sharding=fsdp")
    assert_same_run(tmp_path / "one", tmp_path / "two", steps=3)
    (total,) = summary(tmp_path / "one")["param_numel_per_rank"]
    assert summary(tmp_path / "two")["param_numel_per_rank"] == [total // 2] * 2
