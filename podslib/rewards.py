"""Answer extraction, graders and reward terms (docs/method.md, "Rewards"; docs/grading.md).

Graders never raise and stay bounded in time on any input:

- GSM8K and arith: pure string work with linear-time regexes; numbers are compared exactly as
  fractions (digit counts are capped, so "10**10**10"-style strings cannot blow up).
- MATH: math-verify (`parse` the gold first, then `verify(gold, answer)`, which is not symmetric),
  run in a worker process under a hard per-completion deadline. Signal-based timeouts (what
  math-verify uses by default) only work in the main thread and cannot interrupt C code such as a
  huge integer power; a worker process can always be killed.

Reward terms of the official one-GPU recipe (maximum 1.2): correctness 1.0, format 0.1, tags 0.1;
the multi-GPU recipe adds strict_format (0/1). `score_batch` scores a whole step's [G][n]
completions in one call.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch

from .registry import Registry

# task -> fn(completions [N], golds [N], workers) -> [N] correct or not (graded in one call)
GRADERS = Registry("task")
# name -> fn(completion, gold, task) -> float: the terms a reward is a weighted sum of
REWARD_TERMS = Registry("reward_weights key")

MAX_NUMBER_DIGITS = 60          # longer numbers are compared as strings, never converted
MAX_MATH_CHARS = 4000           # math-verify sees at most the last 4000 characters of a completion
MATH_TIMEOUT_S = 5.0            # hard limit per MATH completion (parse + verify)
ABS_TOL = Fraction(1, 10**6)    # numeric tolerance (absolute: 1450000 != 1450001)

# --------------------------------------------------------------------------- text helpers

_NUMBER = re.compile(r"(?<![\d.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?")
_CURRENCY = "$€£¥₹¢"
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)


def _last_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content of the last `open_tag ... close_tag` block (linear time), or None."""
    start = text.rfind(open_tag)
    if start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    if end < 0:
        return None
    return text[start + len(open_tag):end]


def last_boxed(text: str) -> str | None:
    """Content of the last closed `\\boxed{...}` (or `\\fbox{...}`), braces balanced, or None.

    One pass with a brace stack (linear time even for thousands of unclosed boxes).
    """
    opens = {m.end() - 1 for m in _BOXED.finditer(text)}   # positions of their '{'
    if not opens:
        return None
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for j in range(min(opens), len(text)):
        if text[j] == "{":
            stack.append(j)
        elif text[j] == "}" and stack:
            i = stack.pop()
            if i in opens and (best is None or i > best[0]):
                best = (i, j)
    return None if best is None else text[best[0] + 1:best[1]]


def answer_block(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` block, stripped, or None."""
    block = _last_block(text, "<answer>", "</answer>")
    return None if block is None else block.strip()


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text, or None if it is not a single number.

    Strips whitespace, currency symbols, thousands commas, a trailing '%' or '.', a leading '+';
    "18.00" -> "18", "1,000" -> "1000", "-3.50" -> "-3.5".
    """
    s = text.strip().replace(",", "").replace(" ", "")
    for ch in _CURRENCY:
        s = s.replace(ch, "")
    s = s.rstrip(".%").lstrip("+")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", s):
        return None
    sign, digits = ("-", s[1:]) if s.startswith("-") else ("", s)
    whole, _, frac = digits.partition(".")
    canonical = (whole.lstrip("0") or "0") + ("." + frac.rstrip("0") if frac.rstrip("0") else "")
    return canonical if canonical == "0" else sign + canonical


def _to_fraction(canonical: str) -> Fraction | None:
    if len(canonical) > MAX_NUMBER_DIGITS:
        return None
    try:
        return Fraction(Decimal(canonical))
    except (InvalidOperation, ValueError):
        return None


def numbers_equal(a: str, b: str) -> bool:
    """True when two canonical numbers agree within ABS_TOL (exact string match past the digit cap)."""
    if a == b:
        return True
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is None or fb is None:
        return False
    return abs(fa - fb) <= ABS_TOL


# --------------------------------------------------------------------------- extraction

def _first_number(text: str) -> str | None:
    found = _NUMBER.search(text.replace("$", ""))
    return None if found is None else normalize_number(found.group())


def _numeric_answer(text: str) -> str | None:
    """GSM8K/arith search order: `#### x`, `<answer>x</answer>`, `\\boxed{x}`, "The answer is x",
    else the last number in the text."""
    hashes = _HASHES.findall(text)
    if hashes and (n := _first_number(hashes[-1])) is not None:
        return n
    for content in (answer_block(text), last_boxed(text)):
        if content is not None:
            whole = normalize_number(content)
            if whole is not None:
                return whole
            nums = _numbers(content)
            if nums:
                return normalize_number(nums[-1])
    said = _ANSWER_IS.findall(text)
    if said and (n := _first_number(said[-1])) is not None:
        return n
    nums = _numbers(text)
    return normalize_number(nums[-1]) if nums else None


def _math_answer(text: str) -> str | None:
    """MATH: the `<answer>` block (its \\boxed content if it has one), else the last \\boxed."""
    block = answer_block(text)
    if block is not None:
        inner = last_boxed(block)
        return inner.strip() if inner is not None else block
    boxed = last_boxed(text)
    return None if boxed is None else boxed.strip()


def extract_answer(text: str, task: str) -> str | None:
    """The final answer written in `text` for `task`, normalised for numeric tasks; None if none.

    Never raises: non-str input or an unknown task give None.
    """
    if not isinstance(text, str) or task not in GRADERS:
        return None
    try:
        return _math_answer(text) if task in ("math", "math500") else _numeric_answer(text)
    except Exception:  # noqa: BLE001 - a grader must never take the training run down
        return None


# --------------------------------------------------------------------------- grading

def _numeric_correct(completion: str, gold: str) -> bool:
    """Correct on the extracted answer, the whole text, the <answer> block, or the last number."""
    want = normalize_number(gold)
    if want is None:
        return False
    nums = _numbers(completion)
    candidates = (
        _numeric_answer(completion),
        normalize_number(completion),
        normalize_number(answer_block(completion) or ""),
        normalize_number(nums[-1]) if nums else None,
    )
    return any(c is not None and numbers_equal(c, want) for c in candidates)


def _math_candidates(completion: str) -> list[str]:
    block = answer_block(completion)
    tail = completion[-MAX_MATH_CHARS:]
    return ([f"${block[:MAX_MATH_CHARS]}$"] if block else []) + [tail]


def _math_verify(completion: str, gold: str) -> bool:
    """math-verify without its own (signal) timeouts; run it under `_run_limited`."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    if not gold_parsed:
        return False
    for candidate in _math_candidates(completion):
        answer = parse(candidate, parsing_timeout=None)
        if answer and verify(gold_parsed, answer, timeout_seconds=None):
            return True
    return False


def _math_verify_safe(pair: tuple[str, str]) -> bool:
    try:
        return _math_verify(*pair)
    except Exception:  # noqa: BLE001
        return False


class _MathPool:
    """A lazily started pool of forked workers running math-verify under hard deadlines.

    "fork" (not spawn/forkserver) so that user scripts need no `if __name__ == "__main__"`
    guard; the workers only run pure-Python sympy code, never CUDA.

    Items go out in rounds of `workers`; any item not finished `timeout` seconds after its round
    started counts as wrong, and the pool is terminated (killing the stuck worker) and restarted.
    """

    def __init__(self) -> None:
        self.pool = None
        self.workers = 0
        self.lock = threading.Lock()   # one batch at a time: a restart must not hit another's jobs

    def _ensure(self, workers: int):
        if self.pool is None or self.workers < workers:
            self.close()
            import math_verify  # noqa: F401 - imported before the fork, so workers start warm
            ctx = multiprocessing.get_context("fork")
            self.pool = ctx.Pool(workers)
            self.workers = workers
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def grade(self, pairs: Sequence[tuple[str, str]], workers: int, timeout: float) -> list[bool]:
        with self.lock:
            return self._grade(pairs, workers, timeout)

    def _grade(self, pairs: Sequence[tuple[str, str]], workers: int, timeout: float) -> list[bool]:
        out: list[bool] = []
        for lo in range(0, len(pairs), workers):
            pool = self._ensure(workers)
            pending = [pool.apply_async(_math_verify_safe, (p,)) for p in pairs[lo:lo + workers]]
            deadline = time.monotonic() + timeout
            stuck = False
            for job in pending:
                try:
                    out.append(bool(job.get(max(0.0, deadline - time.monotonic()))))
                except multiprocessing.TimeoutError:
                    out.append(False)
                    stuck = True
                except Exception:  # noqa: BLE001 - a dead worker grades as wrong
                    out.append(False)
            if stuck:
                self.close()
        return out


_MATH_POOL = _MathPool()
atexit.register(_MATH_POOL.close)


def start_math_pool(workers: int) -> None:
    """Forks the MATH grading workers now (e.g. before CUDA or an inference engine starts)."""
    with _MATH_POOL.lock:
        _MATH_POOL._ensure(max(1, workers))


def grade_math(completions: Sequence[str], golds: Sequence[str], workers: int = 1,
               timeout: float = MATH_TIMEOUT_S) -> list[bool]:
    """math-verify grades for aligned completions and golds, each under a hard `timeout` (s).

    Works from any thread: the work runs in `workers` worker processes.
    """
    pairs = [(c, g) if isinstance(c, str) and isinstance(g, str) else ("", "") for c, g in
             zip(completions, golds, strict=True)]
    return _MATH_POOL.grade(pairs, max(1, workers), timeout)


@GRADERS.register("gsm8k", "arith")
def _grade_numeric(completions: Sequence[str], golds: Sequence[str], workers: int) -> list[bool]:
    """Numeric tasks: pure string work, graded inline (microseconds per completion)."""
    return [_safe_numeric(c, g) for c, g in zip(completions, golds, strict=True)]


def _safe_numeric(completion: str, gold: str) -> bool:
    if not isinstance(completion, str) or not isinstance(gold, str):
        return False
    try:
        return _numeric_correct(completion, gold)
    except Exception:  # noqa: BLE001 - a grader must never take the training run down
        return False


@GRADERS.register("math", "math500")
def _grade_math(completions: Sequence[str], golds: Sequence[str], workers: int) -> list[bool]:
    """MATH: math-verify in worker processes under hard deadlines."""
    return grade_math(completions, golds, workers=workers)


def is_correct(completion: str, gold: str, task: str) -> bool:
    """True when `completion` answers `gold` for `task` (see module docstring). Never raises."""
    if task not in GRADERS:
        return False
    return GRADERS.get(task)([completion], [gold], 1)[0]


# --------------------------------------------------------------------------- reward terms

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


def score_batch(completions: Sequence[Sequence[str]], golds: Sequence[str], task: str,
                weights: Mapping[str, float] | None = None,
                workers: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores a step's completions.

    Args:
        completions: [G][n] texts (n completions for each of G prompts; n may differ per group
            only if all groups have the same length, since the output is a [G, n] tensor).
        golds: [G] gold answers.
        task: "gsm8k", "math", "math500" or "arith".
        weights: term name -> weight (default {"correctness": 1.0}).
        workers: processes for MATH grading (default: min(8, cpu count)); numeric tasks are
            graded inline (microseconds per completion).

    Returns:
        rewards: [G, n] float32 weighted sum; terms: name -> [G, n] unweighted values, always
        including "correctness".
    """
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
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0.0
    try:
        return float(fn(completion, gold, task))
    except Exception:  # noqa: BLE001
        return 0.0
