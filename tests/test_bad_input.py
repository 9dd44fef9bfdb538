"""Bad input: one regression test per defect found by probing the kit as a new user would
(issue 12), each asserting what the user sees: the one-line message naming the parameter, or
the behaviour (a grade, a selected subset) that used to be silently wrong."""
import re

import pytest
import torch

from podslib.rewards import extract_answer, is_correct, score_batch
from podslib.selection import select

# --------------------------------------------------------------------------- graders and selection
# Items 1 (hedged answers), 14 (select overflow), 17 (Unicode digits), 18 (score_batch input).


@pytest.mark.parametrize("task", ["gsm8k", "arith"])
def test_hedged_answer_scores_zero(task):
    """Item 1: one completion yields one answer. An answer field with two different numbers is a
    hedge and scores 0 for both; text after the answer field is not a second answer; 1/2 is the
    number 0.5 and 1e5 the number 100000, never a prefix 1."""
    golds = ["5", "7", "1", "2", "0.5", "100000"]
    cases = {
        "#### 5 or 7": None,
        "<answer>5 or 7</answer>": None,
        "The answer is 5. Or maybe 7": None,
        "#### 5 wait no, it is 7": None,
        "<answer>5</answer> 7": "5",
        "#### 1/2": "0.5",
        "#### 1e5": "100000",
        "#### 1e999999": None,
    }
    for completion, answer in cases.items():
        assert [g for g in golds if is_correct(completion, g, task)] == ([answer] if answer else [])
        assert extract_answer(completion, task) == answer
    _, terms = score_batch([list(cases)] * 2, ["5", "7"], task)
    expected = [float(answer == "5") for answer in cases.values()]
    assert terms["correctness"].tolist() == [expected, [0.0] * len(cases)]


def test_hedged_answer_scores_zero_math():
    """Item 1 for MATH: math-verify reads '5 or 7' in an <answer> block as the set {5, 7}, which
    equals neither 5 nor 7; only the block is graded, not a \\boxed{} after it."""
    completions = [["<answer>5 or 7</answer>", "<answer>5</answer> \\boxed{7}"]] * 2
    _, terms = score_batch(completions, ["5", "7"], "math", workers=2)
    assert terms["correctness"].tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_select_is_correct_for_huge_and_tiny_float64_rewards():
    """Item 14: squares of rewards above ~1e154 overflowed and of rewards below ~1e-162
    underflowed, so select silently returned a subset of variance 0.
    [1e160, 0, 0, 1], m = 2: {1e160, 0} and {1e160, 1} agree to a relative 1e-160 (a tie: the
    larger k, i.e. the top two, wins) -> [0, 3], never the two zeros [1, 2].
    [1e-170, 0, 0, 1e-170], m = 2: {1e-170, 0} -> [0, 2], not the two equal rewards [0, 3].
    [1.7e308, 1.7e308, -1.7e308, 0], m = 2: {1.7e308, -1.7e308} -> [0, 2]."""
    f64 = torch.float64
    assert select(torch.tensor([[1e160, 0, 0, 1]], dtype=f64), 2).tolist() == [[0, 3]]
    assert select(torch.tensor([1e-170, 0, 0, 1e-170], dtype=f64), 2).tolist() == [0, 2]
    assert select(torch.tensor([1.7e308, 1.7e308, -1.7e308, 0], dtype=f64), 2).tolist() == [0, 2]


def test_unicode_digits_are_read_as_ascii_digits():
    """Item 17: decimal digits of any script ('٥' Arabic-Indic, '５' fullwidth, '५' Devanagari)
    are read as the ASCII digit of the same value, in every task, and extract_answer returns
    ASCII. Only digits: the Arabic decimal separator '٫' is not a decimal point."""
    assert extract_answer("#### ٥", "gsm8k") == "5"
    assert extract_answer("#### ५०", "arith") == "50"
    assert extract_answer("<answer>\\boxed{٥٠}</answer>", "math") == "50"
    assert is_correct("#### ٥", "5", "gsm8k") and not is_correct("#### ٥", "6", "gsm8k")
    assert is_correct("\\boxed{５}", "5", "math")
    assert extract_answer("#### ١٢٫٥", "gsm8k") is None   # 12 and 5: a hedge, not 12.5


GROUPS = "completions must be a list with one list of completion strings per prompt"
GOLDS = "golds must be a list of gold answer strings, one per prompt"


@pytest.mark.parametrize(("completions", "golds", "message"), [
    ("abc", ["1", "2", "3"], f"{GROUPS}; got str"),
    (["ab", "cd"], ["1", "2"], f"{GROUPS}; completions[0] is str"),
    ([["a", None]], ["1"], f"{GROUPS}; completions[0][1] is NoneType"),
    ([["a"]], "1", f"{GOLDS}; got str"),
    ([["a"]], [1], f"{GOLDS}; golds[0] is int"),
])
def test_score_batch_rejects_anything_but_lists_of_completion_strings(completions, golds, message):
    """Item 18: score_batch('abc', ...) scored 'a', 'b', 'c' as three groups of one completion."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        score_batch(completions, golds, "gsm8k")
