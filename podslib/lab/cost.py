"""`pods cost`: what a step of each variant costs on this machine, and the wall-clock speedup
that predicts, in minutes and before anything is trained for hours (docs/cost.md).

Each variant of a grid file (the baseline, then the others or the `--only` ones; with `--sweep
field=a,b,c`, each variant once per value, counted against the baseline at the same value; a
sweep of what makes a variant down-sample, n, m or rule, leaves the baseline as it is) gets a
worker process holding a `Trainer` built from its config as `pods run` builds it (model, engine,
data, optimizer; the grid's first seed), which runs the trainer's own step, `Trainer.step`, with
no evaluation and no checkpoint. First a warm-up round (`warmup` steps per variant, not
counted), then ROUNDS rounds of blocks that together make `steps` timed steps per variant.
Blocks run `jobs` at a time: two on a CPU, one torch thread each, as `pods run --jobs 2` runs a
study; one on a GPU. A round starts once the previous round has started, its order turning from
round to round; a free slot with no block to start runs an untimed step of an idle variant, so
that on a CPU every timed step runs beside another one, as in a study.

Per step a worker returns the phase seconds (the trainer's clock, evaluation excluded), the
tokens generated and each phase's peak memory (`MemoryTimer`). `podslib.analysis.cost` turns
them into seconds per step and the step-cost ratio c with intervals over the rounds, and into
the prediction: wall-clock speedup = per-step gain / c, the gain taken from a value given, else
one's own runs of the experiment, else the paper's replay of the nearest setting. Written to
results/<experiment>/cost.{md,csv} (a sweep: cost_<field>.{md,csv}).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from podslib import rundir
from podslib.analysis import cost as C
from podslib.analysis import results as R
from podslib.analysis import stats as S
from podslib.config import Config, merge, parse_yaml_value
from podslib.files import REPO, atomic_write
from podslib.lab.notebook import kernel_environment
from podslib.lab.pipeline import Grid, load_grid, prepare_models, resolve_paths
from podslib.training import distributed as D
from podslib.training.data import load_examples
from podslib.training.step import PhaseTimer
from podslib.training.trainer import Trainer, check_packages

STEPS, WARMUP, ROUNDS = 40, 3, 8
DOWNSAMPLING = ("n", "m", "rule")                   # swept on the down-sampling variants only
PHASES = R.PHASES                                   # t_generate, t_score, ..., t_sync
MIB = 2 ** 20


# ----------------------------------------------------------------------------------------------
# what is measured: the variants
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One measured variant: a grid variant, or one value of a sweep over it."""

    name: str
    source: str                   # the grid variant it comes from
    values: dict[str, Any]        # its full, validated config values
    baseline: str                 # the variant its c is counted against (a baseline: itself)
    swept: Any = None             # the --sweep value (None: not swept)

    @property
    def config(self) -> Config:
        return Config.from_dict(self.values)

    @property
    def is_baseline(self) -> bool:
        return self.baseline == self.name


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """'n=16,32,64' -> ('n', [16, 32, 64]) (values read as YAML)."""
    name, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",")] if sep else []
    if not name or not items or not all(items):
        raise ValueError(f"--sweep must be field=value,value,... (e.g. n=16,32,64); got {text!r}")
    parsed = [parse_yaml_value(v) for v in items]
    if len({repr(v) for v in parsed}) < len(parsed):
        raise ValueError(f"--sweep values must differ; got {text!r}")
    return name.strip(), parsed


def plan(grid: Grid, baseline: str = "grpo", only: list[str] | None = None,
         sweep: str | None = None, overrides: dict[str, Any] | None = None) -> list[Variant]:
    """The variants to measure, the baseline first; every config validated (a bad --only,
    --sweep, --baseline or override raises ValueError naming it)."""
    if baseline not in grid.variants:
        raise ValueError(f"--baseline must be one of the variants "
                         f"{', '.join(map(repr, grid.variants))}; got {baseline!r}")
    grid.runs(only=only)                                        # checks the --only names
    others = [v for v in (only or grid.variants) if v != baseline]
    if not others:
        raise ValueError(f"--only must name a variant besides the baseline {baseline!r}: c is "
                         "a variant's step over the baseline's")
    seed = grid.seeds[0]

    def variant(name: str, base: str | None, change: str = "", swept: Any = None) -> Variant:
        """Grid variant `name` with `change` (key=value) made, counted against the variant
        named `base` (None: a baseline, against itself)."""
        extra = {change.partition("=")[0]: swept} if change else {}
        values = resolve_paths(merge(merge(grid.values(name, seed), overrides or {}), extra))
        try:
            Config.from_dict(values)
        except ValueError as err:
            where = f"--sweep {change} on variant {name!r}" if change else f"variant {name!r}"
            raise ValueError(f"{where}: {err}") from None
        full = f"{name} {change}" if change else name
        return Variant(full, name, values, base or full, swept)

    if sweep is None:
        return [variant(baseline, None)] + [variant(v, baseline) for v in others]
    key, values = parse_sweep(sweep)
    if key in DOWNSAMPLING:
        return [variant(baseline, None)] + [variant(v, baseline, f"{key}={x}", x)
                                            for v in others for x in values]
    out = []
    for x in values:                    # an engine or a batch size changes both sides of c
        base = variant(baseline, None, f"{key}={x}", x)
        out += [base] + [variant(v, base.name, f"{key}={x}", x) for v in others]
    return out


def check_ready(variants: list[Variant]) -> None:
    """Before any worker starts: packages the configs need, their data (the examples load),
    and, on one GPU, room for every variant's vLLM engine at once."""
    configs = [v.config for v in variants]
    share = sum(c.gpu_memory_utilization for c in configs
                if c.engine == "vllm" and c.device.startswith("cuda"))
    if share > 0.9:
        raise ValueError(
            f"gpu_memory_utilization: the {len(configs)} variants stay loaded together on one "
            f"GPU and their vLLM engines would reserve {share:.2f} of its memory; pass "
            f"gpu_memory_utilization={0.9 / len(configs):.2f} or fewer variants with --only")
    seen = set()
    for cfg in configs:
        check_packages(cfg)
        data = (cfg.task, cfg.train_source, cfg.test_source, cfg.train_size, cfg.test_size,
                repr(cfg.tiny))
        if data not in seen:                     # missing or empty data fail here, at once
            seen.add(data)
            load_examples(cfg, "train"), load_examples(cfg, "test")


# ----------------------------------------------------------------------------------------------
# one measured step, in a worker process
# ----------------------------------------------------------------------------------------------

def _resident_peak() -> int:
    """Peak resident memory of this process in bytes since the last reset (Linux VmHWM; else
    the peak since the process started)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024
    except (OSError, TypeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_resident_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")       # Linux: VmHWM := current RSS
    except OSError:
        pass


class MemoryTimer(PhaseTimer):
    """The trainer's PhaseTimer that also records each phase's peak memory in bytes (`peak`,
    the largest over a phase's calls): CUDA's allocator on a GPU, the resident set of the
    process on a CPU. The peak is reset before the phase's clock starts and read after it
    stops, so the timing is the trainer's own."""

    def __init__(self, device: str):
        super().__init__(device)
        self.peak: dict[str, int] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_resident_peak()
        with super().__call__(name):
            yield
        peak = torch.cuda.max_memory_allocated() if self.cuda else _resident_peak()
        self.peak[name] = max(self.peak.get(name, 0), peak)


def measured_step(trainer: Trainer) -> dict[str, float]:
    """Run the trainer's next step (`Trainer.step`, as `Trainer.run` does, without evaluation
    or checkpoint); its phase seconds, tokens generated, peak memory per phase (bytes) and
    wall-clock start and end (epoch seconds)."""
    timer, start = MemoryTimer(trainer.device), time.time()
    record = trainer.step(timer)
    trainer.state.step += 1
    return {**{k: record[k] for k in PHASES}, "tokens_generated": record["tokens_generated"],
            **{f"peak_{k}": float(v) for k, v in timer.peak.items()},
            "start": start, "end": time.time()}


def _worker(conn, values: dict[str, Any], threads: int | None, log_path: str) -> None:
    """A worker process: its output to `log_path`, the variant's Trainer built, then blocks of
    `measured_step` as asked (a count per message; None ends it). Replies: ('ready', None),
    ('steps', [records]) or ('error', traceback)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if threads:
        torch.set_num_threads(threads)
    trainer = None
    try:
        cfg = Config.from_dict(values)
        examples = load_examples(cfg, "train"), load_examples(cfg, "test")
        info, device = D.setup(cfg.device)
        trainer = Trainer(cfg, Path(log_path).parent, info, device, False, examples)
        conn.send(("ready", None))
        while (count := conn.recv()) is not None:
            conn.send(("steps", [measured_step(trainer) for _ in range(count)]))
    except Exception:  # noqa: BLE001 - reported to the parent, which names the variant
        conn.send(("error", traceback.format_exc()))
    finally:
        if trainer is not None:
            trainer.engine.close()
        D.teardown()


# ----------------------------------------------------------------------------------------------
# the schedule, in the parent
# ----------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    """A variant's worker failed; the message names the variant, the error and its log."""

    def __init__(self, variant: str, message: str):
        self.variant = variant
        super().__init__(message)


@dataclass(frozen=True)
class Block:
    """`steps` consecutive steps of one variant: round 0 is the warm-up, -1 an untimed filler."""

    variant: str
    round: int
    steps: int

    @property
    def timed(self) -> bool:
        return self.round > 0


def schedule(names: list[str], steps: int, warmup: int, rounds: int = ROUNDS) -> list[Block]:
    """The blocks in order: a warm-up round, then min(rounds, steps) rounds whose sizes add up
    to `steps` per variant, the order of the variants turning by one each round."""
    blocks = [Block(v, 0, warmup) for v in names] if warmup else []
    for r, part in enumerate(np.array_split(np.arange(steps), min(rounds, steps)), 1):
        turn = (r - 1) % len(names)
        blocks += [Block(v, r, len(part)) for v in names[turn:] + names[:turn]]
    return blocks


@dataclass
class Worker:
    variant: Variant
    process: Any
    conn: Any
    log: Path
    fillers: int = 0

    def reply(self) -> Any:
        """The worker's next reply; WorkerError if it failed or its process ended."""
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            kind, payload = "error", f"its process ended (exit code {self.process.exitcode})"
        if kind == "error":
            last = payload.strip().splitlines()[-1]
            where = f"its log: {self.log}" if self.log.exists() else "it wrote no log"
            raise WorkerError(self.variant.name,
                              f"variant {self.variant.name!r} failed: {last} ({where})")
        return payload


@dataclass
class Pool:
    """The workers of a measurement, started `jobs` at a time."""

    variants: list[Variant]
    jobs: int
    threads: int | None
    log_dir: Path
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self, log) -> None:
        ctx = mp.get_context("spawn")
        pending, starting = list(self.variants), []
        while pending or starting:
            while pending and len(starting) < self.jobs:
                v = pending.pop(0)
                parent, child = ctx.Pipe()
                path = self.log_dir / f"{len(self.workers)}.log"
                proc = ctx.Process(target=_worker, args=(child, v.values, self.threads,
                                                         str(path)), name=f"pods-cost {v.name}")
                proc.start()
                child.close()
                starting.append(Worker(v, proc, parent, path))
                self.workers[v.name] = starting[-1]
            ready = wait([w.conn for w in starting])
            for w in [w for w in starting if w.conn in ready]:
                starting.remove(w)
                w.reply()
                log(f"  {w.variant.name}: ready")

    def close(self) -> None:
        """End every worker: ask, then wait, then terminate what is left (only these processes)."""
        for w in self.workers.values():
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self.workers.values():
            w.process.join(timeout=30)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join()

    def run(self, blocks: list[Block], log) -> list[dict[str, Any]]:
        """Run `blocks` (see `schedule`) `jobs` at a time; one record per step: variant, round,
        timed, seconds (the phases' sum), the phases, tokens_generated, peak_* (bytes)."""
        queue, running, records = list(blocks), {}, []
        total = Counter(b.round for b in blocks)
        started: Counter = Counter()
        while queue or running:
            while len(running) < self.jobs:
                block = self._next(queue, running, started, total)
                if block is None:
                    break
                self.workers[block.variant].conn.send(block.steps)
                running[block.variant] = block
            ready = wait([self.workers[v].conn for v in running])
            for name in [v for v in running if self.workers[v].conn in ready]:
                block = running.pop(name)
                for rec in self.workers[name].reply():
                    records.append({"variant": name, "round": block.round, "timed": block.timed,
                                    "seconds": sum(rec[k] for k in PHASES), **rec})
                if block.round > 0 and not any(b.round == block.round for b in queue) and \
                        not any(b.round == block.round for b in running.values()):
                    log(f"  round {block.round}/{max(total)} done")
        return records

    def _next(self, queue: list[Block], running: dict[str, Block], started: Counter,
              total: Counter) -> Block | None:
        """The first queued block whose variant is idle and whose previous round has started;
        else, while timed work is left, a filler step of the idle variant with fewest fillers."""
        for block in queue:
            if block.variant not in running and (block.round == 0 or
                                                 started[block.round - 1] == total[block.round - 1]):
                queue.remove(block)
                started[block.round] += 1
                return block
        idle = [w for name, w in self.workers.items() if name not in running]
        if self.jobs > 1 and idle and (queue or any(b.timed for b in running.values())):
            w = min(idle, key=lambda w: w.fillers)
            w.fillers += 1
            return Block(w.variant.name, -1, 1)
        return None


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------

@dataclass
class CostReport:
    """What `run` measured and predicted (`table`: one row per variant, `steps`: every step,
    `check`: against one's own runs of the experiment, empty without them)."""

    experiment: str
    table: pd.DataFrame
    steps: pd.DataFrame
    sentences: list[str]
    check: pd.DataFrame
    meta: dict[str, Any]
    gains: dict[str, tuple[str, S.Estimate, dict | None]]     # see `gains`
    c_reps: dict[str, np.ndarray]                              # bootstrap replicates of c
    paths: list[Path] = field(default_factory=list)


def own_runs(root: Path, experiment: str) -> pd.DataFrame:
    """The complete runs of the experiment: their folders (`results.load_runs`), else its
    record (a clone holds only the committed `runs.csv.gz`); empty with neither."""
    curves = R.load_runs(root, experiment)
    record = Path(root) / experiment / R.RECORD
    if not len(curves) and record.is_file():
        curves = R.read_record(record)[0]
    if not len(curves):
        return curves
    return curves[curves["complete"].astype(bool)]


def gains(variants: list[Variant], baseline: str, curves: pd.DataFrame, per_step: float | None,
          prefer: str, n_boot: int) -> dict[str, tuple[str, S.Estimate, dict | None]]:
    """Per variant (the baseline aside): (where the gain comes from, the gain, its replicates)
    from `per_step` when given, else the complete runs `curves` of that variant, else the
    paper's nearest setting (down-sampling variants only)."""
    out, cache = {}, {}
    have = set(curves["variant"]) if len(curves) else set()
    for v in variants:
        cfg = v.config
        if v.is_baseline:
            continue
        if per_step is not None:
            out[v.name] = ("the per-step gain you gave",
                           S.Estimate(per_step, per_step, per_step, 1.0, per_step), None)
        elif v.swept is None and {baseline, v.source} <= have:
            est, reps = C.gain(curves[curves["variant"] == baseline],
                               curves[curves["variant"] == v.source], n_boot=n_boot)
            seeds = curves[curves["variant"] == v.source]["seed"].nunique()
            out[v.name] = (f"your runs' per-step gain ({seeds} seeds)", est, reps)
        elif cfg.n > cfg.m:
            key = C.nearest_paper(cfg.task, cfg.model, cfg.n, cfg.m, cfg.rule, prefer)
            if key not in cache:
                cache[key] = C.paper_gain(*key, n_boot=n_boot)
            out[v.name] = (f"the paper's per-step gain on {C.paper_setting(*key)}", *cache[key])
    return out


def summarise(variants: list[Variant], steps: pd.DataFrame, baseline: str,
              gain_of: dict[str, tuple], n_boot: int
              ) -> tuple[pd.DataFrame, list[str], dict[str, np.ndarray]]:
    """The table (one row per variant), the prediction sentences and the replicates of c."""
    timed = steps[steps["timed"]]
    costs, c_reps = C.round_costs(timed, {v.name: v.baseline for v in variants}, n_boot)
    costs = costs.set_index("variant")
    rows, sentences = [], []
    for v in variants:
        cfg, mine, cost = v.config, timed[timed["variant"] == v.name], costs.loc[v.name]
        row = {"variant": v.name, "source": v.source, "swept": v.swept, "baseline": v.baseline,
               "engine": cfg.engine, "n": cfg.n, "m": cfg.m,
               "rule": "none" if cfg.n == cfg.m else cfg.rule, **cost.to_dict(),
               "rounds": int(cost["rounds"]), "steps": int(cost["steps"]),
               **{p: mine[p].mean() for p in PHASES},
               "tokens_per_s": mine["tokens_generated"].sum() / mine["t_generate"].sum(),
               **{f"peak_mib_{p}": mine[f"peak_{p}"].max() / MIB for p in
                  ("generate", "score", "select", "update", "sync")}}
        if v.name in gain_of:
            source, gain, reps = gain_of[v.name]
            c = S.Estimate(cost["c"], cost["c_ci_low"], cost["c_ci_high"], 1.0)
            pred = C.predict(gain, c.value, c_reps[v.name], reps)
            row.update({"gain_source": source, "gain": gain.value, "gain_ci_low": gain.low,
                        "gain_ci_high": gain.high, "gain_at_most": gain.at_most,
                        "predicted": pred.value, "predicted_ci_low": pred.low,
                        "predicted_ci_high": pred.high, "predicted_at_most": pred.at_most,
                        "verdict": pred.verdict})
            sentences.append(f"{v.name} ({cfg.n} -> {cfg.m}): "
                             + C.sentence(c, source, gain, pred, baseline))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["swept"] = pd.Series([v.swept for v in variants], dtype=object)   # 8 stays 8
    return table, sentences, c_reps


def regime_maps(report: CostReport, points: int = 81
                ) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """For the cost-regime figure (`plots.cost_prediction`): per variant with a gain, the
    wall-clock speedup its gain predicts over a range of c (`stats.regime`, from 1 or below to
    the paper's c or the measured interval's top) and its point at the c measured here."""
    rows = report.table.set_index("variant")
    names = [v for v in report.gains if v in rows.index]
    low = min([1.0, *rows.loc[names, "c_ci_low"]])
    high = max([S.PAPER_COST, *rows.loc[names, "c_ci_high"]])
    grid = np.linspace(low, high, points)
    maps, at = {}, {}
    for name in names:
        _, est, reps = report.gains[name]
        if reps is None:                                   # a gain given: no spread of its own
            reps = {k: np.full(S.N_BOOT, est.value) for k in ("speedup", "speedup_at_most")}
        maps[name] = S.regime(est, reps, grid)
        at[name] = rows.loc[name, ["c", "c_ci_low", "c_ci_high", "predicted", "predicted_ci_low",
                                   "predicted_ci_high", "predicted_at_most"]].to_dict()
    return maps, at


def best_of_sweep(table: pd.DataFrame, key: str) -> list[str]:
    """Per swept grid variant, the value with the highest predicted speedup, in words."""
    out = []
    for source, part in table[table["swept"].notna()].groupby("source", sort=False):
        part = part.dropna(subset=["predicted"])
        if not len(part):
            continue
        top = part.loc[part["predicted"].idxmax()]
        est = S.Estimate(top["predicted"], top["predicted_ci_low"], top["predicted_ci_high"],
                         1.0, top["predicted_at_most"])
        out.append(f"{source}: of {key} = {', '.join(map(str, part['swept']))}, {key} = "
                   f"{top['swept']} has the best predicted wall-clock speedup, "
                   f"{C.ratio_text(est)}")
    return out


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it (configs/tiny.yaml), else as is."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run(config_file: str | Path, steps: int = STEPS, warmup: int = WARMUP,
        only: list[str] | None = None, sweep: str | None = None, baseline: str = "grpo",
        per_step: float | None = None, jobs: int | None = None,
        results_root: str | Path | None = None, overrides: dict[str, Any] | None = None,
        n_boot: int = S.N_BOOT, write: bool = True, log=print) -> CostReport:
    """`pods cost`: measure (see the module docstring), predict, and write
    results/<experiment>/cost.{md,csv} (a sweep: cost_<field>.{md,csv}; `write` False: none).
    Every bad argument raises ValueError before anything runs; a failing variant raises
    WorkerError naming it. The workers are spawned processes: a script that calls this needs an
    `if __name__ == "__main__":` guard (a notebook or the `pods` command does not)."""
    for name, value, low in (("--steps", steps, 1), ("--warmup", warmup, 0),
                             ("--jobs", 1 if jobs is None else jobs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    if per_step is not None and not (isinstance(per_step, int | float) and per_step > 0):
        raise ValueError(f"--per-step must be a number > 0; got {per_step!r}")
    load_before = os.getloadavg()[0]                   # others' work, before ours starts
    grid = load_grid(config_file)
    variants = plan(grid, baseline, only, sweep, overrides)
    root = Path(results_root or variants[0].values["results_root"]).resolve()
    exp_dir = root / grid.experiment
    rundir.check_writable(exp_dir, "results folder")
    check_ready(variants)
    if write:
        rundir.claim_experiment(exp_dir, grid.experiment, grid.source.name)
    kernel_environment()
    cpu = not variants[0].config.device.startswith("cuda")
    jobs = jobs or (2 if cpu else 1)
    log(f"pods cost {grid.experiment}: {len(variants)} variants, {warmup} warm-up + {steps} "
        f"timed steps each, {jobs} at a time"
        + (", one torch thread each" if cpu else ""))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                   # the tiny model's build, if needed
    prepare_models([v.config for v in variants], progress=False)
    meta = {"experiment": grid.experiment, "config": _shown(grid.source), "steps": steps,
            "warmup": warmup, "jobs": jobs, "baseline": baseline, "sweep": sweep or "",
            "device": variants[0].config.device,
            "engine": ", ".join(dict.fromkeys(v.config.engine for v in variants)),
            "cpus": os.cpu_count(), "load_before": load_before,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.perf_counter()
    with rundir.locked(exp_dir, "experiment folder") if write else nullcontext():
        records = _measure(variants, steps, warmup, jobs, 1 if cpu else None, log)
    meta.update(load_after=os.getloadavg()[0], seconds=time.perf_counter() - start)
    steps_frame = pd.DataFrame(records)
    curves = own_runs(root, grid.experiment)
    key = parse_sweep(sweep)[0] if sweep else ""
    gain_of = gains(variants, baseline, curves, per_step, "m" if key == "m" else "n", n_boot)
    table, sentences, c_reps = summarise(variants, steps_frame, baseline, gain_of, n_boot)
    if sweep:
        sentences += best_of_sweep(table, key)
    check = C.agreement(table[table["swept"].isna()], curves, baseline, n_boot) \
        if len(curves) and baseline in set(curves["variant"]) else pd.DataFrame()
    report = CostReport(grid.experiment, table, steps_frame, sentences, check, meta, gain_of,
                        c_reps)
    log(text(report))
    if write:
        report.paths = write_report(report, exp_dir, f"cost_{key}" if key else "cost")
        log(f"pods cost: wrote {', '.join(str(p) for p in report.paths)}")
    return report


def _measure(variants: list[Variant], steps: int, warmup: int, jobs: int,
             threads: int | None, log) -> list[dict[str, Any]]:
    """Start the workers, run the schedule, end the workers; the step records. The workers'
    logs are removed unless a worker failed."""
    log_dir = Path(tempfile.mkdtemp(prefix="pods-cost-"))
    pool = Pool(variants, jobs, threads, log_dir)
    try:
        log("starting the variants (model, engine, data) ...")
        pool.start(log)
        records = pool.run(schedule([v.name for v in variants], steps, warmup), log)
    except BaseException:
        pool.close()
        raise
    pool.close()
    shutil.rmtree(log_dir, ignore_errors=True)
    return records


# ----------------------------------------------------------------------------------------------
# tables and files
# ----------------------------------------------------------------------------------------------

def _interval(row: pd.Series, name: str, digits: int = 2, unit: str = "") -> str:
    value = row.get(name, np.nan)
    if pd.isna(value):
        return "-"
    return (f"{value:.{digits}f}{unit} [{row[f'{name}_ci_low']:.{digits}f}, "
            f"{row[f'{name}_ci_high']:.{digits}f}]")


def _estimate(row: pd.Series, name: str) -> str:
    if pd.isna(row.get(name, np.nan)):
        return "-"
    return C.ratio_text(S.Estimate(row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"],
                                   1.0, row.get(f"{name}_at_most")))


def compact(table: pd.DataFrame) -> pd.DataFrame:
    """The table as short strings, one row per variant: s/step and c with intervals, the
    phases, tokens per second, peak memory, the gain and the prediction."""
    rows = []
    for _, r in table.iterrows():
        rows.append({
            "variant": r["variant"], "n -> m": f"{r['n']} -> {r['m']}",
            "s/step": _interval(r, "s_per_step", 3), "c": _interval(r, "c"),
            **{p.removeprefix("t_"): f"{r[p]:.3f}" for p in PHASES},
            "tokens/s": f"{r['tokens_per_s']:.0f}",
            "peak MiB (generate / update)": f"{r['peak_mib_generate']:.0f} / "
                                            f"{r['peak_mib_update']:.0f}",
            "per-step gain": _estimate(r, "gain"),
            "predicted wall-clock": _estimate(r, "predicted")})
    return pd.DataFrame(rows)


def compact_check(check: pd.DataFrame) -> pd.DataFrame:
    """`analysis.cost.agreement` as short strings."""
    rows = []
    for _, r in check.iterrows():
        rows.append({
            "variant": r["variant"], "seeds": r["seeds"], "c here": _interval(r, "c"),
            "c in the runs": _interval(r, "study_c"), "c inside": r["c_inside"],
            "runs' per-step speedup": _estimate(r, "step_speedup"),
            "predicted at c here": _estimate(r, "predicted"),
            "runs' wall-clock speedup": _estimate(r, "speedup"),
            "prediction inside": r["prediction_inside"]})
    return pd.DataFrame(rows)


def header(meta: dict[str, Any]) -> str:
    """When, where and how the measurement ran, in one line."""
    cpu = meta["device"] == "cpu"
    where = (f"{meta['cpus']} CPUs, {meta['jobs']} variant(s) at a time"
             + (", one torch thread each" if cpu else f" on {meta['device']}"))
    return (f"{meta['started']}, {where}, engine {meta['engine']}; load average "
            f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after; "
            f"{meta['warmup']} warm-up + {meta['steps']} timed steps per variant, measured in "
            f"{meta['seconds']:.0f} s; 95% bootstrap intervals over the rounds")


def busy_note(meta: dict[str, Any]) -> str:
    """A warning when other work shared the machine (a load average above half the CPUs before
    the measurement), else ''."""
    if meta["load_before"] <= 0.5 * meta["cpus"]:
        return ""
    return (f"note: the machine was busy (load average {meta['load_before']:.1f} on "
            f"{meta['cpus']} CPUs before the measurement): other processes took time from the "
            "variants unevenly, so c may be off; measure again on an otherwise idle machine")


def text(report: CostReport) -> str:
    """What the command prints: the table, the sentences, the check."""
    note = busy_note(report.meta)
    lines = [f"{report.experiment}: {header(report.meta)}", *([note] if note else []),
             compact(report.table).to_string(index=False), "", *report.sentences]
    if len(report.check):
        lines += ["", "against your runs of the experiment:",
                  compact_check(report.check).to_string(index=False)]
    return "\n".join(lines)


def markdown(report: CostReport) -> str:
    m = report.meta
    sweep = f" --sweep {m['sweep']}" if m["sweep"] else ""
    parts = [f"# What a step costs here: {report.experiment}\n",
             (f"`pods cost {m['config']}{sweep}`: {header(m)}. Phases in seconds per "
             "step (the training clock); c = a variant's seconds per step over the "
             f"{m['baseline']}'s; the predicted wall-clock speedup is the per-step gain / c "
             "(docs/cost.md).\n"), *([f"**{busy_note(m)}**\n"] if busy_note(m) else []),
             "## The prediction\n",
             *[f"- {s}" for s in report.sentences], "",
             "## Per variant\n", R.markdown_table(compact(report.table))]
    if len(report.check):
        parts += ["## Against your runs of the experiment\n",
                  ("c here and in the runs (per seed, variant over baseline s/step, mean over "
                  "seeds, 95% bootstrap over seeds); the wall-clock speedup the runs' per-step "
                  "curves predict at c here, beside the one the runs measured (paired over "
                  "seeds); inside: the point lies in the runs' 95% interval.\n"),
                  R.markdown_table(compact_check(report.check))]
    return "\n".join(parts)


def write_report(report: CostReport, exp_dir: Path, name: str) -> list[Path]:
    """<name>.csv (the table, the check's columns prefixed check_) and <name>.md."""
    table = report.table
    if len(report.check):
        check = report.check.drop(columns=["c", "c_ci_low", "c_ci_high"]).add_prefix("check_")
        table = table.merge(check, how="left", left_on="variant", right_on="check_variant") \
            .drop(columns=["check_variant"])
    csv, md = exp_dir / f"{name}.csv", exp_dir / f"{name}.md"
    atomic_write(csv, table.assign(**{k: v for k, v in report.meta.items()
                                      if k in ("device", "jobs", "started")})
                 .to_csv(index=False))
    atomic_write(md, markdown(report))
    return [md, csv]
