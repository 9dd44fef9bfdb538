"""podslib.training.warmstart: the warm-start stops at the first accuracy check that reaches the target, runs
every step without a target, records its checks, and is cached by its settings."""

import json

import pytest

from podslib.config import Config, TinySettings
from podslib.training import warmstart

SMALL = {"hidden": 32, "layers": 2, "heads": 2, "steps_min": 1, "steps_max": 1,
         "operand_min": 0, "operand_max": 19, "warm_start_steps": 12, "warm_start_batch_size": 4,
         "warm_start_check_every": 4}


def warm_start(cache, **overrides):
    return warmstart.warm_start(TinySettings(**{**SMALL, **overrides}), "tiny", cache)


@pytest.fixture
def scripted(monkeypatch):
    """sampled_accuracy returns 0.1, 0.2, 0.35, 0.5 at successive checks; the steps it was
    called at are recorded."""
    calls = []

    def fake(model, tokenizer, examples, template, seed):
        calls.append(len(examples))
        return [0.1, 0.2, 0.35, 0.5][len(calls) - 1]

    monkeypatch.setattr(warmstart, "sampled_accuracy", fake)
    return calls


def record(tmp_path, **overrides) -> dict:
    return json.loads((warm_start(tmp_path, **overrides) / "warm_start.json").read_text())


def test_warm_start_stops_at_the_first_check_reaching_the_target(tmp_path, scripted):
    """Checks every 4 steps: 0.1 (step 4), 0.2 (step 8) < 0.3 <= 0.35 (step 12 of at most 20).
    Held out: SMALL has 20 * 20 * 2 = 800 expressions, 800 // 3 = 266 train problems, a fifth
    (53) of them held out for the checks."""
    out = record(tmp_path, warm_start_target=0.3, warm_start_steps=20)
    assert out["steps_taken"] == 12
    assert [(c["step"], c["accuracy"]) for c in out["checks"]] == [(4, 0.1), (8, 0.2), (12, 0.35)]
    assert scripted == [53] * 3                          # held-out problems, the same each time


def test_warm_start_runs_every_step_without_target_or_below_it(tmp_path, scripted):
    assert record(tmp_path / "a", warm_start_target=0.0)["steps_taken"] == 12
    assert scripted == []
    out = record(tmp_path / "b", warm_start_target=0.9)    # never reached: the cap stops it
    assert out["steps_taken"] == 12 and len(out["checks"]) == 3


def test_warm_start_is_cached_by_its_settings(tmp_path, scripted):
    first = warm_start(tmp_path, warm_start_target=0.3)
    assert warm_start(tmp_path, warm_start_target=0.3) == first and len(scripted) == 3
    assert warm_start(tmp_path, warm_start_target=0.2) != first


@pytest.mark.parametrize("field, value", [("warm_start_target", 1.5),
                                          ("warm_start_target", -0.1),
                                          ("warm_start_check_every", 0)])
def test_bad_warm_start_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"tiny.{field}"):
        Config.from_dict({"tiny": {field: value}})
