"""The rollout engine interface shared by the transformers (`hf`) and vLLM (`vllm`) backends.

An engine turns G prompts into G groups of n sampled completions (the rollouts of GRPO /
PODS), takes new policy weights after each update (`sync_weights`) and frees its memory on
`close()`. Both backends return the same dataclasses, so the trainer never knows which ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from torch import nn


@dataclass
class SamplingParams:
    """How completions are sampled."""

    temperature: float = 0.9
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    max_tokens: int = 256
    """Most completion tokens per sample (the EOS token counts)."""
    seed: int | None = None
    """Seed for this call; None draws one from the engine's seeded stream."""
    logprobs: bool = False
    """Report each sampled token's log-prob under the sampling distribution (`Completion.logprobs`;
    the importance correction needs them)."""

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1; got {self.max_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled completion.

    logprobs: log-probability of each sampled token under the distribution it was drawn from
    (temperature and top-p applied; the model's own distribution for greedy decoding), what an
    importance-sampling correction divides by; None unless `SamplingParams.logprobs` asked for
    them.
    """

    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = None


@dataclass
class Group:
    """The n completions of one prompt."""

    prompt: str
    prompt_token_ids: list[int]
    completions: list[Completion]


def check_generate_args(
    prompts: list[str], n: int, sampling: SamplingParams, seeds: list[int] | None
) -> None:
    """Raise ValueError on a bad `generate` call, naming the parameter."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings (one per prompt); got something else")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (completions per prompt) must be an integer >= 1; got {n!r}")
    if not isinstance(sampling, SamplingParams):
        got = type(sampling).__name__
        raise ValueError(f"sampling must be a SamplingParams; got {got}")  # noqa: TRY004
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"seeds must have one seed per prompt ({len(prompts)}); got {len(seeds)}")


def split_completion(token_ids: list[int], eos_ids: set[int]) -> tuple[list[int], str]:
    """Cut generated ids after the first EOS: (ids with that EOS, "stop"), or (ids, "length")."""
    for i, tok in enumerate(token_ids):
        if tok in eos_ids:
            return token_ids[: i + 1], "stop"
    return token_ids, "length"


class Engine(ABC):
    """Generates n completions per prompt; see `make_engine`."""

    name: str

    @abstractmethod
    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams, seeds: list[int] | None = None
    ) -> list[Group]:
        """G prompts -> G groups of n completions. With `seeds` (one per prompt), each prompt's
        samples depend only on its seed and the weights, not on the other prompts or batching."""

    @abstractmethod
    def sync_weights(self, policy: nn.Module) -> None:
        """Make the engine generate with `policy`'s current weights (LoRA merged)."""

    @abstractmethod
    def close(self) -> None:
        """Free the engine's memory; the engine cannot be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
