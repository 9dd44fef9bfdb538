"""Notebooks through papermill: run one with checked parameters, and the environment and
configuration its kernel gets.

`execute` checks the parameters against the notebook's `parameters` cell and the kernel name
before a kernel starts (papermill would only warn about an unknown name). A notebook run by
papermill directly checks what papermill injected itself, in its second cell
(`check_injected_parameters`). Any failure of a run is a NotebookError: a failing cell, a kernel
that died (killed as the out-of-memory killer does) or could not start. `stop_kernels` reaches
the kernels this process runs notebooks in (each in its own process group, so a Ctrl-C at the
terminal does not).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from podslib import files, rundir
from podslib.config import Config
from podslib.training.progress import bar_options
from podslib.training.trainer import train


class NotebookError(RuntimeError):
    """A notebook failed: a cell's error, or its kernel died or could not start (cell None
    when none ran); the message names the cell and the error."""

    def __init__(self, notebook: Path, output: Path | None, ename: str, evalue: str,
                 cell: int | None):
        self.notebook, self.output, self.ename, self.evalue, self.cell = (
            notebook, output, ename, evalue, cell)
        where = f" in cell {cell}" if cell else ""
        saved = f" (executed notebook: {output})" if output else ""
        super().__init__(f"{notebook.name} failed{where}: {ename}: {evalue}{saved}")


def default_kernel() -> str:
    """'pods-kit' (registered by `make setup`) when installed, else the 'python3' kernel of the
    running interpreter."""
    from jupyter_client.kernelspec import find_kernel_specs

    return "pods-kit" if "pods-kit" in find_kernel_specs() else "python3"


def check_kernel(kernel: str | None) -> str:
    """The kernel to run notebooks in: `kernel`, which must be installed, or default_kernel()."""
    from jupyter_client.kernelspec import find_kernel_specs

    if kernel is None:
        return default_kernel()
    specs = find_kernel_specs()
    if kernel not in specs:
        raise ValueError(f"--kernel must be an installed Jupyter kernel ({', '.join(sorted(specs))}"
                         f"; `jupyter kernelspec list` shows them); got {kernel!r}")
    return kernel


# ----------------------------------------------------------------------------------------------
# the kernels this process runs notebooks in
# ----------------------------------------------------------------------------------------------

_LIVE: dict[int, dict[str, Any]] = {}   # thread id -> {"process": Popen, "stopped": bool}
_LIVE_LOCK = threading.Lock()


@functools.cache
def _kernel_manager_class() -> type:
    """jupyter_client's AsyncKernelManager, recording its kernel's process in _LIVE under the
    thread that started it (the thread running that notebook), and not interrupting it on the
    way to its shutdown."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts a kernel before shutting it down; a kernel that is
            # finishing a request then prints "KeyboardInterrupt caught in kernel." on the
            # terminal. After the last cell there is nothing to interrupt.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        async def _async_post_start_kernel(self, **kw: Any) -> None:
            await super()._async_post_start_kernel(**kw)
            with _LIVE_LOCK:
                _LIVE[threading.get_ident()] = {"process": self.provisioner.process,
                                                "stopped": False}

    return TrackedKernelManager


def stop_kernels(force: bool = False) -> int:
    """Stop the kernels this process runs notebooks in: SIGTERM to each not yet asked (a training
    run ends its step and writes a checkpoint; any other cell ends with its kernel), or with
    `force` SIGKILL to every kernel's process group. Returns how many were signalled."""
    with _LIVE_LOCK:
        kernels = [k for k in _LIVE.values() if force or not k["stopped"]]
        for kernel in kernels:
            kernel["stopped"] = True
    for kernel in kernels:
        process = kernel["process"]
        try:
            if force:
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
            else:
                process.send_signal(signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass                                    # it has just ended
    return len(kernels)


def _kernel_failure(notebook: Path, output: Path, err: Exception, process: Any,
                    made_folder: bool) -> NotebookError:
    """The NotebookError of a notebook whose kernel died or could not start (`err`, not a cell's
    error; `process`: the kernel's, None when it never started). An executed notebook in which
    no cell ran holds nothing but its parameters: it is deleted (its folder too when
    `made_folder` and empty)."""
    from nbclient.exceptions import DeadKernelError

    started = _cells_started(output)
    if not started:
        output.unlink(missing_ok=True)
        if made_folder:
            _rmdir_if_empty(output.parent)
    saved = output if started else None
    if process is None:
        return NotebookError(notebook, None, type(err).__name__,
                             f"the kernel could not start: {err}", None)
    if not isinstance(err, DeadKernelError):
        return NotebookError(notebook, saved, type(err).__name__, str(err), started or None)
    code, how = process.poll(), ""
    if code is not None and code >= 0:
        how = f" (exited with status {code})"
    elif code is not None:
        oom = ", as the out-of-memory killer does" if -code == signal.SIGKILL else ""
        how = f" (killed by {_signal_name(-code)}{oom})"
    return NotebookError(notebook, saved, "DeadKernelError", f"the kernel died{how}",
                         started or None)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _cells_started(output: Path) -> int:
    """How many code cells of the executed notebook `output` papermill started (0 when none, or
    when it cannot be read): the number of the cell that was running when its kernel died.
    papermill marks every cell 'completed' at the end; the start time tells those that ran."""
    try:
        cells = json.loads(output.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(c.get("cell_type") == "code" and
               c.get("metadata", {}).get("papermill", {}).get("start_time") is not None
               for c in cells)


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
    """Run `notebook` with `parameters` (checked first, and the kernel name) via papermill, cwd =
    notebooks/, saving the executed copy at `output` (a free name beside it if taken: nothing is
    overwritten). A failing cell, a kernel that died or could not start raise NotebookError.
    Returns the output path."""
    import papermill as pm

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {str(notebook)!r} does not exist")
    check_parameters(notebook, parameters)
    kernel = check_kernel(kernel)
    kernel_environment()
    output = rundir.fresh_path(output)
    made_folder = not output.parent.exists()
    output.parent.mkdir(parents=True, exist_ok=True)
    # papermill's logger (nbclient logs through it) would add a line such as "Kernel died while
    # waiting for execute reply." to the NotebookError that says it.
    logging.getLogger("papermill").setLevel(logging.CRITICAL)
    try:
        with files.naming(output, "notebook"):
            pm.execute_notebook(str(notebook), str(output), parameters=parameters,
                                kernel_name=kernel,
                                progress_bar=(bar_options() or True) if progress else False,
                                cwd=str(notebook.parent), start_timeout=120,
                                config=kernel_config(),
                                kernel_manager_class=_kernel_manager_class())
    except pm.PapermillExecutionError as err:
        raise NotebookError(notebook, output, err.ename, err.evalue, err.exec_count) from err
    except files.NoSpaceError as err:
        raise NotebookError(notebook, output, type(err).__name__, str(err), None) from err
    except Exception as err:                # the kernel died or could not start
        with _LIVE_LOCK:
            kernel_info = _LIVE.get(threading.get_ident())
        raise _kernel_failure(notebook, output, err, kernel_info and kernel_info["process"],
                              made_folder) from err
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(threading.get_ident(), None)
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
