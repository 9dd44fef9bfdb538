"""The embedded default's model: a small Qwen2-architecture causal LM with a character-level
tokenizer and a "Q:{question}\\nA:" chat template, saved with `save_pretrained` so that
transformers and vLLM both load the folder. No download needed.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
CHARS = string.printable.replace("\t", "").replace("\r", "").replace("\x0b", "").replace("\x0c", "")

# A user turn renders as "Q:{content}\nA:" (the generation prompt is part of the user turn); a
# system turn is prepended plainly on its own line; an assistant turn is its content plus EOS.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}Q:{{ message['content'] }}\nA:"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
)


def _byte_char(ch: str) -> str:
    """GPT-2 byte-level alphabet for an ASCII character: printable bytes map to themselves,
    bytes 0-32 (space, newline, ...) to chr(256 + byte): space -> U+0120, newline -> U+010A."""
    b = ord(ch)
    return ch if 33 <= b <= 126 else chr(256 + b)


def char_tokenizer():
    """A character-level tokenizer: ids 0-3 for <pad> <bos> <eos> <unk>, then one token per
    character of printable ASCII (space and newline included); decoding concatenates characters,
    so `decode(encode(text)) == text` for such text (other characters are dropped).

    It is a byte-level BPE with no merges, built as `Qwen2Tokenizer`, because that is the class
    `AutoTokenizer` (and so vLLM) rebuilds for a Qwen2 model folder whatever tokenizer.json says.
    """
    from transformers import Qwen2Tokenizer

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + [_byte_char(c) for c in CHARS])}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(
    out_dir: str | Path,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 4,
    max_position: int = 512,
    seed: int = 0,
) -> Path:
    """Build, randomly initialise (deterministically per `seed`) and save the tiny default policy.

    Qwen2 architecture with tied embeddings and an MLP of width 2 * hidden: about 0.67M
    parameters at the defaults. Returns `out_dir`, which holds config, weights (safetensors),
    generation config and tokenizer.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    for name, value in {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "max_position": max_position,
    }.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden must be divisible by heads and heads by kv_heads; "
            f"got hidden={hidden}, heads={heads}, kv_heads={kv_heads}"
        )
    tokenizer = char_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
