"""JupyterLab, headless on loopback, serves the four notebooks and the project's kernel through
its REST API (what `make lab` gives a user)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from podslib.lab import pipeline

NOTEBOOKS = {"01_rollouts.ipynb", "02_downsampling.ipynb", "03_train.ipynb", "04_plots.ipynb",
             "05_paper.ipynb", "06_cost.ipynb"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def jupyterlab(root_dir: Path, work: Path, env: dict | None = None):
    """JupyterLab as `make lab` starts it (as root too), serving `root_dir` on a free loopback
    port with a fresh token, its runtime files and log under `work`, `env` added to the
    environment; yields (base URL, token) once its REST API answers, and stops it on exit."""
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(env or {}), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    log = open(work / "lab.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", "--allow-root",
         "--KernelManager.transport_encryption=auto", f"--ServerApp.root_dir={root_dir}"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (work / "lab.log").read_text())
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_jupyterlab_lists_notebooks_and_kernel(tmp_path):
    with jupyterlab(pipeline.REPO, tmp_path) as (base, token):
        listing = get(f"{base}/api/contents/notebooks", token)
        assert {c["name"] for c in listing["content"] if c["type"] == "notebook"} == NOTEBOOKS
        specs = get(f"{base}/api/kernelspecs", token)["kernelspecs"]
        assert "pods-kit" in specs, f"kernel 'pods-kit' not registered (make setup); got {specs}"
        assert specs["pods-kit"]["spec"]["argv"][0].startswith(sys.prefix)
        with pytest.raises(urllib.error.HTTPError) as denied:                   # token enforced
            get(f"{base}/api/contents/notebooks", "wrong-token")
        assert denied.value.code == 403


def test_make_lab_allows_root_exactly_when_root():
    """JupyterLab refuses to start as root (containers) without --allow-root."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "lab"], cwd=pipeline.REPO, capture_output=True,
                         text=True, check=True).stdout
    command = next(line for line in dry.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in command) == (os.geteuid() == 0), command
