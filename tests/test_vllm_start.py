"""Starting the vLLM engine on any machine: the CPU KV cache sized by what the run holds (not by
the memory node, whose size differs between machines and over time), and a start that fails
leaving the process as it was, so that the next start works.

vLLM is made to see a small memory node by replacing its reader of the node's memory
(`get_memory_node_info`, imported by name into several of its modules). These tests start and
close their own engines, so they run in a module of their own (no other engine open). Every
test name contains "vllm"; in CI (CI=true) a missing vllm is a failure, not a skip.
"""

import os
import shutil

import pytest
import torch
from test_trainer import easy
from transformers import Qwen2Config

from podslib.models.loading import load_policy
from podslib.models.tiny import make_tiny_model
from podslib.rollout import SamplingParams, make_engine, vllm_available
from podslib.rollout import vllm as V
from podslib.training import trainer as T

if not vllm_available():
    if os.environ.get("CI") == "true":
        pytest.fail("vllm is not importable but CI=true requires the vLLM tests (run `make setup`)",
                    pytrace=False)
    pytest.skip("vllm is not importable (run `make setup`)", allow_module_level=True)

GiB = 1 << 30
PROMPTS = ["Q:1+2\nA:", "Q:46+75-28\nA:", "Q:9\nA:", "Q:70-3+12+5\nA:"]
GREEDY = SamplingParams(temperature=0, max_tokens=12)


def node(total: int, available: int):
    """Patch vLLM's view of every memory node: `total` bytes, `available` of them free."""
    import vllm.platforms.cpu
    import vllm.utils.cpu_resource_utils
    import vllm.v1.worker.cpu.shm
    import vllm.v1.worker.cpu_worker
    from vllm.utils.cpu_resource_utils import MemoryNodeInfo

    def info(node_id: int = 0) -> MemoryNodeInfo:
        return MemoryNodeInfo(total_memory=total, available_memory=available)

    patch = pytest.MonkeyPatch()
    for module in (vllm.utils.cpu_resource_utils, vllm.v1.worker.cpu_worker,
                   vllm.platforms.cpu, vllm.v1.worker.cpu.shm):
        patch.setattr(module, "get_memory_node_info", info)
    return patch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model saved to disk (head size 32, as vLLM's CPU attention needs): (path,
    policy, tokenizer)."""
    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    return (path, *load_policy(path))


def greedy_ids(engine, prompts=PROMPTS):
    return [c.token_ids for g in engine.generate(prompts, 1, GREEDY) for c in g.completions]


def hf_greedy_ids(tiny):
    return greedy_ids(make_engine("hf", policy=tiny[1], tokenizer=tiny[2]))


def process_state():
    """What a vLLM start changes in the process, and must undo when it fails or closes.
    Importing vllm sets a few variables for good (imported first); torch sets
    _TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR whenever it loads a compiled kernel (vLLM's sampler,
    at the first generation), which is torch's state, not the start's."""
    import vllm  # noqa: F401

    environ = {k: v for k, v in os.environ.items() if not k.startswith("_TORCHINDUCTOR")}
    return (environ, torch.distributed.is_initialized(), torch.get_num_threads(),
            torch.set_num_threads.__name__)


def test_vllm_kv_cache_bytes_by_hand():
    """Per token: keys and values of every layer, 2 x layers x KV heads x head size x bytes.
    Tiny model (4 layers, 4 KV heads of 32, float32): 4096 bytes; 3 sequences of 130 tokens
    take 2 blocks of 128 each, and vLLM holds one block back: 7 x 128 x 4096 x 1.25.
    Grouped-query attention with an explicit head size in bfloat16 (24 layers, 2 KV heads of
    64): 12288 bytes a token."""
    tiny = Qwen2Config(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4)
    assert V.kv_cache_bytes(tiny, "float32", 3, 130) == 7 * 128 * 4096 * 5 // 4
    assert V.kv_cache_bytes(tiny, "float32", 1, 128) == 2 * 128 * 4096 * 5 // 4
    gqa = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, head_dim=64)
    assert V.kv_cache_bytes(gqa, "bfloat16", 8, 1) == 9 * 128 * 12288 * 5 // 4


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_starts_on_a_small_memory_node(tiny):
    """A node of 4 GiB with 1 GiB free (an 8 GB laptop) and the default
    gpu_memory_utilization: the engine starts and generates what transformers does. (vLLM's
    own sizing asked for 0.05 x 4 GiB minus the process's resident memory: less than zero.)"""
    patch = node(total=4 * GiB, available=1 * GiB)
    try:
        engine = make_engine("vllm", model_path=tiny[0], seed=0, gpu_memory_utilization=0.05,
                             enforce_eager=True)
    finally:
        patch.undo()
    try:
        assert greedy_ids(engine) == hf_greedy_ids(tiny)
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_training_run_on_a_small_memory_node(tmp_path, cache_dir):
    """The tiny default's path (`pods train`, `make reproduce`): a vLLM run with an evaluation
    on a node of 4 GiB with 1 GiB free, whose KV cache is sized by the run (its 4 x 8 rollouts
    or 24 x 2 evaluation samples of at most 16 + prompt tokens): 1 block of 128 tokens each for
    48 sequences, far below the free GiB."""
    cfg = easy(cache_dir, engine="vllm", enforce_eager=True, max_steps=1, eval_every_steps=1,
               **{"tiny.heads": 1})
    patch = node(total=4 * GiB, available=1 * GiB)
    try:
        T.train(cfg, tmp_path / "run", progress=False)
    finally:
        patch.undo()
    assert (tmp_path / "run" / "summary.json").exists()


def no_weights(tiny, tmp_path):
    """A model folder that is not a model: config and tokenizer, no weights."""
    folder = shutil.copytree(tiny[0], tmp_path / "no-weights")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return folder, None


def no_memory(tiny, tmp_path):
    """The tiny model on a node with 64 MiB free: the KV cache does not fit."""
    return tiny[0], node(total=4 * GiB, available=64 << 20)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("failing", [no_weights, no_memory])
def test_vllm_failed_start_leaves_nothing_and_the_next_start_works(tiny, tmp_path, failing):
    """A start that fails after vLLM made its process group (loading weights, sizing the KV
    cache) leaves the process as it was: no process group (else the next engine takes it for a
    torchrun launch and fails on RANK), the same environment variables, torch's thread setting.
    The next start in the process generates what transformers does, and closing it restores the
    state again."""
    expected = hf_greedy_ids(tiny)
    before = process_state()
    path, patch = failing(tiny, tmp_path)
    try:
        with pytest.raises(Exception) as failed:
            make_engine("vllm", model_path=path, seed=0, gpu_memory_utilization=0.05,
                        enforce_eager=True)
    finally:
        if patch:
            patch.undo()
    assert not isinstance(failed.value, KeyError), failed.value
    assert process_state() == before
    engine = make_engine("vllm", model_path=tiny[0], seed=0, enforce_eager=True)
    try:
        assert greedy_ids(engine) == expected
    finally:
        engine.close()
    assert process_state() == before
