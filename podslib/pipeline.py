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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import results as R
from . import rundir
from .config import Config, load_yaml, merge

REPO = Path(__file__).resolve().parents[1]
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
        return rundir.run_id(self.variant, self.seed)

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
                                "run_name": rundir.run_id(variant, seed)})
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
# notebooks through papermill
# ----------------------------------------------------------------------------------------------

class NotebookError(RuntimeError):
    """A notebook cell failed; the message names the cell and its error."""

    def __init__(self, notebook: Path, output: Path, ename: str, evalue: str, cell: int):
        self.notebook, self.output, self.ename, self.evalue, self.cell = (
            notebook, output, ename, evalue, cell)
        super().__init__(f"{notebook.name} failed in cell {cell}: {ename}: {evalue} "
                         f"(executed notebook: {output})")


def default_kernel() -> str:
    """'pods-kit' (registered by `make setup`) when installed, else the 'python3' kernel of the
    running interpreter."""
    from jupyter_client.kernelspec import find_kernel_specs

    return "pods-kit" if "pods-kit" in find_kernel_specs() else "python3"


def kernel_environment() -> None:
    """Environment the notebook kernels inherit (set unless the user already did): an in-process
    vLLM engine (weight sync needs it, docs/design.md "Engines") and, on machines without a GPU,
    one torch thread per process: several OpenMP threads per process on a small, shared CPU wait
    on each other."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if shutil.which("nvidia-smi") is None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def kernel_config():
    """Traitlets config of the notebook kernels' manager: CurveZMQ encryption of the kernel's
    sockets where pyzmq and the kernel support it (ipykernel otherwise warns on every start
    that it 'is running over TCP without encryption')."""
    import zmq
    from traitlets.config import Config as TraitletsConfig

    policy = "auto" if zmq.has("curve") else "disabled"
    return TraitletsConfig({"KernelManager": {"transport_encryption": policy}})


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """ValueError naming every parameter the notebook's `parameters` cell does not define
    (papermill would only warn and inject it anyway)."""
    import papermill as pm

    known = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(f"parameters {unknown} are not in {Path(notebook).name}'s parameters "
                         f"cell; accepted: {', '.join(known)}")


def check_injected_parameters(history: list[str] | None = None,
                              namespace: dict[str, Any] | None = None) -> None:
    """In a notebook run by papermill directly (`papermill NB OUT -p name value`), check the
    parameters papermill injected against the notebook's parameters cell: papermill only warns
    about a name the cell does not define, and `-p` makes a string of anything but True, False,
    None and numbers (`-p resume false` is the truthy 'false').

    Each notebook calls this after the imports of the cell after its parameters cell, before
    anything reads a parameter. It finds papermill's injected cell (source starting
    '# Parameters') in the kernel's input history (`In`), takes the cell run just before it as
    the parameters cell, and raises ValueError naming an unknown parameter (with those
    accepted) or a value whose type differs from its default's (an int passes for a float, a
    None default takes anything), saying how to pass it. Without an injected cell (JupyterLab)
    it does nothing. `history` / `namespace` default to the kernel's input history and
    variables.
    """
    if history is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return
        history, namespace = shell.history_manager.input_hist_raw, shell.user_ns
    injected = [i for i, cell in enumerate(history) if cell.lstrip().startswith("# Parameters")]
    if not injected or injected[-1] == 0:
        return
    defaults = dict(_assignments(history[injected[-1] - 1], literal=True))
    given = [name for name, _ in _assignments(history[injected[-1]])]
    unknown = [name for name in given if name not in defaults]
    if unknown:
        hints = [repr(name) + _unknown_hint(name, defaults, namespace[name]) for name in unknown]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}: not in this notebook's "
                         f"parameters cell; accepted: {', '.join(defaults)}")
    for name in given:
        problem = _parameter_type_problem(name, defaults[name], namespace[name])
        if problem:
            raise ValueError(problem)


def _unknown_hint(name: str, defaults: dict[str, Any], value: Any) -> str:
    """' (did you mean 'seed'?)' or, for a Config field where the notebook takes overrides,
    " (a Config field: -y 'overrides: {max_steps: 1}')"."""
    import difflib

    import yaml

    if "overrides" in defaults and name in Config.__dataclass_fields__:
        flow = yaml.safe_dump({name: value}, default_flow_style=True).strip()
        return f" (a Config field: -y 'overrides: {flow}')"
    return "".join(f" (did you mean {close!r}?)"
                   for close in difflib.get_close_matches(name, defaults, n=1))


def _assignments(source: str, literal: bool = False) -> list[tuple[str, Any]]:
    """(name, value) of each `name = value` statement of a cell: the value's literal (None when
    it is not one) when `literal`, else its syntax tree."""
    import ast

    out = []
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                isinstance(stmt.targets[0], ast.Name):
            value = stmt.value
            if literal:
                try:
                    value = ast.literal_eval(value)
                except ValueError:
                    value = None
            out.append((stmt.targets[0].id, value))
    return out


def _parameter_type_problem(name: str, default: Any, value: Any) -> str:
    """'' when `value` may replace `default`, else what is expected and how to pass it."""
    import shlex

    import yaml

    number = isinstance(value, int | float) and not isinstance(value, bool)
    kind = type(default)
    if kind is bool:
        ok, what = isinstance(value, bool), "True or False"
        how = f"-p {name} True or -p {name} False (any other -p value is a string)"
    elif kind in (int, float):
        ok = number and (kind is float or isinstance(value, int))
        what, how = ("an integer" if kind is int else "a number"), f"-p {name} {default}"
    elif kind is str:
        ok, what = isinstance(value, str), "a string"
        how = f"-r {name} {shlex.quote(str(value))} (-r keeps it a string)"
    elif kind is list:
        ok, what = isinstance(value, list), "a list"
        how = f"-y '{name}: {yaml.safe_dump(default, default_flow_style=True).strip()}'"
    elif kind is dict:
        ok, what, how = isinstance(value, dict), "a mapping", f"-y '{name}: {_mapping_hint(value)}'"
    else:                                                   # None: anything goes
        return ""
    return "" if ok else (f"parameter {name!r} must be {what}; got {value!r} "
                          f"({type(value).__name__}); pass it as {how}")


def _mapping_hint(value: Any) -> str:
    """'{max_steps: 2, lr: 1e-5}' from the string 'max_steps=2,lr=1e-5' (what people type), else
    '{field: value}'."""
    pairs = [item.partition("=") for item in str(value).replace(",", " ").split()]
    if pairs and all(key and sep and val for key, sep, val in pairs):
        return "{" + ", ".join(f"{key}: {val}" for key, _, val in pairs) + "}"
    return "{field: value}"


def execute(notebook: str | Path, output: str | Path, parameters: dict[str, Any],
            kernel: str | None = None, progress: bool = True) -> Path:
    """Run `notebook` with `parameters` (checked first) via papermill, cwd = notebooks/, saving
    the executed copy at `output` (a free name beside it if taken: nothing is overwritten).
    A failing cell raises NotebookError with the cell's error. Returns the output path."""
    import papermill as pm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {str(notebook)!r} does not exist")
    check_parameters(notebook, parameters)
    kernel_environment()
    output = rundir.fresh_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=parameters,
                            kernel_name=kernel or default_kernel(), progress_bar=progress,
                            cwd=str(notebook.parent), start_timeout=120,
                            config=kernel_config())
    except pm.PapermillExecutionError as err:
        raise NotebookError(notebook, output, err.ename, err.evalue, err.exec_count) from err
    return output


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

def report(experiment: str, results_root: str | Path = REPO / "results", kernel: str | None = None,
           progress: bool = True, baseline: str = "grpo", log=print) -> Path:
    """Rebuild an experiment's figures and summary tables (notebooks/04_plots.ipynb); the
    executed notebook, figures/ and summary.{md,csv} are derived files and are replaced. Logs
    per variant the per-step and wall-clock speedups with their 95% intervals and verdicts."""
    exp_dir = Path(results_root).resolve() / experiment
    runs = rundir.find_runs(exp_dir)
    if not runs:
        raise FileNotFoundError(f"no runs under {str(exp_dir)!r}; run `pods run CONFIG` first")
    if not any(rundir.is_complete(r) for r in runs):
        raise ValueError(f"experiment {experiment!r} has no complete run yet (unfinished: "
                         f"{', '.join(r.name for r in runs)}); finish them with `pods run "
                         "CONFIG` (interrupted runs resume)")
    rundir.check_writable(exp_dir, "results folder")
    output = exp_dir / "04_plots.ipynb"
    output.unlink(missing_ok=True)
    path = execute(NOTEBOOKS / "04_plots.ipynb", output,
                   {"experiment": experiment, "results_root": str(Path(results_root).resolve()),
                    "baseline": baseline}, kernel=kernel, progress=progress)
    log(R.report_text(R.read_summary(exp_dir), experiment, baseline))
    return path


def prepare_models(configs: list[Config], progress: bool = True) -> list[str]:
    """Build the cached tiny models (and warm-starts) the configs need, once each, with every
    core, before any kernel starts (the kernels get one thread each; runs started side by side
    would otherwise build the same model twice)."""
    import torch

    from .sft import policy_path

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return sorted({policy_path(cfg, progress) for cfg in configs if cfg.model == "tiny"})
    finally:
        torch.set_num_threads(threads)


def reproduce(config_file: str | Path = CONFIGS / "tiny.yaml",
              results_root: str | Path = REPO / "results",
              kernel: str | None = None, progress: bool = True, log=print) -> dict[str, Any]:
    """The tiny default end to end: warm-start (cached), 01_rollouts, 02_downsampling, the grid
    (GRPO vs GRPO-PODS, 3 seeds each, same training-time budget), 04_plots. Steps already done
    are skipped (the report too when no run is new), so a re-run changes nothing. Returns the
    grid outcome and the elapsed seconds."""
    start = time.perf_counter()
    grid = load_grid(config_file)
    root = Path(results_root).resolve()
    exp_dir = root / grid.experiment
    rundir.claim_experiment(exp_dir, grid.experiment, grid.source.name)
    first = grid.config(next(iter(grid.variants)), grid.seeds[0])

    def step(name: str) -> None:
        log(f"== {name} (elapsed {_fmt(time.perf_counter() - start)})")

    if first.model == "tiny":
        step("the tiny model and its warm-start (cached in cache_dir after the first time)")
        log(f"   model: {', '.join(prepare_models([first], progress))}")
    rollouts, ablation = exp_dir / "rollouts", exp_dir / "downsampling"
    step("01_rollouts: n rollouts per prompt, reward distributions")
    if (rollouts / "rollouts.npz").exists():
        log(f"   [skip] {rollouts}/rollouts.npz exists")
    else:
        execute(NOTEBOOKS / "01_rollouts.ipynb", rollouts / "01_rollouts.ipynb",
                {"config_file": str(grid.source), "out_dir": str(rollouts)}, kernel, progress)
    step("02_downsampling: the rules on the saved rollouts")
    if (ablation / "02_downsampling.ipynb").exists():     # its tables may come with a clone
        log(f"   [skip] {ablation}/02_downsampling.ipynb exists")
    else:
        execute(NOTEBOOKS / "02_downsampling.ipynb", ablation / "02_downsampling.ipynb",
                {"rollouts_dir": str(rollouts), "out_dir": str(ablation)}, kernel, progress)
    step(f"training grid: {len(grid.variants)} variants x {len(grid.seeds)} seeds")
    outcome = run_grid(config_file, results_root=root, kernel=kernel, progress=progress, log=log)
    step("04_plots: figures and summary table")
    summary = exp_dir / "summary.md"
    if summary.exists() and not outcome["done"]:
        log(f"   [skip] no new runs since {summary} was written")
    else:
        report(grid.experiment, root, kernel=kernel, progress=progress)
    if summary.exists():
        log(summary.read_text())
    elapsed = time.perf_counter() - start
    log(f"== reproduce finished in {_fmt(elapsed)}; results in {exp_dir}")
    return {**outcome, "elapsed_s": elapsed}

