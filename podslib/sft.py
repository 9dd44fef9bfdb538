"""Supervised warm-start of the tiny default model on the arithmetic task.

RL needs signal: a randomly initialised model never answers correctly, so every group has
all-zero rewards. Teacher-forced training on worked solutions ("46+75=121\\n121-28=93\\n...
#### 158") brings it to partial competence first. Learning comes in a sudden jump (DESIGN.md)
whose step depends on the CPU's float rounding: 800 steps gave 31% sampled accuracy on one
machine and 66% on another. So the warm-start stops at a target accuracy, checked every
warm_start_check_every steps on held-out train problems (sampled at T = 0.9, the paper's
evaluation temperature), with warm_start_steps as the cap; steps are counted, not seconds. The
result is cached under cache_dir/<hash of the settings>: an HF `save_pretrained` folder that
transformers and vLLM both load, with warm_start.json recording the checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# Config fields that determine the tiny base model and its warm-start.
TINY_FIELDS = ("tiny_hidden", "tiny_layers", "tiny_heads", "warm_start_seed")
WARM_START_FIELDS = TINY_FIELDS + (
    "warm_start_steps", "warm_start_target", "warm_start_check_every", "warm_start_batch_size",
    "warm_start_lr", "template", "arith_steps_min", "arith_steps_max", "arith_operand_min",
    "arith_operand_max")
# The warm-start accuracy checks: held-out train problems (at most a fifth), one sample each.
CHECK_PROBLEMS = 200
CHECK_TEMPERATURE = 0.9
CHECK_MAX_TOKENS = 48


def settings_key(settings: Any, names: tuple[str, ...], kind: str) -> str:
    """'<kind>-<hash>' of the named settings (a Config or any object with those attributes)."""
    values = {name: getattr(settings, name) for name in names}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def _cached(folder: Path, build) -> Path:
    """Return `folder`, building it first with build(tmp_folder) when absent (atomic rename, so a
    killed build never leaves a half-written model behind)."""
    if (folder / "config.json").exists():
        return folder
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:                       # another process finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def arith_examples(settings: Any, split: str, limit: int | None, seed: int = 0) -> list:
    """Distinct arith problems of `split` with the settings' difficulty: `limit` of them, capped
    at a third of the expressions that exist (make_arith needs distinct problems, and about a
    tenth of all expressions belong to the test split)."""
    from .tasks import make_arith

    width = settings.arith_operand_max - settings.arith_operand_min + 1
    exist = sum(width ** (k + 1) * 2 ** k
                for k in range(settings.arith_steps_min, settings.arith_steps_max + 1))
    cap = exist // 3 if split == "train" else exist // 30
    return make_arith(min(limit or cap, cap), seed=seed, split=split,
                      steps=(settings.arith_steps_min, settings.arith_steps_max),
                      operand_range=(settings.arith_operand_min, settings.arith_operand_max))


def tiny_base(settings: Any, cache_dir: str | Path) -> Path:
    """The randomly initialised tiny model (cached): make_tiny_model with the tiny_* settings."""
    from .models import make_tiny_model

    folder = Path(cache_dir).expanduser() / settings_key(settings, TINY_FIELDS, "tiny")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return _cached(folder, lambda out: make_tiny_model(
        out, hidden=settings.tiny_hidden, layers=settings.tiny_layers, heads=settings.tiny_heads,
        kv_heads=settings.tiny_heads, seed=settings.warm_start_seed))


def sft_batch(examples: list, template: str, tokenizer) -> tuple[torch.Tensor, ...]:
    """(input_ids [B, T], attention_mask [B, T], labels [B, T]): prompt + solution + EOS,
    right-padded; labels are -100 on the prompt and the padding (loss on the answer only)."""
    from .tasks import render_prompt

    rows, prompt_lens = [], []
    for ex in examples:
        prompt = tokenizer(render_prompt(ex, template, tokenizer), add_special_tokens=False)
        answer = tokenizer(ex.solution, add_special_tokens=False)
        rows.append(prompt["input_ids"] + answer["input_ids"] + [tokenizer.eos_token_id])
        prompt_lens.append(len(prompt["input_ids"]))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, p) in enumerate(zip(rows, prompt_lens)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        labels[i, p:len(row)] = ids[i, p:len(row)]
    return ids, mask, labels


def train_sft(model, tokenizer, examples: list, steps: int, batch_size: int, lr: float,
              template: str, seed: int,
              callback: Callable[[int, float], bool] | None = None) -> list[float]:
    """Up to `steps` AdamW steps of next-token cross-entropy on the solutions, batches drawn
    with a seeded generator; callback(step, loss) after each step stops the training when it
    returns True; returns the loss per step taken."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(examples), (batch_size,), generator=generator).tolist()
        ids, mask, labels = sft_batch([examples[i] for i in pick], template, tokenizer)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if callback is not None and callback(len(losses), losses[-1]):
            break
    return losses


def sampled_accuracy(model, tokenizer, examples: list, template: str, seed: int) -> float:
    """Fraction of `examples` answered correctly, one completion each at CHECK_TEMPERATURE
    (hf engine, seeded); leaves the model in training mode."""
    from .evaluate import evaluate
    from .rollout import make_engine

    engine = make_engine("hf", policy=model, tokenizer=tokenizer, seed=seed)
    try:
        result = evaluate(engine, examples, template, tokenizer, repeats=1,
                          temperature=CHECK_TEMPERATURE, max_tokens=CHECK_MAX_TOKENS,
                          task="arith", seed=seed)
    finally:
        engine.close()
        model.train()
    return result["n_correct"] / result["n_samples"]


def warm_start(settings: Any, cache_dir: str | Path) -> Path:
    """The tiny model after supervised steps on arith train problems, stopped at the first check
    that reaches warm_start_target (or after warm_start_steps); cached by a hash of the settings
    (see WARM_START_FIELDS). Deterministic given warm_start_seed and the machine."""
    from .models import load_policy

    base = tiny_base(settings, cache_dir)
    folder = Path(cache_dir).expanduser() / settings_key(settings, WARM_START_FIELDS, "sft")

    def build(out: Path) -> None:
        from tqdm.auto import tqdm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.warm_start_seed)
            model, tokenizer = load_policy(base)
            examples = arith_examples(settings, "train", 20000, seed=settings.warm_start_seed)
            k = min(CHECK_PROBLEMS, len(examples) // 5)        # small tasks keep 80% to train
            held_out, examples = examples[:k], examples[k:]
            checks: list[dict[str, float]] = []
            target = settings.warm_start_target
            plan = (f"stops at {target:.0%} sampled accuracy, checked every "
                    f"{settings.warm_start_check_every} steps") if target else None
            bar = tqdm(total=settings.warm_start_steps, desc="warm-start", unit="step",
                       dynamic_ncols=True, postfix=plan)

            def reached_target(step: int, loss: float) -> bool:
                bar.update(1)
                if not settings.warm_start_target or step % settings.warm_start_check_every:
                    return False
                accuracy = sampled_accuracy(model, tokenizer, held_out, settings.template,
                                            settings.warm_start_seed)
                checks.append({"step": step, "loss": loss, "accuracy": accuracy})
                bar.set_postfix_str(f"sampled accuracy {accuracy:.0%} at step {step} "
                                    f"(target {target:.0%})")
                return accuracy >= target

            with bar:
                losses = train_sft(model, tokenizer, examples, settings.warm_start_steps,
                                   settings.warm_start_batch_size, settings.warm_start_lr,
                                   settings.template, settings.warm_start_seed, reached_target)
                bar.total = bar.n                     # stopped at the target: the bar ends full
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "warm_start.json").write_text(json.dumps(
            {name: getattr(settings, name) for name in WARM_START_FIELDS}
            | {"steps_taken": len(losses), "final_loss": losses[-1], "checks": checks}, indent=2))

    return _cached(folder, build)
