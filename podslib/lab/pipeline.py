"""Experiment grids and the papermill pipeline behind the `pods` command.

A grid file (configs/*.yaml) names an experiment, the seeds, the Config fields shared by all runs
(`base`) and the named variants (`grid`, each a mapping of fields that differ):

    experiment: tiny
    seeds: [0, 1, 2]
    base: {max_train_seconds: 90, ...}
    grid:
      grpo: {n: 4, m: 4}
      pods: {n: 16, m: 4}

Each (variant, seed) is one run: notebooks/03_train.ipynb executed by papermill, the executed
notebook saved in its run folder results/<experiment>/<variant>-s<seed>/. Completed runs
(summary.json present) are skipped; an interrupted run with the same config is resumed; a folder
holding another experiment, another config or files the kit did not write is an error raised
before anything runs. Nothing already written in a run folder is overwritten.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM starts no new run and asks the running kernels
to stop (`notebook.stop_kernels`): each training run ends its current step and writes a
checkpoint, and `pods run` again resumes it exactly; a second SIGINT kills the kernels (their
runs resume from their last checkpoint). A run that fails for a full disk also starts no new
run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pandas as pd

from podslib import rundir
from podslib.analysis import results as R
from podslib.config import SEED_MAX, Config, load_yaml, merge, run_id
from podslib.files import REPO, check_name, write_json
from podslib.lab import notebook
from podslib.lab.notebook import NotebookError, execute
from podslib.training.warmstart import policy_path

NOTEBOOKS = REPO / "notebooks"
CONFIGS = REPO / "configs"
GRID_KEYS = ("experiment", "description", "inherit", "seeds", "base", "grid")
# Config fields holding paths: relative values are taken relative to the repository root (the
# notebooks run with notebooks/ as working directory, the `pods` command wherever it is called).
PATH_FIELDS = ("model", "train_source", "test_source", "results_root", "cache_dir")


def say(line: str) -> None:
    """Print one line in one write: the lines of runs that start or end together never
    interleave (print writes the text and its newline separately)."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------
# grid files
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """One cell of a grid: a variant with a seed, and its full config values."""

    variant: str
    seed: int
    values: dict[str, Any]

    @property
    def run_id(self) -> str:
        return run_id(self.variant, self.seed)

    def config(self, **overrides: Any) -> Config:
        return Config.from_dict(merge(self.values, overrides))


@dataclass
class Grid:
    """A parsed grid file (see module docstring)."""

    experiment: str
    source: Path
    seeds: list[int]
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    description: str = ""

    def values(self, variant: str, seed: int) -> dict[str, Any]:
        """The config values of (variant, seed): base, then the variant, then identity fields."""
        if variant not in self.variants:
            raise ValueError(f"variant must be one of {', '.join(map(repr, self.variants))}; "
                             f"got {variant!r}")
        values = merge(merge({"results_root": "results"}, self.base), self.variants[variant])
        values = merge(values, {"experiment": self.experiment, "seed": seed,
                                "run_name": run_id(variant, seed)})
        return resolve_paths(values)

    def config(self, variant: str, seed: int, **overrides: Any) -> Config:
        """The validated Config of (variant, seed) with `overrides` applied."""
        return Config.from_dict(merge(self.values(variant, seed), overrides))

    def runs(self, seeds: list[int] | None = None, only: list[str] | None = None) -> list[RunSpec]:
        """The grid's runs, seed-major (all variants of a seed before the next seed, so that an
        interrupted grid leaves comparable pairs), optionally restricted to `seeds` / `only`."""
        for name in only or []:
            if name not in self.variants:
                raise ValueError(f"--only must name variants among "
                                 f"{', '.join(map(repr, self.variants))}; got {name!r}")
        if seeds is not None:
            check_seeds(seeds, "--seeds")
        names = only or list(self.variants)
        for v in names:
            for s in seeds or self.seeds:
                check_name(run_id(v, s), f"the run folder name of variant {v!r}, seed {s}")
        return [RunSpec(v, s, self.values(v, s)) for s in (seeds or self.seeds) for v in names]


def check_seeds(seeds: Any, where: str) -> None:
    """ValueError unless `seeds` is a non-empty list of distinct integers in [0, SEED_MAX]."""
    ok = (isinstance(seeds, list) and seeds and len(set(map(str, seeds))) == len(seeds)
          and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX
                  for s in seeds))
    if not ok:
        raise ValueError(f"{where} must be a non-empty list of distinct integers in [0, "
                         f"{SEED_MAX}]; got {seeds!r}")


def resolve_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Make the PATH_FIELDS values that are relative paths absolute, against the repository root:
    results_root always, the others when that path exists (else they are hub ids, 'tiny', ...)."""
    out = dict(values)
    for key in PATH_FIELDS:
        value = out.get(key)
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            continue
        if key == "results_root" or (REPO / value).exists():
            out[key] = str((REPO / value).resolve())
    return out


def _read_grid_file(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a grid file, with `inherit: OTHER.yaml` (a path relative to this file)
    merged in: the other file's base and seeds are the defaults of this one's. `chain` holds
    the files inheriting this one (a cycle is named and refused)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(path):], path))
        raise ValueError(f"config file {str(chain[0])!r}: inherit forms a cycle: {cycle}")
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping with keys "  # noqa: TRY004
                         f"{', '.join(GRID_KEYS)}")
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        raise ValueError(f"config file {str(path)!r}: unknown top-level key(s) {unknown}; "
                         f"accepted: {', '.join(GRID_KEYS)}")
    if "inherit" in data:
        parent = _read_grid_file(path.parent / str(data["inherit"]), (*chain, path))
        data = {**data, "seeds": data.get("seeds", parent.get("seeds", [0])),
                "base": merge(parent.get("base") or {}, data.get("base") or {})}
    return data


def load_grid(path: str | Path) -> Grid:
    """Parse and validate a grid file: every variant must give a valid Config."""
    path = Path(path)
    data = _read_grid_file(path)
    experiment = data.get("experiment")
    check_name(experiment, f"config file {str(path)!r}: experiment")
    seeds = data.get("seeds", [0])
    check_seeds(seeds, f"config file {str(path)!r}: seeds")
    base, variants = data.get("base") or {}, data.get("grid") or {}
    if not isinstance(base, dict):
        raise ValueError(f"config file {str(path)!r}: base must be a mapping of Config "  # noqa: TRY004
                         f"fields; got {base!r}")
    if not isinstance(variants, dict) or not variants or \
            not all(isinstance(v, dict | None) for v in variants.values()):
        raise ValueError(f"config file {str(path)!r}: grid must map variant names to mappings "
                         f"of Config fields; got {variants!r}")
    grid = Grid(experiment, path.resolve(), list(seeds), dict(base),
                {str(k): dict(v or {}) for k, v in variants.items()},
                description=str(data.get("description", "")))
    for name in grid.variants:
        check_name(name, f"config file {str(path)!r}: variant names")
        try:
            grid.config(name, grid.seeds[0])
            grid.runs(only=[name])
        except ValueError as err:
            raise ValueError(f"config file {str(path)!r}, variant {name!r}: {err}") from err
    return grid


# ----------------------------------------------------------------------------------------------
# running a grid
# ----------------------------------------------------------------------------------------------

def _fmt(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _accuracy_note(run_dir: Path) -> str:
    """', test accuracy 0.41 -> 0.52 (steps 120)' from a finished run's summary.json."""
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    first, last = summary.get("base_accuracy"), summary.get("final_accuracy")
    if first is None or last is None:
        return ""
    return f", test accuracy {first:.3f} -> {last:.3f} ({summary.get('steps')} steps)"


def preflight(grid: Grid, specs: list[RunSpec], root: Path,
              overrides: dict[str, Any]) -> dict[str, str]:
    """Check the experiment folder and every run folder before anything runs, then mark the
    experiment folder (experiment.json); returns each run's state: 'complete', 'resume'
    (interrupted, same config) or 'new'. A folder of another experiment, a run folder holding
    another config or files the kit did not write, raises ValueError, writing nothing."""
    rundir.claim_experiment(root / grid.experiment, grid.experiment, grid.source.name,
                            check_only=True)
    states = {spec.run_id: rundir.run_state(spec.config(**overrides),
                                            root / grid.experiment / spec.run_id)
              for spec in specs}
    rundir.claim_experiment(root / grid.experiment, grid.experiment, grid.source.name)
    return states


def run_grid(config_file: str | Path, seeds: list[int] | None = None,
             only: list[str] | None = None, results_root: str | Path | None = None,
             overrides: dict[str, Any] | None = None, kernel: str | None = None,
             progress: bool = True, jobs: int = 1, log=say) -> dict[str, list[str]]:
    """Run every (variant, seed) of the grid through notebooks/03_train.ipynb, `jobs` at a time
    (seed-major order, so with 2 jobs the variants of one seed run side by side).

    The experiment folder is locked for the whole grid (a second runner stops at once).
    Completed runs are skipped, failed ones reported (with the failing cell's error, or how the
    kernel died) while the others go on. A signal or a full disk starts no new run (see the
    module docstring). Returns {'done', 'skipped', 'failed', 'interrupted', 'not_started'}: lists
    of run ids, and 'stopped_by' (the signal's name) when a signal stopped the grid.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    grid = load_grid(config_file)
    kernel = notebook.check_kernel(kernel)
    specs = grid.runs(seeds, only)
    first = next(iter(grid.variants))
    root = Path(results_root or grid.values(first, grid.seeds[0])["results_root"]).resolve()
    overrides = {**(overrides or {}), "results_root": str(root)}
    rundir.check_writable(root / grid.experiment, "results folder")
    with rundir.locked(root / grid.experiment, "experiment folder"):
        states = preflight(grid, specs, root, overrides)
        if jobs > 1:
            prepare_models([s.config(**overrides) for s in specs
                            if states[s.run_id] != "complete"], progress)
        out: dict[str, Any] = {"done": [], "skipped": [], "failed": [], "interrupted": [],
                               "not_started": []}
        for spec in specs:
            if states[spec.run_id] == "complete":
                log(f"[skip] {grid.experiment}/{spec.run_id}: complete (summary.json present)")
                out["skipped"].append(spec.run_id)
        todo = [s for s in specs if states[s.run_id] != "complete"]
        _run_all(grid, todo, states, root, overrides, kernel, progress and jobs == 1, jobs, out,
                 log)
    return out


class _Signals:
    """Counts SIGINT and SIGTERM while the block runs (handlers in the main thread only, where
    Python runs them): `pods` waits on its notebooks and stops them itself (`_wait`)."""

    def __init__(self):
        self.count, self.signum, self.previous = 0, 0, {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle)
                             for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def _wait(futures: list[Future], signals: _Signals, log: Callable[[str], None]) -> None:
    """Wait for `futures`, the notebooks' threads. After the first signal every running kernel
    is asked to stop (those started since too), after a second one they are killed."""
    told = 0
    while wait(futures, timeout=0.2).not_done:
        if signals.count and not told:
            log(f"{signals.name}: no new run starts; the running ones stop after their current "
                "step, with a checkpoint (Ctrl-C again to stop them at once)")
        if signals.count > 1 and told < 2:
            log("stopping the running kernels at once: their runs resume from their last "
                "checkpoint")
        if signals.count:
            notebook.stop_kernels(force=signals.count > 1)
        told = signals.count


def _in_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) (a notebook) in a worker thread, this one waiting on it: a signal
    stops the notebook's kernel (see `_wait`), then raises KeyboardInterrupt here."""
    with _Signals() as signals, ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(fn, *args, **kwargs)
        _wait([future], signals, lambda line: None)
        if signals.count:
            raise KeyboardInterrupt
        return future.result()


def _no_space(err: NotebookError) -> bool:
    """The run failed writing to a full disk (a NoSpaceError naming the path, or an OS error)."""
    return err.ename == "NoSpaceError" or "[Errno 28]" in err.evalue or \
        "No space left on device" in err.evalue


def _resume_point(run_dir: Path) -> str:
    """How an interrupted run continues: from its latest checkpoint, or from the start."""
    found = rundir.checkpoints(run_dir)
    return f"resumes from checkpoints/{found[-1].name}" if found else "starts again from step 0"


def _run_all(grid: Grid, todo: list[RunSpec], states: dict[str, str], root: Path,
             overrides: dict[str, Any], kernel: str | None, progress: bool, jobs: int,
             out: dict[str, Any], log) -> None:
    """Execute 03_train for every run of `todo`, `jobs` at a time, logging each end with ETA;
    after a signal or a full disk the runs not yet started are listed in out['not_started']."""
    start = time.perf_counter()
    ended = 0
    no_space = threading.Event()

    def one(spec: RunSpec, signals: _Signals) -> None:
        nonlocal ended
        if signals.count or no_space.is_set():
            out["not_started"].append(spec.run_id)
            return
        run_dir = root / grid.experiment / spec.run_id
        resume = states[spec.run_id] == "resume"
        log(f"[{grid.experiment}/{spec.run_id}] {'resuming' if resume else 'starting'}")
        t0 = time.perf_counter()
        disk_full = False
        try:
            execute(NOTEBOOKS / "03_train.ipynb", run_dir / "03_train.ipynb",
                    {"config_file": str(grid.source), "variant": spec.variant,
                     "seed": spec.seed, "overrides": overrides, "run_dir": str(run_dir),
                     "resume": resume}, kernel=kernel, progress=progress)
            out["done"].append(spec.run_id)
            status = "done" + _accuracy_note(run_dir)
        except NotebookError as err:
            if signals.count and rundir.is_complete(run_dir):
                out["done"].append(spec.run_id)
                status = "done (complete before the stop)"
            elif signals.count:
                out["interrupted"].append(spec.run_id)
                status = f"interrupted by {signals.name}; {_resume_point(run_dir)}"
            else:
                out["failed"].append(spec.run_id)
                status, disk_full = f"FAILED: {err}", _no_space(err)
        ended += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / ended * (len(todo) - ended)
        log(f"[{ended}/{len(todo)}] {spec.run_id}: {status} in "
            f"{_fmt(time.perf_counter() - t0)} (elapsed {_fmt(elapsed)}, ETA {_fmt(eta)})")
        if disk_full and not no_space.is_set():
            no_space.set()
            log("no space left on device: no new run starts; free some space, then `pods run` "
                "again resumes")

    with _Signals() as signals, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, spec, signals) for spec in todo]
        _wait(futures, signals, log)
        for future in futures:
            future.result()
    if signals.count:
        out["stopped_by"] = signals.name


# ----------------------------------------------------------------------------------------------
# report and reproduce
# ----------------------------------------------------------------------------------------------

def experiments(root: str | Path) -> list[str]:
    """Experiments under `root`: folders marked by `pods run` (experiment.json) or holding an
    experiment record (runs.csv.gz: a fresh clone has no run folders)."""
    root = Path(root)
    return sorted({p.parent.name for pattern in ("*/experiment.json", f"*/{R.RECORD}")
                   for p in root.glob(pattern)})


def baselines(exp_dir: Path, requested: str | None) -> tuple[str, list[str]]:
    """The baseline of an experiment's main summary (summary.md) and the others it is compared
    to (summary_vs_<name>.md). The main one is the one its summary.csv names (column baseline,
    or in an older summary the row whose verdicts say 'baseline'); without one (no summary yet,
    or one without a baseline), `requested` or 'grpo'. The others: those already written, and
    `requested` when it is not the main one."""
    table = R.read_summary(exp_dir) if (exp_dir / "summary.csv").is_file() else pd.DataFrame()
    if "baseline" in table.columns:
        stored = table["baseline"].dropna()
    elif {"speedup_verdict", "variant"} <= set(table.columns):
        stored = table.loc[table["speedup_verdict"] == "baseline", "variant"]
    else:
        stored = []
    main = (stored.iloc[0] if len(stored) else "") or requested or "grpo"
    others = {p.name.removeprefix("summary_vs_").removesuffix(".csv")
              for p in exp_dir.glob("summary_vs_*.csv")}
    return main, sorted(others | ({requested} if requested and requested != main else set()))


def report(experiment: str, results_root: str | Path = REPO / "results", kernel: str | None = None,
           progress: bool = True, baseline: str | None = None, log=say) -> Path:
    """Rebuild an experiment's record, figures and summary tables (notebooks/04_plots.ipynb).
    The record (runs.csv.gz) is rewritten from the run folders when there are any, else read
    as committed; figures/, summary.{md,csv} (against the experiment's main baseline,
    `baselines`) and every summary_vs_<name>.{md,csv} (`baseline`, when it is not the main one,
    adds one) are derived files and are replaced. Logs the verdicts per variant. A damaged run
    is left out, named in one line."""
    check_name(experiment, "experiment")
    kernel = notebook.check_kernel(kernel)
    exp_dir = Path(results_root).resolve() / experiment
    runs = [run for run in rundir.find_runs(exp_dir) if _readable(run, log)]
    if not runs and not (exp_dir / R.RECORD).is_file():
        raise FileNotFoundError(f"no runs under {str(exp_dir)!r} and no record {R.RECORD}; run "
                                "`pods run CONFIG` first")
    if runs and not any(rundir.is_complete(r) for r in runs):
        raise ValueError(f"experiment {experiment!r} has no complete run yet (unfinished: "
                         f"{', '.join(r.name for r in runs)}); finish them with `pods run "
                         "CONFIG` (interrupted runs resume)")
    rundir.check_writable(exp_dir, "results folder")
    main, others = baselines(exp_dir, baseline)
    variants = R.experiment_variants(exp_dir)
    if baseline is not None and baseline not in variants:
        raise ValueError(f"--baseline must be one of the variants {variants}; got {baseline!r}")
    others = [b for b in others if b in variants]
    output = exp_dir / "04_plots.ipynb"
    output.unlink(missing_ok=True)
    path = _in_worker(execute, NOTEBOOKS / "04_plots.ipynb", output,
                      {"experiment": experiment, "results_root": str(Path(results_root).resolve()),
                       "baseline": main, "also_against": others}, kernel=kernel, progress=progress)
    log(R.report_text(R.read_summary(exp_dir), experiment))
    for other in others:
        log(f"against {other}: {exp_dir / f'summary_vs_{other}.md'}")
    return path


# What `report_text` reads of a summary.csv: always, and when the summary names a baseline.
SUMMARY_COLUMNS = {"variant": "text", "baseline": "any", "n": "number", "m": "number",
                   "rule": "text", "seeds": "number", "peak_acc": "number",
                   "final_acc": "number"}
COMPARISON_COLUMNS = {f"{name}{suffix}": "text" if suffix == "_verdict" else "number"
                      for name in ("speedup", "step_speedup", "equal_steps_speedup")
                      for suffix in ("", "_ci_low", "_ci_high", "_verdict")} | {
    f"{name}{suffix}": "number" for name in ("equal_steps_diff", "final_diff")
    for suffix in ("", "_ci_low", "_ci_high")} | {
    "steps": "number", "equal_steps": "number", "crossing": "text"}


def summary_problem(exp_dir: Path) -> str:
    """'' when exp_dir/summary.csv is a summary the kit wrote: the columns `report_text` reads
    (the comparison's too when it names a baseline), numbers where there should be, and it
    reads; else what is wrong with it."""
    try:
        table = R.read_summary(exp_dir)
    except (OSError, ValueError) as err:                 # pandas' parse errors are ValueErrors
        return str(err)
    want = dict(SUMMARY_COLUMNS)
    if "baseline" in table.columns and table["baseline"].fillna("").astype(bool).any():
        want |= COMPARISON_COLUMNS
    missing = [c for c in want if c not in table.columns]
    if missing:
        return f"no column {', '.join(map(repr, missing))}"
    wrong = [c for c, kind in want.items()
             if kind == "number" and not pd.api.types.is_numeric_dtype(table[c])]
    if wrong:
        return f"column {', '.join(map(repr, wrong))} not numbers"
    try:
        R.report_text(table, exp_dir.name)
    except (KeyError, ValueError, TypeError) as err:
        return f"it does not read: {type(err).__name__}: {err}"
    return ""


def _readable(run_dir: Path, log: Callable[[str], None]) -> bool:
    """Whether the report can read `run_dir` (its config and logs); a damaged one is named in
    one line and left out (04_plots leaves it out too)."""
    try:
        R.load_run(run_dir, "eval.jsonl")
        R.load_run(run_dir, "metrics.jsonl")
    except ValueError as err:
        log(f"left out of the report (a damaged run): {err}")
        return False
    return True


def prepare_models(configs: list[Config], progress: bool = True) -> list[str]:
    """Build the cached tiny models (and warm-starts) the configs need, once each, with every
    core, before any kernel starts (the kernels get one thread each; runs started side by side
    would otherwise build the same model twice)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return sorted({policy_path(cfg, progress) for cfg in configs if cfg.model == "tiny"})
    finally:
        torch.set_num_threads(threads)


def reproduce(config_file: str | Path = CONFIGS / "tiny.yaml",
              results_root: str | Path = REPO / "results", kernel: str | None = None,
              progress: bool = True, jobs: int = 2, log=say) -> dict[str, Any]:
    """The tiny default end to end: warm-start (cached), 01_rollouts, 02_downsampling, the grid
    (GRPO vs GRPO-PODS, same training-time budget, `jobs` runs at a time), 04_plots. Steps
    already done are skipped (the report too when no run is new), so a re-run changes nothing.
    When some run was new, the seconds of each phase go to <experiment>/reproduce.json (with
    the phases that were skipped, the runs done and skipped, the machine's CPU count). Returns
    the grid outcome and the elapsed seconds."""
    start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    grid = load_grid(config_file)
    kernel = notebook.check_kernel(kernel)
    root = Path(results_root).resolve()
    exp_dir = root / grid.experiment
    preflight(grid, grid.runs(), root, {"results_root": str(root)})
    first = grid.config(next(iter(grid.variants)), grid.seeds[0])
    phases: dict[str, float] = {}
    skipped: list[str] = []
    current: list = []                                    # [phase, its start]

    def step(phase: str, name: str = "") -> None:
        now = time.perf_counter()
        if current:
            phases[current[0]] = round(now - current[1], 1)
        current[:] = [phase, now]
        if name:
            log(f"== {name} (elapsed {_fmt(now - start)})")

    def skip(phase: str, why: str) -> None:
        skipped.append(phase)
        log(f"   [skip] {why}")

    if first.model == "tiny":
        step("model", "the tiny model and its warm-start (cached in cache_dir after the first "
             "time)")
        log(f"   model: {', '.join(prepare_models([first], progress))}")
    rollouts, ablation = exp_dir / "rollouts", exp_dir / "downsampling"
    step("rollouts", "01_rollouts: n rollouts per prompt, reward distributions")
    if (rollouts / "rollouts.npz").exists():
        skip("rollouts", f"{rollouts}/rollouts.npz exists")
    else:
        _in_worker(execute, NOTEBOOKS / "01_rollouts.ipynb", rollouts / "01_rollouts.ipynb",
                   {"config_file": str(grid.source), "out_dir": str(rollouts)}, kernel, progress)
    step("downsampling", "02_downsampling: the rules on the saved rollouts")
    if (ablation / "02_downsampling.ipynb").exists():     # its tables may come with a clone
        skip("downsampling", f"{ablation}/02_downsampling.ipynb exists")
    else:
        _in_worker(execute, NOTEBOOKS / "02_downsampling.ipynb", ablation / "02_downsampling.ipynb",
                   {"rollouts_dir": str(rollouts), "out_dir": str(ablation)}, kernel, progress)
    step("runs", f"training grid: {len(grid.variants)} variants x {len(grid.seeds)} seeds")
    outcome = run_grid(config_file, results_root=root, kernel=kernel, progress=progress,
                       jobs=jobs, log=log)
    if outcome.get("stopped_by"):
        return {**outcome, "elapsed_s": time.perf_counter() - start}
    step("report", "04_plots: figures and summary table")
    summary = exp_dir / "summary.md"
    problem = summary_problem(exp_dir) if summary.exists() else "no summary yet"
    if not problem and not outcome["done"]:
        skip("report", f"no new runs since {summary} was written")
        log(R.report_text(R.read_summary(exp_dir), grid.experiment))
    else:
        if summary.exists() and problem:
            log(f"   {exp_dir / 'summary.csv'} is not the kit's summary ({problem}): "
                "building the report again")
        report(grid.experiment, root, kernel=kernel, progress=progress, log=log)
    step("end")
    elapsed = time.perf_counter() - start
    if outcome["done"]:
        write_json(exp_dir / "reproduce.json", {
            "started": started, "cpus": os.cpu_count(), "jobs": jobs,
            "config": grid.source.name, "runs": {k: len(v) for k, v in outcome.items()},
            "phases_s": phases, "skipped": skipped, "total_s": round(elapsed, 1)})
    log(f"== reproduce finished in {_fmt(elapsed)}; results in {exp_dir}")
    return {**outcome, "elapsed_s": elapsed}
