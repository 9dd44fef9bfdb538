"""podslib.config: every field documented, bad values rejected naming the field, YAML round trip,
resume-safe differences."""

from dataclasses import fields

import pytest

from podslib.config import RESUME_SAFE_FIELDS, Config, tiny_default


def test_every_field_is_typed_defaulted_and_documented():
    cfg = Config()
    for f in fields(Config):
        assert f.type, f.name
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 10, f.name
        assert hasattr(cfg, f.name)
    assert Config.help("n") == "Rollouts generated per prompt."


def test_tiny_default_is_pods_with_down_sampling():
    cfg = tiny_default()
    assert cfg == Config()
    assert cfg.model == "tiny" and cfg.task == "arith" and cfg.tiny.warm_start
    assert cfg.m < cfg.n and cfg.rule == "max_variance"
    assert tiny_default(n=cfg.m).n == cfg.m


@pytest.mark.parametrize(("values", "field"), [
    ({"n": 4, "m": 8}, "m must be <= n"),
    ({"m": 1}, "m must be >= 2 with rule 'max_variance'"),
    ({"rule": "max_var"}, "rule must be one of"),
    ({"aggregation": "mean"}, "aggregation must be one of"),
    ({"engine": "sglang"}, "engine must be one of"),
    ({"scale_rewards": "std"}, "scale_rewards must be one of"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"optimizer": "adamw_8bit"}, "optimizer 'adamw_8bit'"),
    ({"group_filter": "std"}, "group_filter must be one of"),
    ({"adv_over": "group"}, "adv_over must be one of"),
    ({"lr": 0.0}, "lr must be"),
    ({"kv_cache_memory_bytes": 0}, "kv_cache_memory_bytes must be >= 1"),
    ({"kv_cache_memory_bytes": 2e9}, "kv_cache_memory_bytes must be an integer"),
    ({"lr": -1e-4}, "lr must be"),
    ({"max_steps": -1}, "max_steps must be"),
    ({"max_train_seconds": -5.0}, "max_train_seconds must be"),
    ({"max_steps": 0, "max_train_seconds": 0}, "max_steps or max_train_seconds"),
    ({"checkpoint_every_s": -1}, "checkpoint_every_s must be"),
    ({"lr_schedule": "cosine", "max_steps": 0}, "lr_schedule 'cosine' needs max_steps"),
    ({"micro_batch_size": 0}, "micro_batch_size must be"),
    ({"prompts_per_step": 0}, "prompts_per_step must be"),
    ({"temperature": 0.0}, "temperature must be"),
    ({"top_p": 1.5}, "top_p must be"),
    ({"reward_weights": {"accuracy": 1.0}}, "reward_weights keys must be one of 'correctness'"),
    ({"reward_weights": {}}, "reward_weights must be a non-empty mapping"),
    ({"tiny": {"steps_min": 3, "steps_max": 2}}, "tiny.steps_max must be >= tiny.steps_min"),
    ({"tiny": {"hidden": 30}}, "tiny.hidden must be divisible by tiny.heads"),
    ({"tiny": {"warm_start_target": 1.5}}, r"tiny.warm_start_target must be in \[0, 1\]"),
    ({"tiny": 3}, "tiny must be a mapping of TinySettings fields"),
    ({"task": "gsm8k"}, "tiny.warm_start trains the tiny model on task 'arith'"),
    ({"lr": "abc"}, "lr must be a finite number; got 'abc'"),
    ({"run_name": "a/b"}, "run_name must be a folder name .*; got 'a/b': it holds a path separator"),
    ({"eval_temperature": 0.0}, "eval_temperature must be > 0 for sampled evaluation"),
    ({"task": "mmlu"}, "task must be one of"),
    ({"dtype": "fp8"}, "dtype must be one of"),
    ({"mu": 0}, "mu must be"),
    ({"eval_repeats": 0}, "eval_repeats must be"),
    ({"seed": 1.5}, "seed must be"),
    ({"lora_r": -1}, "lora_r must be"),
    ({"sharding": "zero2"}, "sharding must be one of 'none', 'fsdp'"),
    ({"logprob_temperature": 0.9}, "logprob_temperature must be a string"),
    ({"logprob_temperature": "T"}, "logprob_temperature must be one of 'one', 'sampling'"),
])
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        Config.from_dict(values)


def test_unknown_keys_are_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'prompt_per_step' \(did you mean 'prompts_per_step'\?\)"):
        Config.from_dict({"prompt_per_step": 8})
    with pytest.raises(ValueError, match=r"'zzz'"):
        Config.from_dict({"n": 8, "zzz": 1})


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = Config(n=32, m=8, reward_weights={"correctness": 1.0, "format": 0.5}, lr=2e-5)
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Config.from_yaml(path) == cfg
    assert Config.from_yaml(path, m=4).m == 4
    with pytest.raises(ValueError, match="unknown config key"):
        Config.from_yaml(path, mm=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")


def test_yaml_ints_and_plain_exponents_are_numbers(tmp_path):
    """YAML 1.1 reads '1e-4' (no dot) as a string; the kit reads it as YAML 1.2 does."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nmax_train_seconds: 60\nwarmup_ratio: 0\n")
    cfg = Config.from_yaml(path)
    assert (cfg.lr, cfg.max_train_seconds, cfg.warmup_ratio) == (1e-4, 60, 0)


def test_nested_tiny_settings_merge_key_by_key(tmp_path):
    cfg = Config.from_dict({"tiny": {"hidden": 64}})
    assert (cfg.tiny.hidden, cfg.tiny.layers) == (64, 4)
    assert cfg.replace(**{"tiny.layers": 2}).tiny.hidden == 64
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Config.from_yaml(path, **{"tiny.heads": 8}).tiny.heads == 8
    assert Config.help("tiny.hidden").startswith("Tiny model: hidden size")
    with pytest.raises(ValueError, match=r"'tiny.hiden' \(did you mean 'tiny.hidden'\?\)"):
        Config.from_dict({"tiny": {"hiden": 3}})


def test_a_rule_registered_anywhere_is_accepted():
    """Config asks the registry, so registering a rule is all it takes (and it is checked)."""
    from podslib.core.selection import RULES

    with pytest.raises(ValueError, match="rule must be one of"):
        Config(rule="test_lowest")
    RULES.register("test_lowest")(lambda rewards, m, generator=None: rewards.argsort(-1)[..., :m])
    assert Config(rule="test_lowest").rule == "test_lowest"


def test_differing_fields_ignore_budgets_only():
    base = Config()
    assert base.differing_fields(base.replace(max_steps=50, max_train_seconds=10.0)) == []
    assert set(RESUME_SAFE_FIELDS) >= {"max_steps", "max_train_seconds"}
    assert base.differing_fields(base.replace(n=32, lr=1e-3)) == ["n", "lr"]


def test_a_run_may_resume_with_the_other_sharding():
    """Checkpoints hold whole tensors whatever the sharding, like the number of ranks."""
    assert Config().differing_fields(Config(sharding="fsdp")) == []


def test_run_id_names_the_method():
    assert Config(n=16, m=16, seed=2).run_id == "grpo-n16-m16-s2"
    assert Config(n=16, m=4).run_id == "max-variance-n16-m4-s0"
    assert Config(run_name="x").run_id == "x"


def test_training_temperature_is_one_or_the_sampling_temperature():
    assert Config(temperature=0.7).training_temperature == 1.0
    assert Config(temperature=0.7, logprob_temperature="sampling").training_temperature == 0.7
