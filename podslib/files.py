"""File writing and JSON-lines reading, in one place.

Every write of a whole file goes through `atomic_write` (a temporary file beside the target,
then `os.replace`) and of a whole folder through `atomic_folder`, so a reader or a killed writer
never sees half of one; logs grow by
`append_jsonl` (one flushed line at a time). `read_jsonl` is the one reader of JSON-lines files,
strict for data sets and tolerant of the torn last line a killed writer may leave in a log.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The repository root: configs/, notebooks/, data/ and results/ sit beside the package.
REPO = Path(__file__).resolve().parents[1]


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically (tmp file + rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_folder(folder: str | Path, build: Callable[[Path], None]) -> Path:
    """Create `folder` atomically: build(tmp) fills a temporary folder beside it, which is then
    renamed; an existing `folder` is replaced. Returns the folder."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it to the OS (survives a kill of this process)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_jsonl(path: str | Path, torn_tail: bool = False) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per non-blank line.

    A line that is not a JSON object raises ValueError naming the file and line, except, with
    `torn_tail`, an unparsable last line (a log whose writer was killed mid-line), which is
    skipped. A missing file raises FileNotFoundError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file {str(path)!r} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail and i == len(lines) - 1:
                break
            raise ValueError(f"{str(path)!r} line {i + 1} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{str(path)!r} line {i + 1} is not a JSON object")  # noqa: TRY004
        records.append(record)
    return records
