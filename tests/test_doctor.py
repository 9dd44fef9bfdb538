"""`pods doctor`, as a user runs it before filing a bug: on this machine every fact and check is
listed and the exit status is 0; with vLLM unable to start, one line names the cause and what to
do, and the exit status is 1."""

import os
import shutil
import subprocess
import sys

import pytest
from engine_checks import require_vllm

FACTS = ("python", "platform", "torch", "transformers", "vllm", "peft", "papermill", "pods-kit",
         "cores", "torch threads", "memory", "gpu")
CHECKS = ("engine hf", "engine vllm", "jupyter kernel", "browser test")


def doctor(**environ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podslib", "doctor"], capture_output=True,
                          text=True, env={**os.environ, **environ}, check=False, timeout=900)


def listed(stdout: str) -> tuple[list[str], dict[str, str]]:
    """(fact names, {check name: 'ok' or 'FAIL'}) from the report."""
    lines = [line.strip() for line in stdout.splitlines() if line.startswith("  ")]
    verdicts = {}
    for line in lines:
        verdict, _, rest = line.partition("  ")
        if verdict in ("ok", "FAIL"):
            verdicts[rest.strip().partition(":")[0]] = verdict
    facts = [line.split("  ")[0] for line in lines if line.split("  ")[0] not in ("ok", "FAIL")]
    return facts, verdicts


@pytest.mark.slow
@pytest.mark.vllm
def test_doctor_lists_everything_and_passes_on_this_machine():
    """Versions, cores, threads, memory per node, GPU; each engine started and generated (timed),
    the kernel, the browser. Outside CI a machine without a browser is skipped (as the browser
    test is); CI=true needs everything."""
    require_vllm()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if os.environ.get("CI") != "true" and not (browser and shutil.which("chromedriver")):
        pytest.skip("pods doctor passes only where chromium and chromedriver are installed")
    done = doctor()
    facts, verdicts = listed(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert set(FACTS) <= set(facts), facts
    assert verdicts == dict.fromkeys(CHECKS, "ok"), done.stdout
    for engine in ("hf", "vllm"):
        assert f"ok    engine {engine}: started in " in done.stdout
    assert "pods doctor:" not in done.stderr


@pytest.mark.slow
@pytest.mark.vllm
def test_doctor_names_the_cause_when_vllm_cannot_start():
    """VLLM_ENABLE_V1_MULTIPROCESSING=1 (vLLM in a separate process: no weight sync): the vllm
    check fails, and stderr holds one line naming the variable and what to do; exit status 1.
    The other checks still run."""
    require_vllm()
    done = doctor(VLLM_ENABLE_V1_MULTIPROCESSING="1")
    _, verdicts = listed(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert verdicts["engine vllm"] == "FAIL" and verdicts["engine hf"] == "ok"
    assert set(verdicts) == set(CHECKS)
    problems = [line for line in done.stderr.splitlines() if line.startswith("pods doctor:")]
    assert len(problems) == 1, done.stderr[-3000:]
    assert "engine 'vllm' does not start" in problems[0]
    assert "unset VLLM_ENABLE_V1_MULTIPROCESSING" in problems[0]


@pytest.mark.slow
@pytest.mark.vllm
def test_doctor_names_a_missing_compiler(tmp_path):
    """vLLM compiles the model (torch.compile), which on a CPU needs a C++ compiler: with none
    (CXX naming a missing file, and empty compile caches, as on a fresh machine) the vllm check
    fails in one line that says to install one or set enforce_eager."""
    require_vllm()
    done = doctor(CXX=str(tmp_path / "no-g++"), VLLM_CACHE_ROOT=str(tmp_path / "vllm"),
                  TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    _, verdicts = listed(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert verdicts["engine vllm"] == "FAIL" and verdicts["engine hf"] == "ok"
    problems = [line for line in done.stderr.splitlines() if line.startswith("pods doctor:")]
    assert len(problems) == 1, done.stderr[-3000:]
    assert "C++ compiler" in problems[0] and "enforce_eager: true" in problems[0], problems[0]
