"""The GRPO / GRPO-PODS training loop: build a run, step, evaluate, checkpoint, resume.

`Trainer.step` runs one step as `podslib.training.step` describes it (draw, select, update, sync).
The training clock (train_time_s) counts the phases of the steps only: evaluation and checkpoint
writes are excluded, as in the paper. A run folder (see `podslib.rundir`) holds config.yaml,
metrics.jsonl (one line per step), eval.jsonl, checkpoints/ and summary.json; checkpoints are
written at step boundaries with every RNG state, so a resumed run repeats the uninterrupted one
exactly.

Stopping: while the loop runs, SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM (`kill`,
`pods run` stopping its kernels) ask the run to stop at the next step boundary: it writes a
checkpoint there and raises `Interrupted`, and resuming repeats the uninterrupted run. A second
SIGINT stops at once (KeyboardInterrupt); the run then resumes from its last checkpoint.

Scale-out (`podslib.training.distributed`): `torchrun --nproc_per_node K -m podslib train CONFIG
RUN_DIR` runs K data-parallel ranks. With sharding 'fsdp' the update runs on FSDP2 shards: every
rank runs as many micro-batches as the busiest one, the engine samples from an unsharded copy
refreshed after each update with the gathered weights, and checkpoints hold whole tensors either
way (a run may resume with the other sharding).
"""

from __future__ import annotations

import copy
import importlib.util
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from podslib import rundir
from podslib.config import Config
from podslib.files import append_jsonl, write_json
from podslib.models.loading import LoraSettings, load_policy, load_reference
from podslib.rollout import make_engine
from podslib.seeding import derive_seed, rng_state, seed_everything, set_rng_state
from podslib.training import distributed as D
from podslib.training.data import build_data, engine_limits, load_examples
from podslib.training.evaluate import evaluate
from podslib.training.progress import TrainingBar, library_bars
from podslib.training.step import (
    PhaseTimer,
    completion_rows,
    draw,
    select_batch,
    step_metrics,
    sync,
)
from podslib.training.tracking import make_tracker
from podslib.training.update import optimizer_and_scheduler, update
from podslib.training.warmstart import policy_path

EVAL_KEYS = ("step", "train_time_s", "accuracy", "n_problems", "repeats", "greedy", "eval_s")


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal at a step boundary, after writing a checkpoint: it resumes
    from there (`resume=True`, `--resume`, `pods run` again) exactly."""

    def __init__(self, run_dir: Path, step: int, signum: int):
        self.run_dir, self.step, self.signum = run_dir, step, signum
        super().__init__(f"run {str(run_dir)!r} stopped by {signal.Signals(signum).name} at "
                         f"step {step}, checkpoint written; resuming continues it exactly")


@dataclass
class StopRequest:
    """The signal that asked the run to stop (0: none yet)."""

    signum: int = 0


@contextmanager
def stop_on_signals(quiet: bool = False):
    """While the block runs, SIGINT and SIGTERM set the yielded StopRequest (the loop stops at
    its next step boundary) instead of stopping the process; a SIGINT after that raises
    KeyboardInterrupt at once. Python handles signals in the main thread only: elsewhere the
    request stays empty and signals act as before."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not stop.signum and not quiet:
            rundir.warn(f"{signal.Signals(signum).name}: the run stops after this step, with a "
                        "checkpoint (Ctrl-C again to stop at once, without one)")
        stop.signum = stop.signum or signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class LoopState:
    """Where the loop is: saved in every checkpoint (state.json)."""

    step: int = 0                 # steps done
    data_pos: int = 0             # prompts drawn (refill rounds draw more than prompts_per_step)
    train_time_s: float = 0.0     # training clock (phases of the steps only)
    wall_s: float = 0.0           # wall time since the run started, evaluations included
    last_eval_step: int = -1
    next_eval_s: float = 0.0
    next_ckpt_s: float = 0.0
    last_ckpt_step: int = 0
    best_accuracy: float = -1.0   # of the evaluations so far (checkpoints/best)
    best_step: int = -1


@dataclass
class Model:
    """The policy being trained and what samples and judges it."""

    path: str                     # folder or hub id the policy was loaded from
    policy: nn.Module             # trained (sharded under fsdp)
    rollout_policy: nn.Module     # what the engine samples from (the policy, or an unsharded copy)
    tokenizer: Any
    reference: Any                # models.Reference, or None when beta == 0


# ----------------------------------------------------------------------------------------------
# building a run
# ----------------------------------------------------------------------------------------------

def check_packages(cfg: Config) -> None:
    """The optional packages the config needs must be importable (checked before any load)."""
    if cfg.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("optimizer 'adamw_8bit' needs the bitsandbytes package (GPU extra: "
                         "pip install 'pods-kit[gpu]'); use optimizer 'adamw'")
    if cfg.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("engine 'vllm' needs the vllm package (make setup installs it); use "
                         "engine 'hf'")


def build_model(cfg: Config, info: D.DistInfo, device: str, progress: bool = True) -> Model:
    """Load the policy (LoRA-wrapped when lora_r > 0; sharded under fsdp) and its reference.
    Rank 0 builds the cached tiny model first, the other ranks then load it."""
    path = policy_path(cfg, progress) if info.is_main else ""
    D.barrier()
    path = path or policy_path(cfg, progress=False)
    lora = (LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=tuple(cfg.lora_target_modules)) if cfg.lora_r else None)
    policy, tokenizer = load_policy(path, dtype=cfg.dtype, device=device,
                                    trust_remote_code=cfg.trust_remote_code, lora=lora)
    policy.train()
    rollout_policy = policy
    if cfg.sharding == "fsdp" and info.enabled:
        rollout_policy = copy.deepcopy(policy).requires_grad_(False)
        D.shard(policy, device)
    reference = load_reference(policy, path, cfg.dtype, device) if cfg.beta > 0 else None
    return Model(path, policy, rollout_policy, tokenizer, reference)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train per `cfg`, writing the run folder `run_dir`; returns the summary (summary.json).

    Every config error, a folder in use or holding another run, and empty data files are
    reported before any model is loaded."""
    run_dir = Path(run_dir)
    world = D.DistInfo.from_env().world_size
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step must be divisible by the number of processes "
                         f"({world}); got {cfg.prompts_per_step}")
    rundir.check_run_dir(cfg, run_dir, resume)
    check_packages(cfg)
    note = rundir.warn if D.DistInfo.from_env().is_main else _quiet
    examples = load_examples(cfg, "train", note), load_examples(cfg, "test", note)  # empty: fail
    info, device = D.setup(cfg.device)
    try:
        with rundir.locked(run_dir, "run folder") if info.is_main else nullcontext():
            return Trainer(cfg, run_dir, info, device, progress, examples).run(resume)
    finally:
        D.teardown()


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

class Trainer:
    """Holds the model, engine, data and loop state of one run (see `train`)."""

    def __init__(self, cfg: Config, run_dir: Path, info: D.DistInfo, device: str, progress: bool,
                 examples: tuple[list, list]):
        self.cfg, self.run_dir, self.info, self.device = cfg, run_dir, info, device
        self.progress = progress
        library_bars(progress)                          # transformers' model-loading bars
        seed_everything(cfg.seed)
        self.model = build_model(cfg, info, device, progress)
        self.data = build_data(cfg, self.model.tokenizer, *examples,
                               note=rundir.warn if info.is_main else _quiet)
        self.engine = make_engine(cfg.engine, model_path=self.model.path,
                                  policy=self.model.rollout_policy, tokenizer=self.model.tokenizer,
                                  device=device, dtype=cfg.dtype, seed=cfg.seed,
                                  gpu_memory_utilization=cfg.gpu_memory_utilization,
                                  kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
                                  enforce_eager=cfg.enforce_eager,
                                  **engine_limits(cfg, self.data, info.world_size))
        self.optimizer, self.scheduler = optimizer_and_scheduler(cfg, self.model.policy)
        self.state = LoopState(next_eval_s=cfg.eval_every_s, next_ckpt_s=cfg.checkpoint_every_s)

    # --- one step ----------------------------------------------------------------------------
    def step(self, timer: PhaseTimer | None = None) -> dict[str, Any]:
        """Run step number state.step + 1 (draw, select, update, sync); returns its metrics.
        `timer` times the phases (a fresh PhaseTimer by default; `pods cost` passes one that
        also records each phase's peak memory)."""
        cfg, s, timer = self.cfg, self.state, timer or PhaseTimer(self.device)
        drawn = draw(self.engine, self.data, cfg, s.data_pos, s.step, self.info, timer)
        s.data_pos += drawn.prompts_drawn
        with timer("select"):
            chosen = select_batch(drawn, cfg, s.step, self.model.tokenizer.pad_token_id)
        lr = self.optimizer.param_groups[0]["lr"]
        with timer("update"):
            stats = update(self.model.policy, self.optimizer, self.scheduler, chosen.batch, cfg,
                           self.model.reference, chosen.sequences, chosen.tokens)
        with timer("sync"):
            sync(self.engine, self.model.policy, self.model.rollout_policy)
        self.latest = (drawn, chosen.idx)
        return step_metrics(timer, drawn, chosen, stats, lr)

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Test accuracy of the current policy. Problem i is sampled with its own seed
        (derive_seed(seed, 'eval', i)): every variant of one seed, at every evaluation, on any
        rank split, samples each problem with the same random numbers (a paired design). Each
        rank takes every world_size-th problem and the counts are summed."""
        cfg, rank, world = self.cfg, self.info.rank, self.info.world_size
        mine = list(range(rank, len(self.data.test_examples), world))
        start = time.perf_counter()
        result = evaluate(self.engine, [self.data.test_examples[i] for i in mine], cfg.template,
                          self.model.tokenizer, repeats=cfg.eval_repeats,
                          temperature=cfg.eval_temperature, greedy=cfg.eval_greedy,
                          max_tokens=cfg.max_completion_tokens, task=cfg.task,
                          seeds=[derive_seed(cfg.seed, "eval", i) for i in mine])
        counts = D.all_reduce_sum(torch.tensor([result["n_correct"], result["n_samples"]],
                                               dtype=torch.float64))
        return {"step": self.state.step, "train_time_s": self.state.train_time_s,
                "accuracy": float(counts[0] / counts[1]),
                "n_problems": len(self.data.test_examples), "repeats": result["repeats"],
                "greedy": cfg.eval_greedy, "eval_s": D.all_reduce_max(time.perf_counter() - start)}

    def due(self, every_steps: int, every_s: float, next_s: float) -> bool:
        s = self.state
        return bool((every_steps and s.step % every_steps == 0)
                    or (every_s and s.train_time_s >= next_s))

    def budget_left(self) -> bool:
        cfg, s = self.cfg, self.state
        return not ((cfg.max_steps and s.step >= cfg.max_steps)
                    or (cfg.max_train_seconds and s.train_time_s >= cfg.max_train_seconds))

    def run_eval(self) -> dict[str, Any]:
        """Evaluate; log it (eval.jsonl, trackers, completions of the latest step); keep the
        best weights in checkpoints/best."""
        record = self.evaluate()
        s, every = self.state, self.cfg.eval_every_s
        s.last_eval_step = s.step
        if every:
            s.next_eval_s = (s.train_time_s // every + 1) * every
        if self.cfg.keep_best_checkpoint and record["accuracy"] > s.best_accuracy:
            s.best_accuracy, s.best_step = record["accuracy"], s.step
            self.save_best()
        if self.info.is_main:
            append_jsonl(self.run_dir / "eval.jsonl", record)
            self.tracker.log_eval(record, s.step)
            rows = completion_rows(*self.latest, self.cfg.log_completions) if self.latest else []
            for row in rows:
                append_jsonl(self.run_dir / "completions.jsonl", {"step": s.step, **row})
            self.tracker.log_table("completions", rows, s.step)
        return record

    def save_best(self) -> None:
        policy = self.model.policy
        if self.info.is_main or D.is_sharded(policy):           # gathering shards is collective
            trainable = D.gathered_trainable(policy)
            if self.info.is_main:
                rundir.save_best(self.run_dir, trainable, {
                    "step": self.state.step, "accuracy": self.state.best_accuracy,
                    "train_time_s": self.state.train_time_s})
        D.barrier()

    def checkpoint(self, reschedule: bool = True) -> None:
        """Write checkpoints/step-XXXXXX; `reschedule` moves the next time-based one on (a stop's
        checkpoint does not, so a resumed run keeps the uninterrupted one's schedule)."""
        s = self.state
        s.last_ckpt_step = s.step
        if self.cfg.checkpoint_every_s and reschedule:
            s.next_ckpt_s = s.train_time_s + self.cfg.checkpoint_every_s
        s.wall_s = time.time() - self.wall_start
        policy = self.model.policy
        if self.info.is_main or D.is_sharded(policy):           # gathering shards is collective
            trainable, optim = D.gathered_trainable(policy), D.gathered_optimizer(self.optimizer)
            if self.info.is_main:
                rundir.save_checkpoint(self.run_dir, asdict(s), trainable, optim,
                                       self.scheduler.state_dict(), rng_state())
        D.barrier()

    def restore(self) -> int:
        """Continue from the newest valid checkpoint; log lines past it are set aside. Returns
        the restored step (-1 without a checkpoint)."""
        if self.info.is_main:
            rundir.remove_temporaries(self.run_dir)        # of a writer killed mid-checkpoint
        D.barrier()
        folder = rundir.latest_valid_checkpoint(self.run_dir,
                                                warn=rundir.warn if self.info.is_main else _quiet)
        if folder is not None:
            saved = rundir.load_checkpoint_files(folder)
            D.load_state(self.model.policy, self.optimizer, saved["trainable"], saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            set_rng_state(saved["rng"])
            self.state = LoopState(**saved["state"])
            sync(self.engine, self.model.policy, self.model.rollout_policy)
        last = self.state.step if folder is not None else -1
        if self.info.is_main:
            for name in ("metrics.jsonl", "eval.jsonl", "completions.jsonl"):
                rundir.set_aside_after(self.run_dir / name, last)
        D.barrier()
        return last

    def stop_if_asked(self, stop: StopRequest) -> None:
        """At a step boundary: when a signal asked any rank to stop, write a checkpoint here
        (unless there is one) and raise Interrupted."""
        signum = int(D.all_reduce_max(float(stop.signum)))
        if not signum:
            return
        s = self.state
        if s.last_ckpt_step != s.step or not rundir.checkpoints(self.run_dir):
            self.checkpoint(reschedule=False)
        raise Interrupted(self.run_dir, s.step, signum)

    def run(self, resume: bool) -> dict:
        """The loop: evaluate at step 0, then step until the budget is spent, evaluating and
        checkpointing on schedule; a final evaluation and checkpoint; the summary. A signal
        stops it at a step boundary (see `stop_on_signals`)."""
        with stop_on_signals(quiet=not self.info.is_main) as stop:
            return self._run(resume, stop)

    def _run(self, resume: bool, stop: StopRequest) -> dict:
        cfg = self.cfg
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
        restored = self.restore() if resume else None
        self.tracker = make_tracker(cfg.report_to if self.info.is_main else "none", self.run_dir,
                                    self.run_dir.name, cfg.to_dict(), resume_step=restored)
        s, self.latest = self.state, None
        self.wall_start = time.time() - s.wall_s
        bar = TrainingBar(cfg, self.run_dir.name, s, enabled=self.progress and self.info.is_main)
        try:
            self.stop_if_asked(stop)
            if s.last_eval_step < 0:
                bar.accuracy(self.run_eval()["accuracy"])
            while self.budget_left():
                self.stop_if_asked(stop)
                record = self.step()
                s.step += 1
                s.train_time_s += D.all_reduce_max(sum(v for k, v in record.items()
                                                       if k.startswith("t_")))
                record = {"step": s.step, "wall_s": time.time() - self.wall_start,
                          "train_time_s": s.train_time_s, **record}
                if self.info.is_main:
                    append_jsonl(self.run_dir / "metrics.jsonl", record)
                    self.tracker.log_metrics(record, s.step)
                bar.step(record)
                if self.due(cfg.eval_every_steps, cfg.eval_every_s, s.next_eval_s):
                    bar.accuracy(self.run_eval()["accuracy"])
                if self.due(cfg.checkpoint_every_steps, cfg.checkpoint_every_s, s.next_ckpt_s):
                    self.checkpoint()
            bar.close()
            if s.last_eval_step != s.step:
                self.run_eval()
            if s.last_ckpt_step != s.step or not rundir.checkpoints(self.run_dir):
                self.checkpoint()
            return self.summarise()
        finally:
            bar.close()
            self.tracker.close()
            self.engine.close()

    def summarise(self) -> dict:
        evals = rundir.read_log(self.run_dir / "eval.jsonl") if self.info.is_main else []
        accuracies = [e["accuracy"] for e in evals]
        summary = {
            "run_dir": str(self.run_dir), "model_path": self.model.path,
            "steps": self.state.step, "train_time_s": self.state.train_time_s,
            "wall_s": time.time() - self.wall_start, "prompts_dropped": self.data.n_dropped,
            "test_problems_dropped": self.data.n_test_dropped,
            "base_accuracy": accuracies[0] if evals else None,
            "final_accuracy": accuracies[-1] if evals else None,
            "best_accuracy": max(accuracies) if evals else None,
            "best_step": self.state.best_step if self.cfg.keep_best_checkpoint else None,
            **D.numel_per_rank(self.model.policy, self.optimizer),
        }
        if self.info.is_main:
            write_json(self.run_dir / "summary.json", summary)
        return summary


def evaluate_checkpoint(run_dir: str | Path, which: str = "best", **overrides: Any) -> dict:
    """Test accuracy of a run's 'best' or 'latest' checkpoint, with the run's config and
    `overrides` (e.g. test_source, test_size, eval_repeats: the best checkpoint was chosen on
    the run's own evaluations, so its accuracy there is optimistic). One process."""
    run_dir = Path(run_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest'; got {which!r}")
    cfg = Config.from_yaml(run_dir / "config.yaml", **overrides)
    folder = (rundir.best_checkpoint(run_dir) if which == "best"
              else rundir.latest_valid_checkpoint(run_dir))
    if folder is None:
        raise ValueError(f"run folder {str(run_dir)!r} has no checkpoint")
    saved = rundir.load_checkpoint_files(folder)
    examples = load_examples(cfg, "train", rundir.warn), load_examples(cfg, "test", rundir.warn)
    info, device = D.setup(cfg.device)
    try:
        trainer = Trainer(cfg, run_dir, info, device, False, examples)
        try:
            D.load_state(trainer.model.policy, None, saved["trainable"], None)
            sync(trainer.engine, trainer.model.policy, trainer.model.rollout_policy)
            trainer.state.step = saved["state"]["step"]
            trainer.state.train_time_s = _train_time(run_dir, saved["state"])
            return {**trainer.evaluate(), "checkpoint": str(folder)}
        finally:
            trainer.engine.close()
    finally:
        D.teardown()


def _train_time(run_dir: Path, state: dict) -> float | None:
    """The training clock of a checkpoint's state: its own, or (a best checkpoint written before
    it was recorded) that of the evaluation log's record of its step; None when unknown."""
    if "train_time_s" in state:
        return state["train_time_s"]
    times = [r.get("train_time_s") for r in rundir.read_log(run_dir / "eval.jsonl")
             if r.get("step") == state["step"]]
    return times[-1] if times else None


def _quiet(*args, **kwargs) -> None:
    """Warnings are printed by rank 0 only."""
