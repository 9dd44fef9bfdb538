"""podslib.training.evaluate: accuracy = mean correctness over problems x repeats, against a scripted
engine whose answers are known; greedy uses one completion; bad arguments are named."""

import pytest

from podslib.rollout import Completion, Group
from podslib.tasks.datasets import Example
from podslib.training.evaluate import evaluate


class ScriptedEngine:
    """Answers problem i correctly in the first right[i] of its n samples, wrongly after;
    records the sampling parameters and seeds it was called with."""

    name = "scripted"

    def __init__(self, right: list[int]):
        self.right = right
        self.calls = []

    def generate(self, prompts, n, sampling, seeds=None):
        self.calls.append((n, sampling, seeds))
        return [Group(p, [], [Completion(f"x\n#### {i if j < self.right[i] else -1}", [1], "stop")
                              for j in range(n)]) for i, p in enumerate(prompts)]


def problems(k: int) -> list[Example]:
    return [Example(question=f"q{i}", gold=str(i), task="arith", expression=f"{i}+0")
            for i in range(k)]


def test_sampled_accuracy_averages_problems_and_repeats():
    """right = [5, 2, 0, 1] of 5: (5 + 2 + 0 + 1) / 20 = 0.4; per problem 1, .4, 0, .2."""
    engine = ScriptedEngine([5, 2, 0, 1])
    out = evaluate(engine, problems(4), "tiny", None, repeats=5, temperature=0.9,
                   max_tokens=7, task="arith", seed=11)
    assert out["accuracy"] == pytest.approx(0.4)
    assert (out["n_correct"], out["n_samples"], out["n_problems"]) == (8, 20, 4)
    assert out["per_problem"] == pytest.approx([1.0, 0.4, 0.0, 0.2])
    n, sampling, seeds = engine.calls[0]
    assert n == 5 and sampling.temperature == 0.9 and sampling.max_tokens == 7
    assert sampling.seed == 11 and seeds is None
    assert out["eval_s"] >= 0 and out["greedy"] is False


def test_greedy_uses_one_completion_at_temperature_zero():
    engine = ScriptedEngine([1, 0, 1])
    out = evaluate(engine, problems(3), "tiny", None, repeats=5, greedy=True, task="arith")
    assert out["repeats"] == 1 and out["accuracy"] == pytest.approx(2 / 3)
    n, sampling, _ = engine.calls[0]
    assert n == 1 and sampling.greedy


def test_per_problem_seeds_are_passed_through():
    engine = ScriptedEngine([1, 1])
    evaluate(engine, problems(2), "tiny", None, repeats=2, seeds=[5, 9], task="arith")
    assert engine.calls[0][2] == [5, 9]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"seeds": [1]}, "seeds must have one seed per example"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(ScriptedEngine([0, 0]), problems(2), "tiny", None, task="arith", **kwargs)
