"""Rollouts with vLLM's offline `LLM`, run in-process, with weight sync after every update.

- Each sampled token's log-prob, when `SamplingParams.logprobs` asks, is that of the
  distribution it was drawn from (`logprobs_mode="processed_logprobs"`: temperature and top-p
  applied), as the hf engine reports it.
- Prompts go in as token ids (tokenised here with add_special_tokens=False), so both engines
  see the same tokens; completions are decoded here with the same tokenizer.
- n samples per prompt come from one request (`SamplingParams(n=...)`). With per-prompt seeds
  (or a call seed) every request carries its own seed, so a prompt's samples do not depend on
  the rest of the batch; without, vLLM's global generator (seeded at start) is used.
- `sync_weights` copies `merged_state_dict(policy)` (all keys, the tied lm_head.weight
  included, LoRA merged) into the engine's own parameters, in place, through the model's
  `load_weights` (vLLM's weight loaders fuse q/k/v and gate/up), and resets the prefix cache,
  whose blocks hold keys/values computed with the old weights. It runs in the worker, reached
  with `collective_rpc`, which calls it directly in this process
  (VLLM_ENABLE_V1_MULTIPROCESSING=0). On CPU vLLM packs each linear layer's weight into a
  kernel of its own at load time and drops the weight; the engine starts with the weights kept
  (`_weights_kept`: one more copy of the linear weights in memory) and the sync re-packs them,
  a few milliseconds for the tiny model, where vLLM's general `reload_weights` (which rebuilds
  every layer) takes several times that. On GPU the weights are used as they are.
- Inside a torch.distributed group (one engine per data-parallel rank, under torchrun or
  accelerate launch) vLLM joins that group instead of making its own, with the
  `external_launcher` executor: rank and device come from the launcher's RANK and LOCAL_RANK
  (the default executor would put every rank's engine on device 0). With tensor parallel size
  1 each rank's engine is independent and generates its own prompts: vLLM's world group is the
  ranks' group, its model-parallel groups hold one rank each. Making them is collective, so
  every rank starts its engine at the same point. Closing an engine leaves the ranks' group
  working (see `_shutdown`).
- The KV cache on CPU is sized by what the engine is asked to hold, not by the machine: vLLM's
  CPU worker would otherwise reserve gpu_memory_utilization of the memory node's RAM minus the
  process's resident memory, which fails on a small node (`kv_cache_bytes`). On GPU,
  gpu_memory_utilization decides, as vLLM's default.
- A start that fails (or is interrupted) and `close` leave the process as they found it: vLLM's
  process groups destroyed, the environment variables it set and torch's thread setting
  restored, so that the next engine in the process starts cleanly.
"""

from __future__ import annotations

import gc
import math
import os
import weakref
from contextlib import contextmanager, nullcontext
from unittest import mock

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # must precede `import vllm`

import torch
from torch import nn

from podslib.models.loading import DTYPES, merged_state_dict, resolve_model_path
from podslib.rollout.base import Completion, Engine, Group, SamplingParams, check_generate_args
from podslib.seeding import derive_seed

CPU_BLOCK_TOKENS = 128   # vLLM's KV-cache block on CPU (vllm/platforms/cpu.py)
CPU_MAX_NUM_SEQS = 256   # vLLM's default max_num_seqs on CPU (EngineArgs.get_batch_defaults)
KV_MARGIN = 1.25         # on top of whole blocks per sequence
NO_COMPILER = ("vLLM could not compile the model: torch.compile needs a working C++ compiler on "
               "a CPU and found none; install one (Debian/Ubuntu: apt-get install g++) or set "
               "enforce_eager: true (slower generation)")


def kv_cache_bytes(model_config, dtype: str, max_num_seqs: int, max_model_len: int) -> int:
    """KV-cache bytes that hold `max_num_seqs` sequences of `max_model_len` tokens at once (each
    in whole blocks, plus the one block vLLM holds back), times KV_MARGIN. A token takes keys
    and values in every layer: 2 x layers x KV heads x head size x the dtype's bytes
    (`model_config`: a transformers config)."""
    text = model_config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_size = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_size * DTYPES[dtype].itemsize
    blocks = max_num_seqs * math.ceil(max_model_len / CPU_BLOCK_TOKENS) + 1
    return math.ceil(blocks * CPU_BLOCK_TOKENS * per_token * KV_MARGIN)


class VLLMEngine(Engine):
    """An in-process vLLM engine serving the model saved at `model_path`."""

    name = "vllm"

    def __init__(
        self,
        model_path,
        tokenizer=None,
        device: str = "cpu",
        dtype: str = "float32",
        seed: int = 0,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
    ):
        """max_model_len: the longest prompt + completion (None: the model's limit; capped by
        it). max_num_seqs: the most sequences generated at once (None: vLLM's default); on CPU
        at most CPU_MAX_NUM_SEQS, and with max_model_len it sizes the KV cache unless
        `kv_cache_memory_bytes` is given. On GPU vLLM keeps its own max_num_seqs and sizes
        the cache from gpu_memory_utilization (or `kv_cache_memory_bytes`). enforce_eager:
        run the model eagerly; else vLLM compiles it (torch.compile; CUDA graphs on GPU)."""
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise ValueError(
                "VLLM_ENABLE_V1_MULTIPROCESSING must be '0' (in-process engine, needed "
                f"for weight sync); got {os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}"
            )
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                "gpu_memory_utilization must be in (0, 1] (the share of GPU memory vLLM "
                f"reserves); got {gpu_memory_utilization!r}"
            )
        for name, value in (("max_model_len", max_model_len), ("max_num_seqs", max_num_seqs),
                            ("kv_cache_memory_bytes", kv_cache_memory_bytes)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1; got {value!r}")
        import vllm
        from transformers import AutoConfig, AutoTokenizer
        from vllm.platforms import current_platform

        path = resolve_model_path(model_path)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        limit = getattr(config.get_text_config(), "max_position_embeddings", None)
        if limit is not None:
            max_model_len = min(max_model_len or limit, limit)
        if current_platform.is_cpu():
            if max_model_len is None:
                raise ValueError("max_model_len is needed to size vLLM's KV cache on CPU (the "
                                 f"config of {path} has no max_position_embeddings); got None")
            max_num_seqs = min(max_num_seqs or CPU_MAX_NUM_SEQS, CPU_MAX_NUM_SEQS)
            kv_cache_memory_bytes = kv_cache_memory_bytes or kv_cache_bytes(
                config, dtype, max_num_seqs, max_model_len)
        else:
            max_num_seqs = None
        in_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        environ, threads = dict(os.environ), torch.get_num_threads()
        clients = []
        try:
            with _kept_set_num_threads(), _recorded_clients(clients), _weights_kept():
                self.llm = vllm.LLM(
                    model=path,
                    seed=seed,
                    dtype=dtype,
                    max_model_len=max_model_len,
                    max_num_seqs=max_num_seqs,
                    gpu_memory_utilization=gpu_memory_utilization,
                    kv_cache_memory_bytes=kv_cache_memory_bytes,
                    enforce_eager=enforce_eager,
                    logprobs_mode="processed_logprobs",      # the sampling distribution's
                    distributed_executor_backend="external_launcher" if in_group else None,
                )
        except BaseException as err:
            _stop(clients, in_group)
            _restore(_changed(environ), threads)
            if "InvalidCxxCompiler" in str(err):
                raise RuntimeError(NO_COMPILER) from err
            raise
        # The in-process client shuts the engine core down when collected or at exit; that and
        # `close` go through `_shutdown`.
        client = self.llm.llm_engine.engine_core
        client._finalizer.detach()
        client._finalizer = weakref.finalize(client, _shutdown, client.engine_core, in_group)
        self.environ_before, self.threads_before = _changed(environ), threads

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, seeds: list[int] | None = None
    ) -> list[Group]:
        import vllm

        check_generate_args(prompts, n, sampling, seeds)
        if self.llm is None:
            raise RuntimeError("this vllm engine is closed; make a new one with make_engine")
        if not prompts:
            return []
        if seeds is None and sampling.seed is not None:
            seeds = [derive_seed(sampling.seed, "prompt", i) for i in range(len(prompts))]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        per_request = 1 if sampling.greedy else n  # vLLM refuses n > 1 with greedy decoding
        params = [
            vllm.SamplingParams(
                n=per_request,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=None if seeds is None else seeds[i],
                logprobs=0 if sampling.logprobs else None,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": row} for row in ids], params, use_tqdm=False
        )
        return [
            Group(p, row, [self._completion(c) for c in out.outputs * (n // per_request)])
            for p, row, out in zip(prompts, ids, outputs)
        ]

    def _completion(self, output) -> Completion:
        """vLLM CompletionOutput -> Completion (with the sampled tokens' log-probs when asked)."""
        token_ids = list(output.token_ids)
        logprobs = None
        if output.logprobs is not None:
            logprobs = [step[tok].logprob for step, tok in zip(output.logprobs, token_ids)]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(text, token_ids, output.finish_reason, logprobs)

    @torch.no_grad()
    def sync_weights(self, policy: nn.Module) -> None:
        """Copy `policy`'s weights (LoRA merged) into the engine and drop cached prefixes."""
        if self.llm is None:
            raise RuntimeError("this vllm engine is closed; make a new one with make_engine")
        self.llm.collective_rpc(_load_weights, args=(merged_state_dict(policy),))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down, free its weights and KV cache and undo its environment
        variables and thread setting, so that another engine (or anything else) can start
        cleanly. Inside a process group the group stays usable (see `_shutdown`)."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core._finalizer()  # `_shutdown`, once
        self.llm = None
        _restore(self.environ_before, self.threads_before)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_weights(worker, weights: dict[str, torch.Tensor]) -> None:
    """In the worker: copy `weights` into the model's parameters through its weight loaders,
    then re-pack the CPU kernels of the layers that have one (see `_weights_kept`)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    model = worker.get_model()
    loaded = model.load_weights(iter(weights.items()))   # the names loaded (some models: None)
    missed = sorted({name for name, _ in model.named_parameters()} - set(loaded or ()))
    if loaded is not None and missed:
        raise RuntimeError(f"vLLM's model got no weights for {missed[:5]} from the policy's "
                           f"state dict ({len(missed)} parameters); is it the same architecture?")
    for module in model.modules():
        if hasattr(module, "cpu_linear") and module.weight.ndim == 2 \
                and not getattr(module, "_cpu_skip_gemm_dispatch", False):
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


@contextmanager
def _weights_kept():
    """vLLM's CPU build packs each linear layer's weight for its GEMM kernel and then drops the
    weight; keep it, so that `_load_weights` can copy new weights in place and re-pack."""
    from vllm.model_executor.layers import utils

    dispatch = utils.dispatch_cpu_unquantized_gemm

    def keeping(layer, remove_weight: bool) -> None:
        dispatch(layer, remove_weight=False)

    with mock.patch.object(utils, "dispatch_cpu_unquantized_gemm", keeping):
        yield


def _changed(before: dict[str, str]) -> dict[str, str | None]:
    """The environment variables that differ from `before`, with their values there (None:
    absent)."""
    return {key: before.get(key) for key in set(before) | set(os.environ)
            if before.get(key) != os.environ.get(key)}


def _restore(environ: dict[str, str | None], threads: int) -> None:
    """Put back environment variables (`_changed`) and torch's intra-op thread count."""
    for key, value in environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    torch.set_num_threads(threads)


@contextmanager
def _kept_set_num_threads():
    """vLLM's CPU worker replaces torch.set_num_threads with a no-op; put it back."""
    set_num_threads = torch.set_num_threads
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads


@contextmanager
def _recorded_clients(clients: list):
    """Append every engine-core client vLLM makes to `clients`, so that a start failing after
    one was made can shut it down."""
    from vllm.v1.engine.core_client import EngineCoreClient

    make_client = EngineCoreClient.make_client

    def recording(*args, **kwargs):
        clients.append(make_client(*args, **kwargs))
        return clients[-1]

    with mock.patch.object(EngineCoreClient, "make_client", recording):
        yield


def _stop(clients: list, in_group: bool) -> None:
    """Undo a start that failed: shut down the engine core if one was made, else destroy the
    process groups vLLM had made before it failed (inside a caller's group, only vLLM's)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    for client in clients:
        client._finalizer.detach()
        _shutdown(client.engine_core, in_group)
    if not clients:
        with _callers_group_kept(in_group):
            cleanup_dist_env_and_memory()


def _shutdown(core, in_group: bool) -> None:
    """Stop vLLM's engine core (on `close`, else when collected or at interpreter exit).

    EngineCore.shutdown ends with vLLM's cleanup_dist_env_and_memory, which destroys vLLM's
    process groups and then torch's default group. Outside a group that is the group vLLM
    created; inside one it is the caller's, so there only vLLM's groups (subgroups of the
    caller's) are destroyed. An engine left open when a rank fails is shut down at exit, after
    the caller destroyed its group and vLLM's with it: vLLM then only drops its references."""
    with _callers_group_kept(in_group):
        core.shutdown()


def _callers_group_kept(in_group: bool):
    """Inside a caller's process group, make torch's destroy_process_group destroy only the
    subgroups it is given, never the caller's default group; outside one, change nothing."""
    if not in_group:
        return nullcontext()
    destroy = torch.distributed.destroy_process_group

    def destroy_subgroup(group=None) -> None:
        if group is not None and torch.distributed.is_initialized():
            destroy(group)

    return mock.patch.object(torch.distributed, "destroy_process_group", destroy_subgroup)
