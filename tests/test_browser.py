"""notebooks/03_train.ipynb in a real browser, as a new user runs it: JupyterLab served on
loopback, headless Chromium (Debian's chromium + chromium-driver, driven by selenium) opens a copy
of the notebook with tiny budgets and runs all cells; the page must show the live bar as a
widget, the run's short summary and no error, and a screenshot of it must not be blank. Running
all cells a second time shows the now complete run without training it again (what a user gets
running 03 as shipped after `make reproduce`).

Without a browser the test is skipped (naming what to install), except under CI=true, where
.ci/run installs one and a missing browser is a failure.
"""

import json
import os
import re
import shutil

import nbformat
import pytest
import yaml
from test_lab import get, jupyterlab

from podslib.lab import pipeline

# Tiny budgets: untrained tiny model, 3 s of training clock (the bar's time budget).
GRID_BASE = {"engine": "hf", "max_steps": 0, "max_train_seconds": 3, "train_size": 50,
             "test_size": 4, "eval_repeats": 1, "eval_every_s": 1, "checkpoint_every_s": 0,
             "prompts_per_step": 2, "max_completion_tokens": 12,
             "tiny": {"warm_start": False, "hidden": 32, "layers": 1, "heads": 2}}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
# The user's answer to JupyterLab's first-start question about news (no toast, no requests).
LAB_SETTINGS = ("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
                {"fetchNews": "false", "checkForUpdates": False})
PROGRESS_WIDGET = ".jp-OutputArea .widget-hprogress"
ERROR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver); skips naming what is missing, fails under CI=true."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    missing = [what for what, found in (
        ("chromium (Debian: apt-get install chromium)", chromium),
        ("chromedriver (Debian: apt-get install chromium-driver)", driver),
        ("selenium (pip install -e '.[dev]')", _has_selenium())) if not found]
    if missing:
        reason = "the browser test needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run installs them)")
        pytest.skip(reason)
    return chromium, driver


def _has_selenium() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def tiny_notebook(folder, grid_file, run_dir) -> None:
    """notebooks/03_train.ipynb copied into `folder` with tiny parameters (its parameters cell
    rewritten with literals, as a user would edit it)."""
    book = nbformat.read(pipeline.NOTEBOOKS / "03_train.ipynb", as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in {
        "config_file": str(grid_file), "variant": "pods", "seed": 0, "overrides": {},
        "run_dir": str(run_dir), "resume": True}.items())
    nbformat.write(book, folder / "03_train.ipynb")


def start_chromium(chromium: str, driver: str, profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def run_all_cells(page, after: int, timeout: float = 150) -> int:
    """Run > Run All Cells; waits until every code cell has an execution count above `after`,
    or an error output shows; returns the largest execution count."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page.find_element(By.XPATH, "//li[contains(@class, 'lm-MenuBar-item')][.='Run']").click()
    page.find_element(By.XPATH, "//li[contains(@class, 'lm-Menu-item')]"
                                "[.//div[contains(@class, 'lm-Menu-itemLabel')]='Run All Cells']"
                      ).click()

    def counts():
        prompts = page.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea-prompt")
        found = [re.fullmatch(r"\[(\d+)\]:", p.text.strip()) for p in prompts]
        return [int(m.group(1)) if m else 0 for m in found]

    def done(_):
        numbers = counts()
        return page.find_elements(By.CSS_SELECTOR, ERROR_OUTPUT) or (
            bool(numbers) and min(numbers) > after)

    WebDriverWait(page, timeout, poll_frequency=0.5).until(done)
    return max(counts())


def widget_text(progress) -> str:
    """The text around a progress widget (tqdm's bar: description, percentage, postfix)."""
    from selenium.webdriver.common.by import By

    return progress.find_element(By.XPATH, "..").text.replace("\u2007", " ")


def outputs_text(page) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in page.find_elements(By.CSS_SELECTOR, ".jp-OutputArea"))


def assert_clean(page) -> None:
    from selenium.webdriver.common.by import By

    text = outputs_text(page)
    errors = [e.text for e in page.find_elements(By.CSS_SELECTOR, ERROR_OUTPUT)]
    assert not errors, f"stderr / error output in the notebook:\n{errors}"
    for bad in ("Traceback", "Error", "IProgress not found", "TqdmWarning"):
        assert bad not in text, f"{bad!r} in the notebook's output:\n{text}"


def assert_screenshot(path, width: int, height: int) -> None:
    """A PNG of the page's size, not blank: many colours, and dark (text) and light pixels."""
    from PIL import Image

    assert path.stat().st_size > 20_000, f"screenshot {path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.size == (width, height)
        grey = image.convert("L")
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        low, high = grey.getextrema()
    assert len(colours) > 200, f"screenshot {path} has {len(colours)} colours: blank?"
    assert low < 80 and high > 200, f"screenshot {path} has no contrast ({low}..{high})"


@pytest.mark.slow
def test_train_notebook_in_a_real_browser(tmp_path):
    chromium, driver = browser_paths()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder, run_dir = tmp_path / "notebooks", tmp_path / "run"
    folder.mkdir()
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump({
        "experiment": "browser", "seeds": [0],
        "base": {**GRID_BASE, "cache_dir": str(tmp_path / "cache"),
                 "results_root": str(tmp_path / "results")},
        "grid": {"pods": {"n": 4, "m": 2}}}))
    tiny_notebook(folder, grid, run_dir)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(pipeline.REPO),
                                                       os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    settings = tmp_path / "settings" / LAB_SETTINGS[0]
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(LAB_SETTINGS[1]))
    with jupyterlab(folder, tmp_path, env) as (base, token):
        assert "pods-kit" in get(f"{base}/api/kernelspecs", token)["kernelspecs"], \
            "kernel 'pods-kit' not registered (make setup)"
        page = start_chromium(chromium, driver, tmp_path / "chromium-profile")
        try:
            page.get(f"{base}/lab/tree/03_train.ipynb?token={token}")
            WebDriverWait(page, 120, poll_frequency=0.5).until(lambda p: "Idle" in p.find_element(
                By.CSS_SELECTOR, "#jp-main-statusbar").text)
            first = run_all_cells(page, after=0)
            assert_clean(page)
            text = outputs_text(page)
            assert re.search(r"run: \d+ steps in [\d.]+ s of training .*; test accuracy "
                             r"[\d.]+ at the start -> [\d.]+ best -> [\d.]+ final", text), text
            bars = [b for b in page.find_elements(By.CSS_SELECTOR, PROGRESS_WIDGET)
                    if widget_text(b).startswith("run ")]     # (transformers shows its own too)
            assert len(bars) == 1, "the live bar is not a rendered progress widget"
            label = widget_text(bars[0])
            assert re.match(r"run 100%", label), label
            assert re.search(r"\d\.\d/3 s of training", label), label
            assert "test accuracy" in label and ": :" not in label and "loss" not in label
            assert len(page.find_elements(By.CSS_SELECTOR, ".jp-OutputArea img")) == 2
            page.execute_script("arguments[0].scrollIntoView({block: 'center'});", bars[0])
            shot = tmp_path / "03_train.png"
            page.save_screenshot(str(shot))
            size = page.execute_script("return [window.innerWidth, window.innerHeight];")
            assert_screenshot(shot, *size)

            steps = (run_dir / "metrics.jsonl").read_text()
            run_all_cells(page, after=first)                  # the complete run: shown again
            assert_clean(page)
            assert "holds a complete run: shown below, not trained again" in outputs_text(page)
            assert (run_dir / "metrics.jsonl").read_text() == steps
            assert json.loads((run_dir / "summary.json").read_text())["steps"] == \
                len(steps.splitlines())
        finally:
            page.quit()
    assert "without encryption" not in (tmp_path / "lab.log").read_text()   # as `make lab`
    print(f"screenshot: {shot}")
