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
holding another experiment or another config is an error raised before anything runs. Nothing
already written in a run folder is overwritten.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from podslib import rundir
from podslib.analysis import results as R
from podslib.config import Config, load_yaml, merge, run_id
from podslib.files import REPO, write_json
from podslib.lab.notebook import NotebookError, execute
from podslib.training.warmstart import policy_path

NOTEBOOKS = REPO / "notebooks"
CONFIGS = REPO / "configs"
GRID_KEYS = ("experiment", "description", "inherit", "seeds", "base", "grid")
# Config fields holding paths: relative values are taken relative to the repository root (the
# notebooks run with notebooks/ as working directory, the `pods` command wherever it is called).
PATH_FIELDS = ("model", "train_source", "test_source", "results_root", "cache_dir")


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
        return [RunSpec(v, s, self.values(v, s)) for s in (seeds or self.seeds) for v in names]


def check_seeds(seeds: Any, where: str) -> None:
    """ValueError unless `seeds` is a non-empty list of distinct integers >= 0."""
    ok = (isinstance(seeds, list) and seeds and len(set(map(str, seeds))) == len(seeds)
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds))
    if not ok:
        raise ValueError(f"{where} must be a non-empty list of distinct integers >= 0; "
                         f"got {seeds!r}")


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
    if not isinstance(experiment, str) or not experiment or "/" in experiment:
        raise ValueError(f"config file {str(path)!r}: experiment must be a folder name "
                         f"(non-empty, no '/'); got {experiment!r}")
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
        if "/" in name:
            raise ValueError(f"config file {str(path)!r}: variant names must not contain '/'; "
                             f"got {name!r}")
        try:
            grid.config(name, grid.seeds[0])
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
    """Check the experiment folder and every run folder before anything runs; returns each run's
    state: 'complete', 'resume' (interrupted, same config) or 'new'. A folder of another
    experiment, or a run folder holding another config, raises ValueError."""
    rundir.claim_experiment(root / grid.experiment, grid.experiment, grid.source.name)
    return {spec.run_id: rundir.run_state(spec.config(**overrides),
                                          root / grid.experiment / spec.run_id)
            for spec in specs}


def run_grid(config_file: str | Path, seeds: list[int] | None = None,
             only: list[str] | None = None, results_root: str | Path | None = None,
             overrides: dict[str, Any] | None = None, kernel: str | None = None,
             progress: bool = True, jobs: int = 1, log=print) -> dict[str, list[str]]:
    """Run every (variant, seed) of the grid through notebooks/03_train.ipynb, `jobs` at a time
    (seed-major order, so with 2 jobs the variants of one seed run side by side).

    The experiment folder is locked for the whole grid (a second runner stops at once).
    Completed runs are skipped, failed ones reported (with the failing cell's error) while the
    others go on. Returns {'done': [...], 'skipped': [...], 'failed': [...]} of run ids.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1; got {jobs!r}")
    grid = load_grid(config_file)
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
        out: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
        for spec in specs:
            if states[spec.run_id] == "complete":
                log(f"[skip] {grid.experiment}/{spec.run_id}: complete (summary.json present)")
                out["skipped"].append(spec.run_id)
        todo = [s for s in specs if states[s.run_id] != "complete"]
        _run_all(grid, todo, states, root, overrides, kernel, progress and jobs == 1, jobs, out,
                 log)
    return out


def _run_all(grid: Grid, todo: list[RunSpec], states: dict[str, str], root: Path,
             overrides: dict[str, Any], kernel: str | None, progress: bool, jobs: int,
             out: dict[str, list[str]], log) -> None:
    """Execute 03_train for every run of `todo`, `jobs` at a time, logging each end with ETA."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    ended = 0

    def one(spec: RunSpec) -> None:
        nonlocal ended
        run_dir = root / grid.experiment / spec.run_id
        resume = states[spec.run_id] == "resume"
        log(f"[{grid.experiment}/{spec.run_id}] {'resuming' if resume else 'starting'}")
        t0 = time.perf_counter()
        try:
            execute(NOTEBOOKS / "03_train.ipynb", run_dir / "03_train.ipynb",
                    {"config_file": str(grid.source), "variant": spec.variant,
                     "seed": spec.seed, "overrides": overrides, "run_dir": str(run_dir),
                     "resume": resume}, kernel=kernel, progress=progress)
            out["done"].append(spec.run_id)
            status = "done" + _accuracy_note(run_dir)
        except NotebookError as err:
            out["failed"].append(spec.run_id)
            status = f"FAILED: {err}"
        ended += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / ended * (len(todo) - ended)
        log(f"[{ended}/{len(todo)}] {spec.run_id}: {status} in "
            f"{_fmt(time.perf_counter() - t0)} (elapsed {_fmt(elapsed)}, ETA {_fmt(eta)})")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, spec) for spec in todo]:
            future.result()


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
    elif "speedup_verdict" in table.columns:
        stored = table.loc[table["speedup_verdict"] == "baseline", "variant"]
    else:
        stored = []
    main = (stored.iloc[0] if len(stored) else "") or requested or "grpo"
    others = {p.name.removeprefix("summary_vs_").removesuffix(".csv")
              for p in exp_dir.glob("summary_vs_*.csv")}
    return main, sorted(others | ({requested} if requested and requested != main else set()))


def report(experiment: str, results_root: str | Path = REPO / "results", kernel: str | None = None,
           progress: bool = True, baseline: str | None = None, log=print) -> Path:
    """Rebuild an experiment's record, figures and summary tables (notebooks/04_plots.ipynb).
    The record (runs.csv.gz) is rewritten from the run folders when there are any, else read
    as committed; figures/, summary.{md,csv} (against the experiment's main baseline,
    `baselines`) and every summary_vs_<name>.{md,csv} (`baseline`, when it is not the main one,
    adds one) are derived files and are replaced. Logs the verdicts per variant."""
    exp_dir = Path(results_root).resolve() / experiment
    runs = rundir.find_runs(exp_dir)
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
    path = execute(NOTEBOOKS / "04_plots.ipynb", output,
                   {"experiment": experiment, "results_root": str(Path(results_root).resolve()),
                    "baseline": main, "also_against": others}, kernel=kernel, progress=progress)
    log(R.report_text(R.read_summary(exp_dir), experiment))
    for other in others:
        log(f"against {other}: {exp_dir / f'summary_vs_{other}.md'}")
    return path


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
              progress: bool = True, jobs: int = 2, log=print) -> dict[str, Any]:
    """The tiny default end to end: warm-start (cached), 01_rollouts, 02_downsampling, the grid
    (GRPO vs GRPO-PODS, same training-time budget, `jobs` runs at a time), 04_plots. Steps
    already done are skipped (the report too when no run is new), so a re-run changes nothing.
    When some run was new, the seconds of each phase go to <experiment>/reproduce.json (with
    the phases that were skipped, the runs done and skipped, the machine's CPU count). Returns
    the grid outcome and the elapsed seconds."""
    start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    grid = load_grid(config_file)
    root = Path(results_root).resolve()
    exp_dir = root / grid.experiment
    rundir.claim_experiment(exp_dir, grid.experiment, grid.source.name)
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
        execute(NOTEBOOKS / "01_rollouts.ipynb", rollouts / "01_rollouts.ipynb",
                {"config_file": str(grid.source), "out_dir": str(rollouts)}, kernel, progress)
    step("downsampling", "02_downsampling: the rules on the saved rollouts")
    if (ablation / "02_downsampling.ipynb").exists():     # its tables may come with a clone
        skip("downsampling", f"{ablation}/02_downsampling.ipynb exists")
    else:
        execute(NOTEBOOKS / "02_downsampling.ipynb", ablation / "02_downsampling.ipynb",
                {"rollouts_dir": str(rollouts), "out_dir": str(ablation)}, kernel, progress)
    step("runs", f"training grid: {len(grid.variants)} variants x {len(grid.seeds)} seeds")
    outcome = run_grid(config_file, results_root=root, kernel=kernel, progress=progress,
                       jobs=jobs, log=log)
    step("report", "04_plots: figures and summary table")
    summary = exp_dir / "summary.md"
    if summary.exists() and not outcome["done"]:
        skip("report", f"no new runs since {summary} was written")
        log(R.report_text(R.read_summary(exp_dir), grid.experiment))
    else:
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
