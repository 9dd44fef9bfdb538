"""Notebooks through papermill: run one with checked parameters, and the environment and
configuration its kernel gets.

`execute` checks the parameters against the notebook's `parameters` cell before a kernel starts
(papermill would only warn about an unknown name). A notebook run by papermill directly checks
what papermill injected itself, in its second cell (`check_injected_parameters`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from podslib import rundir
from podslib.config import Config
from podslib.training.progress import bar_options
from podslib.training.trainer import train


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
    """Environment the notebook kernels (and `pods train` ranks) inherit, set unless the user
    already did: an in-process
    vLLM engine (weight sync needs it, docs/design.md "Engines"); torch's C++ log at errors only
    (vLLM's CPU worker otherwise prints a NUMA-binding notice for every run); and, on machines
    without a GPU, one torch thread per process: several OpenMP threads per process on a small,
    shared CPU wait on each other."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
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
                            kernel_name=kernel or default_kernel(),
                            progress_bar=(bar_options() or True) if progress else False,
                            cwd=str(notebook.parent), start_timeout=120,
                            config=kernel_config())
    except pm.PapermillExecutionError as err:
        raise NotebookError(notebook, output, err.ename, err.evalue, err.exec_count) from err
    return output


def train_or_show(cfg: Any, run_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """03_train's run: a complete run in `run_dir` (summary.json) is only shown (its summary is
    returned, nothing is trained), an interrupted one is resumed from its last checkpoint (an
    error when `resume` is False), an empty folder is trained. Errors name the notebook's
    parameters (config_file, variant, seed, overrides, run_dir, resume)."""
    run_dir = Path(run_dir)
    try:
        state = rundir.run_state(cfg, run_dir)
    except ValueError as err:
        raise ValueError(f"{err}; in 03_train choose another run_dir, or the config_file, "
                         "variant, seed and overrides it was run with") from None
    if state == "complete":
        print(f"{run_dir} holds a complete run: shown below, not trained again "
              "(choose another run_dir to train a new one)")
        return json.loads((run_dir / "summary.json").read_text())
    if state == "resume" and not resume:
        raise ValueError(f"run_dir {str(run_dir)!r} holds an interrupted run; set resume = True "
                         "to continue it from its last checkpoint, or choose another run_dir")
    if state == "resume":
        print(f"{run_dir} holds an interrupted run: resuming it from its last checkpoint")
    return train(cfg, run_dir, resume=state == "resume")
