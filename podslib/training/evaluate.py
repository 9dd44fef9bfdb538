"""Test-set accuracy of a policy through a rollout engine (docs/method.md, "Evaluation": sampled at T = 0.9,
5 repeats averaged; or greedy, one completion per problem).

Sampling is seeded: by default one seed for the whole (batched) call, so an evaluation is
reproducible for given weights and problems, and evaluations at different training steps share
their random numbers (less noise between the points of a curve). With `seeds` (one per problem)
each problem's samples depend only on its own seed (slower on the hf engine, which then
generates problem by problem).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from podslib.rollout import SamplingParams
from podslib.tasks.grading import is_correct
from podslib.tasks.templates import render_prompt


def evaluate(
    engine,
    examples: Sequence,
    template: str,
    tokenizer,
    repeats: int = 5,
    temperature: float = 0.9,
    greedy: bool = False,
    max_tokens: int = 256,
    task: str = "arith",
    seeds: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy of `engine`'s policy on `examples` (rendered with `template`).

    Sampled: `repeats` completions per problem at `temperature`, accuracy = mean correctness
    over all problems x repeats. Greedy: one completion per problem (repeats is then 1).
    `seeds`: one per example (else one `seed` for the batch). Returns accuracy, n_correct,
    n_samples, n_problems, repeats, greedy, eval_s and per_problem ([n_problems] accuracies).
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampled evaluation (or greedy=True); "
                         f"got {temperature!r}")
    if seeds is not None and len(seeds) != len(examples):
        raise ValueError(f"seeds must have one seed per example ({len(examples)}); got "
                         f"{len(seeds)}")
    start = time.perf_counter()
    repeats = 1 if greedy else repeats
    if not examples:
        return {"accuracy": float("nan"), "n_correct": 0, "n_samples": 0, "n_problems": 0,
                "repeats": repeats, "greedy": greedy, "eval_s": 0.0, "per_problem": []}
    prompts = [render_prompt(e, template, tokenizer) for e in examples]
    sampling = SamplingParams(temperature=0.0 if greedy else temperature, max_tokens=max_tokens,
                              seed=seed)
    groups = engine.generate(prompts, n=repeats, sampling=sampling,
                             seeds=list(seeds) if seeds is not None else None)
    correct = torch.tensor([[is_correct(c.text, e.gold, task) for c in g.completions]
                            for g, e in zip(groups, examples)], dtype=torch.float64)
    return {"accuracy": float(correct.mean()), "n_correct": int(correct.sum()),
            "n_samples": correct.numel(), "n_problems": len(examples), "repeats": repeats,
            "greedy": greedy, "eval_s": time.perf_counter() - start,
            "per_problem": correct.mean(dim=1).tolist()}
