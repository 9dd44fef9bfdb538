"""podslib.tasks.grading: extraction, graders (real GSM8K / MATH-500 data), reward terms, score_batch,
and property tests that no input makes a grader raise or hang."""
import json
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podslib.tasks.grading import (
    extract_answer,
    grade_math,
    is_correct,
    last_boxed,
    normalize_number,
    start_math_pool,
)
from podslib.tasks.rewards import REWARD_TERMS, score_batch

# --------------------------------------------------------------------------- numbers, extraction


@pytest.mark.parametrize("text, expected", [
    ("18", "18"), ("18.00", "18"), ("$18", "18"), ("1,000", "1000"), ("-3.50", "-3.5"),
    ("+7", "7"), ("42.", "42"), ("15%", "15"), ("£2,500.0", "2500"), (" 0.25 ", "0.25"),
    ("-0", "0"), ("007", "7"), ("abc", None), ("", None),
    ("1/2", "0.5"), ("-6/8", "-0.75"), ("4/2", "2"), ("1/3", "1/3"), ("-2/6", "-1/3"),
    ("\\frac{3}{4}", "0.75"), ("1/0", None), ("1/2/3", None),
    ("1e5", "100000"), ("1.5E-3", "0.0015"), ("2.5e+1", "25"), ("1e60", "1" + "0" * 60),
    ("1e61", None), ("1e999999", None), ("1e" + "9" * 5000, None),
    ("1,000,000", "1000000"), ("1,00", None), ("1,0000", None), ("1 000", None), ("1.2.3", None),
    ("٥", "5"), ("١٢٫٥", None), ("１２", "12"), ("५०", "50"), ("5 or 7", None),
    ("\u22125", "-5"), (".5", "0.5"), ("-.25", "-0.25"), ("1\\,000", "1000"), ("1{,}000", "1000"),
    ("\\dfrac12", "0.5"), ("\\$32,\\!348", "32348"), ("2 \\times 10^{3}", "2000"), ("5 = 7", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("so 3+4=7\n#### 7", "7"),
    ("#### $1,234.00 dollars", "1234"),
    ("blah 5 <answer>\n12\n</answer> 99", "12"),           # <answer> before \boxed and last number
    ("x is \\boxed{-8} then 3", "-8"),
    ("\\boxed{\\frac{1}{2}} and \\boxed{\\text{ 40 }}", "40"),  # last \boxed, last number inside
    ("The answer is: $56.\nCheck: 7*8=56, 60", "56"),        # the rest of that line only
    ("#### Final answer\n<answer>18</answer>", "18"),      # a field without a number: next one
    ("she has 3 then 5 then 11.", "11"),
    ("no numbers here", None),
    ("#### 4\n#### 5", "5"),                                 # the last ####
    ("#### 18 (18 apples)", "18"),                          # one number, written twice
    ("#### 5 or 7", None), ("#### 1/2", "0.5"), ("#### 1e5", "100000"), ("#### 1e999999", None),
    ("<answer>5</answer> 7", "5"), ("The answer is 5. Or maybe 7", None),
    ("\\boxed{5} or \\boxed{7}", "7"),                      # the last \\boxed
    ("#### ٥", "5"), ("<answer>１８</answer>", "18"), ("1e5", "100000"), ("5 or 7", "7"),
])
def test_extract_answer_gsm8k_search_order(text, expected):
    assert extract_answer(text, "gsm8k") == expected


def test_extract_answer_math():
    assert extract_answer("so $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "math") == "\\frac{\\sqrt{3}}{2}"
    assert extract_answer("<answer>\n\\boxed{x^2}\n</answer>", "math") == "x^2"
    assert extract_answer("<answer> 3\\pi </answer> \\boxed{4}", "math") == "3\\pi"
    assert extract_answer("no box", "math") is None
    assert last_boxed("\\boxed{a{b}c} \\boxed{d") == "a{b}c"  # the last one is unclosed


@pytest.mark.parametrize("completion, gold, expected", [
    ("#### 18", "18", True), ("#### 18.00", "18", True), ("#### $1,000", "1000", True),
    ("#### -5", "-5", True), ("#### 5", "-5", False), ("#### 17", "18", False),
    ("#### 0.5", "0.50", True), ("#### 0.5000001", "0.5", False), ("#### 0.51", "0.5", False),
    ("<think>\n2*9\n</think>\n<answer>\n18\n</answer>", "18", True),
    ("#### 5 wait no, it is 18", "18", False),               # a hedge: no answer
    ("#### 5 wait no, it is 18", "5", False),
    ("#### ５", "5", True), ("#### 1/2", "0.5", True), ("#### 1/2", "1", False),
    ("#### 1e5", "100000", True), ("#### 1e5", "1", False), ("#### 1e999999", "1", False),
    ("18", "18", True), ("eighteen", "18", False), ("", "18", False),
    ("#### " + "9" * 80, "9" * 80, True), ("#### " + "9" * 80, "9" * 79 + "8", False),
])
def test_is_correct_numeric(completion, gold, expected):
    for task in ("gsm8k", "arith"):
        assert is_correct(completion, gold, task) is expected


@pytest.mark.parametrize("args", [
    (None, "1", "gsm8k"), (18, "18", "gsm8k"), ("18", None, "gsm8k"), ("18", "18", "mmlu"),
    (b"18", "18", "math"), ("18", 18, "math"),
])
def test_non_str_or_unknown_task_is_false(args):
    assert is_correct(*args) is False
    assert extract_answer(args[0], args[2]) in (None, "18")


# --------------------------------------------------------------------------- real data


def test_every_gsm8k_test_answer_grades_correct(data_dir):
    """All 1319 reference solutions grade right against their own gold, and wrong against gold + 1."""
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").open()]
    assert len(rows) == 1319
    for row in rows:
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        assert is_correct(row["answer"], gold, "gsm8k"), row["answer"]
        assert not is_correct(row["answer"], str(int(gold) + 1), "gsm8k"), row["answer"]


@pytest.mark.slow
def test_math500_solutions_grade_against_own_and_other_answers(data_dir):
    """Each solution matches its own answer (>= 99%) and not the next row's answer (>= 99%)."""
    rows = [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").open()]
    solutions = [r["solution"] for r in rows]
    own = grade_math(solutions, [r["answer"] for r in rows], workers=1)
    other = grade_math(solutions, [rows[(i + 1) % len(rows)]["answer"] for i in range(len(rows))],
                       workers=1)
    assert sum(own) >= 0.99 * len(rows)
    assert len(rows) - sum(other) >= 0.99 * len(rows)


# --------------------------------------------------------------------------- MATH time limits


def test_math_grading_works_outside_the_main_thread():
    results = {}

    def grade():
        results["right"] = is_correct("so $\\boxed{\\frac{1}{2}}$", "0.5", "math")
        results["wrong"] = is_correct("so $\\boxed{\\frac{1}{3}}$", "\\frac12", "math")
    thread = threading.Thread(target=grade)
    thread.start()
    thread.join()
    assert results == {"right": True, "wrong": False}


def test_math_grading_from_concurrent_threads():
    """Two threads grading at once through the shared pool get their own, right answers."""
    start_math_pool(2)
    completions = [f"$\\boxed{{{k}/4}}$" for k in range(8)]
    results = {}

    def grade(name, golds):
        results[name] = grade_math(completions, golds, workers=2)
    threads = [threading.Thread(target=grade, args=("a", ["\\frac{1}{2}"] * 8)),
               threading.Thread(target=grade, args=("b", ["0.75"] * 8))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"] == [k == 2 for k in range(8)]
    assert results["b"] == [k == 3 for k in range(8)]


@pytest.mark.timeout(120)
def test_math_grading_kills_a_stuck_worker_and_recovers():
    """A tower of powers keeps sympy busy in C code: graded wrong at the deadline, and the pool
    (restarted) grades the rest of the batch correctly."""
    completions = ["\\boxed{10^{10^{10^{10}}}}", "\\boxed{2}", "\\boxed{3}"]
    assert grade_math(completions, ["5", "2", "4"], workers=2, timeout=1.0) == [False, True, False]
    assert grade_math(["\\boxed{x+1}"], ["1+x"], timeout=1.0) == [True]


# --------------------------------------------------------------------------- never raise

ADVERSARIAL = [
    "\\boxed{" * 20000, "\\boxed{" * 3000 + "1" + "}" * 3000, "9" * 100_000, "{" * 50_000,
    "1," * 50_000, "####" * 25_000, "<answer>" * 10_000, "$10**10**10$", "-" * 100_000 + "5",
    "\\boxed{" + "9" * 5000 + "}", "\ud800\udfff\x00\u202e", "The answer is " * 7000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_strings_never_raise(text):
    for task in ("gsm8k", "arith"):
        assert is_correct(text, "5", task) in (True, False)
        extract_answer(text, task)
        for name, fn in REWARD_TERMS.items():
            assert 0.0 <= fn(text, "5", task) <= 1.0, name
    extract_answer(text, "math")


@pytest.mark.timeout(300)
def test_adversarial_strings_math_bounded():
    graded = grade_math(ADVERSARIAL, ["\\frac{1}{2}"] * len(ADVERSARIAL), workers=2, timeout=2.0)
    assert graded == [False] * len(ADVERSARIAL)


numberish = st.text(alphabet="0123456789,.-+$%#{}\\boxed <>/answer", max_size=300)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=2000), numberish), gold=st.text(max_size=30))
def test_numeric_graders_never_raise(text, gold):
    for task in ("gsm8k", "arith"):
        assert is_correct(text, gold, task) in (True, False)
        answer = extract_answer(text, task)
        assert answer is None or normalize_number(answer) == answer
    for name, fn in REWARD_TERMS.items():
        if name != "correctness":
            assert 0.0 <= fn(text, gold, "gsm8k") <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**70, max_value=10**70), st.integers(min_value=0, max_value=5))
def test_numeric_roundtrip(value, decimals):
    """Any integer written with thousands commas, '$' and trailing zeros grades equal to itself."""
    written = f"{value:,}" + ("." + "0" * decimals if decimals else "")
    assert is_correct(f"#### ${written}", str(value), "gsm8k")
    assert not is_correct(f"#### {value + 1}", str(value), "gsm8k")


@pytest.mark.timeout(300)
@settings(max_examples=25, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("\\boxed{}^_frac123xy+-*/()[]$ ")), max_size=200))
def test_math_grader_never_raises(text):
    assert grade_math([text, f"\\boxed{{{text}}}"], ["x+1"] * 2, workers=1, timeout=2.0) in (
        [a, b] for a in (True, False) for b in (True, False))


# --------------------------------------------------------------------------- one answer each

MATH_HEDGES = [  # (completion, the one gold of "5", "7", "\\frac{1}{2}" it answers, or None)
    ("\\boxed{5} or \\boxed{7}", "7"),                    # the last \\boxed is the answer
    ("<answer>5 or 7</answer>", None),                      # math-verify reads the set {5, 7}
    ("<answer>5, 7</answer>", None),
    ("<answer>\\boxed{5} or \\boxed{7}</answer>", None),
    ("<answer>5</answer> \\boxed{7}", "5"),                 # the <answer> block comes first
    ("<answer>five</answer> \\boxed{7}", None),            # the block is the answer, even if wrong
    ("The answer is $5$ or $7$", None),                     # no block, no box: math-verify's own
    ("x = 5 or x = 7", "7"),                                # extraction (a set; the last number)
    ("so $\\boxed{\\frac{1}{2}}$, i.e. 5", "\\frac{1}{2}"),
    ("<answer>\\boxed{٥}</answer>", "5"),                   # Unicode digits read as ASCII
    ("<answer>The area is $5$.</answer>", "5"),             # its own $...$ kept as written
]


@pytest.mark.parametrize("completion, answers", MATH_HEDGES)
def test_math_one_answer_per_completion(completion, answers):
    golds = ["5", "7", "\\frac{1}{2}"]
    graded = grade_math([completion] * len(golds), golds, workers=2)
    assert graded == [gold == answers for gold in golds], completion


# --------------------------------------------------------------------------- reward terms

GOOD = "<think>\n9*2=18\n</think>\n<answer>\n18\n</answer>"


def test_reward_terms_hand_values():
    """GOOD: every tag once, no chars outside -> format 0.1, tags 4 * 0.025, strict 1.
    'Sure! ' (6 chars) before it -> format 0.1 * (1 - 0.06) = 0.094, strict 0."""
    t = dict(REWARD_TERMS.items())
    assert t["correctness"](GOOD, "18", "gsm8k") == 1.0
    assert t["format"](GOOD, "18", "gsm8k") == pytest.approx(0.1)
    assert t["tags"](GOOD, "18", "gsm8k") == pytest.approx(0.1)
    assert t["strict_format"](GOOD, "18", "gsm8k") == 1.0
    assert t["strict_format"](GOOD + "\n", "18", "gsm8k") == 1.0
    assert t["format"]("Sure! " + GOOD, "18", "gsm8k") == pytest.approx(0.094)
    assert t["strict_format"]("Sure! " + GOOD, "18", "gsm8k") == 0.0
    assert t["format"]("x" * 200 + GOOD, "18", "gsm8k") == 0.0
    assert t["format"]("<answer>18</answer><think>a</think>", "18", "gsm8k") == 0.0
    # '<think>' repeated: '<think>\n' twice -> 3 tags left
    assert t["tags"]("<think>\n" + GOOD, "18", "gsm8k") == pytest.approx(0.075)
    assert t["tags"]("<think>a</think><answer>18</answer>", "18", "gsm8k") == 0.0


def test_score_batch_weighted_sum_and_terms():
    """[G=2][n=3]: rewards = 1.0 * correctness + 1.0 * format + 1.0 * tags (max 1.2)."""
    completions = [[GOOD, "#### 18", "#### 17"], ["<answer>5</answer>", GOOD, "no"]]
    weights = {"correctness": 1.0, "format": 1.0, "tags": 1.0}
    rewards, terms = score_batch(completions, ["18", "5"], "gsm8k", weights)
    assert rewards.shape == (2, 3) and rewards.dtype == torch.float32
    assert terms["correctness"].tolist() == [[1, 1, 0], [1, 0, 0]]
    expected = terms["correctness"] + terms["format"] + terms["tags"]
    assert torch.allclose(rewards, expected)
    assert rewards[0, 0].item() == pytest.approx(1.2)
    default, only = score_batch(completions, ["18", "5"], "gsm8k")
    assert set(only) == {"correctness"} and torch.equal(default, terms["correctness"])


def test_score_batch_math_and_half_weights():
    completions = [["$\\boxed{\\frac{1}{2}}$", "$\\boxed{0.5}$", "\\boxed{2}"]]
    rewards, terms = score_batch(completions, ["\\frac12"], "math", {"correctness": 0.5},
                                 workers=2)
    assert terms["correctness"].tolist() == [[1, 1, 0]]
    assert rewards.tolist() == [[0.5, 0.5, 0.0]]


def test_score_batch_bad_arguments():
    with pytest.raises(ValueError, match="reward_weights key must be one of 'correctness'.*got 'lenght'"):
        score_batch([["a"]], ["1"], "gsm8k", {"lenght": 1.0})
    with pytest.raises(ValueError, match="task must be one of"):
        score_batch([["a"]], ["1"], "mmlu")
    with pytest.raises(ValueError, match="golds"):
        score_batch([["a"], ["b"]], ["1"], "gsm8k")
    with pytest.raises(ValueError, match="same n"):
        score_batch([["a"], ["b", "c"]], ["1", "2"], "gsm8k")
