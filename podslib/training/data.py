"""The examples a run trains and evaluates on, and which prompts each step draws.

Everything here depends only on the config and the step, never on the rank split or on what
ran before, so a resumed or data-parallel run sees exactly the prompts of an uninterrupted
single-process one, and every variant of one seed sees the same prompts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from podslib.config import Config, TinySettings
from podslib.seeding import derive_seed
from podslib.tasks.datasets import Example, load_task, make_arith
from podslib.tasks.templates import build_prompts


def arith_examples(tiny: TinySettings, split: str, limit: int | None, seed: int = 0
                   ) -> list[Example]:
    """Distinct arith problems of `split` with the tiny settings' difficulty: `limit` of them,
    capped at a third of the expressions that exist (make_arith needs distinct problems, and
    about a tenth of all expressions belong to the test split)."""
    width = tiny.operand_max - tiny.operand_min + 1
    exist = sum(width ** (k + 1) * 2 ** k for k in range(tiny.steps_min, tiny.steps_max + 1))
    cap = exist // 3 if split == "train" else exist // 30
    return make_arith(min(limit or cap, cap), seed=seed, split=split,
                      steps=(tiny.steps_min, tiny.steps_max),
                      operand_range=(tiny.operand_min, tiny.operand_max))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_examples(cfg: Config, split: str, note: Callable[[str], None] = _stderr
                  ) -> list[Example]:
    """The task's examples for `split` (train_size / test_size of them). Arith problems come from
    a fixed seed, so every run of an experiment sees the same problems whatever cfg.seed. A
    test_size above the problems there are is said once (`note`): the evaluation uses them all."""
    limit = cfg.train_size if split == "train" else cfg.test_size
    if cfg.task == "arith":
        examples = arith_examples(cfg.tiny, split, limit)
    else:
        task = "math500" if cfg.task == "math" and split == "test" else cfg.task
        source = cfg.train_source if split == "train" else cfg.test_source
        examples = load_task(task, split, source=source, limit=limit, seed=0)
    if split == "test" and limit is not None and len(examples) < limit:
        note(f"note: test_size={limit} is more than the {len(examples)} test problems there are; "
             f"the evaluation uses all {len(examples)}")
    return examples


def prompt_indices(start: int, count: int, n_prompts: int, seed: int) -> list[int]:
    """Global dataset indices of the prompts at data positions start .. start + count - 1:
    the data is walked through a fresh seeded permutation per epoch, so a position names one
    prompt for good (a run's data position is how many prompts it has drawn)."""
    out = []
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, n_prompts)
        order = np.random.default_rng(derive_seed(seed, "epoch", epoch)).permutation(n_prompts)
        out.append(int(order[offset]))
    return out


@dataclass
class Data:
    """Training prompts (rendered, long ones dropped) and test problems (long ones dropped)."""

    prompts: list[str]
    golds: list[str]
    test_examples: list[Example]
    n_dropped: int
    n_test_dropped: int
    longest_prompt: int           # tokens of the longest prompt, training or test


def build_data(cfg: Config, tokenizer, train: list[Example], test: list[Example],
               note: Callable[[str], None] = _stderr) -> Data:
    """The training prompts and the test problems whose prompts fit max_prompt_tokens. Dropped
    test problems are counted in a `note` (accuracy is over the others); none left of either
    split is a ValueError (no test problems at all is fine: a run without evaluation)."""
    train_p = build_prompts(train, cfg.template, tokenizer, cfg.max_prompt_tokens)
    if not train_p.prompts:
        raise ValueError(f"max_prompt_tokens={cfg.max_prompt_tokens} drops all {len(train)} "
                         "training prompts; raise it")
    test_p = build_prompts(test, cfg.template, tokenizer, cfg.max_prompt_tokens)
    if test and not test_p.kept:
        raise ValueError(f"max_prompt_tokens={cfg.max_prompt_tokens} drops all {len(test)} test "
                         "problems; raise it")
    if test_p.n_dropped:
        note(f"warning: max_prompt_tokens={cfg.max_prompt_tokens} drops {test_p.n_dropped} of "
             f"{len(test)} test problems (prompts too long); test accuracy is over the other "
             f"{len(test_p.kept)}")
    return Data(train_p.prompts, [e.gold for e in train_p.kept], test_p.kept, train_p.n_dropped,
                test_p.n_dropped, max(train_p.longest, test_p.longest))


def engine_limits(cfg: Config, data: Data, world_size: int) -> dict[str, int]:
    """What one rank's engine holds at once (vLLM sizes its KV cache from it on CPU):
    max_model_len, the longest prompt and a completion; max_num_seqs, the sequences of a
    generation round (its prompts x n) or of an evaluation (the rank's share of the test
    problems x repeats), whichever is more."""
    train = cfg.prompts_per_step // world_size * cfg.n
    test = -(-len(data.test_examples) // world_size) * (1 if cfg.eval_greedy else
                                                         cfg.eval_repeats)
    return {"max_model_len": data.longest_prompt + cfg.max_completion_tokens,
            "max_num_seqs": max(train, test)}
