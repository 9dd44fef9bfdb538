"""The embedded default's model: the tiny model, built and supervised-warm-started on arith.

RL needs signal: a randomly initialised model never answers correctly, so every group has
all-zero rewards. Teacher-forced training on worked solutions ("46+75=121\\n121-28=93\\n...
#### 158") brings it to partial competence first. Learning comes in a sudden jump whose step
depends on the CPU's float rounding, so the warm-start stops at a target accuracy
(tiny.warm_start_target), checked every tiny.warm_start_check_every steps on held-out train
problems (sampled at T = 0.9, the paper's evaluation temperature), with tiny.warm_start_steps
as the cap; steps are counted, not seconds. The result is cached under cache_dir/<hash of the
settings>: an HF `save_pretrained` folder that transformers and vLLM both load, with
warm_start.json recording the checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from podslib.config import Config, TinySettings
from podslib.files import atomic_folder
from podslib.models.loading import load_policy
from podslib.models.tiny import make_tiny_model
from podslib.rollout import make_engine
from podslib.tasks.templates import render_prompt
from podslib.training.data import arith_examples
from podslib.training.evaluate import evaluate
from podslib.training.progress import bar_options, library_bars

# The tiny settings that determine the randomly initialised model (the warm-start: all of them).
MODEL_FIELDS = ("hidden", "layers", "heads", "seed")
# The warm-start accuracy checks: held-out train problems (at most a fifth), one sample each.
CHECK_PROBLEMS = 200
CHECK_TEMPERATURE = 0.9
CHECK_MAX_TOKENS = 48


def settings_key(values: dict[str, Any], kind: str) -> str:
    """'<kind>-<hash>' of the settings `values`."""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def policy_path(cfg: Config, progress: bool = True) -> str:
    """The policy's folder or hub id: cfg.model, or for 'tiny' the cached (warm-started) model
    (built first when absent, with a progress bar unless `progress` is False)."""
    if cfg.model != "tiny":
        return cfg.model
    cache = Path(cfg.cache_dir).expanduser()
    return str(warm_start(cfg.tiny, cfg.template, cache, progress) if cfg.tiny.warm_start
               else tiny_base(cfg.tiny, cache))


def _cached(folder: Path, build) -> Path:
    """Return `folder`, building it first with build(tmp_folder) when absent (atomically, so a
    killed build never leaves a half-written model behind)."""
    if not (folder / "config.json").exists():
        atomic_folder(folder, build)
    return folder


def tiny_base(tiny: TinySettings, cache_dir: str | Path) -> Path:
    """The randomly initialised tiny model (cached): make_tiny_model with the tiny settings."""
    values = {name: getattr(tiny, name) for name in MODEL_FIELDS}
    folder = Path(cache_dir).expanduser() / settings_key(values, "tiny")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return _cached(folder, lambda out: make_tiny_model(
        out, hidden=tiny.hidden, layers=tiny.layers, heads=tiny.heads, kv_heads=tiny.heads,
        seed=tiny.seed))


def sft_batch(examples: list, template: str, tokenizer) -> tuple[torch.Tensor, ...]:
    """(input_ids [B, T], attention_mask [B, T], labels [B, T]): prompt + solution + EOS,
    right-padded; labels are -100 on the prompt and the padding (loss on the answer only)."""
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
    engine = make_engine("hf", policy=model, tokenizer=tokenizer, seed=seed)
    try:
        result = evaluate(engine, examples, template, tokenizer, repeats=1,
                          temperature=CHECK_TEMPERATURE, max_tokens=CHECK_MAX_TOKENS,
                          task="arith", seed=seed)
    finally:
        engine.close()
        model.train()
    return result["n_correct"] / result["n_samples"]


def warm_start(tiny: TinySettings, template: str, cache_dir: str | Path,
               progress: bool = True) -> Path:
    """The tiny model after supervised steps on arith train problems, stopped at the first check
    that reaches tiny.warm_start_target (or after tiny.warm_start_steps); cached by a hash of
    the tiny settings and the template. Deterministic given tiny.seed and the machine."""
    library_bars(progress)
    base = tiny_base(tiny, cache_dir)
    values = {**asdict(tiny), "template": template}
    folder = Path(cache_dir).expanduser() / settings_key(values, "sft")

    def build(out: Path) -> None:
        from tqdm.auto import tqdm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny.seed)
            model, tokenizer = load_policy(base)
            examples = arith_examples(tiny, "train", 20000, seed=tiny.seed)
            k = min(CHECK_PROBLEMS, len(examples) // 5)        # small tasks keep 80% to train
            held_out, examples = examples[:k], examples[k:]
            checks: list[dict[str, float]] = []
            target = tiny.warm_start_target
            plan = (f"stops at {target:.0%} sampled accuracy, checked every "
                    f"{tiny.warm_start_check_every} steps") if target else None
            bar = tqdm(total=tiny.warm_start_steps, desc="warm-start", unit="step",
                       dynamic_ncols=True, postfix=plan, disable=not progress, **bar_options())

            def reached_target(step: int, loss: float) -> bool:
                bar.update(1)
                if not target or step % tiny.warm_start_check_every:
                    return False
                accuracy = sampled_accuracy(model, tokenizer, held_out, template, tiny.seed)
                checks.append({"step": step, "loss": loss, "accuracy": accuracy})
                bar.set_postfix_str(f"sampled accuracy {accuracy:.0%} at step {step} "
                                    f"(target {target:.0%})")
                return accuracy >= target

            with bar:
                losses = train_sft(model, tokenizer, examples, tiny.warm_start_steps,
                                   tiny.warm_start_batch_size, tiny.warm_start_lr, template,
                                   tiny.seed, reached_target)
                bar.total = bar.n                     # stopped at the target: the bar ends full
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "warm_start.json").write_text(json.dumps(
            values | {"steps_taken": len(losses), "final_loss": losses[-1], "checks": checks},
            indent=2))

    return _cached(folder, build)
