"""One validated configuration for a GRPO / GRPO-PODS run (TRL `GRPOConfig` style).

Every field has a type, a default and one line of help (`Config.help(name)`); `__post_init__`
validates the object as a whole, so a bad value fails with a ValueError naming the field before
any model is loaded. The same object is what YAML files and papermill parameters fill in and
what a run folder records (`config.yaml`).

The defaults are the tiny CPU default (embedded Qwen2-style model, warm-started on the synthetic
arithmetic task, hf engine): see `tiny_default()` and the notes in `podslib.trainer`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
TASKS = ("arith", "gsm8k", "math", "math500")
TEMPLATES = ("tiny", "pods", "gsm8k")
ENGINES = ("hf", "vllm", "auto")
RULES = ("max_variance", "max_reward", "random")
GROUP_FILTERS = ("none", "zero_variance")
ADV_OVER = ("selected", "all")
AGGREGATIONS = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")
REWARD_TERMS = ("correctness", "format", "tags", "strict_format")
OPTIMIZERS = ("adamw", "adamw_8bit")
SCHEDULES = ("constant", "cosine")
SHARDINGS = ("none", "fsdp")
# Every attention and MLP projection of a Llama / Qwen2 block (the paper's LoRA targets).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Fields that may differ between a run folder's config.yaml and the config used to resume it:
# budgets and checkpoint cadence change when the run stops or saves, never what a step computes;
# sharding (like the number of ranks) changes where it is computed, up to float rounding.
RESUME_SAFE_FIELDS = (
    "sharding",
    "max_steps",
    "max_train_seconds",
    "checkpoint_every_s",
    "checkpoint_every_steps",
    "results_root",
    "cache_dir",
)


@dataclass
class Config:
    """All settings of one training run; see each field's help (`Config.help(name)`)."""

    # --- run identity --------------------------------------------------------------------------
    experiment: str = field(
        default="tiny",
        metadata={"help": "Experiment name: runs are written to results_root/experiment/run_name."},
    )
    run_name: str = field(
        default="",
        metadata={"help": "Run folder name; empty = '<rule or grpo>-n<n>-m<m>-s<seed>'."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed for data order, sampling seeds, selection and initialisation."},
    )

    # --- model ---------------------------------------------------------------------------------
    model: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' = the embedded character-level Qwen2 model; else an HF id or folder."
        },
    )
    tiny_hidden: int = field(
        default=128, metadata={"help": "Tiny model: hidden size (MLP width is 2x)."}
    )
    tiny_layers: int = field(
        default=4, metadata={"help": "Tiny model: number of transformer layers."}
    )
    tiny_heads: int = field(default=4, metadata={"help": "Tiny model: attention heads."})
    dtype: str = field(
        default="float32", metadata={"help": "Weights dtype: 'float32', 'bfloat16' or 'float16'."}
    )
    device: str = field(
        default="cpu",
        metadata={"help": "Torch device: 'cpu', 'cuda' (under torchrun: cuda:<local rank>)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Pass trust_remote_code to transformers."}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tune."})
    lora_alpha: float = field(
        default=64.0, metadata={"help": "LoRA alpha (update scale alpha / r)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={"help": "Linear layers that get a LoRA adapter."},
    )

    # --- task and prompts ----------------------------------------------------------------------
    task: str = field(
        default="arith",
        metadata={"help": "Task: 'arith' (synthetic), 'gsm8k', 'math' (train) / 'math500' (test)."},
    )
    train_source: str | None = field(
        default=None,
        metadata={"help": "Train data: local JSONL file/folder or hub id; None = default."},
    )
    test_source: str | None = field(
        default=None,
        metadata={"help": "Test data: local JSONL file/folder or hub id; None = default."},
    )
    template: str = field(
        default="tiny",
        metadata={"help": "Prompt template: 'tiny', 'pods' (<think>/<answer>) or 'gsm8k'."},
    )
    max_prompt_tokens: int | None = field(
        default=512, metadata={"help": "Drop prompts longer than this; None = keep all."}
    )
    max_completion_tokens: int = field(
        default=48, metadata={"help": "Most tokens per sampled completion (training and eval)."}
    )
    train_size: int | None = field(
        default=20000,
        metadata={"help": "Train examples to use (arith: how many to generate); None = all."},
    )
    test_size: int | None = field(
        default=400, metadata={"help": "Test problems to evaluate on; None = the whole split."}
    )
    arith_steps_min: int = field(
        default=1, metadata={"help": "Arith: fewest operations per problem."}
    )
    arith_steps_max: int = field(
        default=3, metadata={"help": "Arith: most operations per problem."}
    )
    arith_operand_min: int = field(default=1, metadata={"help": "Arith: smallest operand."})
    arith_operand_max: int = field(default=19, metadata={"help": "Arith: largest operand."})

    # --- rollouts and down-sampling ------------------------------------------------------------
    engine: str = field(default="hf", metadata={"help": "Rollout engine: 'hf', 'vllm' or 'auto'."})
    gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "vLLM: fraction of GPU memory for the engine."}
    )
    n: int = field(default=16, metadata={"help": "Rollouts generated per prompt."})
    m: int = field(
        default=4,
        metadata={"help": "Rollouts kept per prompt for the update (m == n: vanilla GRPO)."},
    )
    rule: str = field(
        default="max_variance",
        metadata={"help": "Down-sampling rule: 'max_variance' (PODS), 'max_reward', 'random'."},
    )
    group_filter: str = field(
        default="none",
        metadata={"help": "'zero_variance' drops groups whose n rewards are all equal (DAPO)."},
    )
    adv_over: str = field(
        default="selected",
        metadata={"help": "Advantage statistics over the 'selected' m (paper) or 'all' n."},
    )
    prompts_per_step: int = field(
        default=8, metadata={"help": "Prompts per optimizer step (global, over all ranks)."}
    )
    temperature: float = field(
        default=0.9, metadata={"help": "Sampling temperature for training rollouts."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for training rollouts."})

    # --- loss ----------------------------------------------------------------------------------
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the k3 KL penalty to the reference policy (0 = no reference)."
        },
    )
    eps_low: float = field(
        default=0.2, metadata={"help": "Clip range below: ratio >= 1 - eps_low."}
    )
    eps_high: float = field(
        default=0.2, metadata={"help": "Clip range above: ratio <= 1 + eps_high."}
    )
    mu: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps per generation batch (GRPO iterations; 1 = ratio is 1)."
        },
    )
    aggregation: str = field(
        default="grpo", metadata={"help": "Token aggregation: 'grpo', 'bnpo', 'dapo' or 'dr_grpo'."}
    )
    scale_rewards: str = field(
        default="group", metadata={"help": "Advantage scaling: 'group' std, 'batch' std or 'none'."}
    )
    reward_weights: dict[str, float] = field(
        default_factory=lambda: {"correctness": 1.0},
        metadata={"help": "Reward terms and weights (correctness, format, tags, strict_format)."},
    )

    # --- optimisation --------------------------------------------------------------------------
    optimizer: str = field(
        default="adamw",
        metadata={"help": "'adamw' (torch) or 'adamw_8bit' (bitsandbytes, GPU only)."},
    )
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate."})
    lr_schedule: str = field(
        default="constant",
        metadata={"help": "'constant' or 'cosine' (to 0 at max_steps), after linear warmup."},
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of the optimizer steps spent in linear warmup."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.99, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the global gradient norm to this; 0 = no clipping."}
    )
    micro_batch_size: int = field(
        default=8, metadata={"help": "Rollouts per forward/backward (gradient accumulation unit)."}
    )
    sharding: str = field(
        default="none",
        metadata={
            "help": "Several ranks: 'none' (a full replica each) or 'fsdp' (FSDP2 shards of "
            "weights, gradients and optimizer state)."
        },
    )

    # --- budgets, checkpoints, evaluation ------------------------------------------------------
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many steps; 0 = no step limit."}
    )
    max_train_seconds: float = field(
        default=120.0,
        metadata={"help": "Stop after this much training clock (eval excluded); 0 = none."},
    )
    checkpoint_every_s: float = field(
        default=600.0,
        metadata={"help": "Checkpoint every this many training seconds; 0 = at end only."},
    )
    checkpoint_every_steps: int = field(
        default=0, metadata={"help": "Checkpoint every this many steps; 0 = off."}
    )
    eval_every_steps: int = field(
        default=0, metadata={"help": "Evaluate every this many steps; 0 = off."}
    )
    eval_every_s: float = field(
        default=30.0, metadata={"help": "Evaluate every this many training seconds; 0 = off."}
    )
    eval_repeats: int = field(
        default=5, metadata={"help": "Sampled completions per test problem (paper: 5)."}
    )
    eval_temperature: float = field(
        default=0.9, metadata={"help": "Evaluation sampling temperature (paper: 0.9)."}
    )
    eval_greedy: bool = field(
        default=False, metadata={"help": "Evaluate greedily (one completion per problem) instead."}
    )

    # --- supervised warm-start (tiny model, arith) ---------------------------------------------
    warm_start: bool = field(
        default=True,
        metadata={"help": "Warm-start the tiny model with supervised training on arith."},
    )
    warm_start_steps: int = field(
        default=1500,
        metadata={"help": "Warm-start optimizer steps at most (counted, so it is reproducible)."},
    )
    warm_start_target: float = field(
        default=0.3,
        metadata={"help": "Stop the warm-start at the first check whose sampled accuracy on "
                  "held-out train problems reaches this; 0 = run all warm_start_steps."},
    )
    warm_start_check_every: int = field(
        default=50, metadata={"help": "Warm-start steps between accuracy checks."}
    )
    warm_start_batch_size: int = field(
        default=64, metadata={"help": "Warm-start examples per step."}
    )
    warm_start_lr: float = field(default=3e-3, metadata={"help": "Warm-start AdamW learning rate."})

    warm_start_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the tiny model's initialisation and warm-start (shared by runs)."
        },
    )

    # --- where things go -----------------------------------------------------------------------
    results_root: str = field(default="results", metadata={"help": "Root folder of run folders."})
    cache_dir: str = field(
        default="~/.cache/pods-kit",
        metadata={"help": "Cache for built / warm-started tiny models (keyed by their settings)."},
    )

    def __post_init__(self):
        _validate(self)

    # --- I/O -----------------------------------------------------------------------------------
    @classmethod
    def help(cls, name: str) -> str:
        """One line of help for field `name`."""
        return {f.name: f.metadata["help"] for f in fields(cls)}[name]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping; unknown keys -> ValueError naming them (with a suggestion)."""
        if not isinstance(values, dict):
            got = type(values).__name__
            raise ValueError(f"config must be a mapping of field names to values; got {got}")  # noqa: TRY004
        check_keys(values)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Config:
        """Read a YAML mapping from `path`, apply keyword `overrides`, validate."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of field names")  # noqa: TRY004
        return cls.from_dict({**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML (atomically: tmp file + rename)."""
        import yaml

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with `changes` applied (unknown keys -> ValueError)."""
        return Config.from_dict({**self.to_dict(), **changes})

    # --- derived -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The run folder name: run_name, or '<rule or grpo>-n<n>-m<m>-s<seed>'."""
        method = "grpo" if self.n == self.m else self.rule.replace("_", "-")
        return self.run_name or f"{method}-n{self.n}-m{self.m}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.results_root) / self.experiment / self.run_id

    def differing_fields(self, other: Config,
                         ignore: tuple[str, ...] = RESUME_SAFE_FIELDS) -> list[str]:
        """Names of fields whose values differ from `other`'s, those in `ignore` (by default the
        resume-safe ones) excluded."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in ignore and mine[k] != theirs[k]]


def tiny_default(**overrides: Any) -> Config:
    """The tiny CPU default (the same as `Config()`), with `overrides` applied."""
    return Config.from_dict(overrides)


def check_keys(values: dict[str, Any]) -> None:
    """Raise ValueError naming every key that is not a Config field (with the closest match)."""
    known = [f.name for f in fields(Config)]
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown config key(s): {', '.join(hints)}; see Config fields")


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _one_of(cfg: Config, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _int(cfg: Config, name: str, low: int, allow_none: bool = False) -> None:
    value = getattr(cfg, name)
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {low}{extra}; got {value!r}")


def _number(
    cfg: Config,
    name: str,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = getattr(cfg, name)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}; got {value!r}")
    setattr(cfg, name, float(value))


def _validate(cfg: Config) -> None:
    """Check every field and the relations between them; raise ValueError naming the field."""
    for name in ("experiment", "results_root", "cache_dir", "model", "device"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise ValueError(f"{name} must be a non-empty string; got {getattr(cfg, name)!r}")
    if not isinstance(cfg.run_name, str) or "/" in cfg.run_name:
        raise ValueError(f"run_name must be a string without '/'; got {cfg.run_name!r}")
    for name in ("trust_remote_code", "eval_greedy", "warm_start"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false; got {getattr(cfg, name)!r}")  # noqa: TRY004
    _int(cfg, "seed", 0)
    for name in ("tiny_hidden", "tiny_layers", "tiny_heads"):
        _int(cfg, name, 1)
    if cfg.tiny_hidden % cfg.tiny_heads:
        raise ValueError(
            f"tiny_hidden must be divisible by tiny_heads; got {cfg.tiny_hidden} "
            f"and {cfg.tiny_heads}"
        )
    _one_of(cfg, "dtype", DTYPES)
    _int(cfg, "lora_r", 0)
    _number(cfg, "lora_alpha", 0, low_open=True)
    _number(cfg, "lora_dropout", 0, 1, high_open=True)
    if isinstance(cfg.lora_target_modules, str) or not cfg.lora_target_modules:
        raise ValueError(
            "lora_target_modules must be a non-empty list of module names; got "
            f"{cfg.lora_target_modules!r}"
        )
    cfg.lora_target_modules = [str(x) for x in cfg.lora_target_modules]

    _one_of(cfg, "task", TASKS)
    _one_of(cfg, "template", TEMPLATES)
    for name in ("train_source", "test_source"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), str):
            raise ValueError(
                f"{name} must be a path or hub id string, or None; got {getattr(cfg, name)!r}"
            )
    _int(cfg, "max_prompt_tokens", 1, allow_none=True)
    _int(cfg, "max_completion_tokens", 1)
    _int(cfg, "train_size", 1, allow_none=True)
    _int(cfg, "test_size", 1, allow_none=True)
    _int(cfg, "arith_steps_min", 1)
    _int(cfg, "arith_steps_max", cfg.arith_steps_min)
    _int(cfg, "arith_operand_min", 0)
    _int(cfg, "arith_operand_max", cfg.arith_operand_min)

    _one_of(cfg, "engine", ENGINES)
    _number(cfg, "gpu_memory_utilization", 0, 1, low_open=True)
    _int(cfg, "n", 1)
    _int(cfg, "m", 1)
    if cfg.m > cfg.n:
        raise ValueError(f"m must be <= n (keep m of the n rollouts); got m={cfg.m}, n={cfg.n}")
    _one_of(cfg, "rule", RULES)
    if cfg.rule == "max_variance" and cfg.m < 2:
        raise ValueError(
            f"m must be >= 2 with rule 'max_variance' (the variance of one reward is "
            f"undefined); got m={cfg.m}"
        )
    _one_of(cfg, "group_filter", GROUP_FILTERS)
    _one_of(cfg, "adv_over", ADV_OVER)
    _int(cfg, "prompts_per_step", 1)
    _number(cfg, "temperature", 0, low_open=True)
    _number(cfg, "top_p", 0, 1, low_open=True)

    _number(cfg, "beta", 0)
    _number(cfg, "eps_low", 0, 1)
    _number(cfg, "eps_high", 0)
    _int(cfg, "mu", 1)
    _one_of(cfg, "aggregation", AGGREGATIONS)
    _one_of(cfg, "scale_rewards", SCALES)
    if not isinstance(cfg.reward_weights, dict) or not cfg.reward_weights:
        raise ValueError(
            "reward_weights must be a non-empty mapping of reward term to weight; got "
            f"{cfg.reward_weights!r}"
        )
    for term, weight in cfg.reward_weights.items():
        if term not in REWARD_TERMS:
            raise ValueError(
                f"reward_weights keys must be among {', '.join(map(repr, REWARD_TERMS))}"
                f"; got {term!r}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise ValueError(f"reward_weights[{term!r}] must be a finite number; got {weight!r}")
    cfg.reward_weights = {k: float(v) for k, v in cfg.reward_weights.items()}

    _one_of(cfg, "optimizer", OPTIMIZERS)
    if cfg.optimizer == "adamw_8bit" and not cfg.device.startswith("cuda"):
        raise ValueError(
            f"optimizer 'adamw_8bit' (bitsandbytes) needs a cuda device; got "
            f"device={cfg.device!r}: use optimizer 'adamw' on CPU"
        )
    _number(cfg, "lr", 0, low_open=True)
    _one_of(cfg, "lr_schedule", SCHEDULES)
    _number(cfg, "warmup_ratio", 0, 1, high_open=True)
    _number(cfg, "weight_decay", 0)
    _number(cfg, "adam_beta1", 0, 1, high_open=True)
    _number(cfg, "adam_beta2", 0, 1, high_open=True)
    _number(cfg, "max_grad_norm", 0)
    _int(cfg, "micro_batch_size", 1)
    _one_of(cfg, "sharding", SHARDINGS)

    _int(cfg, "max_steps", 0)
    _number(cfg, "max_train_seconds", 0)
    if cfg.max_steps == 0 and cfg.max_train_seconds == 0:
        raise ValueError(
            "max_steps or max_train_seconds must be > 0 (a run needs a budget); got both 0"
        )
    if cfg.lr_schedule == "cosine" and cfg.max_steps == 0:
        raise ValueError(
            "lr_schedule 'cosine' needs max_steps > 0 (the schedule's length); got max_steps=0"
        )
    _number(cfg, "checkpoint_every_s", 0)
    _int(cfg, "checkpoint_every_steps", 0)
    _int(cfg, "eval_every_steps", 0)
    _number(cfg, "eval_every_s", 0)
    _int(cfg, "eval_repeats", 1)
    _number(cfg, "eval_temperature", 0, low_open=not cfg.eval_greedy)

    if cfg.warm_start and (cfg.model != "tiny" or cfg.task != "arith"):
        raise ValueError(
            f"warm_start is only for model 'tiny' on task 'arith'; got model="
            f"{cfg.model!r}, task={cfg.task!r} (set warm_start: false)"
        )
    _int(cfg, "warm_start_steps", 1)
    _number(cfg, "warm_start_target", 0, 1)
    _int(cfg, "warm_start_check_every", 1)
    _int(cfg, "warm_start_batch_size", 1)
    _number(cfg, "warm_start_lr", 0, low_open=True)
    _int(cfg, "warm_start_seed", 0)
