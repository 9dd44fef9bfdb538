"""The careful-reader rule of docs/grading.md: the probed table, the classes it stands for
(headings and numbered steps, Unicode signs and spaces, LaTeX number formatting, an answer field
that cannot be read, a justification after the answer), property tests that any supported way of
writing an answer grades correct for its gold and that no completion is correct for two golds,
and the MATH grader's checks before math-verify (pathological answers cost milliseconds)."""
import json
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podslib.tasks.grading import (
    MATH_TIMEOUT_S,
    _math_answer,
    _math_candidate,
    _normalize,
    extract_answer,
    grade_math,
    is_correct,
    normalize_number,
    start_math_pool,
)
from podslib.tasks.rewards import score_batch

NUMERIC = ("gsm8k", "arith")

# --------------------------------------------------------------------------- the probed table

TABLE = [  # (completion, gold, correct): each was graded wrongly before
    ("#### Step 3: Final Answer\nSo she has \\boxed{18} apples.", "18", True),   # read 3
    ("#### 18\n\nWhy:\n#### Explanation 2\nShe bought 3 bags of 6.", "18", True),  # read 2
    ("#### \u22125", "-5", True), ("\\boxed{\u22125}", "-5", True),               # read 5
    ("\\boxed{1\\,000}", "1000", True),                                          # read 1
    ("\\boxed{1{,}000}", "1000", True), ("\\boxed{1,\\!000}", "1000", True),       # no answer
    ("\\boxed{\\dfrac12}", "0.5", True),                                          # read 12
    ("She had 7 cookies. #### .5", "0.5", True),                                  # read 7
    ("#### 18 (6 x 3 = 18)", "18", True),                                         # a hedge
    ("The answer is 6 * 3 = 18.", "18", True),                                    # a hedge
    ("#### 0.0000005", "0", False), ("#### 0.0000005", "0.000001", False),        # both right
]


@pytest.mark.parametrize("task", NUMERIC)
@pytest.mark.parametrize("completion, gold, correct", TABLE)
def test_probed_table_numeric(completion, gold, correct, task):
    assert is_correct(completion, gold, task) is correct


def test_probed_table_math():
    """The MATH grader on the table's LaTeX and Unicode rows, and the same tolerance row."""
    rows = [(c, g, ok) for c, g, ok in TABLE if "\\boxed" in c or "\u2212" in c or "0.0000005" in c]
    graded = grade_math([c for c, _, _ in rows], [g for _, g, _ in rows], workers=2)
    assert graded == [ok for _, _, ok in rows], rows


# --------------------------------------------------------------------------- the classes


@pytest.mark.parametrize("text, answer", [
    # headings and numbered steps: a `####` heading is no answer line; step and list numbers no answer
    ("#### Step 3: Final Answer\nThe answer is 18.", "18"),
    ("#### 18\n\n#### 2. Check\n6 * 3 = 18", "18"),
    ("#### 3. Check the total\nThe answer is 18.", "18"),
    ("#### Final Answer: 18", "18"), ("#### Total: 18", "18"), ("#### x = 18", "18"),
    ("#### Part 2: Total = 18", "18"), ("**Step 3:** 18", "18"),
    ("Step 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\nStep 3", "14"),
    ("1. Add 3 and 4 to get 7.\n2. Double it: 14.\n3. Done", "14"),
    ("18 apples.\n\n**Step 4:** check", "18"),
    # Unicode signs and spaces
    ("#### \u22125", "-5"), ("#### \u20135", "-5"), ("#### \uff0d5", "-5"),
    ("#### 1\u00a0000", "1000"), ("#### 1\u2009000", "1000"), ("#### 1\u202f000\u202f000", "1000000"),
    ("5 \u2212 3 = 2", "2"), ("#### 3\u20135", None),                 # a range: two numbers
    ("#### \u0665", "5"), ("#### 1 000", None),                      # an ASCII space separates
    # LaTeX number formatting
    ("\\boxed{1\\,000\\,000}", "1000000"), ("\\boxed{1\\!000}", "1000"), ("\\boxed{1~000}", "1000"),
    ("\\boxed{11,\\! 111,\\! 100}", "11111100"), ("\\boxed{\\tfrac{3}{4}}", "0.75"),
    ("\\boxed{\\frac{-1}{2}}", "-0.5"), ("\\boxed{-\\frac{1}{2}}", "-0.5"), ("\\boxed{\\dfrac1{8}}", "0.125"),
    ("\\boxed{1.5 \\times 10^{3}}", "1500"), ("\\boxed{2 \\cdot 10^3}", "2000"), ("\\boxed{10^{-3}}", "0.001"),
    ("\\boxed{\\$18}", "18"), ("\\boxed{18\\%}", "18"), ("\\boxed{18 \\text{ apples}}", "18"),
    ("\\boxed{18\\text{ cm}^2}", "18"), ("#### 18 m^{2}", "18"), ("\\boxed{2^{10}}", None),
    # an answer field that cannot be read: no answer, never a number elsewhere in the text
    ("She had 7 cookies. #### 1,0000", None), ("She had 7 cookies. #### 1e999999", None),
    ("She had 7 cookies. #### 1/0", None), ("<answer>12,34</answer> 7", None),
    ("\\boxed{1.2.3} 7", None), ("She had 7 cookies. #### .5", "0.5"),
    ("<answer>eighteen</answer> so 18", "18"),                       # no digit: not a numeric field
    # a justification after the answer
    ("#### 18 (6 x 3 = 18)", "18"), ("The answer is 6 * 3 = 18.", "18"),
    ("#### 18 because 6 \u00d7 3 = 18", "18"), ("<answer>18, since 20 - 2 = 18</answer>", "18"),
    ("#### 18 apples (3 bags x 6 apples = 18 apples)", "18"), ("#### 3 (.75/.25 = 3)", "3"),
    ("#### 18 = 18", "18"), ("The answer is -5 =", "-5"), ("#### 6 * 3 = about 18", "18"),
    ("#### 0.5 (1/2)", "0.5"), ("#### 10 -4 = 6", "6"), ("#### 50% of 36 = 18", "18"),
    ("The answer is 3 apples per bag times 6 bags = 18 apples.", "18"),
    # what a justification is not: a second value
    ("#### 18 (6 x 3 = 19)", None), ("#### 5 or 7 = 7", None), ("#### 5 or maybe = 7", None),
    ("#### 7 (not 5)", None), ("#### 5 - that is 7", None), ("#### 18 (3 bags of 6)", None),
    ("#### 6 * 3", None),
])
def test_careful_reader_classes(text, answer):
    for task in NUMERIC:
        assert extract_answer(text, task) == answer, task
        golds = ["18", "-5", "5", "1000", "0.5", "14", "2", "7", "6", "3"]
        assert [g for g in golds if is_correct(text, g, task)] == [g for g in golds if g == answer]


def test_numbers_compare_exactly():
    """Equal values compare equal in any form; no tolerance, so 0.0000005 is neither 0 nor
    0.000001, and 0.333333 is not 1/3."""
    assert is_correct("#### 1/2", "0.50", "gsm8k") and is_correct("#### 5e-1", "\\frac12", "gsm8k")
    assert is_correct("#### 18.000", "18", "gsm8k") and is_correct("#### 1,000", "1000.0", "gsm8k")
    assert not is_correct("#### 0.5000001", "0.5", "gsm8k")
    assert not is_correct("#### 0.333333", "1/3", "gsm8k") and is_correct("#### 2/6", "1/3", "gsm8k")


# --------------------------------------------------------------------------- any supported format


def written(value: Fraction, form: str) -> str | None:
    """`value` in one supported way of writing a number, or None where it does not apply."""
    n, d = value.numerator, value.denominator
    text = normalize_number(f"{n}/{d}")
    grouped = f"{n:,}" if d == 1 and abs(n) >= 1000 else None
    sign = "-" if n < 0 else ""
    return {
        "plain": text,
        "commas": grouped,
        "currency": f"{sign}${text.lstrip('-')}",
        "trailing_zeros": text + (".00" if d == 1 else "0" if "." in text else ""),
        "percent": f"{text}%",
        "bold": f"**{text}**",
        "unicode_minus": text.replace("-", "\u2212"),
        "arabic_digits": "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in text),
        "thin_space": grouped and grouped.replace(",", "\\,"),
        "latex_comma": grouped and grouped.replace(",", "{,}"),
        "latex_comma_bang": grouped and grouped.replace(",", ",\\!"),
        "narrow_nbsp": grouped and grouped.replace(",", "\u202f"),
        "slash": f"{n}/{d}",
        "frac": f"{sign}\\frac{{{abs(n)}}}{{{d}}}",
        "dfrac_digits": f"{sign}\\dfrac{abs(n)}{d}" if abs(n) < 10 and d < 10 else None,
        "leading_point": text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else None,
        "scientific": f"{n // 1000}e3" if d == 1 and n and n % 1000 == 0 else None,
        "latex_scientific": f"{n // 1000} \\times 10^{{3}}" if d == 1 and n and n % 1000 == 0 else None,
    }[form]


FORMS = ["plain", "commas", "currency", "trailing_zeros", "percent", "bold", "unicode_minus",
         "arabic_digits", "thin_space", "latex_comma", "latex_comma_bang", "narrow_nbsp", "slash",
         "frac", "dfrac_digits", "leading_point", "scientific", "latex_scientific"]
FIELDS = ["#### {}", "<answer>\n{}\n</answer>", "$\\boxed{{{}}}$", "The answer is {}.",
          "**Final Answer:** {}", "So the total is {}."]
CONTEXTS = [("She had 3 bags of 7 apples and ate 2, so 3 * 7 - 2 = 19.\n", ""),
            ("#### Step 1: Count\nShe had 3 bags.\n#### Step 2: Answer\n", ""),
            ("1. She had 3 bags.\n2. Each held 7 apples.\n", ""),
            ("She had 3 bags of 7 apples.\n", "\n\n#### Explanation 2\nShe used 3 steps.")]
values = st.builds(Fraction, st.one_of(st.integers(-9, 9), st.integers(-10**4, 10**4),
                                       st.integers(-10**9, 10**9), st.integers(-9, 9).map(lambda k: 1000 * k)),
                   st.sampled_from([1, 1, 2, 4, 5, 8, 20, 3, 7]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, form=st.sampled_from(FORMS), field=st.sampled_from(range(len(FIELDS))),
       why=st.sampled_from(["", " apples", " ({w} = {a})", ", because {w} = {a}", "{w} = {a}"]),
       context=st.sampled_from(CONTEXTS))
def test_any_supported_format_grades_correct(value, form, field, why, context):
    """An answer written in any supported format, in any answer field, with or without a
    justification (a unit, an equation that gives it), is correct for its gold and no other."""
    answer = written(value, form)
    last_number = FIELDS[field].startswith("So")
    if answer is None or (last_number and (why or context[1])):
        return
    working = f"{normalize_number(f'{value - 3}')} + 3"
    if why.startswith("{w}"):
        answer = why.format(w=working, a=answer)
    elif why:
        answer += why.format(w=working, a=answer)
    text = context[0] + FIELDS[field].format(answer) + context[1]
    gold = normalize_number(f"{value.numerator}/{value.denominator}")
    for task in NUMERIC:
        assert extract_answer(text, task) == gold, text
        assert is_correct(text, gold, task), text
        assert not is_correct(text, normalize_number(f"{value + Fraction(1, 10**6)}"), task), text


# --------------------------------------------------------------------------- one answer each

# Close golds included: with exact comparison no completion is right for 0 and 0.000001 both.
GOLD_POOL = ["0", "0.000001", "1", "2", "5", "7", "-5", "0.5", "1/3", "0.333333", "12", "18",
             "57", "1000", "100000"]
FRAGMENTS = ["#### ", "<answer>", "</answer>", "\\boxed{", "}", "The answer is ", "Answer: ",
             " or ", " and ", " = ", " x ", " + ", " - ", "\n", ". ", ", ", " ", "$", "%", "(", ")",
             "5", "7", "-5", "\u22125", "1/2", "1/3", "0.5", ".5", "1e5", "1E999999", "1,000",
             "1\\,000", "1{,}000", "12", "18", "57", "\u0665", "\uff17", "\\frac{1}{2}", "\\dfrac12",
             "0.0000005", "0.000001", "0.333333", "/", "e", ".", ",", "Step 3: ", "#### Step 2",
             "#### Explanation 2", "1. ", "apples", "<think>", "</think>", "\u202f", "\\times 10^{3}"]
hedgy = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
numberish = st.text(alphabet="0123456789,.-+$%#{}\\boxed <>/answer=x()", max_size=300)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(hedgy, numberish, st.text(max_size=300)))
def test_no_completion_is_correct_for_two_golds(text):
    """One completion, one answer: at most one gold of the pool is graded correct, and
    is_correct says exactly whether the extracted answer is the gold's number."""
    for task in NUMERIC:
        correct = [g for g in GOLD_POOL if is_correct(text, g, task)]
        assert len({normalize_number(g) for g in correct}) <= 1, (text, correct)
        answer = extract_answer(text, task)
        assert correct == [g for g in GOLD_POOL if answer is not None and answer == normalize_number(g)]


MATH_GOLDS = ["5", "7", "-5", "\\frac{1}{2}", "0", "0.000001", "1000", "x+1", "\\sqrt{2}", "2\\pi"]
MATH_FRAGMENTS = ["\\boxed{", "}", "<answer>", "</answer>", "$", " or ", ", ", " = ", "x", "+1", "+",
                  "5", "7", "-5", "\u22125", "\\frac{1}{2}", "\\dfrac12", "0.5", "0.0000005",
                  "0.000001", "1\\,000", "1{,}000", "\\sqrt{2}", "2\\pi", "\\pi", "0", "(", ")"]


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(st.sampled_from(MATH_FRAGMENTS), min_size=1, max_size=10).map("".join))
def test_math_no_completion_is_correct_for_two_golds(text):
    """The same invariant for the MATH grader, over golds math-verify tells apart (it rounds
    decimals to 6 places when it compares them: two golds closer than that are one to it;
    plain numbers are compared exactly before it sees them)."""
    graded = grade_math([text] * len(MATH_GOLDS), MATH_GOLDS, workers=2)
    assert sum(graded) <= 1, (text, [g for g, ok in zip(MATH_GOLDS, graded) if ok])


# --------------------------------------------------------------------------- MATH before math-verify

PATHOLOGICAL = [
    "\\boxed{" + "{" * 50_000 + "}", "{" * 50_000, "[" * 40_000, "\\boxed{" * 20_000,
    "\\boxed{" + "\\frac{1}{" * 5000 + "2" + "}" * 5000 + "}", "\\frac{1}{" * 5000 + "2" + "}" * 5000,
    "$" + "(" * 3000 + "1" + ")" * 3000 + "$", "\\boxed{2^{2^{2^{2^{100}}}}}", "$2^{2^{2^{2^{100}}}}$",
    "\\boxed{10^{10^{10}}}", "\\boxed{9^{9^{9}}}", "The answer is $2^{2^{100}}$.", "\\boxed{(10!)!}",
    "\\boxed{10^{10}!}", "\\boxed{100000!}", "\\boxed{(2^{10})!}", "\\boxed{" + "9" * 5000 + "}",
    "<answer>" + "x+" * 2000 + "</answer>",
]


def test_math_pathological_answers_are_wrong_at_once():
    """Issue 21: 18 such answers took 24 s in one score_batch (5 s each until the deadline).
    Rejected before math-verify, the batch takes a small fraction of one time limit."""
    start_math_pool(2)
    score_batch([["\\boxed{x+1}"]], ["1+x"], "math", workers=2)     # the pool is warm
    start = time.perf_counter()
    _, terms = score_batch([PATHOLOGICAL], ["5"], "math", workers=2)
    elapsed = time.perf_counter() - start
    assert terms["correctness"].tolist() == [[0.0] * len(PATHOLOGICAL)]
    assert elapsed < MATH_TIMEOUT_S / 5, elapsed


def test_math_reasonable_answers_pass_the_checks(data_dir):
    """No MATH-500 gold, boxed, and no MATH-500 solution is rejected before math-verify; answers
    near the limits still reach it (a 4-digit factorial, 2^{1000}, e^{x^2}, nesting 10 deep)."""
    rows = [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").open()]
    near = ["\\boxed{9999!}", "\\boxed{2^{1000}}", "\\boxed{e^{x^2}}", "\\boxed{(n+1)!}",
            "\\boxed{" + "(" * 9 + "1" + ")" * 9 + "}"]
    texts = [f"\\boxed{{{r['answer']}}}" for r in rows] + [r["solution"] for r in rows] + near
    normalized = [_normalize(t) for t in texts]
    assert [t for t in normalized if _math_candidate(t, _math_answer(t)) is None] == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_math500_golds_grade_correct_against_themselves(data_dir):
    """All 500 MATH-500 golds, boxed, are correct for themselves (none rejected by the checks)."""
    golds = [json.loads(line)["answer"] for line in (data_dir / "math500" / "test.jsonl").open()]
    graded = grade_math([f"\\boxed{{{g}}}" for g in golds], golds, workers=2)
    assert [g for g, ok in zip(golds, graded) if not ok] == []
