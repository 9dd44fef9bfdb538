"""The kit beside TRL's GRPOTrainer, what most users would otherwise run: seconds per step and
the update's peak memory, measured side by side (writes results/bench/peer_trl.{md,json}).

Both get the kit's warm-started tiny model, its arithmetic prompts and its reward: 4 prompts per
step, 48 new tokens, T 0.9, lr 5e-5 (constant), AdamW betas (0.9, 0.99), beta 0, one optimizer
step per batch on one micro-batch of every trained row, float32, one torch thread. TRL (the
`trl` of requirements/peer.txt): use_vllm=False, loss_type grpo, gradient checkpointing and bf16
off. The kit: its `Trainer.step` with engine hf, with vllm as configured by default (the engine
it recommends on this machine, results/bench/step_cost.md; the model compiled with torch.compile)
and with vllm run eagerly (`enforce_eager`: no compilation).

Time: the runners of one session share a process and take turns, one step each per round, the
order rotating every round, so that what else runs on the machine slows all of them alike; a
TRL trainer runs its own `train()` loop in a thread that pauses after each optimizer step. The
hf session holds TRL with 4 and with 16 generations and the kit's GRPO 4, GRPO 16 and PODS
16 -> 4; each vLLM row has a session of its own (one vLLM engine per process) with its TRL
peer. Every repetition runs every session in a fresh process. A row's seconds per step are the
median over steps skip+1 .. steps of all repetitions; TRL / kit is the ratio of the medians,
with a 95% bootstrap interval (rounds resampled within each repetition, the pairs kept) and the
ratio of each repetition, which shows the noise. The phase split: generation (the kit's engine
call; TRL's `_generate_single_turn`, i.e. `model.generate`) and the rest (scoring, selection,
update).

Memory, as bench/memory.py measures it (a fresh process, the high-water mark of the resident set
during the update, above where it started; the optimizer state allocated by an earlier update;
a randomly initialised model of hidden size 256, 2 prompts, 64 new tokens): TRL with 64
generations holds all 64 per prompt in its update; the kit's GRPO 64 does the same work; the
kit's PODS 64 -> 16 trains 16 per prompt. Each update is one micro-batch of its trained rows.

    .venv/bin/python bench/peer_trl.py            # the table (run it on an idle machine)
    .venv/bin/python bench/peer_trl.py --quick    # smoke run: a small untrained model, 3 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
ENGINES = ["hf", "vllm", "vllm-eager"]   # the kit's engines; vllm-eager: enforce_eager
ROWS = [  # (label, kit n, kit m, TRL generations)
    ("GRPO, 4 generations", 4, 4, 4),
    ("GRPO, 16 generations", 16, 16, 16),
    ("kit PODS 16 -> 4 vs TRL 16", 16, 4, 16),
]
FULL = {"prompts": 4, "tokens": 48, "temperature": 0.9, "lr": 5e-5, "tiny": {},
        "memory_n": 64, "memory_m": 16}
QUICK = {**FULL, "prompts": 2, "tokens": 8, "memory_n": 8, "memory_m": 4,
         "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}


# ----------------------------------------------------------------------------------------------
# runners: one step at a time
# ----------------------------------------------------------------------------------------------

def kit_config(engine: str, n: int, m: int, rep: int, settings: dict, cache: str):
    """The kit's run for one row; engine 'vllm-eager' is vllm with enforce_eager."""
    from podslib.config import Config

    return Config(engine=engine.removesuffix("-eager"), enforce_eager=engine.endswith("-eager"),
                  n=n, m=m, prompts_per_step=settings["prompts"],
                  micro_batch_size=settings["prompts"] * m,
                  max_completion_tokens=settings["tokens"], temperature=settings["temperature"],
                  lr=settings["lr"], beta=0.0, seed=rep, tiny=settings["tiny"], cache_dir=cache,
                  gpu_memory_utilization=0.05, max_steps=1000, max_train_seconds=0,
                  eval_every_s=0, test_size=10)


class KitRunner:
    """The kit's Trainer, stepped as its run loop steps it (nothing written)."""

    def __init__(self, cfg, work: Path):
        from podslib.training import distributed as D
        from podslib.training.data import load_examples
        from podslib.training.trainer import Trainer

        examples = load_examples(cfg, "train"), load_examples(cfg, "test")
        self.trainer = Trainer(cfg, work / "kit", D.DistInfo(), "cpu", False, examples)

    def step(self) -> dict[str, float]:
        start = time.perf_counter()
        record = self.trainer.step()
        self.trainer.state.step += 1
        return {"step": time.perf_counter() - start, "generate": record["t_generate"]}

    def close(self) -> None:
        self.trainer.engine.close()


class TRLRunner:
    """TRL's GRPOTrainer.train() in a thread that pauses after every optimizer step; `step()`
    lets it run one step and waits for it."""

    def __init__(self, generations: int, cfg, settings: dict, work: Path, max_steps: int = 1000):
        self.trainer = trl_trainer(generations, cfg, settings, work, max_steps, [self._pause()])
        self.generate_s, self.error, self.finished, self.stop = 0.0, None, False, False
        inner = self.trainer._generate_single_turn

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - start

        self.trainer._generate_single_turn = timed
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _pause(self):
        from transformers import TrainerCallback

        runner = self

        class Pause(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                runner.done.release()
                runner.go.acquire()
                control.should_training_stop = runner.stop
                return control

        return Pause()

    def _train(self) -> None:
        self.go.acquire()
        try:
            self.trainer.train()
        except Exception as err:  # noqa: BLE001 (step() raises it in the main thread)
            self.error = err
        self.finished = True
        self.done.release()

    def step(self) -> dict[str, float]:
        self.generate_s = 0.0
        start = time.perf_counter()
        self.go.release()
        self.done.acquire()
        if self.error is not None or self.finished:
            raise RuntimeError("TRL's train() stopped early") from self.error
        return {"step": time.perf_counter() - start, "generate": self.generate_s}

    def close(self) -> None:
        self.stop = True
        self.go.release()
        self.done.acquire()
        self.thread.join()


def trl_trainer(generations: int, cfg, settings: dict, work: Path, max_steps: int,
                callbacks: list):
    """A GRPOTrainer on the kit's model, prompts and reward (cfg), set up like the kit's step."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from podslib.models.loading import load_policy
    from podslib.tasks.rewards import score_batch
    from podslib.training.data import build_data, load_examples
    from podslib.training.warmstart import policy_path

    policy, tokenizer = load_policy(policy_path(cfg, progress=False))
    data = build_data(cfg, tokenizer, load_examples(cfg, "train"), [])

    def reward(completions, gold, **_):
        rewards, _ = score_batch([[c] for c in completions], gold, cfg.task, cfg.reward_weights)
        return rewards[:, 0].tolist()

    args = GRPOConfig(
        output_dir=str(work / f"trl-{generations}"),
        per_device_train_batch_size=settings["prompts"] * generations,
        num_generations=generations, max_completion_length=settings["tokens"],
        temperature=settings["temperature"], learning_rate=settings["lr"],
        lr_scheduler_type="constant", adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm, beta=0.0, loss_type="grpo", scale_rewards="group",
        use_vllm=False, gradient_checkpointing=False, bf16=False, use_cpu=True,
        max_steps=max_steps, logging_steps=max_steps, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=cfg.seed)
    return GRPOTrainer(model=policy, reward_funcs=reward, args=args, processing_class=tokenizer,
                       train_dataset=Dataset.from_dict({"prompt": data.prompts,
                                                        "gold": data.golds}),
                       callbacks=callbacks)


def sessions(engines: list[str]) -> list[dict]:
    """What runs in one process: the hf session holds every row; a vLLM row (compiled or eager)
    runs alone with its TRL peer (one vLLM engine per process)."""
    out = []
    if "hf" in engines:
        out.append({"engine": "hf", "rows": list(range(len(ROWS)))})
    for engine in (e for e in engines if e != "hf"):
        out += [{"engine": engine, "rows": [r]} for r in range(len(ROWS))]
    return out


def run_session(engine: str, rows: list[int], rep: int, steps: int, settings: dict,
                cache: str) -> dict[str, list[dict]]:
    """Every runner of the session, `steps` rounds, one step each per round (order rotating):
    {runner name: [{'step': s, 'generate': s}] per step}."""
    import torch

    torch.set_num_threads(1)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            for r in rows:
                _, n, m, generations = ROWS[r]
                cfg = kit_config(engine, n, m, rep, settings, cache)
                runners[f"kit:{engine}:{r}"] = KitRunner(cfg, work)
                if f"trl:{generations}" not in runners:
                    cfg = kit_config("hf", generations, generations, rep, settings, cache)
                    runners[f"trl:{generations}"] = TRLRunner(generations, cfg, settings, work)
            names = list(runners)
            times: dict[str, list[dict]] = {name: [] for name in names}
            for k in range(steps):
                for name in names[k % len(names):] + names[:k % len(names)]:
                    times[name].append({k: round(v, 5) for k, v in runners[name].step().items()})
        finally:
            for runner in runners.values():
                runner.close()
    return times


# ----------------------------------------------------------------------------------------------
# memory of the update
# ----------------------------------------------------------------------------------------------

def trl_memory(n: int, cache: str) -> dict:
    """bench/memory.py's measurement for TRL with n generations: the update of the second step
    (the first allocated Adam's state), one micro-batch of all rows."""
    sys.path.insert(0, str(BENCH))
    from memory import COMPLETION_TOKENS, MODEL, PROMPTS, _status_kib
    from transformers import TrainerCallback

    from podslib.config import Config

    cfg = Config(tiny=MODEL, n=n, m=n, cache_dir=cache,
                 reward_weights={"correctness": 1.0, "format": 1.0}, train_size=PROMPTS)
    settings = {**FULL, "prompts": PROMPTS, "tokens": COMPLETION_TOKENS}
    found: dict = {}

    class Peak(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                found["peak"] = _status_kib("VmHWM")

    trainer = trl_trainer(n, cfg, settings, Path(tempfile.mkdtemp()), 2, [Peak()])
    inner = trainer._generate_and_score_completions

    def before_update(*args, **kwargs):
        out = inner(*args, **kwargs)
        if trainer.state.global_step == 1:
            Path("/proc/self/clear_refs").write_text("5")
            found["before"] = _status_kib("VmRSS")
            found["seq_len"] = out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]
        return out

    trainer._generate_and_score_completions = before_update
    trainer.train()
    return {"n": n, "rollouts_trained": PROMPTS * n, "seq_len": found["seq_len"],
            "update_peak_mib": round((found["peak"] - found["before"]) / 1024, 1),
            "rss_before_update_mib": round(found["before"] / 1024, 1)}


def memory_table(n: int, m: int, cache: str) -> dict:
    """Fresh processes: TRL n, the kit's GRPO n and PODS n -> m (each update one micro-batch)."""
    from memory import PROMPTS

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}

    def one(args: list[str]) -> dict:
        out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                             check=False)
        if out.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    return {"trl": one([__file__, "--trl-memory", str(n), "--cache", cache]),
            "kit_grpo": one([str(BENCH / "memory.py"), "--one", str(n), str(n),
                             str(PROMPTS * n), cache]),
            "kit_pods": one([str(BENCH / "memory.py"), "--one", str(n), str(m),
                             str(PROMPTS * m), cache])}


# ----------------------------------------------------------------------------------------------
# statistics and the report
# ----------------------------------------------------------------------------------------------

def paired_ratio(trl: list[list[float]], kit: list[list[float]], boot: int = 2000) -> dict:
    """TRL / kit as the ratio of the medians over all repetitions ([rep][step] seconds, paired
    by round), its 95% bootstrap interval (rounds resampled within each repetition) and each
    repetition's ratio."""
    import numpy as np

    a, b = np.asarray(trl), np.asarray(kit)                    # [R, S]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, a.shape[1], (boot, *a.shape))       # [boot, R, S]
    rows = np.arange(a.shape[0])[None, :, None]
    reps = (np.median(a[rows, idx].reshape(boot, -1), 1)
            / np.median(b[rows, idx].reshape(boot, -1), 1))
    low, high = np.percentile(reps, [2.5, 97.5])
    return {"ratio": float(np.median(a) / np.median(b)), "low": float(low), "high": float(high),
            "per_repetition": [float(np.median(x) / np.median(y)) for x, y in zip(a, b)]}


def summarise(times: list[dict[str, list[dict]]], engines: list[str], skip: int) -> list[dict]:
    """The table's rows from the repetitions' session times."""
    out = []
    for engine in engines:
        for r, (label, n, m, generations) in enumerate(ROWS):
            kit = [rep[f"kit:{engine}:{r}"][skip:] for rep in times]
            trl = [rep[f"trl:{generations}:{engine}:{r}"][skip:] for rep in times]

            def med(runs, key="step"):
                return statistics.median(x[key] for run in runs for x in run)

            def rest(runs):
                return statistics.median(x["step"] - x["generate"] for run in runs for x in run)

            pair = paired_ratio([[x["step"] for x in run] for run in trl],
                                [[x["step"] for x in run] for run in kit])
            out.append({"work": label, "engine": engine, "kit_n": n, "kit_m": m,
                        "trl_generations": generations, "kit_s": med(kit), "trl_s": med(trl),
                        "kit_generate_s": med(kit, "generate"), "trl_generate_s": med(trl, "generate"),
                        "kit_rest_s": rest(kit), "trl_rest_s": rest(trl), **pair})
    return out


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**result, "raw": "RAW"}, indent=2)          # per-step times on one line
    (out / "peer_trl.json").write_text(text.replace('"RAW"', json.dumps(result["raw"])) + "\n")
    s, v = result["settings"], result["versions"]
    quick = " --quick: a smoke run, not a measurement" if result["quick"] else ""
    head = (f"The kit beside TRL {v['trl']}'s GRPOTrainer ({result['started']}, {result['cpus']} "
            f"CPUs, torch {v['torch']}, transformers {v['transformers']}; bench/peer_trl.py"
            f"{quick}). {s['prompts']} prompts per step, {s['tokens']} new tokens, T "
            f"{s['temperature']}, lr {s['lr']}, beta 0, one update per batch, float32, one torch "
            "thread; TRL use_vllm=False, loss_type grpo, no gradient checkpointing, no bf16. Runs "
            f"interleaved step by step; medians of steps {result['skip'] + 1}-{result['steps']} "
            f"over {result['repeats']} repetitions; TRL / kit > 1: the kit is faster.")
    columns = ("| work | kit engine | kit s/step | TRL s/step | TRL / kit [95% interval] "
               "| per repetition | generate: kit / TRL s | rest: kit / TRL s |")
    lines = [head, "", columns, "|---|---|---|---|---|---|---|---|"]
    for row in result["time"]:
        each = ", ".join(f"{x:.2f}" for x in row["per_repetition"])
        lines.append(
            f"| {row['work']} | {row['engine']} | {row['kit_s']:.3f} | {row['trl_s']:.3f} | "
            f"{row['ratio']:.2f} [{row['low']:.2f}, {row['high']:.2f}] | {each} | "
            f"{row['kit_generate_s']:.3f} / {row['trl_generate_s']:.3f} | "
            f"{row['kit_rest_s']:.3f} / {row['trl_rest_s']:.3f} |")
    mem = result["memory"]
    trl, grpo, pods = mem["trl"], mem["kit_grpo"], mem["kit_pods"]
    n, m = trl["n"], pods["m"]
    about = (f"Peak memory of the update ({n} generations per prompt, "
             f"{trl['rollouts_trained'] // n} prompts, {trl['seq_len']} tokens per row; the "
             "resident set above its start, as bench/memory.py measures it):")
    ratio = trl["update_peak_mib"] / max(pods["update_peak_mib"], 0.1)
    lines += ["", about, "", "| update | rows trained | peak MiB |", "|---|---|---|"]
    for name, row in ((f"TRL GRPO, {n} generations", trl), (f"kit GRPO {n}", grpo),
                      (f"kit PODS {n} -> {m}", pods)):
        lines.append(f"| {name} | {row['rollouts_trained']} | {row['update_peak_mib']} |")
    lines += ["", f"TRL {n} / kit PODS {n} -> {m}: {ratio:.1f}x the update's peak memory."]
    (out / "peer_trl.md").write_text("\n".join(lines) + "\n")
    print((out / "peer_trl.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps left out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: small untrained "
                        "model, hf only, 3 steps, one repetition, 8 generations for memory")
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    parser.add_argument("--cache", default=None, help="tiny-model cache (default: the kit's)")
    parser.add_argument("--session", help=argparse.SUPPRESS)        # internal: one process
    parser.add_argument("--trl-memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.quick:
        args.engines, args.steps, args.skip, args.repeats = ["hf"], 3, 1, 1
    from podslib.config import Config

    cache = args.cache or Config().cache_dir
    if args.trl_memory:
        print(json.dumps(trl_memory(args.trl_memory, cache)))
        return
    if args.session:
        session = json.loads(args.session)
        print(json.dumps(run_session(session["engine"], session["rows"], session["rep"],
                                     args.steps, settings, cache)))
        return
    run(args, settings, cache)


def run(args, settings: dict, cache: str) -> None:
    """Every session of every repetition in a fresh process, the memory table, the report."""
    import torch
    import transformers
    import trl

    from podslib.lab.pipeline import prepare_models

    prepare_models([kit_config("hf", 4, 4, 0, settings, cache)], progress=False)
    times = []
    for rep in range(args.repeats):
        merged = {}
        for session in sessions(args.engines):
            spec = json.dumps({**session, "rep": rep})
            cmd = [sys.executable, __file__, "--session", spec, "--steps", str(args.steps),
                   "--cache", cache]
            if args.quick:
                cmd.append("--quick")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                raise RuntimeError(f"session {spec} failed:\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for name, steps in got.items():          # a TRL runner belongs to its session
                for r in session["rows"]:
                    key = name if name.startswith("kit") else f"{name}:{session['engine']}:{r}"
                    merged[key] = steps
            print(f"repetition {rep + 1}, {session['engine']} session: done", flush=True)
        times.append(merged)
    sys.path.insert(0, str(BENCH))
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
              "quick": args.quick, "settings": settings, "steps": args.steps, "skip": args.skip,
              "repeats": args.repeats,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "trl": trl.__version__},
              "time": summarise(times, args.engines, args.skip),
              "memory": memory_table(settings["memory_n"], settings["memory_m"], cache),
              "raw": times}
    write(result, Path(args.out))


if __name__ == "__main__":
    main()
