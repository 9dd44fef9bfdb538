"""podslib.sft: the warm-start stops at the first accuracy check that reaches the target, runs
every step without a target, records its checks, and is cached by its settings."""

import json

import pytest

from podslib import sft
from podslib.config import Config

SMALL = {"tiny_hidden": 32, "tiny_layers": 2, "tiny_heads": 2, "arith_steps_min": 1,
         "arith_steps_max": 1, "arith_operand_min": 0, "arith_operand_max": 19,
         "warm_start_steps": 12, "warm_start_batch_size": 4, "warm_start_check_every": 4}


@pytest.fixture
def scripted(monkeypatch):
    """sampled_accuracy returns 0.1, 0.2, 0.35, 0.5 at successive checks; the steps it was
    called at are recorded."""
    calls = []

    def fake(model, tokenizer, examples, template, seed):
        calls.append(len(examples))
        return [0.1, 0.2, 0.35, 0.5][len(calls) - 1]

    monkeypatch.setattr(sft, "sampled_accuracy", fake)
    return calls


def record(tmp_path, **overrides) -> dict:
    cfg = Config.from_dict({**SMALL, "cache_dir": str(tmp_path), **overrides})
    return json.loads((sft.warm_start(cfg, tmp_path) / "warm_start.json").read_text())


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
    cfg = Config.from_dict({**SMALL, "warm_start_target": 0.3})
    first = sft.warm_start(cfg, tmp_path)
    assert sft.warm_start(cfg, tmp_path) == first and len(scripted) == 3     # no rebuild
    other = sft.warm_start(Config.from_dict({**SMALL, "warm_start_target": 0.2}), tmp_path)
    assert other != first


@pytest.mark.parametrize("field, value", [("warm_start_target", 1.5),
                                          ("warm_start_target", -0.1),
                                          ("warm_start_check_every", 0)])
def test_bad_warm_start_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Config.from_dict({field: value})
