"""Answer extraction and graders (docs/grading.md).

One completion yields exactly one answer and only that answer is graded (docs/grading.md):

- GSM8K and arith: the first answer field (`#### x` line, `<answer>` block, last `\\boxed{}`,
  "The answer is x" line) that holds a number, else the last number of the text; a field with
  two different numbers is a hedge and no answer. Numbers (decimals, thousands commas, 1/2,
  1.5e6, any script's digits) are compared exactly as fractions within ABS_TOL, with capped
  digit counts so that "10**10**10"-style strings cannot blow up.
- MATH: math-verify (`parse` the gold first, then `verify(gold, answer)`, which is not symmetric)
  on the one extracted answer, in a worker process under a hard per-completion deadline:
  math-verify's signal timeouts only work in the main thread and cannot interrupt C code such
  as a huge integer power; a worker process can always be killed.

Graders never raise, and are linear-time (numeric) or bounded by the deadline (MATH). The
reward terms built on them are in `podslib.tasks.rewards`.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import re
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from fractions import Fraction

from podslib.registry import Registry

# task -> fn(completions [N], golds [N], workers) -> [N] correct or not (graded in one call)
GRADERS = Registry("task")

MAX_NUMBER_DIGITS = 60          # longer numbers compare as strings; a longer fraction or exponent: unread
MAX_MATH_CHARS = 4000           # math-verify sees at most 4000 characters of a completion
MATH_TIMEOUT_S = 5.0            # hard limit per MATH completion (parse + verify)
ABS_TOL = Fraction(1, 10**6)    # numeric tolerance (absolute: 1450000 != 1450001)

# --------------------------------------------------------------------------- text helpers

_OTHER_DIGITS = re.compile(r"[^\D0-9]")     # `\d` is Unicode: decimal digits of other scripts
_CURRENCY = re.compile("[$€£¥₹¢]")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[0-9]+)\s*\}\{\s*([0-9]+)\s*\}")
_NUMBER = re.compile(                       # one number token; ASCII digits only
    r"(?<![0-9.,/])[-+]?"
    r"(?:[0-9]+/[0-9]+"                                              # 1/2
    r"|[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"       # 1,234.5 or 1.5e6
    r"(?![0-9]|[.,/][0-9]|[eE][-+]?[0-9])"  # never a prefix: 1/2/3, 1,2, 1.2.3 are no number
)
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")  # $ (not \$), \( or \[


def _ascii_digits(text: str) -> str:
    """`text` with every Unicode decimal digit ('٥' Arabic-Indic, '５' fullwidth, '५' Devanagari)
    replaced by the ASCII digit of the same value; other characters unchanged."""
    if text.isascii():
        return text
    return _OTHER_DIGITS.sub(lambda m: str(unicodedata.decimal(m.group())), text)


def _prepare(text: str) -> str:
    """Numeric-task text: ASCII digits, no currency symbols, \\frac{a}{b} written a/b."""
    return _LATEX_FRAC.sub(r"\1/\2", _CURRENCY.sub("", _ascii_digits(text)))


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


# --------------------------------------------------------------------------- numbers

def _decimal_text(sign: str, whole: str, frac: str) -> str:
    """Canonical decimal: no leading or trailing zeros, no sign on zero ("-007.50" -> "-7.5")."""
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    text = whole + ("." + frac if frac else "")
    return text if text == "0" else sign + text


def _fraction_text(value: Fraction) -> str:
    """Decimal text when the expansion terminates (1/2 -> "0.5"), else "p/q" in lowest terms."""
    q = value.denominator
    twos = (q & -q).bit_length() - 1
    rest, fives = q >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{value.numerator}/{q}"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // q).rjust(places + 1, "0")
    cut = len(digits) - places
    return _decimal_text("-" if value < 0 else "", digits[:cut], digits[cut:])


def _read(token: str) -> str | None:
    """Canonical text of one `_NUMBER` token, or None when it has no value here: a zero
    denominator, a fraction longer than MAX_NUMBER_DIGITS characters, |exponent| above it."""
    sign = "-" if token[0] == "-" else ""
    body = token.lstrip("+-")
    if "/" in body:
        num, den = body.split("/")
        if len(body) > MAX_NUMBER_DIGITS or not den.strip("0"):
            return None
        return _fraction_text(Fraction(int(sign + num), int(den)))
    mantissa, _, exponent = body.lower().partition("e")
    if len(exponent.lstrip("+-").lstrip("0")) > 3 or abs(int(exponent or 0)) > MAX_NUMBER_DIGITS:
        return None
    whole, _, frac = mantissa.replace(",", "").partition(".")
    point = len(whole) + int(exponent or 0)              # decimal point position in the digits
    digits = ("0" * -point + whole + frac) if point < 0 else (whole + frac).ljust(point, "0")
    point = max(point, 0)
    return _decimal_text(sign, digits[:point], digits[point:])


def normalize_number(text: str) -> str | None:
    """Canonical text of `text` if it is exactly one number, else None.

    Ignores surrounding whitespace, currency symbols, a trailing '%' or '.'; reads any script's
    decimal digits, thousands commas, decimals, fractions and scientific notation:
    "$1,000" -> "1000", "18.00" -> "18", "+7" -> "7", "1/2" -> "0.5", "1/3" -> "1/3",
    "1.5e3" -> "1500", "٥" -> "5"; "1 000", "5 or 7", "1e999" -> None.
    """
    s = _prepare(text).strip().rstrip(".%")
    return _read(s) if _NUMBER.fullmatch(s) else None


def _to_fraction(canonical: str) -> Fraction | None:
    return None if len(canonical) > MAX_NUMBER_DIGITS else Fraction(canonical)


def numbers_equal(a: str, b: str) -> bool:
    """True when two canonical numbers agree within ABS_TOL (exact string match past the digit cap)."""
    if a == b:
        return True
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is None or fb is None:
        return False
    return abs(fa - fb) <= ABS_TOL


# --------------------------------------------------------------------------- extraction

def _answer_fields(text: str) -> Iterator[str]:
    """A numeric completion's answer fields in search order, each found only when reached: the
    rest of the line after the last `####`, the last <answer> block, the last \\boxed{}, the rest
    of the line after the last "answer is"."""
    hashes = _HASHES.findall(text)
    if hashes:
        yield hashes[-1]
    for find in (answer_block, last_boxed):
        content = find(text)
        if content is not None:
            yield content
    said = _ANSWER_IS.findall(text)
    if said:
        yield said[-1]


def _numeric_answer(text: str) -> str | None:
    """GSM8K/arith, on `_prepare`d text: the first answer field that holds a number decides. Its
    answer is that number when all its numbers are equal; two different numbers (a hedge) or an
    unreadable one make no answer. With no such field, the last number in the text."""
    for field in _answer_fields(text):
        values = {_read(token) for token in set(_NUMBER.findall(field))}
        if values:
            return values.pop() if len(values) == 1 else None
    tokens = _NUMBER.findall(text)
    return _read(tokens[-1]) if tokens else None


def _math_answer(text: str) -> str | None:
    """MATH: the last <answer> block (the content of its \\boxed{} if it holds exactly one), else
    the content of the last \\boxed{}; None without either."""
    block = answer_block(text)
    if block is not None:
        inner = last_boxed(block)
        single = inner is not None and len(_BOXED.findall(block)) == 1
        return inner.strip() if single else block
    boxed = last_boxed(text)
    return None if boxed is None else boxed.strip()


def extract_answer(text: str, task: str) -> str | None:
    """The one answer written in `text` for `task` (canonical number for numeric tasks, ASCII
    digits for all), or None if it has none. Never raises: non-str input or an unknown task
    give None."""
    if not isinstance(text, str) or task not in GRADERS:
        return None
    try:
        if task in ("math", "math500"):
            return _math_answer(_ascii_digits(text))
        return _numeric_answer(_prepare(text))
    except Exception:  # noqa: BLE001 - a grader must never take the training run down
        return None


# --------------------------------------------------------------------------- grading

def _numeric_correct(completion: str, gold: str) -> bool:
    """True when the one extracted answer equals the gold number (within ABS_TOL)."""
    want, got = normalize_number(gold), _numeric_answer(_prepare(completion))
    return want is not None and got is not None and numbers_equal(got, want)


def _math_candidate(completion: str) -> str:
    """The one string math-verify parses: the extracted answer in $...$ (as it is if it has its
    own math delimiters; an escaped \\$ is not one), else the completion's last MAX_MATH_CHARS
    characters, from which math-verify extracts one answer itself (several expressions there
    form one set)."""
    answer = _math_answer(completion)
    if answer is None:
        return completion[-MAX_MATH_CHARS:]
    answer = answer[:MAX_MATH_CHARS]
    return answer if _MATH_DELIMITER.search(answer) else f"${answer}$"


def _math_verify(completion: str, gold: str) -> bool:
    """math-verify without its own (signal) timeouts; run it under `_MathPool`."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    answer = parse(_math_candidate(completion), parsing_timeout=None)
    return bool(gold_parsed and answer and verify(gold_parsed, answer, timeout_seconds=None))


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

    Works from any thread: the work runs in `workers` worker processes. Decimal digits of any
    script are read as ASCII digits (in the completion and the gold), as for numeric tasks.
    """
    pairs = [(_ascii_digits(c), _ascii_digits(g)) if isinstance(c, str) and isinstance(g, str)
             else ("", "") for c, g in zip(completions, golds, strict=True)]
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

