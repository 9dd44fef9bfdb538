"""podslib.models.loading: the tiny model factory, policy / reference loading, LoRA merging."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from podslib.models.loading import LoraSettings, load_policy, load_reference, merged_state_dict
from podslib.models.tiny import make_tiny_model

TEXT = "Q:46+75-28+65\nA:46+75=121\n121-28=93\n93+65=158\n#### 158 (ok) ~`|{}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_tiny_model_shape_and_size(tiny):
    """Defaults: hidden 128, 4 layers, 4 heads, tied embeddings; 100-token vocab (4 specials +
    95 printable + newline). Parameters by hand: embedding 100*128 = 12,800; per layer q,k,v
    3 * (128*128 + 128) = 49,536, o 128*128 = 16,384, MLP 3 * 128*256 = 98,304, two RMSNorms
    256: 164,480; final norm 128: 12,800 + 4 * 164,480 + 128 = 670,848."""
    model = AutoModelForCausalLM.from_pretrained(tiny)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        "qwen2",
        128,
        4,
        4,
    )
    assert cfg.tie_word_embeddings and cfg.vocab_size == 100
    assert sum(p.numel() for p in model.parameters()) == 670_848


def test_tokenizer_round_trips_characters(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)  # one token per character
    assert tok.decode(ids) == TEXT
    assert tok.convert_ids_to_tokens(ids[:2]) == ["Q", ":"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == TEXT


def test_chat_template_renders_q_a(tiny):
    tok = AutoTokenizer.from_pretrained(tiny)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "46+75"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "Q:46+75\nA:"
    with_system = tok.apply_chat_template(
        [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert with_system == "Add.\nQ:1+2\nA:"


def test_tiny_model_is_deterministic_per_seed(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "a", seed=3)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "b", seed=3)).state_dict()
    c = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "c", seed=4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"]
    )


def test_tiny_model_options(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        make_tiny_model(tmp_path, hidden=64, layers=2, heads=4, kv_heads=2)
    )
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)
    with pytest.raises(ValueError, match="kv_heads"):
        make_tiny_model(tmp_path / "x", heads=4, kv_heads=3)


def test_load_policy(tiny):
    model, tok = load_policy(tiny, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok.padding_side == "left"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_policy(tiny.parent / "nowhere")
    with pytest.raises(ValueError, match="dtype"):
        load_policy(tiny, dtype="float8")


def test_lora_settings_validation():
    with pytest.raises(ValueError, match="r must"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.5)
    with pytest.raises(ValueError, match="target_modules"):
        LoraSettings(target_modules="q_proj")


def _step(model, tok, lr=1e-2):
    """One SGD step of next-token loss on TEXT."""
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


def test_lora_policy_trains_only_the_adapter(tiny):
    model, _tok = load_policy(tiny, lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum("lora_A" in n for n in trainable) == 4 * 7  # 7 target modules per layer


def test_merged_state_dict_full_model_has_all_keys(tiny):
    model, _ = load_policy(tiny)
    merged = merged_state_dict(model)
    assert set(merged) == set(model.state_dict()) and "lm_head.weight" in merged
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])


def test_merged_state_dict_lora_equals_w_plus_scaled_ba(tiny):
    """After a step the adapter is non-zero; merged q_proj = W + (alpha / r) * B @ A, computed
    out of place, and a plain model loaded with the merged weights gives the LoRA policy's
    logits."""
    model, tok = load_policy(tiny, lora=LoraSettings(r=4, alpha=8))
    _step(model, tok)
    layer = model.get_base_model().model.layers[1].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert b.abs().sum() > 0
    merged = merged_state_dict(model)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    assert set(merged) == set(base.state_dict())
    expected = layer.base_layer.weight + (8 / 4) * b @ a
    torch.testing.assert_close(merged["model.layers.1.self_attn.q_proj.weight"], expected)
    assert torch.equal(layer.base_layer.weight, base.model.layers[1].self_attn.q_proj.weight)
    base.load_state_dict(merged)
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            base(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_reference_is_frozen_copy(tiny):
    model, tok = load_policy(tiny)
    ref = load_reference(model, tiny)
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    mask = torch.ones_like(ids)
    before = ref(ids, mask)
    _step(model, tok)
    assert not before.requires_grad
    torch.testing.assert_close(ref(ids, mask), before)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, before)
    copied = load_reference(model)  # no path: copy of the current weights
    with torch.no_grad():
        torch.testing.assert_close(copied(ids, mask), model(ids).logits)


def test_reference_of_lora_policy_disables_the_adapter(tiny):
    model, tok = load_policy(tiny, lora=LoraSettings(r=4, alpha=8))
    _step(model, tok)
    model.train()
    ref = load_reference(model, tiny)
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        torch.testing.assert_close(ref(ids, torch.ones_like(ids)), base(ids).logits)
        assert not torch.allclose(model(input_ids=ids).logits, base(ids).logits)
    assert model.training  # mode restored
