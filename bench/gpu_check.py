"""A prepared GPU check: the CUDA paths of the kit run once, in one short call, on one GPU.

1. train: the tiny default is trained on the device for a few dozen steps through
   `podslib.training.trainer.train` (GRPO 4/4 and PODS 16/4, hf engine); loss, gradient norm and
   accuracies must be finite and the run folder complete (config.yaml, metrics.jsonl,
   eval.jsonl, a checkpoint, summary.json).
2. bench: a randomly initialised model with Qwen2.5-3B's architecture (no weights downloaded),
   LoRA r = 64, alpha = 64 on all projections (the paper's one-GPU recipe), bf16 weights, times
   GRPO (n = m = 16) and PODS (64 -> 16) steps at the paper's token limits: one prompt of 512
   tokens per step, 512 completion tokens per rollout. Per step: generation, selection and
   update seconds and the peak GPU memory of each phase; the step-cost ratio PODS/GRPO is the
   ratio of the median step times over the timed steps (after one warm-up step of each), to
   set beside the paper's 1.35 (10.1 / 7.5 s per step at n = 64 / 16, m = 16).
3. Everything goes to one JSON (rewritten after each step, so a run cut short keeps what it
   measured) and a markdown table beside it.

Inside the bench, no tokenizer is available (nothing can be downloaded), so prompts are random
token ids written as text ("17 4093 ...") and `IdTokenizer` reads them back: the hf engine and
the trainer's phases (`podslib.training.step`, `podslib.training.batch`, `podslib.training.update`) run unchanged on them.
A random model seldom samples EOS early, but may, so the bench model has no EOS at all (no
eos_token_id in its config or generation config, none in the tokenizer): every rollout runs to
the token limit, and the JSON records that it did. Rewards are random floats (a random model
cannot be graded), so the max-variance selection and the advantages are non-trivial.

    python bench/gpu_check.py --device cpu --smoke --out /tmp/g/gpu_check.json  # tiny sizes
    bash bench/gpu_check.sh prepare      # here: the tiny default's warm-start into .gpucache
    # then one device call: run(command="bash bench/gpu_check.sh", carry=[".gpucache"],
    #                           timeout_s=600); see bench/gpu_check.sh
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:        # run as a script from anywhere: import this checkout's podslib
    sys.path.insert(0, str(ROOT))

import torch

from podslib.files import atomic_write, read_jsonl, write_json

# Qwen2.5-3B(-Instruct)'s published config.json, checked with the search tool against copies of
# the model's config.json on the Hugging Face hub (hidden 2048, intermediate 11008, 36 layers,
# 16 heads, 2 KV heads, vocab 151936, tied embeddings, rope theta 1e6, 32768 positions, RMSNorm
# eps 1e-6, SiLU); its model card gives 3.09B parameters, 2.77B without the embedding, which
# tests/test_gpu_check.py checks this configuration against. EOS (151645) is left out on
# purpose (see the module docstring); the pad id is the tokenizer's <|endoftext|>.
QWEN25_3B = {
    "name": "Qwen2.5-3B architecture", "hidden_size": 2048, "intermediate_size": 11008,
    "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
    "vocab_size": 151936, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "pad_token_id": 151643,
}
SMOKE_MODEL = {**QWEN25_3B, "name": "tiny Qwen2 (smoke)", "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64,
               "pad_token_id": 255}
TRAIN_RUNS = {"grpo": (4, 4), "pods": (16, 4)}          # name -> (n, m) of the tiny runs
PAPER_RATIO = 1.35                                       # 10.1 / 7.5 s per step, L40S
GIB = 2 ** 30


@dataclass(frozen=True)
class Sizes:
    """The sizes of one form of the check (the GPU form, or the CPU smoke form)."""

    train: dict                    # Config overrides of the tiny runs
    model: dict                    # Qwen2Config values of the bench model
    lora_r: int
    prompt_tokens: int
    completion_tokens: int
    settings: dict                 # name -> (n, m) of the bench
    warmup_steps: int
    timed_steps: int
    micro_batch_size: int
    budget_s: float                # the bench starts no step that would end past this


FULL = Sizes(
    train={"max_steps": 30, "max_train_seconds": 0, "eval_every_s": 0, "eval_every_steps": 15,
           "checkpoint_every_s": 0, "checkpoint_every_steps": 15},
    model=QWEN25_3B, lora_r=64, prompt_tokens=512, completion_tokens=512,
    settings={"grpo": (16, 16), "pods": (64, 16)}, warmup_steps=1, timed_steps=3,
    micro_batch_size=8, budget_s=480)
SMOKE = Sizes(
    train={"max_steps": 3, "max_train_seconds": 0, "eval_every_s": 0, "eval_every_steps": 0,
           "checkpoint_every_s": 0, "checkpoint_every_steps": 0, "train_size": 64,
           "test_size": 4, "eval_repeats": 1, "max_completion_tokens": 8, "prompts_per_step": 2,
           "tiny": {"hidden": 32, "layers": 1, "heads": 2, "warm_start": False}},
    model=SMOKE_MODEL, lora_r=8, prompt_tokens=16, completion_tokens=8,
    settings={"grpo": (4, 4), "pods": (16, 4)}, warmup_steps=1, timed_steps=2,
    micro_batch_size=4, budget_s=300)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@dataclass
class Report:
    """The JSON being built, saved (JSON and markdown) after every change."""

    out: Path
    data: dict = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {message}", flush=True)

    def save(self) -> None:
        self.data["env"]["updated_utc"] = now()
        self.data["env"]["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        write_json(self.out, self.data)
        atomic_write(self.out.with_suffix(".md"), render_markdown(self.data))


def environment(device: str) -> dict:
    import peft
    import transformers

    name = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
            else platform.processor() or platform.machine())
    return {"device": device, "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "started_utc": now()}


# ----------------------------------------------------------------------------------------------
# 1. the tiny default, trained through the trainer
# ----------------------------------------------------------------------------------------------

def check_run(run_dir: Path, steps: int) -> list[str]:
    """What is wrong with a finished run folder (empty: complete, every number finite)."""
    from podslib.rundir import checkpoints

    missing = [f for f in ("config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json")
               if not (run_dir / f).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems = [] if checkpoints(run_dir) else ["no checkpoint"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if len(metrics) != steps:
        problems.append(f"metrics.jsonl has {len(metrics)} lines, expected {steps}")
    for key in ("loss", "grad_norm", "kl", "accuracy_all"):
        if not all(finite(r.get(key)) for r in metrics):
            problems.append(f"non-finite {key} in metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    if len(evals) < 2 or not all(finite(e["accuracy"]) and 0 <= e["accuracy"] <= 1
                                 for e in evals):
        problems.append(f"eval.jsonl: {len(evals)} evaluations, accuracies must be in [0, 1]")
    return problems


def train_one(name: str, n: int, m: int, args, sizes: Sizes, report: Report) -> dict:
    """One tiny run through podslib.training.trainer.train; returns its record."""
    from podslib.config import Config
    from podslib.training.trainer import train
    from podslib.training.warmstart import policy_path

    extra = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    cfg = Config(device=args.device, n=n, m=m, experiment="gpu_check", run_name=name,
                 engine="hf", **sizes.train, **extra)
    start = time.perf_counter()
    path = policy_path(cfg)          # builds (and warm-starts) the tiny model unless cached
    prep_s = time.perf_counter() - start
    report.log(f"train {name} ({n} -> {m}): tiny model ready in {prep_s:.1f} s ({path})")
    run_dir = Path(args.runs_dir) / name
    summary = train(cfg, run_dir, progress=False)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    problems = check_run(run_dir, cfg.max_steps)
    record = {
        "n": n, "m": m, "steps": summary["steps"], "run_dir": str(run_dir),
        "model_prep_s": round(prep_s, 2), "train_time_s": summary["train_time_s"],
        "s_per_step": summary["train_time_s"] / max(1, summary["steps"]),
        "t_generate_mean": statistics.fmean(r["t_generate"] for r in metrics),
        "t_update_mean": statistics.fmean(r["t_update"] for r in metrics),
        "base_accuracy": summary["base_accuracy"], "final_accuracy": summary["final_accuracy"],
        "problems": problems, "ok": not problems}
    report.log(f"train {name}: {record['steps']} steps, {record['train_time_s']:.1f} s, accuracy "
               f"{record['base_accuracy']:.3f} -> {record['final_accuracy']:.3f}, "
               f"{'ok' if record['ok'] else 'PROBLEMS: ' + '; '.join(problems)}")
    return record


def train_part(args, sizes: Sizes, report: Report) -> None:
    model = "tiny model (smoke sizes)" if args.smoke else "tiny default"
    part = report.data["train"] = {"device": args.device, "ok": False, "runs": {}, "model": model}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for name, (n, m) in TRAIN_RUNS.items():
        part["runs"][name] = train_one(name, n, m, args, sizes, report)
        report.save()
    part["cuda_peak_gib"] = (torch.cuda.max_memory_allocated() / GIB
                             if args.device.startswith("cuda") else None)
    part["ok"] = all(r["ok"] for r in part["runs"].values())


# ----------------------------------------------------------------------------------------------
# 2. the Qwen2.5-3B architecture, randomly initialised, with LoRA: step timings
# ----------------------------------------------------------------------------------------------

class IdTokenizer:
    """Text is token ids separated by spaces, both ways; no EOS. What the hf engine, the batch
    builder and the trainer's phases ask of a tokenizer, without a vocabulary."""

    eos_token_id = None

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def qwen_config(spec: dict):
    """A Qwen2Config from `spec` (e.g. QWEN25_3B; its name aside), without an EOS token."""
    from transformers import Qwen2Config

    values = {k: v for k, v in spec.items() if k != "name"}
    return Qwen2Config(**values, bos_token_id=None, eos_token_id=None)


def build_policy(spec: dict, lora_r: int, device: str):
    """Random bf16 weights built directly on `device` (seeded), wrapped in LoRA r = alpha =
    lora_r on all projections as in podslib.models.loading.load_policy. Returns (policy, counts)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from podslib.models.loading import LoraSettings

    lora = LoraSettings(r=lora_r, alpha=lora_r)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen_config(spec), dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None
    policy = get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    policy.train()
    params = dict(policy.named_parameters())
    counts = {"params": sum(p.numel() for k, p in params.items() if "lora_" not in k),
              "trainable": sum(p.numel() for p in params.values() if p.requires_grad)}
    return policy, counts


def bench_config(sizes: Sizes, n: int, m: int, device: str, micro_batch_size: int):
    """The Config whose update settings the bench steps use: the paper's one-GPU recipe (lr
    5e-6 constant, weight decay 0.1, gradient clip 0.1, beta 0, one step per batch), with
    torch's AdamW in place of 8-bit AdamW."""
    from podslib.config import Config

    return Config(model="Qwen/Qwen2.5-3B-Instruct", device=device, dtype="bfloat16", n=n, m=m,
                  prompts_per_step=1, max_prompt_tokens=sizes.prompt_tokens,
                  max_completion_tokens=sizes.completion_tokens, lora_r=sizes.lora_r,
                  lora_alpha=sizes.lora_r, micro_batch_size=micro_batch_size, lr=5e-6,
                  weight_decay=0.1, max_grad_norm=0.1, temperature=0.9, beta=0.0,
                  max_steps=sizes.warmup_steps + sizes.timed_steps, max_train_seconds=0)


class Phases:
    """Seconds (the trainer's PhaseTimer) and peak GPU memory (GiB, reset at each phase's start,
    so it counts what the phase holds and allocates) of the phases of one step."""

    def __init__(self, device: str):
        from podslib.training.step import PhaseTimer

        self.timer = PhaseTimer(device)
        self.cuda = device.startswith("cuda")
        self.peak_gib: dict[str, float | None] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        with self.timer(name):
            yield
        self.peak_gib[name] = torch.cuda.max_memory_allocated() / GIB if self.cuda else None


def bench_step(bench: dict, cfg, step: int) -> dict:
    """One step: generate n rollouts of one random prompt, select m with random rewards, update.
    Returns seconds and peak memory per phase, and the update's statistics."""
    from podslib.seeding import derive_seed
    from podslib.training.batch import build_batch
    from podslib.training.step import generate, select_rollouts
    from podslib.training.update import update

    tok, sizes = bench["tokenizer"], bench["sizes"]
    gen = torch.Generator().manual_seed(derive_seed("gpu_check", "prompt", step))
    ids = torch.randint(0, tok.pad_token_id, (sizes.prompt_tokens,), generator=gen)
    phases = Phases(cfg.device)
    with phases("generate"):
        groups = generate(bench["engine"], [tok.decode(ids.tolist())], cfg,
                          seeds=[derive_seed("gpu_check", "rollout", step)])
    with phases("select"):
        rewards = torch.rand((1, cfg.n), generator=gen)                       # [1, n]
        idx, adv = select_rollouts(rewards, cfg, step)
        batch = build_batch(groups, idx, adv, torch.ones_like(idx, dtype=torch.bool),
                            tok.pad_token_id)
    with phases("update"):
        stats = update(bench["policy"], bench["optimizer"], bench["scheduler"], batch, cfg,
                       None, len(batch), int(batch.completion_mask.sum()))
    lengths = [len(c.token_ids) for c in groups[0].completions]
    return {"step": step, **phases.timer.seconds,
            "t_step": sum(phases.timer.seconds.values()),
            **{f"peak_gib_{k}": v for k, v in phases.peak_gib.items()},
            "tokens_generated": sum(lengths), "rows_trained": len(batch),
            "ran_to_limit": min(lengths) == cfg.max_completion_tokens,
            "loss": stats["loss"], "grad_norm": stats["grad_norm"]}


def summarise(steps: list[dict]) -> dict:
    """Medians over the timed steps (warm-up steps excluded) and the largest peaks."""
    timed = [s for s in steps if not s["warmup"]]
    if not timed:
        return {}
    out = {f"{k}_median": statistics.median(s[k] for s in timed)
           for k in ("t_generate", "t_select", "t_update", "t_step")}
    for phase in ("generate", "select", "update"):
        peaks = [s[f"peak_gib_{phase}"] for s in timed if s[f"peak_gib_{phase}"] is not None]
        out[f"peak_gib_{phase}"] = max(peaks) if peaks else None
    out["timed_steps"] = len(timed)
    return out


def ratios(settings: dict) -> dict | None:
    """PODS / GRPO of the median step, generation and update seconds."""
    grpo, pods = settings["grpo"]["summary"], settings["pods"]["summary"]
    if not grpo or not pods:
        return None
    return {k: pods[f"t_{k}_median"] / grpo[f"t_{k}_median"]
            for k in ("step", "generate", "update")}


def bench_setup(args, sizes: Sizes, report: Report) -> dict:
    """The model, engine, optimizer and scheduler shared by both settings."""
    from podslib.rollout import make_engine
    from podslib.training.update import optimizer_and_scheduler

    start = time.perf_counter()
    policy, counts = build_policy(sizes.model, sizes.lora_r, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    tok = IdTokenizer(sizes.model["pad_token_id"])
    cfg = bench_config(sizes, *sizes.settings["grpo"], args.device, args.micro_batch_size)
    optimizer, scheduler = optimizer_and_scheduler(cfg, policy)
    report.data["bench"]["model"] = {
        **sizes.model, **counts, "build_s": build_s,
        "dtype": "bfloat16", "lora_r": sizes.lora_r, "lora_alpha": sizes.lora_r,
        "prompt_tokens": sizes.prompt_tokens, "completion_tokens": sizes.completion_tokens,
        "micro_batch_size": args.micro_batch_size, "optimizer": cfg.optimizer,
        "generation_to_limit": "no EOS: none in the model config, its generation config or "
                               "the tokenizer (IdTokenizer)"}
    report.log(f"bench: {sizes.model['name']} built in {build_s:.1f} s: {count(counts['params'])}"
               f" parameters, {count(counts['trainable'])} trainable (LoRA r={sizes.lora_r})")
    return {"policy": policy, "tokenizer": tok, "sizes": sizes, "optimizer": optimizer,
            "scheduler": scheduler,
            "engine": make_engine("hf", policy=policy, tokenizer=tok, device=args.device)}


def bench_part(args, sizes: Sizes, report: Report) -> None:
    part = report.data["bench"] = {"settings": {}, "ratio": None, "paper_ratio": PAPER_RATIO,
                                   "stopped_early": None, "ok": False}
    bench = bench_setup(args, sizes, report)
    configs = {}
    for name, (n, m) in sizes.settings.items():
        configs[name] = bench_config(sizes, n, m, args.device, args.micro_batch_size)
        part["settings"][name] = {"n": n, "m": m, "steps": [], "summary": {}}
    order = [(name, True) for name in configs for _ in range(sizes.warmup_steps)]
    order += [(name, False) for _ in range(args.timed_steps) for name in configs]
    for step, (name, warmup) in enumerate(order):
        setting = part["settings"][name]
        last = setting["steps"][-1]["t_step"] if setting["steps"] else 0.0
        if time.perf_counter() - report.start + 1.2 * last > args.budget_s:
            part["stopped_early"] = f"time budget {args.budget_s:.0f} s reached before step {step}"
            report.log(f"bench: {part['stopped_early']}")
            break
        record = {"setting": name, "warmup": warmup, **bench_step(bench, configs[name], step)}
        setting["steps"].append(record)
        setting["summary"] = summarise(setting["steps"])
        part["ratio"] = ratios(part["settings"])
        report.log(f"bench {name} step {step}{' (warm-up)' if warmup else ''}: generate "
                   f"{record['t_generate']:.2f} s, update {record['t_update']:.2f} s, peak "
                   f"{fmt(record['peak_gib_generate'])} / {fmt(record['peak_gib_update'])} GiB")
        report.save()
    steps = [s for setting in part["settings"].values() for s in setting["steps"]]
    part["ok"] = part["ratio"] is not None and all(
        s["ran_to_limit"] and finite(s["loss"], s["grad_norm"]) for s in steps)
    bench["engine"].close()


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def count(value: int) -> str:
    return f"{value / 1e9:.2f}B" if value >= 1e8 else f"{value / 1e6:.2f}M"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def render_train(part: dict) -> list[str]:
    lines = [f"## 1. {part['model'].capitalize()} trained on {part['device']} (hf engine)", "",
             row("run", "n -> m", "steps", "train s", "s/step", "base acc.", "final acc.",
                 "checks"), row(*["---"] * 8)]
    for name, r in part["runs"].items():
        lines.append(row(name, f"{r['n']} -> {r['m']}", r["steps"], fmt(r["train_time_s"]),
                         fmt(r["s_per_step"], 3), pct(r["base_accuracy"]),
                         pct(r["final_accuracy"]), "ok" if r["ok"] else "; ".join(r["problems"])))
    return lines


def render_bench(part: dict) -> list[str]:
    model = part.get("model")
    if model is None:
        return ["## 2. Step timings", "", "The model was not built (see the error)."]
    head = (f"## 2. {model['name']}, random init, bf16, LoRA r={model['lora_r']} "
            f"alpha={model['lora_alpha']} (hf engine)")
    about = (f"{count(model['params'])} parameters, {count(model['trainable'])} trainable, built "
             f"in {model['build_s']:.1f} s. One prompt of {model['prompt_tokens']} tokens per "
             f"step, {model['completion_tokens']} tokens per rollout (generation runs to the "
             f"limit: no EOS), micro-batch {model['micro_batch_size']}, {model['optimizer']}. "
             "Medians over the timed steps after a warm-up step; peaks: the largest over them.")
    lines = [head, "", about, "", row("setting", "n -> m", "timed steps", "generation s",
                                      "select s", "update s", "step s", "peak GiB generation",
                                      "peak GiB update"), row(*["---"] * 9)]
    for name, s in part["settings"].items():
        x = s["summary"] or {}
        lines.append(row(name, f"{s['n']} -> {s['m']}", x.get("timed_steps", 0),
                         fmt(x.get("t_generate_median")), fmt(x.get("t_select_median"), 3),
                         fmt(x.get("t_update_median")), fmt(x.get("t_step_median")),
                         fmt(x.get("peak_gib_generate"), 1), fmt(x.get("peak_gib_update"), 1)))
    r = part["ratio"]
    lines += ["", (f"Step-cost ratio PODS/GRPO: **{r['step']:.2f}** (generation "
                   f"{r['generate']:.2f}, update {r['update']:.2f}); the paper: "
                   f"{part['paper_ratio']} (10.1 / 7.5 s per step, one L40S, 4-bit "
                   "Qwen2.5-3B-Instruct + LoRA)." if r else
                   "Step-cost ratio: not measured (a setting has no timed step).")]
    if part.get("stopped_early"):
        lines += ["", f"Stopped early: {part['stopped_early']}."]
    return lines


def render_markdown(data: dict) -> str:
    env = data["env"]
    lines = ["# GPU check", "",
             (f"{env['device_name']} ({env['device']}), torch {env['torch']} (CUDA "
              f"{env['cuda']}), transformers {env['transformers']}, peft {env['peft']}; form: "
              f"{data['form']}; started {env['started_utc']}, updated {env['updated_utc']} "
              f"({env['elapsed_s']} s); status: {data['status']}."), ""]
    for key, render in (("train", render_train), ("bench", render_bench)):
        if key in data:
            lines += render(data[key])
            if data[key].get("error"):
                lines += ["", f"Error: `{data[key]['error']}`"]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="'cuda' (default) or 'cpu'")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU test's form)")
    p.add_argument("--out", default="results/gpu/gpu_check.json",
                   help="the JSON; the markdown table goes beside it (.md)")
    p.add_argument("--runs-dir", default=None, help="new folder for the tiny run folders "
                   "(default: a fresh temporary folder)")
    p.add_argument("--cache-dir", default=None, help="tiny model cache (default: Config's)")
    p.add_argument("--parts", default="train,bench", help="'train', 'bench' or both")
    p.add_argument("--timed-steps", type=int, default=None, help="timed bench steps per setting")
    p.add_argument("--micro-batch-size", type=int, default=None, help="bench update micro-batch")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the bench starts no step expected to end past this many seconds")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.device != "cpu" and not args.device.startswith("cuda"):
        p.error(f"--device must be 'cpu' or 'cuda[:k]'; got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here; use --device cpu --smoke")
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"train", "bench"}:
        p.error(f"--parts must be 'train', 'bench' or 'train,bench'; got {args.parts!r}")
    args.parts = [x for x in ("train", "bench") if x in parts]
    args.timed_steps = sizes.timed_steps if args.timed_steps is None else args.timed_steps
    args.micro_batch_size = args.micro_batch_size or sizes.micro_batch_size
    args.budget_s = args.budget_s or sizes.budget_s
    if args.timed_steps < 1 or args.micro_batch_size < 1 or args.budget_s <= 0:
        p.error("--timed-steps and --micro-batch-size must be >= 1 and --budget-s > 0")
    args.runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="gpu_check-runs-")
    if Path(args.runs_dir).exists() and any(Path(args.runs_dir).iterdir()):
        p.error(f"--runs-dir must be a new or empty folder; {args.runs_dir!r} holds files")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    report = Report(Path(args.out))
    report.data = {"schema": 1, "form": "smoke" if args.smoke else "full", "status": "running",
                   "env": environment(args.device), "args": vars(args)}
    report.out.parent.mkdir(parents=True, exist_ok=True)
    report.save()
    report.log(f"gpu check ({report.data['form']}) on {report.data['env']['device_name']}; "
               f"writing {report.out}")
    parts = {"train": train_part, "bench": bench_part}
    for name in args.parts:
        try:
            parts[name](args, sizes, report)
        except Exception as exc:  # noqa: BLE001 - a failed part is reported, the next one runs
            report.data.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
            report.data[name]["ok"] = False
            report.log(f"{name} FAILED:\n{traceback.format_exc()}")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        report.save()
    ok = all(report.data[name]["ok"] for name in args.parts)
    report.data["status"] = "ok" if ok else "failed"
    report.save()
    report.log(f"done: {report.data['status']}; {report.out} and {report.out.with_suffix('.md')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
