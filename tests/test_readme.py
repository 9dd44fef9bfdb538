"""The README's code runs as printed: each ```python block in a fresh interpreter."""

import re
import subprocess
import sys

from podslib.files import REPO

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(),
                    re.DOTALL | re.MULTILINE)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_core_example_runs_and_keeps_the_max_variance_rows():
    core = next(b for b in BLOCKS if "select(" in b)
    done = run(core + "print(rewards.gather(1, keep).sort(dim=1).values.tolist(), "
               "list(logp.grad.shape), bool(logp.grad.abs().sum() > 0))\n")
    assert done.returncode == 0, done.stderr
    # the most variance of 4 out of (three 1s, five 0s) is two and two; of (one 1, seven 0s)
    # it keeps the 1; the loss has a gradient on every kept row's tokens
    assert done.stdout.split() == ["[[0.0,", "0.0,", "1.0,", "1.0],", "[0.0,", "0.0,", "0.0,",
                                   "1.0]]", "[8,", "5]", "True"]


def test_a_new_rule_is_one_decorated_function_and_config_accepts_it():
    block = next(b for b in BLOCKS if "@rule(" in b)
    name = re.search(r'@rule\("(\w+)"\)', block).group(1)
    done = run(block + f"from podslib import Config, select\nimport torch\n"
               f"Config(n=8, m=4, rule={name!r})\n"
               f"print(select(torch.tensor([[3., 1, 2, 0]]), 2, {name!r}).tolist())\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[3, 1]]"
    refused = run(f"from podslib import Config\nConfig(n=8, m=4, rule={name!r})\n")
    assert "ValueError" in refused.stderr and name in refused.stderr
