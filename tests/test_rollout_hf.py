"""podslib.rollout with the transformers engine: batching, stopping, log-probs, seeding, errors."""

import pytest
import torch
from engine_checks import assert_sampling_logprobs, sft

from podslib import rollout
from podslib.models.loading import LoraSettings, load_policy, merged_state_dict
from podslib.models.tiny import make_tiny_model
from podslib.rollout import Completion, Group, SamplingParams, make_engine

PROMPTS = ["Q:1+2\nA:", "Q:46+75-28\nA:", "Q:9\nA:", "Q:70-3+12+5\nA:"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    model, tok = load_policy(make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))
    return sft(model, tok), tok


@pytest.fixture
def engine(policy):
    return make_engine("hf", policy=policy[0], tokenizer=policy[1], seed=0)


def brute_force_greedy(model, ids: list[int], max_tokens: int, eos: int) -> list[int]:
    """One prompt, no padding, argmax of the full forward pass token by token."""
    out = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            out.append(int(logits.argmax()))
            if out[-1] == eos:
                break
    return out


def test_groups_have_n_completions_with_clean_token_ids(engine, policy):
    _, tok = policy
    groups = engine.generate(PROMPTS, n=3, sampling=SamplingParams(max_tokens=8, seed=1,
                                                                   logprobs=True))
    assert [type(g) for g in groups] == [Group] * len(PROMPTS)
    reasons = set()
    for prompt, group in zip(PROMPTS, groups):
        assert group.prompt == prompt
        assert group.prompt_token_ids == tok(prompt, add_special_tokens=False)["input_ids"]
        assert len(group.completions) == 3 and isinstance(group.completions[0], Completion)
        for c in group.completions:
            reasons.add(c.finish_reason)
            assert tok.pad_token_id not in c.token_ids
            assert tok.eos_token_id not in c.token_ids[:-1]
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == tok.eos_token_id and len(c.token_ids) <= 8
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 8
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
            assert len(c.logprobs) == len(c.token_ids)
    assert reasons == {"stop", "length"}  # within 8 tokens some answers end, some are cut


def test_greedy_matches_brute_force_with_left_padding(engine, policy):
    """Prompts of different lengths share a left-padded batch; each must equal its own
    unpadded argmax decode."""
    model, tok = policy
    groups = engine.generate(PROMPTS, n=2, sampling=SamplingParams(temperature=0, max_tokens=16))
    for group in groups:
        expected = brute_force_greedy(model, group.prompt_token_ids, 16, tok.eos_token_id)
        assert [c.token_ids for c in group.completions] == [expected, expected]
    texts = [g.completions[0].text for g in groups]
    assert len(set(texts)) > 1, texts  # prompt-dependent, not one degenerate string


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_logprobs_are_those_of_the_sampling_distribution(engine, policy, top_p):
    """Sampled at T = 0.7 (and top_p 0.8), the reported log-probs are those of the tempered
    (nucleus) distribution at the sampled tokens, from a forward pass over prompt + completion;
    greedy: the raw model's."""
    model, _ = policy
    group = engine.generate(
        PROMPTS[1:2], n=2,
        sampling=SamplingParams(temperature=0.7, top_p=top_p, max_tokens=10, logprobs=True),
    )[0]
    assert_sampling_logprobs(model, group, 0.7, top_p)
    greedy = SamplingParams(0, max_tokens=10, logprobs=True)
    assert_sampling_logprobs(model, engine.generate(PROMPTS[1:2], n=1, sampling=greedy)[0], 1.0)


def test_logprobs_only_when_asked_and_the_samples_do_not_change(engine):
    """Recording the log-probs is optional (the importance correction asks for them); with or
    without them the same seeds give the same tokens."""
    plain = SamplingParams(temperature=0.9, max_tokens=12, seed=4)
    asked = SamplingParams(temperature=0.9, max_tokens=12, seed=4, logprobs=True)
    without, with_lp = engine.generate(PROMPTS, 3, plain), engine.generate(PROMPTS, 3, asked)
    assert _ids(without) == _ids(with_lp)
    assert all(c.logprobs is None for g in without for c in g.completions)
    assert all(len(c.logprobs) == len(c.token_ids) for g in with_lp for c in g.completions)


def test_first_tokens_follow_the_tempered_nucleus_distribution(engine, policy):
    """2,000 one-token samples at T = 0.7, top_p = 0.9: the frequencies match the oracle
    p = softmax(logits / 0.7) restricted to the smallest set of tokens with mass >= 0.9 and
    renormalised (standard error <= 0.011, tolerance 0.045), and no token outside that set
    appears."""
    model, _ = policy
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=1, seed=11)
    group = engine.generate(PROMPTS[1:2], 2000, sampling)[0]
    with torch.no_grad():
        logits = model(torch.tensor([group.prompt_token_ids])).logits[0, -1]
    probs, order = torch.softmax(logits / 0.7, dim=-1).sort(descending=True)
    keep = (probs.cumsum(0) - probs) < 0.9  # tokens before which the mass is below top_p
    oracle = torch.zeros_like(probs).scatter(0, order[keep], probs[keep] / probs[keep].sum())
    counts = torch.bincount(
        torch.tensor([c.token_ids[0] for c in group.completions]), minlength=len(probs)
    ).float()
    assert counts[oracle == 0].sum() == 0
    assert (counts / 2000 - oracle).abs().max() < 0.045


def test_tiny_top_p_is_greedy(engine):
    greedy = engine.generate(PROMPTS, n=1, sampling=SamplingParams(temperature=0, max_tokens=8))
    nucleus = engine.generate(
        PROMPTS, n=2, sampling=SamplingParams(top_p=1e-6, max_tokens=8, seed=3)
    )
    for g, s in zip(greedy, nucleus):
        assert [c.token_ids for c in s.completions] == [g.completions[0].token_ids] * 2


def _ids(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


def test_same_seed_same_samples_different_seed_differs(engine):
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    first = _ids(engine.generate(PROMPTS, 4, sampling))
    assert _ids(engine.generate(PROMPTS, 4, sampling)) == first
    assert (
        _ids(engine.generate(PROMPTS, 4, SamplingParams(temperature=1.0, max_tokens=12, seed=8)))
        != first
    )


def test_unseeded_calls_follow_the_engine_seed(policy):
    """seed=None: successive calls differ, but two engines with the same seed repeat each other."""
    a, b = (make_engine("hf", policy=policy[0], tokenizer=policy[1], seed=5) for _ in range(2))
    sampling = SamplingParams(temperature=1.0, max_tokens=12)
    a1, a2 = _ids(a.generate(PROMPTS, 2, sampling)), _ids(a.generate(PROMPTS, 2, sampling))
    assert a1 != a2
    assert [a1, a2] == [
        _ids(b.generate(PROMPTS, 2, sampling)),
        _ids(b.generate(PROMPTS, 2, sampling)),
    ]


def test_per_prompt_seeds_make_samples_independent_of_the_batch(policy):
    """With seeds, a prompt's samples depend only on its seed: the same in a batch of four, alone,
    in another order, and with another max_batch_size that still holds n rows."""
    model, tok = policy
    sampling = SamplingParams(temperature=1.0, max_tokens=12)
    batch = _ids(
        make_engine("hf", policy=model, tokenizer=tok).generate(
            PROMPTS, 3, sampling, seeds=[1, 2, 3, 4]
        )
    )
    small = make_engine("hf", policy=model, tokenizer=tok, seed=9, max_batch_size=7)
    alone = _ids(small.generate(PROMPTS[2:3], 3, sampling, seeds=[3]))
    reordered = _ids(small.generate(PROMPTS[::-1], 3, sampling, seeds=[4, 3, 2, 1]))
    assert alone[0] == batch[2]
    assert reordered == batch[::-1]
    assert batch[0] != batch[1]


def test_generation_restores_mode_and_global_rng(engine, policy):
    model, _ = policy
    model.train()
    state = torch.get_rng_state()
    engine.generate(PROMPTS[:1], 2, SamplingParams(max_tokens=4, seed=0))
    assert model.training
    assert torch.equal(torch.get_rng_state(), state)
    model.eval()


def test_lora_policy_generates_like_its_merged_weights(tmp_path):
    """A peft policy with a trained (non-zero) adapter generates exactly what a plain model
    holding merged_state_dict(policy) generates."""
    path = make_tiny_model(tmp_path, seed=1)
    lora, tok = load_policy(path, lora=LoraSettings(r=4, alpha=8))
    sft(lora, tok, steps=20, lr=1e-2)
    plain, _ = load_policy(path)
    plain.load_state_dict(merged_state_dict(lora))
    greedy = SamplingParams(temperature=0, max_tokens=12)
    from_lora = make_engine("hf", policy=lora, tokenizer=tok).generate(PROMPTS, 1, greedy)
    from_plain = make_engine("hf", policy=plain, tokenizer=tok).generate(PROMPTS, 1, greedy)
    base, _ = load_policy(path)
    from_base = make_engine("hf", policy=base, tokenizer=tok).generate(PROMPTS, 1, greedy)
    assert _ids(from_lora) == _ids(from_plain) != _ids(from_base)


def test_chunking_gives_the_same_greedy_output(policy):
    model, tok = policy
    greedy = SamplingParams(temperature=0, max_tokens=10)
    whole = make_engine("hf", policy=model, tokenizer=tok).generate(PROMPTS, 3, greedy)
    chunked = make_engine("hf", policy=model, tokenizer=tok, max_batch_size=2).generate(
        PROMPTS, 3, greedy
    )
    assert _ids(whole) == _ids(chunked)


def test_engine_from_model_path_and_close(tmp_path):
    engine = make_engine("hf", model_path=make_tiny_model(tmp_path))
    groups = engine.generate(PROMPTS[:2], 2, SamplingParams(max_tokens=3, seed=0))
    assert [len(g.completions) for g in groups] == [2, 2]
    assert all(1 <= len(c.token_ids) <= 3 for g in groups for c in g.completions)
    engine.close()
    assert engine.policy is None
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS[:1], 1, SamplingParams(max_tokens=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n .*>= 1"),
        ({"sampling": {"max_tokens": 0}}, "max_tokens"),
        ({"sampling": {"temperature": -0.1}}, "temperature"),
        ({"sampling": {"top_p": 0}}, "top_p"),
        ({"seeds": [1]}, "seeds"),
    ],
)
def test_bad_generate_arguments(engine, kwargs, match):
    args = {"prompts": PROMPTS[:2], "n": 2, "sampling": {"max_tokens": 4}, "seeds": None} | kwargs
    with pytest.raises(ValueError, match=match):
        engine.generate(
            args["prompts"], args["n"], SamplingParams(**args["sampling"]), seeds=args["seeds"]
        )


def test_bad_engine_arguments(tmp_path, policy, monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of 'hf', 'vllm', 'auto'; got 'tgi'"):
        make_engine("tgi", policy=policy[0], tokenizer=policy[1])
    with pytest.raises(FileNotFoundError, match="missing"):
        make_engine("hf", model_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="tokenizer"):
        make_engine("hf", policy=policy[0])
    monkeypatch.setattr(rollout, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"pods-kit\[gpu\].*make setup"):
        make_engine("vllm", model_path=tmp_path)
    assert (
        make_engine("auto", model_path=tmp_path, policy=policy[0], tokenizer=policy[1]).name == "hf"
    )
