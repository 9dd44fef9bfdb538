"""Answer extraction and graders (docs/grading.md).

One completion yields exactly one answer and only that answer is graded (docs/grading.md):

- GSM8K and arith: the first answer field that holds a digit decides: the last `####` line that
  is not a Markdown heading, the last `<answer>` block, the last `\\boxed{}`, the rest of the line
  after the last "answer is" / "answer:"; with no such field, the last number of the text. A field
  states the numbers outside the working of its equations (`18 (6 x 3 = 18)` states 18 twice);
  they must all be one value, else (a hedge, an unreadable number) there is no answer. Numbers
  (decimals, thousands separators, fractions, 1.5e6, LaTeX forms, any script's digits and minus
  signs) are compared exactly, as canonical text, so one answer equals at most one gold; digit
  counts are capped so that "10**10**10"-style strings cannot blow up.
- MATH: the extracted answer (`<answer>` block, else last `\\boxed{}`) is compared exactly when it
  and the gold are plain numbers; an answer no reasonable MATH answer looks like (too long, nested
  too deep, a tower of powers, a huge number or factorial) is wrong at once; anything else goes to
  math-verify (`parse` the gold first, then `verify(gold, answer)`, which is not symmetric) in a
  worker process under a hard per-completion deadline: math-verify's signal timeouts only work in
  the main thread and cannot interrupt C code such as a huge integer power; a worker process can
  always be killed.

Graders never raise, and are linear-time (numeric, and the MATH checks before math-verify) or
bounded by the deadline (math-verify). The reward terms built on them are in
`podslib.tasks.rewards`.
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

MAX_NUMBER_DIGITS = 60          # a longer fraction, or an exponent beyond +-60: unreadable
MAX_MATH_CHARS = 4000           # without an extracted answer, math-verify sees the last 4000 characters
MAX_MATH_ANSWER_CHARS = 1000    # a longer extracted MATH answer is no answer
MAX_MATH_DEPTH = 10             # brackets nested deeper: no answer (math-verify's cost doubles per level)
MAX_MATH_DIGITS = 100           # a longer run of digits: no answer
MATH_TIMEOUT_S = 5.0            # hard limit per MATH completion (parse + verify)

# --------------------------------------------------------------------------- text helpers

_OTHER_DIGITS = re.compile(r"[^\D0-9]")     # `\d` is Unicode: decimal digits of other scripts
_SIGN = re.compile("[\u2212\u2013\ufe63\uff0d\uff0b]")        # − – ﹣ － ＋
# a thin or no-break space (Unicode, or LaTeX \, \: \; \! \  ~) or a LaTeX comma ({,} ,\!) between
# digit groups of three, written as a thousands comma: 1\,000, 1{,}000, 1,\!000 and 1 000 -> 1,000
_GROUP_SEPARATOR = re.compile(
    r"(?<=[0-9])(?:[\u00a0\u2007\u2009\u202f~]|\\[,:; !]|\{,\}|,\\! ?)(?=[0-9]{3}(?![0-9]))")
_CURRENCY = re.compile(r"\\?[$€£¥₹¢]")
_LATEX_FRAC = re.compile(           # \frac{1}{2}, \dfrac12, \tfrac1{2} -> 1/2
    r"\\[dt]?frac\s*(?:\{\s*(-?[0-9]+)\s*\}|([0-9]))\s*(?:\{\s*([0-9]+)\s*\}|([0-9]))")
_POWER_OF_TEN = re.compile(         # 1.5 \times 10^{6}, 2*10^3, 10^{-3} -> 1.5e6, 2e3, 1e-3
    r"(?=[0-9])(?<![0-9.])(?:([0-9]+(?:\.[0-9]+)?)\s*(?:\\times|\\cdot|[×·*x])\s*)?10\s*\^\s*"
    r"(?:\{\s*([-+]?[0-9]+)\s*\}|([0-9]+))")
_UNIT_EXPONENT = re.compile(r"(?=\^)(?<=[A-Za-z}])\^\s*(?:\{\s*[0-9]+\s*\}|[0-9])")  # cm^2, \text{m}^{3}
_STEP_NUMBER = re.compile(r"(?i)(?=[spc])\b(step|part|case)[ \t]?#?[0-9]{1,3}(?![0-9]|[.,/][0-9])")
_LIST_NUMBER = re.compile(          # "3. Compute", "#### 2) Check", "- **1.** Add" at a line start
    r"(?m)^([ \t]*(?:#{1,6}[ \t]*)?(?:[-*+][ \t]+)?(?:\*\*)?)[0-9]{1,3}[.)](?=\**[ \t]+\**[^\W\d_])")
# A pattern's leading (?=...) only lets the regex engine skip other positions fast.
_NUMBER_PATTERN = (                 # one number token; ASCII digits only
    r"(?=[-+.0-9])(?:(?<![0-9.,/])[-+]?(?:[0-9]+/[0-9]+"                 # 1/2
    r"|[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"            # 1,234.5, 1.5e6
    r"|(?<![0-9.,])[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?)"                    # .5, also in .75/.25
    r"(?![0-9]|[.,/][0-9]|[eE][-+]?[0-9])"  # never a prefix: 1/2/3, 1,2, 1.2.3 are no number
)
_NUMBER = re.compile(_NUMBER_PATTERN)
_TOKEN = re.compile(                # what an answer field is read as
    rf"(?P<number>{_NUMBER_PATTERN})"
    r"|(?P<operator>[-+*/×·÷^]|\\(?:times|cdot|div)\b|(?<![^\W\d_])x(?![^\W\d_])"
    r"|(?i:\b(?:times|plus|minus|divided by|multiplied by|of)\b))"
    r"|(?P<equals>[=≈]|\\approx\b)"
    r"|(?P<space>[\s()\[\]{}]+)"
    r"|(?P<other>[^\s()\[\]{}0-9.=≈\\*/×·÷^x+-]+|.)", re.DOTALL)
_HASHES = re.compile(r"####[ \t]*((?:(?!####)[^\n])*)")   # the rest of the line, up to a next ####
# a Markdown heading after ####: words and at most a section number after the first ("Explanation 2")
_HEADING = re.compile(r"[*_# \t]*(?:[^\W\d_][^\W\d]*[ \t]+#?[0-9]{1,3}(?![0-9]|[.,/][0-9]))?[^0-9]*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
_ANSWER_IS = re.compile(r"(?=[aA])\banswer\s*(?:\*\*|__)?\s*(?:is\b|[:=])[:\s*]*", re.IGNORECASE)
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")  # $ (not \$), \( or \[


def _ascii_digits(text: str) -> str:
    """`text` with every Unicode decimal digit ('٥' Arabic-Indic, '５' fullwidth, '५' Devanagari)
    replaced by the ASCII digit of the same value; other characters unchanged."""
    if text.isascii():
        return text
    return _OTHER_DIGITS.sub(lambda m: str(unicodedata.decimal(m.group())), text)


def _normalize(text: str) -> str:
    """Every task's text: ASCII digits, ASCII minus and plus signs ('−' U+2212, '–', '－'), and
    thousands separators of any kind written as commas."""
    if not text.isascii():
        text = _SIGN.sub(lambda m: "+" if m.group() == "\uff0b" else "-", _ascii_digits(text))
    return _GROUP_SEPARATOR.sub(",", text)


def _prepare(text: str) -> str:
    """Numeric-task text: `_normalize`d, no currency symbols, LaTeX numbers written plainly
    (\\frac{a}{b} as a/b, a \\times 10^{b} as aeb), no exponents of units, no step and list numbers."""
    text = _LATEX_FRAC.sub(r"\1\2/\3\4", _CURRENCY.sub("", _normalize(text)).replace("\\%", "%"))
    text = _UNIT_EXPONENT.sub("", _POWER_OF_TEN.sub(lambda m: f"{m[1] or 1}e{m[2] or m[3]}", text))
    return _LIST_NUMBER.sub(r"\1", _STEP_NUMBER.sub(r"\1", text))


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
    denominator, a fraction longer than MAX_NUMBER_DIGITS characters, |exponent| above it.
    Two numbers are equal exactly when their canonical texts are."""
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
    decimal digits and minus signs, thousands separators, decimals, fractions, scientific
    notation and their LaTeX forms: "$1,000" -> "1000", "18.00" -> "18", "+7" -> "7",
    "1/2" -> "0.5", "\\dfrac12" -> "0.5", "1/3" -> "1/3", "1.5e3" -> "1500", "1\\,000" -> "1000",
    "٥" -> "5", "−5" -> "-5"; "1 000", "5 or 7", "1e999" -> None.
    """
    s = _prepare(text).strip().rstrip(".%")
    return _read(s) if _NUMBER.fullmatch(s) else None


# --------------------------------------------------------------------------- extraction

def _answer_fields(text: str) -> Iterator[str]:
    """A numeric completion's answer fields in search order, each found only when reached: the
    rest of the last `####` line that is not a heading, the last <answer> block, the last
    \\boxed{}, the rest of the line after the last "answer is" or "answer:"."""
    for line in reversed(_HASHES.findall(text)):
        if not _HEADING.fullmatch(line):
            yield line
            break
    for find in (answer_block, last_boxed):
        content = find(text)
        if content is not None:
            yield content
    said = None
    for said in _ANSWER_IS.finditer(text):
        pass
    if said is not None:
        end = text.find("\n", said.end())
        yield text[said.end():end if end >= 0 else len(text)]


def _stated_numbers(field: str) -> list[str]:
    """The number tokens a field states: all but the working of its equations. Working is an
    arithmetic run (numbers joined by operators, words such as units between), or one number,
    that `=` and then a result follow: `18 (6 x 3 = 18)` and `3 apples + 15 apples = 18` state
    18 only; `5 or 7` and `5 or maybe = 7` state 5 and 7; `18 =` states 18."""
    stated: list[str] = []
    run: list[str] = []          # the numbers of the arithmetic run being read
    working: list[str] = []      # a run before `=`: dropped once a result follows
    joined = False               # an operator since the run's last number
    worded = False               # words since the run's last number
    for match in _TOKEN.finditer(field):
        kind, token = match.lastgroup, match.group()
        if kind == "number":
            if run and not joined and token[0] not in "+-":    # "5 7", "5 or 7": a new run
                stated += run
                run = []
            run.append(token)
            working, joined, worded = [], False, False
        elif kind == "operator":
            joined, worded = True, False
        elif kind == "equals":
            if len(run) == 1 and worded:                       # "5 or maybe = 7": 5 stays
                stated += run
                run = []
            working, run, joined, worded = run or working, [], False, False
        elif kind == "other":
            if joined:                                         # "5 - that is 7": not one run
                stated += run
                run, joined = [], False
            worded = True
    return stated + working + run


def _field_answer(field: str) -> str | None:
    """The value every number the field states has, or None: two different values (a hedge) or
    an unreadable number."""
    values = {_read(token) for token in _stated_numbers(field)}
    return values.pop() if len(values) == 1 else None


def _numeric_answer(text: str) -> str | None:
    """GSM8K/arith, on `_prepare`d text: the first answer field that holds a digit decides (its
    `_field_answer`); with no such field, the last number in the text."""
    for field in _answer_fields(text):
        if any("0" <= c <= "9" for c in field):
            return _field_answer(field)
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
    digits and signs for all), or None if it has none. Never raises: non-str input or an unknown
    task give None."""
    if not isinstance(text, str) or task not in GRADERS:
        return None
    try:
        if task in ("math", "math500"):
            return _math_answer(_normalize(text))
        return _numeric_answer(_prepare(text))
    except Exception:  # noqa: BLE001 - a grader must never take the training run down
        return None


# --------------------------------------------------------------------------- grading

def _numeric_correct(completion: str, gold: str) -> bool:
    """True when the one extracted answer is the gold number (equal canonical texts)."""
    want, got = normalize_number(gold), _numeric_answer(_prepare(completion))
    return want is not None and got == want


_HUGE_NUMBER = re.compile(rf"[0-9]{{{MAX_MATH_DIGITS + 1},}}")
_NUMERIC_TOWER = re.compile(r"\^\s*[{(][^{}()]*[0-9]\s*\^")      # a number's power in an exponent
_HUGE_FACTORIAL = re.compile(r"(?:[0-9]{5}|[!}]\s*\)|\^\s*\{[^{}]*\})\s*!")  # 10000!, (10!)!, 2^{10}!
_BRACKET = re.compile(r"[{}()\[\]]")


def _unreasonable(candidate: str) -> bool:
    """True for what no MATH answer looks like and math-verify (sympy) may spend seconds on: a
    number of more than MAX_MATH_DIGITS digits, a power of a number inside an exponent
    (2^{2^{100}}), a factorial of a 5-digit number, of a factorial or of a power ((10!)!), or
    brackets nested more than MAX_MATH_DEPTH deep (\\frac nested 5000 deep, 50000 braces)."""
    if any(p.search(candidate) for p in (_HUGE_NUMBER, _NUMERIC_TOWER, _HUGE_FACTORIAL)):
        return True
    depth = 0
    for bracket in _BRACKET.finditer(candidate):
        depth = depth + 1 if bracket.group() in "{([" else max(depth - 1, 0)
        if depth > MAX_MATH_DEPTH:
            return True
    return False


def _math_candidate(completion: str, answer: str | None) -> str | None:
    """The one string math-verify parses for a completion and its `_math_answer`, or None (wrong
    at once): the answer in $...$ (as it is if it has its own math delimiters; an escaped \\$ is
    not one), else the completion's last MAX_MATH_CHARS characters, from which math-verify
    extracts one answer itself (several expressions there form one set); None when the answer is
    longer than MAX_MATH_ANSWER_CHARS or the string is `_unreasonable`."""
    if answer is None:
        candidate = completion[-MAX_MATH_CHARS:]
    elif len(answer) > MAX_MATH_ANSWER_CHARS:
        return None
    else:
        candidate = answer if _MATH_DELIMITER.search(answer) else f"${answer}$"
    return None if _unreasonable(candidate) else candidate


def _plain_number(text: str) -> str | None:
    """Canonical text of a MATH answer or gold that is one number and no percentage, else None."""
    return None if "%" in text else normalize_number(text)


def _math_verify(candidate: str, gold: str) -> bool:
    """math-verify without its own (signal) timeouts; run it under `_MathPool`."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    answer = parse(candidate, parsing_timeout=None)
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


def _math_pair(completion: object, gold: object) -> bool | tuple[str, str]:
    """One MATH pair decided in this process (a bool), or the (candidate, gold) math-verify
    decides: non-str input, an unreasonable answer or two plain numbers (compared exactly, as
    for numeric tasks: 0.5000001 is not 0.5) need no math-verify."""
    if not isinstance(completion, str) or not isinstance(gold, str):
        return False
    completion, gold = _normalize(completion), _normalize(gold)
    answer = _math_answer(completion)
    got, want = (None if answer is None else _plain_number(answer)), _plain_number(gold)
    if got is not None and want is not None:
        return got == want
    candidate = _math_candidate(completion, answer)
    return False if candidate is None else (candidate, gold)


def grade_math(completions: Sequence[str], golds: Sequence[str], workers: int = 1,
               timeout: float = MATH_TIMEOUT_S) -> list[bool]:
    """MATH grades for aligned completions and golds; what math-verify decides runs in `workers`
    worker processes, each under a hard `timeout` (s), so this works from any thread.

    Decimal digits of any script, minus signs and thousands separators are normalised first (in
    the completion and the gold), as for numeric tasks. No pair raises: a bad one grades wrong.
    """
    grades: list[bool | tuple[str, str]] = []
    for completion, gold in zip(completions, golds, strict=True):
        try:
            grades.append(_math_pair(completion, gold))
        except Exception:  # noqa: BLE001 - a grader must never take the training run down
            grades.append(False)
    asked = [i for i, grade in enumerate(grades) if not isinstance(grade, bool)]
    verified = _MATH_POOL.grade([grades[i] for i in asked], max(1, workers), timeout)
    for i, grade in zip(asked, verified, strict=True):
        grades[i] = grade
    return [bool(grade) for grade in grades]


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

