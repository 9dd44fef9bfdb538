"""podslib.training.trainer: the phases of a step against brute-force oracles, config errors before any
model load, and a short end-to-end PODS run on the tiny model (hf engine, CPU)."""

import json
import math

import pytest
import torch

from podslib import rundir
from podslib.config import Config, merge, parse_yaml_value
from podslib.lab.cli import parse_overrides
from podslib.rollout import Completion, Group
from podslib.seeding import derive_seed
from podslib.training import batch as B
from podslib.training import step as S
from podslib.training import trainer as T
from podslib.training.data import prompt_indices

# A small, easy setting that warm-starts in ~30 s: one operation on operands 0..19, a 2-layer
# hidden-32 model; at most 800 supervised steps, stopped at 30% correct (the default target).
EASY = {
    "engine": "hf",
    "tiny": {"hidden": 32, "layers": 2, "heads": 2, "steps_min": 1, "steps_max": 1,
             "operand_min": 0, "operand_max": 19, "warm_start_steps": 800,
             "warm_start_batch_size": 32},
    "max_completion_tokens": 16,
    "train_size": 200, "test_size": 24, "eval_repeats": 2, "eval_every_s": 0.0,
    "eval_every_steps": 2, "checkpoint_every_s": 0.0, "max_train_seconds": 0.0, "max_steps": 4,
    "n": 8, "m": 4, "prompts_per_step": 4, "micro_batch_size": 4, "lr": 1e-4,
}


def easy(cache_dir, **overrides) -> Config:
    """The EASY config; overrides may set one tiny setting with a dotted key ('tiny.heads')."""
    return Config.from_dict(merge({**EASY, "cache_dir": str(cache_dir)}, overrides))


@pytest.fixture(scope="module")
def tiny(cache_dir):
    """(model, tokenizer) of the randomly initialised easy tiny model."""
    from podslib.models.loading import load_policy
    from podslib.training.warmstart import tiny_base

    return load_policy(tiny_base(easy(cache_dir).tiny, cache_dir))


# ------------------------------------------------------------------------------------------------
# data order and seeds
# ------------------------------------------------------------------------------------------------

def test_step_prompts_walk_a_permutation_per_epoch():
    """10 prompts, 4 per step: steps 0-1 and half of step 2 cover epoch 0 exactly once."""
    seen = [i for s in range(5) for i in prompt_indices(4 * s, 4, 10, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]                       # a fresh order per epoch
    assert prompt_indices(8, 4, 10, 3) == seen[8:12]
    assert prompt_indices(6, 5, 10, 3) == seen[6:11]                # any start, any count
    assert prompt_indices(0, 4, 10, 4) != seen[:4]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "rollout", 1, 2) == derive_seed(0, "rollout", 1, 2)
    assert len({derive_seed(0, "rollout", 1, j) for j in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**62


# ------------------------------------------------------------------------------------------------
# select / advantages
# ------------------------------------------------------------------------------------------------

def test_vanilla_grpo_keeps_all_rollouts_in_order():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    idx, adv = S.select_rollouts(rewards, Config(n=4, m=4), step=0)
    assert idx.tolist() == [[0, 1, 2, 3]]
    # mean 0.5, unbiased std sqrt(1/3): A = +-0.5 / (0.57735 + 1e-4)
    assert torch.allclose(adv, torch.tensor([[1, -1, -1, 1]]) * 0.5 / (math.sqrt(1 / 3) + 1e-4))


def test_pods_selects_max_variance_and_normalises_over_selection():
    """n = 6 with rewards [1,1,1,1,0,1], m = 2: the max-variance pair is one 1 and the 0."""
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    idx, adv = S.select_rollouts(rewards, Config(n=6, m=2), step=0)
    assert sorted(rewards[0, idx[0]].tolist()) == [0.0, 1.0]
    # selected {1, 0}: mean 0.5, std sqrt(0.5) -> A = +-0.5 / (0.70711 + 1e-4)
    expected = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(adv.abs(), torch.full((1, 2), expected))
    # over all n: mean 5/6, std sqrt(1/6): the 0 gets -(5/6) / (0.40825 + 1e-4)
    idx_all, adv_all = S.select_rollouts(rewards, Config(n=6, m=2, adv_over="all"), step=0)
    low = adv_all[0, rewards[0, idx_all[0]] == 0]
    assert torch.allclose(low, torch.tensor([-(5 / 6) / (math.sqrt(1 / 6) + 1e-4)]))


def test_zero_variance_filter_drops_uniform_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    assert S.passing(rewards, Config(n=4, m=2, group_filter="zero_variance")).tolist() == \
        [False, True]
    assert S.passing(rewards, Config(n=4, m=2)).tolist() == [True, True]


# ------------------------------------------------------------------------------------------------
# batch layout and log-probs
# ------------------------------------------------------------------------------------------------

def _groups():
    c = [Completion("", [7, 8, 2], "stop", [-0.7, -0.8, -0.2]),
         Completion("", [9], "stop", [-0.9]), Completion("", [5, 6], "length", [-0.5, -0.6])]
    return [Group("a", [11, 12, 13], c[:2]), Group("b", [14], [c[2], c[0]])]


def test_build_batch_pads_prompts_left_and_completions_right():
    idx = torch.tensor([[1, 0], [0, 1]])
    adv = torch.tensor([[0.5, -0.5], [1.0, -1.0]])
    batch = B.build_batch(_groups(), idx, adv, torch.ones(2, 2, dtype=torch.bool), pad_id=0)
    assert batch.prompt_len == 3
    assert batch.input_ids.tolist() == [[11, 12, 13, 9, 0, 0], [11, 12, 13, 7, 8, 2],
                                        [0, 0, 14, 5, 6, 0], [0, 0, 14, 7, 8, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1],
                                             [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.completion_mask.tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert batch.advantages.tolist() == [0.5, -0.5, 1.0, -1.0]
    assert torch.allclose(batch.sampler_logprobs, torch.tensor(
        [[-0.9, 0, 0], [-0.7, -0.8, -0.2], [-0.5, -0.6, 0], [-0.7, -0.8, -0.2]]))
    dropped = B.build_batch(_groups(), idx, adv, torch.tensor([[False, False], [True, True]]),
                            pad_id=0)
    assert len(dropped) == 2 and dropped.prompt_len == 1
    one = B.build_batch(_groups(), idx, adv, torch.tensor([[True, False], [False, False]]), 0)
    assert one.input_ids.tolist() == [[11, 12, 13, 9]] and one.advantages.tolist() == [0.5]


def test_completion_logprobs_match_unpadded_forward(tiny):
    """Brute force: each row alone, without padding, through the model and log_softmax."""
    model, _ = tiny
    model.eval()
    batch = B.build_batch(_groups(), torch.tensor([[1, 0], [0, 1]]), torch.zeros(2, 2),
                          torch.ones(2, 2, dtype=torch.bool), pad_id=0)
    got = B.completion_logprobs(model, batch)
    rows = [([11, 12, 13], [9]), ([11, 12, 13], [7, 8, 2]), ([14], [5, 6]), ([14], [7, 8, 2])]
    with torch.no_grad():
        for r, (prompt, comp) in enumerate(rows):
            ids = torch.tensor([prompt + comp])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            want = torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(comp)])
            assert torch.allclose(got[r, :len(comp)], want, atol=1e-5), r


def test_micro_batching_gives_the_full_batch_gradient(tiny, cache_dir):
    """Gradient accumulation over micro-batches of 1 equals one batch of 4 (sum of shares)."""
    from podslib.core.loss import grpo_loss

    model, _ = tiny
    model.train()
    batch = B.build_batch(_groups(), torch.tensor([[1, 0], [0, 1]]),
                          torch.tensor([[0.5, -0.5], [1.0, -1.0]]), torch.ones(2, 2, dtype=torch.bool),
                          0)
    grads = []
    for size in (4, 1):
        model.zero_grad()
        tokens = int(batch.completion_mask.sum())
        for mb in B.micro_batches(batch, size):
            lp = B.completion_logprobs(model, mb)
            loss, _ = grpo_loss(lp, lp.detach(), mb.advantages, mb.completion_mask,
                                aggregation="grpo", total_sequences=len(batch),
                                total_tokens=tokens)
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# config errors before any model load
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to build or load a model fails the test (patched where the trainer and the
    warm-start look them up)."""
    from podslib.training import warmstart

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the config error")

    for module, name in [(T, "build_model"), (T, "load_policy"), (T, "policy_path"),
                         (warmstart, "warm_start"), (warmstart, "tiny_base"),
                         (warmstart, "make_tiny_model"), (warmstart, "load_policy")]:
        monkeypatch.setattr(module, name, boom)


def test_prompts_not_divisible_by_world_size_fail_before_model_load(
        no_model_load, monkeypatch, tmp_path, cache_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"prompts_per_step must be divisible .* \(2\); got 3"):
        T.train(easy(cache_dir, prompts_per_step=3), tmp_path / "run")


def test_resume_with_another_config_fails_before_model_load(no_model_load, tmp_path, cache_dir):
    run = tmp_path / "run"
    run.mkdir()
    easy(cache_dir).to_yaml(run / "config.yaml")
    with pytest.raises(ValueError, match=r"different config \(fields n, lr\)"):
        T.train(easy(cache_dir, n=16, lr=5e-4), run, resume=True)
    with pytest.raises(ValueError, match="holds an interrupted run; resume it"):
        (run / "metrics.jsonl").write_text("")
        T.train(easy(cache_dir), run)
    with pytest.raises(ValueError, match=r"different config \(fields seed\)"):
        (run / "metrics.jsonl").unlink()
        T.train(easy(cache_dir, seed=5), run)
    assert Config.from_yaml(run / "config.yaml") == easy(cache_dir)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        T.train(easy(cache_dir), tmp_path / "other", resume=True)


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_short_pods_run_end_to_end(tmp_path, cache_dir):
    """8 steps of PODS (8 -> 4) from the warm-started easy model: every metric key present,
    phases timed, evaluations at steps 0, 4, 8, accuracy does not collapse, one checkpoint."""
    cfg = easy(cache_dir, max_steps=8, eval_every_steps=4, eval_repeats=4)
    summary = T.train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))
    for line in lines:
        assert {"step", "wall_s", "train_time_s", *S.METRICS} <= set(line)
        assert line["t_generate"] > 0 and line["t_update"] > 0 and line["t_score"] > 0
        assert line["tokens_trained"] <= line["tokens_generated"]
        assert line["train_time_s"] <= line["wall_s"]
    assert any(x["grad_norm"] > 0 for x in lines)
    evals = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 4, 8]
    assert all(set(T.EVAL_KEYS) <= set(e) for e in evals)
    base = evals[0]["accuracy"]
    assert 0.05 < base < 0.9, "the warm-start should give partial competence"
    assert summary["final_accuracy"] >= base - 0.2
    assert summary["steps"] == 8 and summary["base_accuracy"] == base
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["best", "step-000008"]


@pytest.mark.slow
def test_lora_with_kl_and_several_iterations(tmp_path, cache_dir):
    """LoRA r=4, beta > 0 (reference = adapter disabled), mu = 2 (old log-probs, clipping):
    only adapter weights are trained and checkpointed; the KL starts at 0 (policy == reference
    before the first update) and is positive once the adapter has moved."""
    cfg = easy(cache_dir, lora_r=4, lora_alpha=8.0, beta=0.04, mu=2, max_steps=3,
               eval_every_steps=0, lr=1e-3)
    T.train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kl"] >= 0 and lines[-1]["kl"] > 0
    assert all(math.isfinite(x["loss"]) and x["grad_norm"] > 0 for x in lines)
    (ckpt,) = rundir.checkpoints(tmp_path / "run")
    saved = torch.load(ckpt / "trainable.pt")
    assert saved and all("lora_" in k for k in saved)


def test_command_line_values_parse_as_yaml_with_plain_exponents():
    assert parse_yaml_value("2e-4") == 2e-4 and parse_yaml_value("16") == 16
    assert parse_yaml_value("max_variance") == "max_variance"
    assert parse_yaml_value("{correctness: 1.0}") == {"correctness": 1.0}
    assert parse_yaml_value("null") is None and parse_yaml_value("true") is True
    assert parse_overrides(["lr=2e-4", "tiny.hidden=64"]) == {"lr": 2e-4, "tiny.hidden": 64}
    with pytest.raises(ValueError, match="overrides must be key=value; got 'seed'"):
        parse_overrides(["seed"])
    with pytest.raises(ValueError, match="'{' is not a valid YAML value"):
        parse_overrides(["n={"])


@pytest.mark.slow
def test_a_rule_and_a_reward_term_registered_here_train_through_config(tmp_path, cache_dir):
    """One decorated function each, nothing else: Config accepts them (it asks the registries)
    and the trainer uses them. The rule keeps the m lowest rewards, so every selected reward is
    at most the group's median; the term pays 1 per completion, so every reward is >= 1."""
    from podslib.core.selection import rule
    from podslib.tasks.rewards import term

    @rule("test_lowest")
    def _lowest(rewards, m, generator=None):
        """[G, n] -> [G, m] the m lowest rewards."""
        return rewards.argsort(dim=-1, stable=True)[..., :m]

    @term("test_constant")
    def _constant(completion, gold, task):
        return 1.0

    cfg = easy(cache_dir, rule="test_lowest", max_steps=2, eval_every_steps=0,
               reward_weights={"correctness": 1.0, "test_constant": 1.0})
    T.train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert x["reward_mean_all"] >= 1.0 and x["reward_mean_sel"] <= x["reward_mean_all"]


def test_variants_of_one_seed_are_evaluated_on_the_same_problems_with_the_same_seeds(
        tmp_path, cache_dir, monkeypatch):
    """The paired design: GRPO 4/4 and PODS 8 -> 4 of seed 0 start from the same model and, at
    every evaluation, sample the same test problems with the same per-problem seeds, so their
    step-0 results are equal problem by problem; seed 1 samples the same problems with other
    seeds."""
    calls: dict[str, list] = {}
    real = T.evaluate

    def record(engine, examples, *args, seeds, **kwargs):
        result = real(engine, examples, *args, seeds=seeds, **kwargs)
        calls.setdefault(run, []).append(([e.question for e in examples], list(seeds),
                                          list(result["per_problem"])))
        return result

    monkeypatch.setattr(T, "evaluate", record)
    for run, values in [("grpo-s0", {"n": 4, "m": 4}), ("pods-s0", {"n": 8, "m": 4}),
                        ("grpo-s1", {"n": 4, "m": 4, "seed": 1})]:
        cfg = easy(cache_dir, max_steps=2, eval_every_steps=1, **values)
        T.train(cfg, tmp_path / run, progress=False)
    assert len(calls["grpo-s0"]) == len(calls["pods-s0"]) == 3
    for (problems, seeds, _), (problems_p, seeds_p, _) in zip(calls["grpo-s0"], calls["pods-s0"]):
        assert problems == problems_p and seeds == seeds_p
    assert calls["grpo-s0"][0][2] == calls["pods-s0"][0][2]       # step 0: same model
    problems_1, seeds_1, _ = calls["grpo-s1"][0]
    assert problems_1 == calls["grpo-s0"][0][0] and seeds_1 != calls["grpo-s0"][0][1]
