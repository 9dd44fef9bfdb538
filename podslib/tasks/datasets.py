"""Tasks and prompt templates: GSM8K, MATH / MATH-500, and the synthetic arithmetic task "arith".

`load_task` reads a local JSONL file, a folder holding `{split}.jsonl`, or a Hugging Face hub id
(through `datasets`, for users with network access). "arith" is generated from a seed: multi-step
sums and differences evaluated left to right, with tiny-form worked solutions
("46+75=121\\n121-28=93\\n93+65=158\\n#### 158") that the embedded default warm-starts on.

Templates turn an Example into a prompt string, through the tokenizer's chat template when it
has one: "pods" (system prompt, <think>/<answer>), "gsm8k" (plain, "####"), "tiny" (the tiny
char model, "Q:{expression}\\nA:").
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podslib.files import read_jsonl
from podslib.registry import Registry
from podslib.tasks.grading import last_boxed, normalize_number

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
HUB_DEFAULTS = {  # (task, split) -> hub id used when source is None
    ("gsm8k", "train"): "openai/gsm8k",
    ("gsm8k", "test"): "openai/gsm8k",
    ("math", "train"): "EleutherAI/hendrycks_math",
    ("math", "test"): "HuggingFaceH4/MATH-500",
    ("math500", "test"): "HuggingFaceH4/MATH-500",
}
HUB_CONFIGS = {  # hub id -> dataset configs to concatenate (others: the default config)
    "openai/gsm8k": ("main",),
    "EleutherAI/hendrycks_math": (
        "algebra", "counting_and_probability", "geometry", "intermediate_algebra",
        "number_theory", "prealgebra", "precalculus"),
}
ARITH_SIZES = {"train": 20000, "test": 500}   # arith examples when limit is None
ARITH_TEST_BUCKETS = 10                        # 1 in 10 expressions (by hash) belongs to "test"


class SourceUnavailableError(ValueError):
    """A hub id was given but the hub cannot be used here (no `datasets`, or no network)."""


@dataclass(frozen=True)
class Example:
    """One problem. `gold` is the final answer string; `expression` is set for arith only."""
    question: str
    gold: str
    task: str
    solution: str = ""
    id: str = ""
    expression: str = ""


# --------------------------------------------------------------------------- arith

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_NAMES = ("Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lina")
_ITEMS = ("marbles", "apples", "stickers", "coins", "cards", "shells", "books", "pencils")
MUL_RANGE = (2, 9)   # '*' operands stay small so that values stay in a sane range


def _check_arith(n: int, steps: tuple[int, int], operand_range: tuple[int, int],
                 operators: Sequence[str], split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
        raise ValueError(f"steps must be (min, max) operations with 1 <= min <= max; got {steps}")
    if len(operand_range) != 2 or not 0 <= operand_range[0] <= operand_range[1]:
        raise ValueError(f"operand_range must be (lo, hi) with 0 <= lo <= hi; got {operand_range}")
    if not operators or set(operators) - set(_OPS):
        raise ValueError(f"operators must be a non-empty subset of {tuple(_OPS)}; got {operators}")


def arith_split(expression: str) -> str:
    """The split an expression belongs to, fixed by its hash: train and test never overlap."""
    bucket = int(hashlib.sha256(expression.encode()).hexdigest()[:8], 16) % ARITH_TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def _arith_problem(rng: random.Random, steps: tuple[int, int], operand_range: tuple[int, int],
                   operators: Sequence[str]) -> tuple[str, list[str], list[str], int]:
    """(expression, solution lines, question sentences, answer) of one left-to-right problem.

    Intermediate values stay >= 0: a '-' whose operand exceeds the running value becomes '+'.
    A '*' after '+'/'-' parenthesises what came before, so Python's precedence agrees.
    """
    value = rng.randint(*operand_range)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    expression, lines = str(value), []
    sentences = [f"{name} has {value} {item}."]
    for _ in range(rng.randint(*steps)):
        op = rng.choice(list(operators))
        b = rng.randint(*(MUL_RANGE if op == "*" else operand_range))
        if op == "-" and b > value:
            op = "+"
        new = _OPS[op](value, b)
        lines.append(f"{value}{op}{b}={new}")
        if op == "*" and any(c in expression for c in "+-"):
            expression = f"({expression})"
        expression += f"{op}{b}"
        sentences.append({"+": f"Then {name} gets {b} more {item}.",
                          "-": f"Then {name} gives away {b} {item}.",
                          "*": f"Then the number of {item} is multiplied by {b}."}[op])
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    return expression, lines, sentences, value


def make_arith(n: int, seed: int, steps: tuple[int, int] = (2, 3),
               operand_range: tuple[int, int] = (1, 99), split: str = "train",
               operators: Sequence[str] = ("+", "-")) -> list[Example]:
    """`n` distinct arithmetic word problems of `split`, the same for the same arguments.

    Problems are drawn from random.Random(f"arith-{split}-{seed}") and kept only when their
    expression hashes to `split` (see `arith_split`), so train and test never share a problem.
    """
    _check_arith(n, steps, operand_range, operators, split)
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    out: list[Example] = []
    attempts, max_attempts = 0, 200 * n + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"only {len(out)} distinct {split} problems found for n={n}; widen "
                             f"steps={steps} or operand_range={operand_range}")
        expression, lines, sentences, answer = _arith_problem(rng, steps, operand_range, operators)
        if expression in seen or arith_split(expression) != split:
            continue
        seen.add(expression)
        solution = "\n".join(lines + [f"#### {answer}"])
        out.append(Example(question=" ".join(sentences), gold=str(answer), task="arith",
                           solution=solution, id=f"arith-{split}-{seed}-{len(out)}",
                           expression=expression))
    return out


# --------------------------------------------------------------------------- files and hub

def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise ValueError(f"{where}: missing text field {name!r} (fields: {sorted(row)})")
    if not isinstance(row[name], str):
        raise ValueError(f"{where}: field {name!r} is not text: {row[name]!r} "  # noqa: TRY004
                         f"({type(row[name]).__name__}); write it as a JSON string")
    return row[name]


def _gold_problem(example: Example) -> str:
    """What makes `example`'s gold answer one no completion can match, or ''."""
    if not example.gold:
        return "empty"
    if example.task == "gsm8k" and normalize_number(example.gold) is None:
        return "not a number"
    return ""


def _check_golds(examples: list[Example], task: str, split: str, where: str) -> None:
    """ValueError naming the rows whose gold answer no completion can match (empty; for gsm8k,
    not a number): such a problem would count as wrong whatever the model answers."""
    bad = [(i, e.gold, problem) for i, e in enumerate(examples) if (problem := _gold_problem(e))]
    if bad:
        shown = ", ".join(f"row {i + 1} ({gold!r}: {problem})" for i, gold, problem in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"{task} {split} data {where!r}: {len(bad)} of {len(examples)} gold "
                         f"answers can never be matched: {shown}{more}; fix or remove those rows")


def _to_example(row: dict, task: str, where: str, index: int) -> Example:
    if task == "gsm8k":
        answer = _field(row, "answer", where)
        if "####" not in answer:
            raise ValueError(f"{where}: the 'answer' field has no '#### <number>' line")
        gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
        return Example(_field(row, "question", where), gold, task, answer, f"{task}-{index}")
    solution = row.get("solution", "") if isinstance(row.get("solution"), str) else ""
    gold = row.get("answer") if isinstance(row.get("answer"), str) else last_boxed(solution)
    if gold is None:
        raise ValueError(f"{where}: no 'answer' field and no \\boxed{{}} answer in 'solution'")
    uid = row.get("unique_id") if isinstance(row.get("unique_id"), str) else f"{task}-{index}"
    return Example(_field(row, "problem", where), gold.strip(), task, solution, uid)


def _local_file(path: Path, task: str, split: str) -> Path:
    if path.is_dir():
        name = "test.jsonl" if task == "math500" else f"{split}.jsonl"
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    return path


def _load_hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    """Rows of a hub dataset through `datasets` (monkeypatched in tests; never used offline)."""
    try:
        import datasets
    except ImportError:
        raise SourceUnavailableError(
            f"source {hub_id!r} is a hub id but the `datasets` package is not installed; "
            "pip install datasets, or pass a local JSONL file or folder "
            "(e.g. source='../shared/data/gsm8k')") from None
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "") and not _hub_reachable():
        raise ConnectionError("huggingface.co:443 did not answer within 3 s")
    return [dict(r) for r in datasets.load_dataset(hub_id, config, split=split)]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails at once instead of retrying."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_rows(hub_id: str, split: str) -> list[dict]:
    rows = []
    for config in HUB_CONFIGS.get(hub_id, (None,)):
        try:
            rows += _load_hub_rows(hub_id, config, split)
        except SourceUnavailableError:
            raise
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            raise SourceUnavailableError(
                f"source {hub_id!r} could not be loaded from the Hugging Face hub "
                f"({type(err).__name__}: {err}); with no network access, pass a local JSONL "
                "file or folder instead (e.g. source='../shared/data/gsm8k')") from None
    return rows


def _is_hub_id(source: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not source.endswith(".jsonl")


def _subsample(items: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# task -> fn(task, split, source, limit, seed, **arith_knobs) -> list[Example]
TASKS = Registry("task")


@TASKS.register("arith")
def _load_arith(task: str, split: str, source: str | None, limit: int | None, seed: int,
                **arith_knobs) -> list[Example]:
    """Generated problems (`source` is ignored)."""
    return make_arith(ARITH_SIZES[split] if limit is None else limit, seed, split=split,
                      **arith_knobs)


@TASKS.register("gsm8k", "math", "math500")
def _load_rows(task: str, split: str, source: str | None, limit: int | None, seed: int,
               **arith_knobs) -> list[Example]:
    """Rows of a local JSONL file / folder or a hub dataset."""
    if arith_knobs:
        raise ValueError(f"arith knobs {sorted(arith_knobs)} apply only to task='arith'")
    if task == "math500" and split != "test":
        raise ValueError(f"split must be 'test' for task='math500' (it has no train split); got {split!r}")
    if source is None:
        source = HUB_DEFAULTS[(task, split)]
    path = Path(source).expanduser()
    if not path.exists() and _is_hub_id(source):
        rows, where = _hub_rows(source, split), source
    else:
        path = _local_file(path, task, split)
        rows, where = read_jsonl(path), str(path)
    if not rows:
        raise ValueError(f"{task} {split} data {where!r} holds no examples")
    examples = [_to_example(r, task, f"{where} (row {i + 1})", i) for i, r in enumerate(rows)]
    _check_golds(examples, task, split, where)
    return _subsample(examples, limit, seed)


def load_task(task: str, split: str, source: str | None = None, limit: int | None = None,
              seed: int = 0, **arith_knobs) -> list[Example]:
    """Examples of `task` (a name in TASKS: "gsm8k", "math", "math500", "arith") for `split`.

    Args:
        source: a JSONL file, a folder holding `{split}.jsonl` (MATH-500: `test.jsonl`), or a hub
            id; None means the default hub id (openai/gsm8k; EleutherAI/hendrycks_math, all 7
            subjects, for MATH train; HuggingFaceH4/MATH-500 for MATH test). Ignored for arith.
        limit: keep this many examples, a subsample chosen by `seed` (file order is kept).
        seed: subsample seed; for arith also the generator seed.
        arith_knobs: steps, operand_range, operators (see make_arith).
    """
    loader = TASKS.get(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0; got {limit}")
    return loader(task, split, source, limit, seed, **arith_knobs)

