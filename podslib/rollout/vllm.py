"""Rollouts with vLLM's offline `LLM`, run in-process, with weight sync after every update.

- Each sampled token's log-prob, when `SamplingParams.logprobs` asks, is that of the
  distribution it was drawn from (`logprobs_mode="processed_logprobs"`: temperature and top-p
  applied), as the hf engine reports it.
- Prompts go in as token ids (tokenised here with add_special_tokens=False), so both engines
  see the same tokens; completions are decoded here with the same tokenizer.
- n samples per prompt come from one request (`SamplingParams(n=...)`). With per-prompt seeds
  (or a call seed) every request carries its own seed, so a prompt's samples do not depend on
  the rest of the batch; without, vLLM's global generator (seeded at start) is used.
- `sync_weights` pushes `merged_state_dict(policy)` (all keys, the tied lm_head.weight
  included, LoRA merged) through the worker's `reload_weights` and resets the prefix cache,
  whose blocks hold keys/values computed with the old weights. The CPU build repacks linear
  weights at load time, so `model.load_weights` fails there; `reload_weights` undoes and redoes
  the repacking. It is reached with `collective_rpc`, which calls the worker directly in
  this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) on CPU and GPU builds alike.
- Inside a torch.distributed group (one engine per data-parallel rank, under torchrun or
  accelerate launch) vLLM joins that group instead of making its own, with the
  `external_launcher` executor: rank and device come from the launcher's RANK and LOCAL_RANK
  (the default executor would put every rank's engine on device 0). With tensor parallel size
  1 each rank's engine is independent and generates its own prompts: vLLM's world group is the
  ranks' group, its model-parallel groups hold one rank each. Making them is collective, so
  every rank starts its engine at the same point. On CPU, gpu_memory_utilization is the share
  of the memory node's RAM each rank's engine reserves. Closing an engine leaves the ranks'
  group working (see `_shutdown`).
"""

from __future__ import annotations

import gc
import os
import weakref
from unittest import mock

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # must precede `import vllm`

import torch
from torch import nn

from podslib.models.loading import merged_state_dict, resolve_model_path
from podslib.rollout.base import Completion, Engine, Group, SamplingParams, check_generate_args
from podslib.seeding import derive_seed


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
    ):
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise ValueError(
                "VLLM_ENABLE_V1_MULTIPROCESSING must be '0' (in-process engine, needed "
                f"for weight sync); got {os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}"
            )
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                "gpu_memory_utilization must be in (0, 1] (on CPU: the share of RAM vLLM "
                f"reserves); got {gpu_memory_utilization!r}"
            )
        import vllm
        from transformers import AutoTokenizer

        path = resolve_model_path(model_path)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        in_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        set_num_threads = torch.set_num_threads  # the CPU worker replaces it with a no-op
        environ = dict(os.environ)  # vLLM sets LOCAL_WORLD_SIZE, LD_PRELOAD, ...: undone on close
        try:
            self.llm = vllm.LLM(
                model=path,
                seed=seed,
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=device == "cpu",
                logprobs_mode="processed_logprobs",      # the sampling distribution's
                distributed_executor_backend="external_launcher" if in_group else None,
            )
        finally:
            torch.set_num_threads = set_num_threads
        # The in-process client shuts the engine core down when collected or at exit; that and
        # `close` go through `_shutdown`.
        client = self.llm.llm_engine.engine_core
        client._finalizer.detach()
        client._finalizer = weakref.finalize(client, _shutdown, client.engine_core, in_group)
        self.environ_before = {
            key: environ.get(key)
            for key in set(environ) | set(os.environ)
            if environ.get(key) != os.environ.get(key)
        }

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
        weights = iter(merged_state_dict(policy).items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down, free its weights and KV cache and undo its environment
        variables, so that another engine (or anything else) can start cleanly. Inside a
        process group the group stays usable (see `_shutdown`)."""
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core._finalizer()  # `_shutdown`, once
        self.llm = None
        for key, value in self.environ_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _shutdown(core, in_group: bool) -> None:
    """Stop vLLM's engine core (on `close`, else when collected or at interpreter exit).

    EngineCore.shutdown ends with vLLM's cleanup_dist_env_and_memory, which destroys vLLM's
    process groups and then torch's default group. Outside a group that is the group vLLM
    created; inside one it is the caller's, so there only vLLM's groups (subgroups of the
    caller's) are destroyed. An engine left open when a rank fails is shut down at exit, after
    the caller destroyed its group and vLLM's with it: vLLM then only drops its references."""
    if not in_group:
        core.shutdown()
        return
    destroy = torch.distributed.destroy_process_group

    def destroy_subgroup(group=None) -> None:
        if group is not None and torch.distributed.is_initialized():
            destroy(group)

    with mock.patch.object(torch.distributed, "destroy_process_group", destroy_subgroup):
        core.shutdown()
