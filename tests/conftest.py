"""Shared pytest setup: environment for in-process vLLM, and the real-data folder."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data: skipped when absent, except in CI where a missing folder is a failure."""
    if not DATA_DIR.is_dir():
        msg = f"real data folder {DATA_DIR} is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI=true requires it)")
        pytest.skip(msg)
    return DATA_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache of built and warm-started tiny models for the whole session."""
    return tmp_path_factory.getbasetemp() / "pods-cache"
