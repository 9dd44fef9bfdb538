"""Rollouts with transformers `generate`: always available, CPU and GPU.

The engine samples from the policy object itself, so `sync_weights` has nothing to do. Rows (n
per prompt) are left-padded into batches of at most `max_batch_size`; generation runs in eval
mode and restores the policy's previous mode, and leaves the global torch RNG alone.

Sampling runs inside greedy decoding: after temperature and top-p, a last logits processor
draws each row's token by inverse CDF from uniforms drawn before decoding, and leaves only that
token for the argmax. A prompt's uniforms come from that prompt's own generator, seeded from its
seed (one draw per call, not per step), so its samples do not depend on the other prompts in the
batch (up to float rounding of the batched forward pass). A prompt with n > max_batch_size is
split into pieces with their own generators, so its samples then also depend on max_batch_size.
The sampling distribution's log-probs are recorded only when `SamplingParams.logprobs` asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from podslib.rollout.base import (
    Completion,
    Engine,
    Group,
    SamplingParams,
    check_generate_args,
    split_completion,
)
from podslib.seeding import derive_seed


class SampledLogprobs(LogitsProcessor):
    """Records log p(token) of every sampled token under the scores it sees, keeping one step of
    log-probabilities alive: at step t the token sampled at step t-1 is the last column of
    `input_ids`. Placed after temperature and top-p, it gives the sampling distribution's
    log-probs (the raw model's when decoding greedily)."""

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


class SeededSampling(LogitsProcessor):
    """Samples each row's next token from softmax(scores [B, V]) by inverse CDF, row r at
    decoding step t using uniforms[r, t] ([B, L] float64 in [0, 1)), and returns scores whose
    argmax is that token (0 there, -inf elsewhere; in place). Must run last (after temperature
    and top-p); `prompt_width` is the padded prompt length, so step t = input width - it."""

    def __init__(self, uniforms: Tensor, prompt_width: int):
        self.uniforms = uniforms
        self.prompt_width = prompt_width

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1] - self.prompt_width
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1, dtype=torch.float64)   # [B, V]
        target = self.uniforms[:, step : step + 1] * cdf[:, -1:]
        picks = torch.searchsorted(cdf, target, right=True).clamp_(max=scores.shape[1] - 1)
        return scores.fill_(float("-inf")).scatter_(1, picks, 0.0)


@dataclass
class Piece:
    """`rows` samples of prompt number `prompt`, drawn with `generator`."""

    prompt: int
    rows: int
    generator: torch.Generator


def split_rows(n: int, size: int) -> list[int]:
    """n rows in pieces of at most `size`: split_rows(5, 2) == [2, 2, 1]."""
    return [min(size, n - start) for start in range(0, n, size)]


def pack(pieces: list[Piece], size: int) -> list[list[Piece]]:
    """Consecutive pieces grouped into chunks of at most `size` rows (pieces are not split)."""
    chunks: list[list[Piece]] = []
    for piece in pieces:
        if chunks and sum(p.rows for p in chunks[-1]) + piece.rows <= size:
            chunks[-1].append(piece)
        else:
            chunks.append([piece])
    return chunks


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
        self.seed, self.calls = seed, 0     # seedless calls draw derive_seed(seed, "call", k)
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
        if seeds is None:
            seed = sampling.seed if sampling.seed is not None else self._next_seed()
            seeds = [derive_seed(seed, "prompt", i) for i in range(len(prompts))]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        device = next(self.policy.parameters()).device
        split = split_rows(n, self.max_batch_size)
        pieces = [
            Piece(i, rows, torch.Generator(device=device).manual_seed(derive_seed(seed, "piece", k)))
            for i, seed in enumerate(seeds)
            for k, rows in enumerate(split)
        ]
        completions: list[list[Completion]] = [[] for _ in prompts]
        was_training = self.policy.training
        self.policy.eval()
        try:
            for chunk in pack(pieces, self.max_batch_size):
                rows = self._generate_chunk(chunk, ids, sampling)
                for piece in chunk:
                    completions[piece.prompt] += rows[: piece.rows]
                    rows = rows[piece.rows :]
        finally:
            self.policy.train(was_training)
        return [Group(p, row, comps) for p, row, comps in zip(prompts, ids, completions)]

    def _next_seed(self) -> int:
        self.calls += 1
        return derive_seed(self.seed, "call", self.calls)

    def _generate_chunk(
        self, chunk: list[Piece], ids: list[list[int]], sampling: SamplingParams
    ) -> list[Completion]:
        """One `generate` call for the rows of `chunk`'s pieces, in order."""
        device = next(self.policy.parameters()).device
        input_ids, mask = left_pad(
            [ids[p.prompt] for p in chunk for _ in range(p.rows)], self.pad_id
        )
        recorder = SampledLogprobs() if sampling.logprobs else None
        processors = []
        if not sampling.greedy:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1:
                processors.append(TopPLogitsWarper(sampling.top_p))
        if recorder is not None:
            processors.append(recorder)
        if not sampling.greedy:
            uniforms = torch.cat([torch.rand((p.rows, sampling.max_tokens), generator=p.generator,
                                             dtype=torch.float64, device=device) for p in chunk])
            processors.append(SeededSampling(uniforms, input_ids.shape[1]))
        # do_sample=False: the argmax of the processed scores (the sampled token when sampling).
        # Explicit values so that a model's generation_config.json cannot add its own processors.
        config = GenerationConfig(
            do_sample=False,
            repetition_penalty=1.0,
            max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
        )
        out = self.policy.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(processors),
        )
        new_ids = out.sequences[:, input_ids.shape[1] :]  # [B, L]
        logprobs = recorder.finish(out.sequences).cpu().tolist() if recorder else None  # [B, L]
        eos = set(self.eos_ids)
        completions = []
        for r, row_ids in enumerate(new_ids.cpu().tolist()):
            token_ids, reason = split_completion(row_ids, eos)
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            row_lp = logprobs[r][: len(token_ids)] if logprobs else None
            completions.append(Completion(text, token_ids, reason, row_lp))
        return completions

    def sync_weights(self, policy: nn.Module) -> None:
        """Generate with `policy` from now on (same object: nothing to copy)."""
        self.policy = policy

    def close(self) -> None:
        """Drop the references to the policy and tokenizer (the caller still owns them)."""
        self.policy = None
        self.tokenizer = None
