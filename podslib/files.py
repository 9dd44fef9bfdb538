"""File writing and JSON-lines reading, in one place.

Every write of a whole file goes through `atomic_write` (a temporary file beside the target,
then `os.replace`) and of a whole folder through `atomic_folder`, so a reader or a killed writer
never sees half of one; logs grow by
`append_jsonl` (one flushed line at a time). `read_jsonl` is the one reader of JSON-lines files,
strict for data sets and tolerant of the torn last line a killed writer may leave in a log.
A write that fails for lack of space raises `NoSpaceError` naming the path (the OS error of a
full disk names none). `check_name` keeps every name that becomes a folder one safe path
component.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The repository root: configs/, notebooks/, data/ and results/ sit beside the package.
REPO = Path(__file__).resolve().parents[1]


NAME_MAX = 255          # bytes in one path component (Linux, macOS and Windows file systems)


def check_name(name: Any, what: str) -> None:
    """ValueError naming `what` unless `name` is one safe path component: a non-empty string,
    not '.' or '..', without '/' or '\\' or control characters, at most NAME_MAX bytes."""
    if not isinstance(name, str) or not name:
        problem = "it is empty" if name == "" else f"it is not a string ({type(name).__name__})"
    elif name in (".", ".."):
        problem = "it names no folder of its own"
    elif "/" in name or "\\" in name:
        problem = "it holds a path separator"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        problem = "it holds a control character"
    elif len(name.encode()) > NAME_MAX:
        problem = f"it is {len(name.encode())} bytes long"
    else:
        return
    shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:50] + "..."
    raise ValueError(f"{what} must be a folder name (not '.' or '..', no '/', '\\' or control "
                     f"characters, at most {NAME_MAX} bytes); got {shown}: {problem}")


class NoSpaceError(OSError):
    """A write failed for lack of space (ENOSPC, EDQUOT); the message names the path."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def naming(path: str | Path, what: str = "") -> Iterator[None]:
    """Writes in the block that fail for lack of space raise NoSpaceError naming `path` (and
    `what` it is), the one line a user needs; other errors pass unchanged."""
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise no_space(path, what) from None


def no_space(path: str | Path, what: str = "") -> NoSpaceError:
    """The NoSpaceError of a failed write to `path`."""
    return NoSpaceError(errno.ENOSPC, f"no space left on device writing {what}{' ' if what else ''}"
                        f"{str(path)!r}")


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically (tmp file + rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(path):
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
    with naming(path), open(path, "a") as f:
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
    lines = path.read_bytes().splitlines()
    records = []
    for i, raw in enumerate(lines):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if torn_tail and i == len(lines) - 1:
                break
            raise ValueError(f"{str(path)!r} line {i + 1} is not UTF-8 text (byte "
                             f"0x{raw[err.start]:02x} at column {err.start + 1})") from None
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
