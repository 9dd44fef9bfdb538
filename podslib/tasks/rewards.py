"""Reward terms and the scoring of a step's rollouts (docs/method.md, "Rewards").

A reward is a weighted sum of terms (`Config.reward_weights`), each a function registered in
`REWARD_TERMS`: correctness (the task's grader, docs/grading.md), and the official one-GPU
recipe's format (0.1) and tags (0.1) terms, maximum 1.2; the multi-GPU recipe's strict_format
(0/1). `score_batch` scores a step's [G][n] completions.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence

import torch

from podslib.registry import Registry
from podslib.tasks.grading import GRADERS, is_correct

# name -> fn(completion, gold, task) -> float: the terms a reward is a weighted sum of
REWARD_TERMS = Registry("reward_weights key")

term = REWARD_TERMS.register


@term("correctness")
def _correctness(completion: str, gold: str, task: str) -> float:
    """1.0 when correct (is_correct), else 0.0."""
    return float(is_correct(completion, gold, task))


def _think_answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the first `<think>...</think> <answer>...</answer>` block, or None."""
    start = text.find("<think>")
    close = text.find("</think>", start) if start >= 0 else -1
    if close < 0:
        return None
    ans = text.find("<answer>", close)
    if ans < 0 or text[close + len("</think>"):ans].strip():
        return None
    end = text.find("</answer>", ans)
    return None if end < 0 else (start, end + len("</answer>"))


@term("format")
def _format(completion: str, gold: str, task: str) -> float:
    """0.1 * max(0, 1 - 0.01 * characters outside the think/answer block); 0 without the block."""
    span = _think_answer_span(completion)
    if span is None:
        return 0.0
    outside = len(completion) - (span[1] - span[0])
    return 0.1 * max(0.0, 1.0 - 0.01 * outside)


_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")


@term("tags")
def _tags(completion: str, gold: str, task: str) -> float:
    """0.025 for each of `<think>\\n`, `\\n</think>\\n`, `\\n<answer>\\n`, `\\n</answer>` seen exactly once."""
    return 0.025 * sum(completion.count(tag) == 1 for tag in _TAGS)


@term("strict_format")
def _strict_format(completion: str, gold: str, task: str) -> float:
    """1.0 for exactly `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` (optional final newline)."""
    text = completion.removesuffix("\n")
    ok = (text.startswith("<think>\n") and text.endswith("\n</answer>")
          and all(text.count(t) == 1 for t in ("<think>", "</think>", "<answer>", "</answer>"))
          and "\n</think>\n<answer>\n" in text)
    return float(ok)


def _misfit(value: object, path: str, types: tuple) -> tuple[str, object] | None:
    """(path, item) of the first item of a nested `value` not of the types of its level
    (types[0] for value, types[1] for its items, ...), or None if all fit."""
    if not isinstance(value, types[0]):
        return path, value
    for i, item in enumerate(value if len(types) > 1 else ()):
        if (found := _misfit(item, f"{path}[{i}]", types[1:])) is not None:
            return found
    return None


def _check_batch(completions: Sequence[Sequence[str]], golds: Sequence[str]) -> None:
    """ValueError naming the parameter unless completions is [G][n] strings and golds [G] strings
    (lists or tuples; a bare string is not a list of completions)."""
    lists = (list, tuple)
    for name, value, types, wanted in (
        ("completions", completions, (lists, lists, str),
         "a list with one list of completion strings per prompt"),
        ("golds", golds, (lists, str), "a list of gold answer strings, one per prompt"),
    ):
        if (found := _misfit(value, name, types)) is not None:
            path, item = found
            got = "got" if path == name else f"{path} is"
            raise ValueError(f"{name} must be {wanted}; {got} {type(item).__name__}")


def score_batch(completions: Sequence[Sequence[str]], golds: Sequence[str], task: str,
                weights: Mapping[str, float] | None = None,
                workers: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores a step's completions.

    Args:
        completions: [G][n] strings, a list (or tuple) of one list of n completions per prompt;
            every group has the same n, since the output is a [G, n] tensor.
        golds: [G] gold answer strings.
        task: "gsm8k", "math", "math500" or "arith".
        weights: term name -> weight (default {"correctness": 1.0}).
        workers: processes for MATH grading (default: min(8, cpu count)); numeric tasks are
            graded inline (microseconds per completion).

    Returns:
        rewards: [G, n] float32 weighted sum; terms: name -> [G, n] unweighted values, always
        including "correctness".
    """
    _check_batch(completions, golds)
    weights = {"correctness": 1.0} if weights is None else dict(weights)
    for name in weights:
        REWARD_TERMS.check(name)
    grader = GRADERS.get(task)
    if len(completions) != len(golds):
        raise ValueError(f"golds must have one entry per group ({len(completions)}); got {len(golds)}")
    sizes = {len(group) for group in completions}
    if len(sizes) > 1:
        raise ValueError(f"completions must have the same n in every group; got sizes {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    flat = [c for group in completions for c in group]
    flat_gold = [g for g in golds for _ in range(n)]
    values = {"correctness": [float(x) for x in grader(
        flat, flat_gold, workers or min(8, multiprocessing.cpu_count()))]}
    for name in weights:
        if name != "correctness":
            fn = REWARD_TERMS.get(name)
            values[name] = [_safe_term(fn, c, g, task) for c, g in zip(flat, flat_gold)]
    terms = {k: torch.tensor(v, dtype=torch.float32).reshape(len(completions), n)
             for k, v in values.items()}
    rewards = torch.zeros(len(completions), n, dtype=torch.float32)
    for name, weight in weights.items():
        rewards += weight * terms[name]
    return rewards, terms


def _safe_term(fn: Callable[[str, str, str], float], completion: str, gold: str, task: str) -> float:
    try:
        return float(fn(completion, gold, task))
    except Exception:  # noqa: BLE001
        return 0.0
