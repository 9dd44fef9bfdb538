"""One validated configuration for a GRPO / GRPO-PODS run (TRL `GRPOConfig` style).

Every field is declared once, with its type, default, one line of help and what it accepts
(`choices`: a registry of the module that implements them, or a tuple; `low` / `high`: a
range), through `option(...)`. `check_field` checks any field against its declaration, so the
code below holds only the rules *between* fields (`Config.__post_init__`). A bad value fails
with one ValueError line naming the field before any model is loaded.

The settings of the embedded default (the tiny model, its arithmetic task and its supervised
warm-start) are a nested `TinySettings` (`tiny:` in YAML), like TRL keeps its ModelConfig apart.
The same object is what YAML files and papermill parameters fill in and what a run folder
records (`config.yaml`); `load_yaml` reads numbers such as `1e-4`, which YAML 1.1 leaves as
strings, as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any

import yaml

from podslib.core.advantages import SCALES
from podslib.core.loss import AGGREGATIONS, IS_CORRECTIONS
from podslib.core.selection import FILTERS, RULES
from podslib.files import atomic_write, check_name
from podslib.models.loading import DTYPES, LORA_TARGETS
from podslib.registry import Registry
from podslib.rollout import ENGINES
from podslib.tasks.datasets import TASKS
from podslib.tasks.rewards import REWARD_TERMS
from podslib.tasks.templates import TEMPLATES
from podslib.training.optim import OPTIMIZERS, SCHEDULES
from podslib.training.tracking import check_report_to

# Patterns of string fields: (regex matched in full, what it means).
NON_EMPTY = (r".+", "a non-empty string")
SEED_MAX = 2**63 - 1     # seeds reach torch and the engines as signed 64-bit integers


def _folder(name: str, empty_ok: bool = False) -> Callable[[Any], None]:
    """The check of field `name`, which names a folder: one safe path component
    (files.check_name), or '' when `empty_ok`."""
    def check(value: Any) -> None:
        if not (empty_ok and value == ""):
            check_name(value, name)
    return check


def option(default: Any, help: str, *, choices: Registry | dict | tuple | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, pattern: tuple[str, str] | None = None,
           check: Callable[[Any], None] | None = None, resume_safe: bool = False) -> Any:
    """A dataclass field with its help and what it accepts.

    choices: a tuple of values, or the registry of the module that implements them (asked when
    a value is checked, so a rule registered later is accepted). low / high: numeric bounds
    (closed unless *_open). pattern: (regex a string must match in full, what that means in
    words). check: a function raising ValueError for a bad value (for values no registry or
    range describes). resume_safe: may differ when a run is resumed (budgets and cadence change
    when a run stops, never what a step computes).
    """
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "pattern": pattern, "check": check,
            "resume_safe": resume_safe}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)


# ------------------------------------------------------------------------------------------
# checking fields against their declarations
# ------------------------------------------------------------------------------------------

def check_keys(kind: type, values: dict[str, Any], prefix: str = "") -> None:
    """ValueError naming every key of `values` that is not a field of `kind` (with the closest
    match)."""
    if not isinstance(values, dict):
        what = f"{prefix.rstrip('.')} settings" if prefix else "config"
        raise ValueError(f"{what} must be a mapping of field names to values; got "  # noqa: TRY004
                         f"{values!r}")
    known = [f.name for f in fields(kind)]
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(repr(prefix + str(key)) + (f" (did you mean {prefix + close[0]!r}?)"
                                                   if close else ""))
        raise ValueError(f"unknown config key(s): {', '.join(hints)}; see Config fields")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass `obj` against its type and declaration (see `option`)."""
    hints = _type_hints(type(obj))
    for f in fields(obj):
        check_field(prefix + f.name, getattr(obj, f.name), hints[f.name], f.metadata)


@functools.cache
def _type_hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def check_field(name: str, value: Any, hint: Any, meta: dict) -> None:
    """ValueError naming `name` unless `value` has type `hint` and meets `meta`."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else ()
    if value is None and type(None) in args:
        return
    errors = [_type_error(name, value, h) for h in (args or (hint,)) if h is not type(None)]
    if all(errors):
        raise ValueError(f"{name} must be {' or '.join(errors)}; got {value!r}")
    if meta.get("check"):
        meta["check"](value)
    if meta.get("choices") is not None:
        _check_choice(name, value, meta["choices"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_range(name, value, meta)
    if meta.get("pattern") and not re.fullmatch(meta["pattern"][0], value):
        raise ValueError(f"{name} must be {meta['pattern'][1]}; got {value!r}")


def _type_error(name: str, value: Any, hint: Any) -> str:
    """What `value` should have been, or '' when it has type `hint`."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return "" if isinstance(value, bool) else "true or false"
    if hint is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return "" if ok else "a finite number"
    if hint is str:
        return "" if isinstance(value, str) else "a string"
    if origin is list:
        ok = isinstance(value, list) and value and all(isinstance(x, str) for x in value)
        return "" if ok else "a non-empty list of strings"
    if origin is dict:
        ok = isinstance(value, dict) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value.values())
        return "" if ok else "a non-empty mapping of names to finite numbers"
    return "" if isinstance(value, hint) else f"a mapping of {hint.__name__} fields"


def _check_choice(name: str, value: Any, allowed: Registry | dict | tuple) -> None:
    for item in (value if isinstance(value, dict) else [value]):   # a mapping: its keys
        if item not in allowed:
            what = f"{name} keys" if isinstance(value, dict) else name
            raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}; "
                             f"got {item!r}")


def _check_range(name: str, value: float, meta: dict) -> None:
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta["low_open"] else value < low)
    too_high = high is not None and (value >= high if meta["high_open"] else value > high)
    if too_low or too_high:
        if high is None:
            bound = f"> {low}" if meta["low_open"] else f">= {low}"
            raise ValueError(f"{name} must be {bound}; got {value!r}")
        lo, hi = "(" if meta["low_open"] else "[", ")" if meta["high_open"] else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}; got {value!r}")


@dataclass
class TinySettings:
    """The embedded default: a tiny character-level Qwen2 model, the synthetic arithmetic task it
    is trained on, and its supervised warm-start (used when model is 'tiny')."""

    hidden: int = option(128, "Tiny model: hidden size (the MLP is twice as wide).", low=1)
    layers: int = option(4, "Tiny model: number of transformer layers.", low=1)
    heads: int = option(4, "Tiny model: attention heads (hidden must be divisible by them).",
                        low=1)
    seed: int = option(0, "Seed of the tiny model's initialisation and warm-start (shared by "
                       "every run of an experiment).", low=0, high=SEED_MAX)
    steps_min: int = option(1, "Arith task: fewest operations per problem.", low=1)
    steps_max: int = option(3, "Arith task: most operations per problem.", low=1)
    operand_min: int = option(1, "Arith task: smallest operand.", low=0)
    operand_max: int = option(19, "Arith task: largest operand.", low=0)
    warm_start: bool = option(True, "Warm-start the tiny model by supervised training on arith "
                              "before RL (the task needs partial competence to give signal).")
    warm_start_steps: int = option(1500, "Warm-start optimizer steps at most (counted, so it is "
                                   "reproducible).", low=1)
    warm_start_target: float = option(0.3, "Stop the warm-start at the first check whose sampled "
                                      "accuracy on held-out train problems reaches this; 0 = run "
                                      "all warm_start_steps.", low=0, high=1)
    warm_start_check_every: int = option(50, "Warm-start steps between accuracy checks.", low=1)
    warm_start_batch_size: int = option(64, "Warm-start examples per step.", low=1)
    warm_start_lr: float = option(3e-3, "Warm-start AdamW learning rate.", low=0, low_open=True)

    def __post_init__(self):
        check_fields(self, "tiny.")
        self._check_relations()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TinySettings:
        """Build from a mapping; unknown keys -> ValueError naming them."""
        check_keys(cls, values, "tiny.")
        return cls(**values)

    def _check_relations(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"tiny.hidden must be divisible by tiny.heads; got {self.hidden} "
                             f"and {self.heads}")
        for low, high in (("steps_min", "steps_max"), ("operand_min", "operand_max")):
            if getattr(self, high) < getattr(self, low):
                raise ValueError(f"tiny.{high} must be >= tiny.{low} ({getattr(self, low)}); "
                                 f"got {getattr(self, high)}")


@dataclass
class Config:
    """All settings of one training run; see each field's help (`Config.help(name)`)."""

    # --- run identity ------------------------------------------------------------------------
    experiment: str = option("tiny", "Experiment name: runs are written to "
                             "results_root/experiment/run_name.", check=_folder("experiment"))
    run_name: str = option("", "Run folder name; empty = '<method>-s<seed>' with method 'grpo-n4-m4' "
                           "or '<rule>-n16-m4'.", check=_folder("run_name", empty_ok=True))
    seed: int = option(0, "Seed for data order, sampling seeds, selection and initialisation.",
                       low=0, high=SEED_MAX)

    # --- model -------------------------------------------------------------------------------
    model: str = option("tiny", "'tiny' = the embedded character-level Qwen2 model (see tiny); "
                        "else an HF id or folder.", pattern=NON_EMPTY)
    tiny: TinySettings = option(TinySettings(), "Settings of the embedded default (model 'tiny'): "
                                "model size, arith difficulty, warm-start.")
    dtype: str = option("float32", "Weights dtype.", choices=DTYPES)
    device: str = option("cpu", "Torch device: 'cpu', 'cuda' (under torchrun: cuda:<local rank>).",
                         pattern=NON_EMPTY)
    trust_remote_code: bool = option(False, "Pass trust_remote_code to transformers.")
    lora_r: int = option(0, "LoRA rank; 0 = full fine-tune.", low=0)
    lora_alpha: float = option(64.0, "LoRA alpha (update scale alpha / r).", low=0, low_open=True)
    lora_dropout: float = option(0.0, "LoRA dropout.", low=0, high=1, high_open=True)
    lora_target_modules: list[str] = option(list(LORA_TARGETS), "Linear layers that get a LoRA "
                                            "adapter (non-empty).")

    # --- task and prompts --------------------------------------------------------------------
    task: str = option("arith", "Task: 'arith' (synthetic), 'gsm8k', 'math' (train) / 'math500' "
                       "(test), or a registered one.", choices=TASKS)
    train_source: str | None = option(None, "Train data: local JSONL file/folder or hub id; "
                                      "None = the task's default.")
    test_source: str | None = option(None, "Test data: local JSONL file/folder or hub id; "
                                     "None = the task's default.")
    template: str = option("tiny", "Prompt template: 'tiny', 'pods' (<think>/<answer>), 'gsm8k'.",
                           choices=TEMPLATES)
    max_prompt_tokens: int | None = option(512, "Drop prompts longer than this; None = keep all.",
                                           low=1)
    max_completion_tokens: int = option(48, "Most tokens per sampled completion (training and "
                                        "eval).", low=1)
    train_size: int | None = option(20000, "Train examples to use (arith: how many to generate); "
                                    "None = all.", low=1)
    test_size: int | None = option(400, "Test problems to evaluate on; None = the whole split.",
                                   low=1)

    # --- rollouts and down-sampling ----------------------------------------------------------
    engine: str = option("vllm", "Rollout engine: 'vllm' (faster steps and a lower PODS/GRPO "
                         "step-cost ratio than hf on the tiny default: "
                         "results/bench/step_cost.md), 'hf' (transformers) or 'auto'.",
                         choices=ENGINES)
    gpu_memory_utilization: float = option(0.05, "vLLM on a GPU: fraction of GPU memory for the "
                                           "engine; a real model needs more (the paper's "
                                           "configs: 0.3). Not used on CPU (see "
                                           "kv_cache_memory_bytes).", low=0, high=1,
                                           low_open=True)
    enforce_eager: bool = option(False, "vLLM: run the model eagerly instead of compiling it "
                                 "with torch.compile (and, on a GPU, CUDA graphs). Compiling "
                                 "costs seconds at the engine's start (more the first time: "
                                 "vLLM caches it) and makes generation faster: "
                                 "results/bench/peer_trl.md.", resume_safe=True)
    kv_cache_memory_bytes: int | None = option(None, "vLLM's kv_cache_memory_bytes: bytes of KV "
                                               "cache per engine. None = on CPU, what the run "
                                               "holds at once (its most sequences x longest "
                                               "prompt + completion, from the model's layers, KV "
                                               "heads, head size and dtype); on a GPU, set by "
                                               "gpu_memory_utilization.", low=1,
                                               resume_safe=True)
    n: int = option(16, "Rollouts generated per prompt.", low=1)
    m: int = option(4, "Rollouts kept per prompt for the update (m == n: vanilla GRPO).", low=1)
    rule: str = option("max_variance", "Down-sampling rule: 'max_variance' (PODS), 'max_reward', "
                       "'random', or a registered one.", choices=RULES)
    group_filter: str = option("none", "'zero_variance' drops groups whose n rewards are all "
                               "equal (DAPO).", choices=FILTERS)
    adv_over: str = option("selected", "Advantage statistics over the 'selected' m (paper) or "
                           "'all' n.", choices=("selected", "all"))
    prompts_per_step: int = option(8, "Prompts per optimizer step (global, over all ranks).", low=1)
    refill_rounds: int = option(0, "DAPO dynamic sampling: extra generation rounds of new prompts "
                                "while fewer than prompts_per_step groups pass group_filter "
                                "(0 = drop the failing groups, no refill).", low=0)
    mask_truncated_completions: bool = option(False, "Leave completions cut at "
                                              "max_completion_tokens out of the loss.")
    temperature: float = option(0.9, "Sampling temperature for training rollouts.", low=0,
                                low_open=True)
    top_p: float = option(1.0, "Nucleus sampling for training rollouts.", low=0, high=1,
                          low_open=True)

    # --- loss --------------------------------------------------------------------------------
    beta: float = option(0.0, "Weight of the k3 KL penalty to the reference policy (0 = no "
                         "reference).", low=0)
    eps_low: float = option(0.2, "Clip range below: ratio >= 1 - eps_low.", low=0, high=1,
                            high_open=True)
    eps_high: float = option(0.2, "Clip range above: ratio <= 1 + eps_high.", low=0)
    mu: int = option(1, "Optimizer steps per generation batch (GRPO iterations; 1 = ratio is 1).",
                     low=1)
    logprob_temperature: str = option("one", "Temperature T of the training log-probs "
                                      "softmax(logits / T), used by the ratio, the KL to the "
                                      "reference and the entropy: 'one' (T = 1, the paper's code) "
                                      "or 'sampling' (T = temperature, as TRL and verl).",
                                      choices=("one", "sampling"))
    aggregation: str = option("grpo", "Token aggregation: 'grpo', 'bnpo', 'dapo', 'dr_grpo'.",
                              choices=AGGREGATIONS)
    scale_rewards: str = option("group", "Advantage scaling: 'group' std, 'batch' std or 'none'.",
                                choices=SCALES)
    entropy_coef: float = option(0.0, "Entropy bonus: this times the token entropy is subtracted "
                                 "from the loss (0 = off; the entropy is logged either way).")
    is_correction: str = option("none", "Importance correction for the sampler/trainer mismatch: "
                                "'tis' (truncated per token), 'mis' (sequence masking) or "
                                "'none'.", choices=IS_CORRECTIONS)
    is_cap: float = option(2.0, "Importance correction: tis truncates ratios at this; mis keeps "
                           "sequences whose geometric-mean ratio lies in [1/is_cap, is_cap].",
                           low=1)
    reward_weights: dict[str, float] = option({"correctness": 1.0}, "Reward terms and weights "
                                              "(correctness, format, tags, strict_format).",
                                              choices=REWARD_TERMS)

    # --- optimisation ------------------------------------------------------------------------
    optimizer: str = option("adamw", "'adamw' (torch) or 'adamw_8bit' (bitsandbytes, GPU only).",
                            choices=OPTIMIZERS)
    lr: float = option(1e-4, "Peak learning rate.", low=0, low_open=True)
    lr_schedule: str = option("constant", "'constant' or 'cosine' (to 0 at max_steps), after "
                              "linear warmup.", choices=SCHEDULES)
    warmup_ratio: float = option(0.0, "Fraction of the optimizer steps spent in linear warmup.",
                                 low=0, high=1, high_open=True)
    weight_decay: float = option(0.0, "AdamW weight decay.", low=0)
    adam_beta1: float = option(0.9, "AdamW beta1.", low=0, high=1, high_open=True)
    adam_beta2: float = option(0.99, "AdamW beta2.", low=0, high=1, high_open=True)
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this; 0 = no clipping.",
                                  low=0)
    micro_batch_size: int = option(8, "Rollouts per forward/backward (gradient accumulation "
                                   "unit).", low=1)
    sharding: str = option("none", "Several ranks: 'none' (a full replica each) or 'fsdp' (FSDP2 "
                           "shards of weights, gradients and optimizer state).",
                           choices=("none", "fsdp"), resume_safe=True)

    # --- budgets, checkpoints, evaluation ----------------------------------------------------
    max_steps: int = option(0, "Stop after this many steps; 0 = no step limit.", low=0,
                            resume_safe=True)
    max_train_seconds: float = option(120.0, "Stop after this much training clock (eval "
                                      "excluded); 0 = none.", low=0, resume_safe=True)
    checkpoint_every_s: float = option(600.0, "Checkpoint every this many training seconds; "
                                       "0 = at end only.", low=0, resume_safe=True)
    checkpoint_every_steps: int = option(0, "Checkpoint every this many steps; 0 = off.", low=0,
                                         resume_safe=True)
    eval_every_steps: int = option(0, "Evaluate every this many steps; 0 = off.", low=0)
    eval_every_s: float = option(30.0, "Evaluate every this many training seconds; 0 = off.",
                                 low=0)
    eval_repeats: int = option(5, "Sampled completions per test problem (paper: 5).", low=1)
    eval_temperature: float = option(0.9, "Evaluation sampling temperature (paper: 0.9).", low=0)
    eval_greedy: bool = option(False, "Evaluate greedily (one completion per problem) instead.")
    keep_best_checkpoint: bool = option(True, "Keep the weights of the best evaluation in "
                                        "checkpoints/best (beside the latest ones).")
    log_completions: int = option(1, "At each evaluation, log the n rollouts (prompt, "
                                  "completion, reward, selected) of this many prompts of the "
                                  "latest step to completions.jsonl and the trackers; 0 = off.",
                                  low=0)
    report_to: str | list[str] = option("none", "Experiment trackers: 'none', 'tensorboard', "
                                        "'wandb', 'mlflow' or a list (all offline, in the run "
                                        "folder).", check=check_report_to,
                                        resume_safe=True)

    # --- where things go ---------------------------------------------------------------------
    results_root: str = option("results", "Root folder of run folders.", pattern=NON_EMPTY,
                               resume_safe=True)
    cache_dir: str = option("~/.cache/pods-kit", "Cache for built / warm-started tiny models "
                            "(keyed by their settings).", pattern=NON_EMPTY, resume_safe=True)

    def __post_init__(self):
        if isinstance(self.tiny, dict):
            self.tiny = TinySettings.from_dict(self.tiny)
        check_fields(self)
        self._check_relations()

    def _check_relations(self) -> None:
        """The rules between fields (each field alone was checked against its declaration)."""
        if self.m > self.n:
            raise ValueError(f"m must be <= n (keep m of the n rollouts); got m={self.m}, "
                             f"n={self.n}")
        if self.rule == "max_variance" and self.m < 2:
            raise ValueError(f"m must be >= 2 with rule 'max_variance' (the variance of one "
                             f"reward is undefined); got m={self.m}")
        if self.max_steps == 0 and self.max_train_seconds == 0:
            raise ValueError("max_steps or max_train_seconds must be > 0 (a run needs a budget); "
                             "got both 0")
        if self.lr_schedule == "cosine" and self.max_steps == 0:
            raise ValueError("lr_schedule 'cosine' needs max_steps > 0 (the schedule's length); "
                             "got max_steps=0")
        if self.optimizer == "adamw_8bit" and not self.device.startswith("cuda"):
            raise ValueError(f"optimizer 'adamw_8bit' (bitsandbytes) needs a cuda device; got "
                             f"device={self.device!r}: use optimizer 'adamw' on CPU")
        if self.model == "tiny" and self.tiny.warm_start and self.task != "arith":
            raise ValueError(f"tiny.warm_start trains the tiny model on task 'arith'; got "
                             f"task={self.task!r} (set tiny.warm_start: false)")
        if self.refill_rounds and self.group_filter == "none":
            raise ValueError(f"refill_rounds > 0 refills the groups group_filter drops; got "
                             f"refill_rounds={self.refill_rounds} with group_filter 'none'")
        if not self.eval_greedy and self.eval_temperature <= 0:
            raise ValueError(f"eval_temperature must be > 0 for sampled evaluation (or set "
                             f"eval_greedy: true); got {self.eval_temperature}")

    # --- I/O ---------------------------------------------------------------------------------
    @classmethod
    def help(cls, name: str) -> str:
        """One line of help for field `name` ('tiny.hidden' for a nested one)."""
        owner, _, leaf = name.rpartition(".")
        kind = TinySettings if owner == "tiny" else cls
        return {f.name: f.metadata["help"] for f in fields(kind)}[leaf]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a mapping; unknown keys -> ValueError naming them (with a suggestion)."""
        check_keys(cls, values)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Config:
        """Read a YAML mapping from `path`, apply keyword `overrides` (nested settings merged
        key by key), validate."""
        values = load_yaml(path)
        if not isinstance(values, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of field names")  # noqa: TRY004
        return cls.from_dict(merge(values, overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML (atomically)."""
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with `changes` applied (nested settings merged key by key)."""
        return Config.from_dict(merge(self.to_dict(), changes))

    # --- derived -----------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """'grpo-n4-m4' (n == m) or '<rule>-n16-m4' with the rule's '_' as '-'."""
        label = "grpo" if self.n == self.m else self.rule.replace("_", "-")
        return f"{label}-n{self.n}-m{self.m}"

    @property
    def training_temperature(self) -> float:
        """T of the training log-probs softmax(logits / T): 1, or the sampling temperature
        (logprob_temperature)."""
        return self.temperature if self.logprob_temperature == "sampling" else 1.0

    @property
    def run_id(self) -> str:
        """The run folder name: run_name, or '<method>-s<seed>' (see `run_id`)."""
        return self.run_name or run_id(self.method, self.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.results_root) / self.experiment / self.run_id

    def differing_fields(self, other: Config, ignore_resume_safe: bool = True) -> list[str]:
        """Names of fields whose values differ from `other`'s (the resume-safe ones left out
        unless `ignore_resume_safe` is False)."""
        mine, theirs = self.to_dict(), other.to_dict()
        skip = RESUME_SAFE_FIELDS if ignore_resume_safe else ()
        return [k for k in mine if k not in skip and mine[k] != theirs[k]]


def run_id(name: str, seed: int) -> str:
    """The run folder name of `name` (a grid variant or a config's method) with `seed`."""
    return f"{name}-s{seed}"


RESUME_SAFE_FIELDS = tuple(f.name for f in fields(Config) if f.metadata["resume_safe"])


def tiny_default(**overrides: Any) -> Config:
    """The tiny CPU default (the same as `Config()`), with `overrides` applied."""
    return Config.from_dict(overrides)


# ------------------------------------------------------------------------------------------
# YAML and merging
# ------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads '1e-4', '5E+3' (no dot) as floats, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(path: str | Path) -> Any:
    """The YAML document of `path`, with YAML 1.2 numbers ('1e-4' is a float); a missing file
    raises FileNotFoundError, a syntax error one ValueError line naming file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: "
                         f"{_yaml_problem(err)}") from None


def parse_yaml_value(text: str) -> Any:
    """A command-line value (`key=value`) read like a value in a YAML file."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{text!r} is not a valid YAML value: {_yaml_problem(err)}") from None


def _yaml_problem(err: Exception) -> str:
    """'line 4, column 5: expected ',' or '}', but got ':' (while parsing a flow mapping that
    starts at line 3, column 7)': where PyYAML stopped, and what it was reading, started where
    the mistake usually is (an unclosed bracket or quote)."""
    mark, context = getattr(err, "problem_mark", None), getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = where + str(getattr(err, "problem", None) or err).strip()
    start = getattr(err, "context_mark", None)
    elsewhere = start is not None and (mark is None or (start.line, start.column) !=
                                       (mark.line, mark.column))
    if context and elsewhere:
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    return text


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `changes`; the nested settings (`tiny`) merge key by key, every other
    field is replaced whole; a dotted key ('tiny.hidden') sets one nested value."""
    out = dict(base)
    for key, value in changes.items():
        head, dot, leaf = key.partition(".")
        if dot:
            value, key = {leaf: value}, head
        if key == "tiny" and isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out
