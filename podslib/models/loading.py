"""Policy and reference loading (the embedded tiny model is in `podslib.models.tiny`).

- `load_policy` loads any Hugging Face causal LM, optionally wrapped in a peft LoRA adapter.
- `load_reference` gives the frozen reference policy pi_ref for the KL term of the GRPO loss.
- `merged_state_dict` gives the weights under base-model names with LoRA merged: what the
  rollout engines need after every update (`Engine.sync_weights`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# Every attention and MLP projection of a Llama / Qwen2 block (the paper's LoRA targets).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft): W' = W + (alpha / r) * B @ A on each target module."""

    r: int = 64
    """Adapter rank."""
    alpha: float = 64
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input during training."""
    target_modules: tuple[str, ...] = LORA_TARGETS
    """Names of the linear layers that get an adapter."""

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"lora r must be a positive integer; got {self.r!r}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be positive; got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1); got {self.dropout!r}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                "lora target_modules must be a non-empty sequence of module names; "
                f"got {self.target_modules!r}"
            )
        self.target_modules = tuple(self.target_modules)


def resolve_model_path(path: str | Path) -> str:
    """A local folder must exist; a hub id ("org/name") is passed on to transformers as is."""
    text = str(path)
    looks_local = Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
    if not Path(text).expanduser().exists() and looks_local:
        raise FileNotFoundError(
            f"model path {text!r} does not exist; pass a folder saved with "
            "save_pretrained (e.g. from make_tiny_model) or a hub id"
        )
    return str(Path(text).expanduser()) if Path(text).expanduser().exists() else text


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_policy(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    lora: LoraSettings | None = None,
):
    """Load a causal LM and its tokenizer (left padding) for training; with `lora`, wrap the
    model in a peft LoRA adapter so that only the adapter weights require grad.

    Returns (model, tokenizer). Missing local folder -> FileNotFoundError naming it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=_dtype(dtype), trust_remote_code=trust_remote_code
    ).to(device)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    return model, tokenizer


def is_peft(model: nn.Module) -> bool:
    """True when `model` is a peft model (its base weights sit under an adapter)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class Reference:
    """The reference policy pi_ref of the KL term, evaluated without grad and in eval mode.

    For a peft policy it is the policy itself with the adapter disabled (no second copy of the
    weights); otherwise a frozen model. `active()` is the one way to run it.
    """

    def __init__(self, model: nn.Module, adapter_off: bool):
        self.model = model
        self.adapter_off = adapter_off

    @contextmanager
    def active(self):
        """Yields the model computing pi_ref (adapter disabled), in eval mode, without grad."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), (self.model.disable_adapter() if self.adapter_off
                                   else nullcontext()):
                yield self.model
        finally:
            self.model.train(was_training)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids [B, T], attention_mask [B, T] -> logits [B, T, V]."""
        with self.active() as model:
            return model(input_ids=input_ids, attention_mask=attention_mask).logits


def load_reference(
    policy: nn.Module,
    path: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> Reference:
    """Reference policy for the KL term: the adapter disabled when `policy` is a peft model,
    else a frozen copy, loaded from `path` when given (e.g. the warm-start checkpoint) or copied
    from `policy`'s current weights."""
    if is_peft(policy):
        return Reference(policy, adapter_off=True)
    if path is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=_dtype(dtype))
    else:
        model = copy.deepcopy(policy).to(_dtype(dtype))
    model = model.to(device).eval().requires_grad_(False)
    return Reference(model, adapter_off=False)


def _merged_lora_weight(module: nn.Module) -> Tensor:
    """W + sum over active adapters of scale * B @ A, computed out of place (the training module
    is left as it is). A layer already merged by peft holds the merged weight in base_layer."""
    weight = module.get_base_layer().weight.detach()
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight.clone()
    delta = sum(
        module.get_delta_weight(name).detach()
        for name in module.active_adapters
        if name in module.lora_A
    )
    return weight + delta if isinstance(delta, Tensor) else weight.clone()


def merged_state_dict(policy: nn.Module) -> dict[str, Tensor]:
    """All weights of `policy` under the base model's names ("model.layers.0.mlp.up_proj.weight",
    ..., and "lm_head.weight" even when tied to the embedding), with any LoRA adapter merged.

    Tensors are detached; for a full model they share storage with the policy, so copy before
    the next optimizer step if you keep them.
    """
    if not is_peft(policy):
        state = {k: v.detach() for k, v in policy.state_dict().items()}
        if "lm_head.weight" not in state and getattr(policy.config, "tie_word_embeddings", False):
            state["lm_head.weight"] = policy.get_input_embeddings().weight.detach()
        return state
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    state = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            state[f"{name}.weight"] = _merged_lora_weight(module)
            bias = module.get_base_layer().bias
            if bias is not None:
                state[f"{name}.bias"] = bias.detach()
    for key, value in base.state_dict().items():
        if ".lora_" in key or ".base_layer." in key:
            continue
        state[key] = value.detach()
    if "lm_head.weight" not in state and getattr(base.config, "tie_word_embeddings", False):
        state["lm_head.weight"] = base.get_input_embeddings().weight.detach()
    return state
