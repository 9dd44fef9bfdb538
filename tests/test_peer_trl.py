"""The kit against TRL's own GRPOTrainer (the `trl` of requirements/peer.txt, which `make setup`
installs beside the kit without changing torch or transformers): TRL's code is the oracle.

On one batch of the tiny model (four prompts of different lengths, four completions each, some
cut at the token limit, right padding, one group whose rewards are all equal):
- TRL's `_generate_and_score_completions`, its generation and rewards replaced by fixed values,
  lays the batch out as the kit's `build_batch` does and gives the kit's advantages for every
  shared scaling;
- TRL's `_compute_loss`, its per-token log-prob function returning the kit's tensor, gives the
  kit's loss and gradient for every shared aggregation, at ratio 1 and with clipping, with and
  without the KL term, in one batch and in two micro-batches;
- with TRL's own forward pass, the kit's update (`podslib.training.update`) gives TRL's gradient,
  entropy and KL at both values of Config.logprob_temperature.

Names (kit -> TRL `loss_type`): grpo -> grpo; bnpo and dapo (one aggregation, a token mean over
the whole batch) -> dapo; dr_grpo -> dr_grpo (both divide by the configured completion length).
TRL's bnpo is a token mean per micro-batch: the kit's bnpo only with one micro-batch.
Config.scale_rewards group / batch / none -> TRL's scale_rewards of the same names.
Config.logprob_temperature: TRL always divides the logits by its sampling `temperature`; the
kit's 'sampling' does the same, its default 'one' is TRL with temperature 1. The KL term: the
kit's is TRL's with use_bias_correction_kl=False (TRL 1.16's default multiplies it by the ratio).

Skipped when TRL is not installed, except under CI=true, where that is a failure.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_checks import sft

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError:
    if os.environ.get("CI") == "true":
        pytest.fail("trl is not importable but CI=true requires the TRL parity tests (make setup "
                    "installs requirements/peer.txt)", pytrace=False)
    pytest.skip("trl is not installed (make setup installs requirements/peer.txt)",
                allow_module_level=True)

from podslib.config import Config
from podslib.core.advantages import group_advantages
from podslib.core.loss import grpo_loss
from podslib.models.loading import load_policy, load_reference
from podslib.models.tiny import make_tiny_model
from podslib.rollout import Completion, Group
from podslib.training import update as U
from podslib.training.batch import build_batch, completion_logprobs, micro_batches

pytestmark = pytest.mark.slow        # importing TRL imports vLLM

REPO = Path(__file__).resolve().parents[1]
C = 12                               # max completion tokens (dr_grpo's normaliser in both)
PROMPTS = ["Q:1+2\nA:", "Q:46+75-28\nA:", "Q:9\nA:", "Q:70-3+12+5\nA:"]
COMPLETIONS = [["1+2=3", "3", "1+2=4", "12"],
               ["46+75=121", "121-28=93", "93", "46+75-28=93+1"],
               ["9", "9", "8", "9=9"],
               ["70-3=67", "67+12=79+5=84", "84", "70"]]
REWARDS = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                        [0.0, 0.5, 1.0, 0.0],
                        [1.0, 1.0, 1.0, 1.0],              # all equal: advantages exactly 0
                        [0.0, 0.25, 1.0, 0.0]])
G, N = REWARDS.shape
AGGREGATIONS = [("grpo", "grpo"), ("bnpo", "dapo"), ("dapo", "dapo"), ("dr_grpo", "dr_grpo")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of the untrained tiny model, a briefly trained copy, tokenizer): the trained one is
    the policy, the untrained one (what TRL loads from the policy's config) the reference."""
    path = make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)
    model, tok = load_policy(path)
    return path, sft(model, tok, steps=40).train(), tok


@pytest.fixture(scope="module")
def groups(tiny):
    """G groups of N completions, the EOS appended unless cut at C tokens ('length')."""
    _, _, tok = tiny
    out = []
    for prompt, texts in zip(PROMPTS, COMPLETIONS):
        comps = []
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            stop = len(ids) < C
            ids = ids + [tok.eos_token_id] if stop else ids[:C]
            comps.append(Completion(tok.decode(ids, skip_special_tokens=True), ids,
                                    "stop" if stop else "length"))
        out.append(Group(prompt, tok(prompt, add_special_tokens=False)["input_ids"], comps))
    return out


def kit_batch(groups, tok, scale="group"):
    idx = torch.arange(N).expand(G, N)
    adv = group_advantages(REWARDS, scale=scale)
    return build_batch(groups, idx, adv, torch.ones(G, N, dtype=torch.bool), tok.pad_token_id)


def trainer(model, tok, tmp_path, **overrides) -> GRPOTrainer:
    """A real GRPOTrainer on its own copy of `model` (TRL patches the model's forward), set up
    as the kit's step: one process, float32, no gradient checkpointing, beta 0 unless given,
    the KL term the paper's (TRL's default use_bias_correction_kl multiplies it by the ratio,
    which changes its gradient even at ratio 1)."""
    from datasets import Dataset

    args = {"output_dir": str(tmp_path / "trl"), "per_device_train_batch_size": G * N,
            "num_generations": N, "max_completion_length": C, "temperature": 0.9,
            "loss_type": "grpo", "beta": 0.0, "use_bias_correction_kl": False,
            "report_to": "none", "use_cpu": True, "bf16": False, "gradient_checkpointing": False,
            "save_strategy": "no"} | overrides
    t = GRPOTrainer(model=copy.deepcopy(model), args=GRPOConfig(**args),
                    reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                    train_dataset=Dataset.from_dict({"prompt": PROMPTS * N}),
                    processing_class=tok)
    t.model.train()
    t.current_gradient_accumulation_steps = args.get("gradient_accumulation_steps", 1)
    return t


def trl_batch(t: GRPOTrainer, groups, monkeypatch) -> dict:
    """TRL's `_generate_and_score_completions` on the N rows of each prompt, generation and
    rewards replaced by the fixed completions and REWARDS."""
    completions = [c.token_ids for g in groups for c in g.completions]
    monkeypatch.setattr(t, "_generate_single_turn", lambda *a, **k: (completions, None))
    monkeypatch.setattr(t, "_calculate_rewards", lambda *a, **k: REWARDS.reshape(-1, 1))
    return t._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(N)])


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


# ------------------------------------------------------------------------------------------------
# the batch and its advantages
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_and_layout_equal_trls(tiny, groups, tmp_path, monkeypatch, scale):
    """Both use the sample std and add 1e-4 to it; the all-equal group gets exact zeros in
    both. TRL's prompt (left-padded) and completion (right-padded) tensors are the kit's."""
    _, model, tok = tiny
    out = trl_batch(trainer(model, tok, tmp_path, scale_rewards=scale), groups, monkeypatch)
    batch = kit_batch(groups, tok, scale)
    torch.testing.assert_close(out["advantages"], batch.advantages, rtol=0, atol=1e-6)
    assert (out["advantages"][8:12] == 0).all() and (batch.advantages[8:12] == 0).all()
    P = batch.prompt_len
    assert torch.equal(out["prompt_ids"], batch.input_ids[:, :P])
    assert torch.equal(out["prompt_mask"], batch.attention_mask[:, :P])
    assert torch.equal(out["completion_ids"], batch.input_ids[:, P:])
    assert torch.equal(out["completion_mask"].float(), batch.completion_mask)
    assert int(out["num_items_in_batch"]) == int(batch.completion_mask.sum())


# ------------------------------------------------------------------------------------------------
# the loss on given log-probs
# ------------------------------------------------------------------------------------------------

def given_logprobs(model, batch, clipped: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probs [B, C] of the policy, old log-probs, reference log-probs), 0 on padding as
    TRL's head gives them; old = current (ratio 1) or perturbed so that tokens are clipped."""
    mask = batch.completion_mask
    with torch.no_grad():
        logprobs = completion_logprobs(model, batch) * mask
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(logprobs.shape, generator=gen) * mask
    old = logprobs + 0.3 * noise if clipped else logprobs
    return logprobs, old, logprobs + 0.2 * torch.randn(logprobs.shape, generator=gen) * mask


def trl_loss(t: GRPOTrainer, inputs: dict, logprobs: torch.Tensor, monkeypatch):
    """TRL's `_compute_loss` with its per-token log-probs replaced by `logprobs` (a leaf):
    (loss, d loss / d logprobs)."""
    leaf = logprobs.clone().requires_grad_(True)
    monkeypatch.setattr(t, "_get_per_token_logps_and_entropies",
                        lambda *a, **k: (leaf, torch.zeros_like(leaf), None))
    loss = t._compute_loss(t.model, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


def kit_loss(batch, logprobs, old, ref, beta, aggregation, **totals):
    leaf = logprobs.clone().requires_grad_(True)
    loss, stats = grpo_loss(leaf, old, batch.advantages, batch.completion_mask, beta=beta,
                            ref_logprobs=ref, aggregation=aggregation, max_len=C, **totals)
    loss.backward()
    return loss.detach(), leaf.grad, stats


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("clipped", [False, True])
@pytest.mark.parametrize(("kit_name", "trl_name"), AGGREGATIONS)
def test_loss_and_gradient_equal_trls(tiny, groups, tmp_path, monkeypatch, kit_name, trl_name,
                                      clipped, beta):
    _, model, tok = tiny
    t = trainer(model, tok, tmp_path, loss_type=trl_name, beta=beta)
    inputs = trl_batch(t, groups, monkeypatch)
    batch = kit_batch(groups, tok)
    logprobs, old, ref = given_logprobs(model, batch, clipped)
    if clipped:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    trl_value, trl_grad = trl_loss(t, inputs, logprobs, monkeypatch)
    value, grad, stats = kit_loss(batch, logprobs, old, ref if beta else None, beta, kit_name)
    assert (stats["clip_frac"] > 0.1) == clipped
    torch.testing.assert_close(value, trl_value, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-6, atol=1e-9)
    assert grad.abs().sum() > 0


def test_micro_batches_name_mapping(tiny, groups, tmp_path, monkeypatch):
    """Two micro-batches of 8 rows (52 and 36 tokens), gradients accumulated: the kit's grpo,
    bnpo and dr_grpo (normalised by the global counts) equal TRL's grpo, dapo and dr_grpo; TRL's
    bnpo is the mean of the two micro-batches' token means, which is not the kit's bnpo."""
    _, model, tok = tiny
    batch = kit_batch(groups, tok)
    logprobs, old, _ = given_logprobs(model, batch, clipped=True)
    halves = [slice(0, 8), slice(8, 16)]
    tokens = [int(batch.completion_mask[h].sum()) for h in halves]
    assert tokens[0] != tokens[1]
    totals = {"total_sequences": len(batch), "total_tokens": sum(tokens)}

    def trl_accumulated(loss_type):
        t = trainer(model, tok, tmp_path, loss_type=loss_type, per_device_train_batch_size=8,
                    gradient_accumulation_steps=2)
        full = trl_batch(t, groups, monkeypatch) | {"old_per_token_logps": old}
        parts = [trl_loss(t, {k: v[h] if k != "num_items_in_batch" else v
                              for k, v in full.items()}, logprobs[h], monkeypatch) for h in halves]
        return sum(v for v, _ in parts), torch.cat([g for _, g in parts])

    def kit_accumulated(aggregation):
        parts = [kit_loss(mb, logprobs[h], old[h], None, 0.0, aggregation, **totals)
                 for mb, h in zip(micro_batches(batch, 8), halves)]
        return sum(v for v, _, _ in parts), torch.cat([g for _, g, _ in parts])

    for kit_name, trl_name in [("grpo", "grpo"), ("bnpo", "dapo"), ("dr_grpo", "dr_grpo")]:
        kit, trl = kit_accumulated(kit_name), trl_accumulated(trl_name)
        torch.testing.assert_close(kit[0], trl[0], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(kit[1], trl[1], rtol=1e-6, atol=1e-9)
    trl_bnpo, kit_bnpo = trl_accumulated("bnpo"), kit_accumulated("bnpo")
    assert not torch.allclose(trl_bnpo[1], kit_bnpo[1], rtol=1e-3)
    per_part = [kit_loss(mb, logprobs[h], old[h], None, 0.0, "bnpo")[0] / 2
                for mb, h in zip(micro_batches(batch, 8), halves)]
    torch.testing.assert_close(trl_bnpo[0], sum(per_part), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# the whole update, TRL's own forward pass: the temperature of the training log-probs
# ------------------------------------------------------------------------------------------------

def kit_update(policy, path, batch, cfg: Config) -> dict:
    """The kit's update on `batch` with a zero learning rate: (stats, the gradient it took)."""
    policy = copy.deepcopy(policy)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    reference = load_reference(policy, path)
    stats = U.update(policy, optimizer, scheduler, batch, cfg, reference, len(batch),
                     int(batch.completion_mask.sum()))
    return stats, grads(policy)


@pytest.mark.parametrize("logprob_temperature", ["one", "sampling"])
def test_update_equals_trls_at_either_logprob_temperature(tiny, groups, tmp_path, monkeypatch,
                                                          logprob_temperature):
    """Sampling at T = 0.9 with the KL term (beta 0.04, the untrained model as reference): the
    kit's gradient, entropy and KL equal TRL's when TRL divides its logits by the kit's
    training temperature (T for 'sampling', 1 for 'one'); TRL at T differs from 'one'."""
    path, model, tok = tiny
    cfg = Config(temperature=0.9, logprob_temperature=logprob_temperature, beta=0.04,
                 max_completion_tokens=C, micro_batch_size=G * N, max_grad_norm=0.0)
    stats, kit_grad = kit_update(model, path, kit_batch(groups, tok), cfg)

    def trl_update(temperature):
        t = trainer(model, tok, tmp_path, temperature=temperature, beta=0.04)
        t._compute_loss(t.model, trl_batch(t, groups, monkeypatch)).backward()
        return t._metrics["train"], grads(t.model)

    metrics, trl_grad = trl_update(cfg.training_temperature)
    torch.testing.assert_close(kit_grad, trl_grad, rtol=1e-4, atol=1e-6)
    assert stats["entropy"] == pytest.approx(metrics["entropy"][-1], rel=1e-5)
    assert stats["kl"] == pytest.approx(metrics["kl"][-1], rel=1e-4)
    assert stats["kl"] > 1e-3
    if logprob_temperature == "one":
        _, tempered = trl_update(0.9)
        assert not torch.allclose(kit_grad, tempered, rtol=1e-2)


# ------------------------------------------------------------------------------------------------
# the yardstick
# ------------------------------------------------------------------------------------------------

def test_bench_quick_writes_the_table(tmp_path, cache_dir):
    """bench/peer_trl.py --quick (one repetition of 3 interleaved steps, a small untrained
    model; 8 generations for memory) writes the table: every row timed on both sides with an
    interval around its ratio, and the memory of TRL's 8 rows per prompt beside PODS 8 -> 4."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "peer_trl.py"), "--quick",
                          "--out", str(tmp_path), "--cache", str(cache_dir)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "peer_trl.json").read_text())
    assert [(r["work"], r["engine"]) for r in result["time"]] == [
        ("GRPO, 4 generations", "hf"), ("GRPO, 16 generations", "hf"),
        ("kit PODS 16 -> 4 vs TRL 16", "hf")]
    for row in result["time"]:
        assert 0 < row["kit_generate_s"] < row["kit_s"] and 0 < row["trl_generate_s"] < row["trl_s"]
        assert row["low"] <= row["ratio"] <= row["high"]
        assert row["ratio"] == pytest.approx(row["trl_s"] / row["kit_s"])
    memory = result["memory"]
    assert [memory[k]["rollouts_trained"] for k in ("trl", "kit_grpo", "kit_pods")] == [16, 16, 8]
    assert all(memory[k]["update_peak_mib"] > 0 for k in memory)
    table = (tmp_path / "peer_trl.md").read_text()
    assert "| GRPO, 16 generations | hf |" in table and "TRL 8 / kit PODS 8 -> 4:" in table
