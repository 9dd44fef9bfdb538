"""Rollouts with transformers `generate`: always available, CPU and GPU.

The engine samples from the policy object itself, so `sync_weights` has nothing to do. Prompts
are left-padded into batches of at most `max_batch_size` rows (n rows per prompt); generation
runs in eval mode and restores the policy's previous mode. The global torch RNG is left as it
was: every call samples inside `torch.random.fork_rng` from an explicit seed. With per-prompt
`seeds`, each prompt is generated on its own (n rows, no padding), so its samples do not depend
on the other prompts; they do depend on max_batch_size when n exceeds it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from .base import Completion, Engine, Group, SamplingParams, check_generate_args, split_completion


class SampledLogprobs(LogitsProcessor):
    """Records log p(token) of every sampled token under the raw logits (before temperature and
    top-p), keeping one step of log-probabilities alive: at step t the token sampled at step t-1
    is the last column of `input_ids`. Must run first in the processor list."""

    def __init__(self):
        self.steps: list[Tensor] = []
        self.last: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.last is not None:
            self.steps.append(self.last.gather(1, input_ids[:, -1:]).squeeze(1))
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: Tensor) -> Tensor:
        """sequences [B, T + L] -> logprobs [B, L] of the L generated tokens."""
        self.steps.append(self.last.gather(1, sequences[:, -1:]).squeeze(1))
        return torch.stack(self.steps, dim=1)


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists -> (input_ids [B, T], attention_mask [B, T]) padded on the left."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return input_ids, mask


class HFEngine(Engine):
    """transformers `generate` on the policy object (its current weights, LoRA included)."""

    name = "hf"

    def __init__(self, policy: nn.Module, tokenizer, seed: int = 0, max_batch_size: int = 256):
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1; got {max_batch_size!r}")
        self.policy = policy
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.seeds = torch.Generator().manual_seed(seed)
        eos = policy.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        self.eos_ids = sorted({tokenizer.eos_token_id, *eos} - {None})
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        )

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, seeds: list[int] | None = None
    ) -> list[Group]:
        check_generate_args(prompts, n, sampling, seeds)
        if self.policy is None:
            raise RuntimeError("this hf engine is closed; make a new one with make_engine")
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        was_training = self.policy.training
        self.policy.eval()
        try:
            if seeds is None:
                seed = sampling.seed if sampling.seed is not None else self._next_seed()
                flat = self._sample([row for row in ids for _ in range(n)], sampling, seed)
                per_prompt = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
            else:
                per_prompt = [self._sample([row] * n, sampling, s) for row, s in zip(ids, seeds)]
        finally:
            self.policy.train(was_training)
        return [Group(p, row, comps) for p, row, comps in zip(prompts, ids, per_prompt)]

    def _next_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.seeds))

    def _sample(
        self, ids: list[list[int]], sampling: SamplingParams, seed: int
    ) -> list[Completion]:
        """Sample one completion per row of `ids`, in chunks of max_batch_size, from `seed`."""
        device = next(self.policy.parameters()).device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return [
                c
                for start in range(0, len(ids), self.max_batch_size)
                for c in self._generate_chunk(ids[start : start + self.max_batch_size], sampling)
            ]

    def _generate_chunk(self, ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        device = next(self.policy.parameters()).device
        input_ids, mask = left_pad(ids, self.pad_id)
        recorder = SampledLogprobs()
        processors = [recorder]
        if not sampling.greedy:
            processors += [TemperatureLogitsWarper(sampling.temperature)]
            if sampling.top_p < 1:
                processors += [TopPLogitsWarper(sampling.top_p)]
        # Explicit values so that a model's generation_config.json (top_k, repetition_penalty...)
        # cannot change the sampling: temperature and top-p are applied by `processors`.
        flags = {"temperature": 1.0, "top_p": 1.0, "top_k": 0} if not sampling.greedy else {}
        config = GenerationConfig(
            do_sample=not sampling.greedy,
            repetition_penalty=1.0,
            max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            **flags,
        )
        out = self.policy.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        )
        new_ids = out.sequences[:, input_ids.shape[1] :]  # [B, L]
        logprobs = recorder.finish(out.sequences).cpu()  # [B, L]
        eos = set(self.eos_ids)
        completions = []
        for row_ids, row_lp in zip(new_ids.cpu().tolist(), logprobs.tolist()):
            token_ids, reason = split_completion(row_ids, eos)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            completions.append(Completion(text, token_ids, reason, row_lp[: len(token_ids)]))
        return completions

    def sync_weights(self, policy: nn.Module) -> None:
        """Generate with `policy` from now on (same object: nothing to copy)."""
        self.policy = policy

    def close(self) -> None:
        """Drop the references to the policy and tokenizer (the caller still owns them)."""
        self.policy = None
        self.tokenizer = None
