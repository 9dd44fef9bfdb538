"""Run folders: their names, locks, logs, checkpoints and the checks made before a run starts.

A run folder `results/<experiment>/<run_id>/` holds config.yaml, metrics.jsonl (one line per
step), eval.jsonl, checkpoints/ and summary.json (written last: a run is complete when it
exists). An experiment folder holds run folders and experiment.json (which grid file it
belongs to). Nothing already written is overwritten: logs only grow (lines past a restored
checkpoint are set aside, not deleted), whole files are replaced atomically, and a folder in use
by another process is locked.

Checkpoints (`checkpoints/step-XXXXXX/`) are written into a temporary folder, renamed, then
verified against their manifest (size and SHA-256 of every file) before older ones are deleted;
the last KEEP_CHECKPOINTS are kept. Loading verifies again and falls back to the newest valid
checkpoint with a warning naming the bad one. A full disk while writing one is one line naming
the folder; the previous checkpoint stays, and the temporary folder is removed (by a resume,
when the writer was killed).

A folder the kit did not make is never written to: a run folder without config.yaml may hold
only what the kit writes before it (the executed notebook, a lock, temporary files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from podslib.config import Config, load_yaml
from podslib.files import (
    atomic_folder,
    atomic_write,
    naming,
    no_space,
    read_jsonl,
    write_json,
)

KEEP_CHECKPOINTS = 2
EMPTY_LOCK_S = 10.0     # a lock file naming no owner for this long is stale
CHECKPOINT_FILES = ("trainable.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
# What the kit may write in a run folder before its config.yaml: the executed notebook
# (03_train.ipynb, 03_train.1.ipynb, ...), the lock, an interrupted atomic write (.name.PID.tmp).
BEFORE_CONFIG = ("03_train*.ipynb", ".lock", ".*.tmp")
# torch.save's error for a short write (a full disk): a RuntimeError naming no file or errno.
TORCH_SHORT_WRITE = ("unexpected pos", "file write failed")


def is_complete(run_dir: str | Path) -> bool:
    """A run is complete when the trainer has written its summary.json."""
    return (Path(run_dir) / "summary.json").is_file()


def find_runs(exp_dir: str | Path) -> list[Path]:
    """Run folders (those holding a config.yaml) directly under `exp_dir`, sorted by name."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    return sorted(p for p in exp_dir.iterdir() if (p / "config.yaml").is_file())


def fresh_path(path: str | Path) -> Path:
    """`path` if it does not exist, else the first free 'stem.1.suffix', 'stem.2.suffix', ..."""
    path = Path(path)
    k, candidate = 0, path
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}.{k}{path.suffix}")
    return candidate


def check_writable(folder: str | Path, what: str) -> None:
    """ValueError naming `folder` unless it (or its nearest existing parent) can be written."""
    folder = Path(folder).resolve()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(folder)!r} is not writable ({str(probe)!r}: read-only "
                         "file system or no write permission); choose another results_root")


# ----------------------------------------------------------------------------------------------
# locks
# ----------------------------------------------------------------------------------------------

class LockedError(ValueError):
    """Another live process holds the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def locked(folder: str | Path, what: str):
    """Hold `folder`/.lock while the block runs: a second holder stops at once with a
    LockedError naming the owner (pid, host, start time); a lock whose owner process is gone
    (same host) is stale and taken over with a warning."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%F %T")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _read_lock(path)
            if _is_stale(owner, path):
                warn(f"warning: {what} {str(folder)!r}: taking over the stale lock of process "
                     f"{owner.get('pid')} (no longer running)")
                path.unlink(missing_ok=True)
                continue
            raise _in_use(folder, what, owner) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _read_lock(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        for made_here in made:                      # innermost first: leave no empty folder
            try:
                made_here.rmdir()
            except OSError:
                break


def check_unlocked(folder: str | Path, what: str) -> None:
    """LockedError naming the owner when a live process holds `folder` (checked before a run
    reads anything, so that a folder in use is reported as such); a stale lock is left for
    `locked` to take over."""
    path = Path(folder) / ".lock"
    owner = _read_lock(path) if path.exists() else {}
    if path.exists() and not _is_stale(owner, path):
        raise _in_use(Path(folder), what, owner)


def _is_stale(owner: dict, path: Path) -> bool:
    """The lock's owner ran on this host and is gone; or the lock names no owner and is older
    than EMPTY_LOCK_S (its writer died between creating and filling it)."""
    if not owner:
        try:
            return time.time() - path.stat().st_mtime > EMPTY_LOCK_S
        except OSError:
            return True
    return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1)))


def _in_use(folder: Path, what: str, owner: dict) -> LockedError:
    return LockedError(f"{what} {str(folder)!r} is in use by process {owner.get('pid')} on "
                       f"{owner.get('host')} since {owner.get('since')}; wait for it to finish "
                       "or stop it (nothing was written)")


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------------------------
# before a run starts
# ----------------------------------------------------------------------------------------------

def claim_experiment(exp_dir: str | Path, experiment: str, source: str,
                     check_only: bool = False) -> None:
    """Mark `exp_dir` as holding `experiment` from grid file `source` (experiment.json), or check
    that it already does; a folder of another experiment raises ValueError, writing nothing.
    With `check_only` nothing is written either way."""
    exp_dir = Path(exp_dir)
    check_writable(exp_dir, "results folder")
    marker = exp_dir / "experiment.json"
    if marker.exists():
        try:
            mine = json.loads(marker.read_text())
        except ValueError:
            mine = None
        if not isinstance(mine, dict):
            raise ValueError(f"{str(marker)!r} is damaged (not the JSON object `pods run` "
                             "writes); move it away to claim the folder again")
        if mine.get("experiment") != experiment or mine.get("source") != source:
            raise ValueError(
                f"results folder {str(exp_dir)!r} holds experiment {mine.get('experiment')!r} "
                f"from {mine.get('source')!r}, not {experiment!r} from {source!r}; choose "
                "another experiment name or results_root (nothing was overwritten)")
        return
    for run in find_runs(exp_dir):
        saved = load_yaml(run / "config.yaml")
        if not isinstance(saved, dict):
            raise ValueError(f"config file {str(run / 'config.yaml')!r} is empty or not a "  # noqa: TRY004
                             "mapping (a damaged run); move that run folder away")
        other = saved.get("experiment")
        if other != experiment:
            raise ValueError(
                f"results folder {str(exp_dir)!r} holds runs of experiment {other!r} (e.g. "
                f"{run.name}), not {experiment!r}; choose another experiment name or "
                "results_root (nothing was overwritten)")
    if not check_only:
        exp_dir.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"experiment": experiment, "source": source})


def run_state(cfg: Config, run_dir: str | Path) -> str:
    """'new', 'resume' (interrupted, same config up to resume-safe fields) or 'complete'; a
    folder holding a run of another config raises ValueError naming the fields."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        check_not_foreign(run_dir)
        return "new"
    differ = cfg.differing_fields(Config.from_yaml(saved))
    if differ:
        raise ValueError(f"run folder {str(run_dir)!r} holds a run with a different config "
                         f"(fields {', '.join(differ)}); choose another run folder or "
                         "experiment name (nothing was overwritten)")
    if is_complete(run_dir):
        return "complete"
    started = (run_dir / "metrics.jsonl").exists() or bool(checkpoints(run_dir))
    return "resume" if started else "new"


def check_not_foreign(run_dir: Path) -> None:
    """ValueError naming `run_dir` when it holds anything but what the kit writes before a run's
    config.yaml (BEFORE_CONFIG): files the kit did not write, which it must not touch."""
    if not run_dir.is_dir():
        return
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if not any(p.match(pattern) for pattern in BEFORE_CONFIG))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise ValueError(f"run folder {str(run_dir)!r} holds files the kit did not write "
                         f"({shown}) and no config.yaml; move them away, or choose another "
                         "experiment name or results_root (nothing was changed)")


def check_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Before any model loads: a resumed folder must hold the same config (resume-safe fields
    aside); a fresh run must not overwrite a run that started; a folder in use by another
    process is reported as such."""
    check_writable(run_dir, "run folder")
    check_unlocked(run_dir, "run folder")
    if resume and not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"resume: {str(run_dir / 'config.yaml')!r} does not exist; "
                                "nothing to resume (run without resume first)")
    state = run_state(cfg, run_dir)
    if state == "complete" and not resume:
        raise ValueError(f"run folder {str(run_dir)!r} holds a complete run; read it with "
                         "results.load_run, or choose another run folder")
    if state == "resume" and not resume:
        raise ValueError(f"run folder {str(run_dir)!r} holds an interrupted run; resume it "
                         "(resume=True, --resume) or choose another run folder")


# ----------------------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------------------

def read_log(path: str | Path) -> list[dict]:
    """The records of a run log (metrics.jsonl, eval.jsonl); [] when absent; a torn last line
    (a killed writer) is skipped."""
    path = Path(path)
    return read_jsonl(path, torn_tail=True) if path.exists() else []


def set_aside_after(path: Path, last_step: int) -> int:
    """Keep the lines of `path` with step <= last_step; move the others (and any torn line) to
    '<name>.orphaned.jsonl' beside it, appended, never deleted. Returns how many were moved."""
    if not path.exists():
        return 0
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            ok = json.loads(line)["step"] <= last_step and line.endswith("\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        (kept if ok else moved).append(line if line.endswith("\n") else line + "\n")
    if moved:
        orphaned = path.with_suffix(".orphaned.jsonl")
        with naming(orphaned), open(orphaned, "a") as f:
            f.writelines(moved)
        atomic_write(path, "".join(kept))
    return len(moved)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's step checkpoints, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step-*"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(folder: Path, parts: dict[str, Any], state: dict) -> Path:
    """Write `parts` ({file name: object for torch.save}) and state.json into `folder`
    atomically, with manifest.json (size and SHA-256 of each file) written last. A full disk
    raises NoSpaceError naming `folder`; the temporary folder is removed, an older `folder`
    kept."""
    def build(tmp: Path) -> None:
        for name, obj in parts.items():
            try:
                torch.save(obj, tmp / name)
            except RuntimeError as err:
                if any(text in str(err) for text in TORCH_SHORT_WRITE):
                    raise no_space(folder, "checkpoint") from None
                raise
        (tmp / "state.json").write_text(json.dumps(state))
        manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                    for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))

    with naming(folder, "checkpoint"):
        return atomic_folder(folder, build)


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary folders a killed checkpoint writer left in checkpoints/
    (.step-XXXXXX.PID.tmp, .best.PID.tmp); called by the run holding the folder's lock.
    Returns them."""
    stale = sorted((Path(run_dir) / "checkpoints").glob(".*.tmp"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def verify_checkpoint(folder: Path, required: tuple[str, ...] = CHECKPOINT_FILES) -> str:
    """'' when the `required` files are in the manifest and every file of the manifest is
    present with its size and hash, else what is wrong."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return "manifest.json is missing or unreadable"
    for name in required:
        if name not in manifest:
            return f"{name} is not in its manifest"
    for name, want in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            return f"{name} is truncated or changed ({path.stat().st_size} bytes, manifest "\
                   f"{want['bytes']})"
    return ""


def save_checkpoint(run_dir: Path, state: dict, trainable: dict[str, Tensor],
                    optimizer_state: dict, scheduler_state: dict, rng: dict) -> Path:
    """checkpoints/step-XXXXXX: trainable weights (the LoRA adapter or the full model), optimizer
    and scheduler state, RNG states and the loop state; verified, then all but the newest
    KEEP_CHECKPOINTS step checkpoints are deleted."""
    folder = run_dir / "checkpoints" / f"step-{state['step']:06d}"
    write_checkpoint(folder, {"trainable.pt": trainable, "optimizer.pt": optimizer_state,
                              "scheduler.pt": scheduler_state, "rng.pt": rng}, state)
    problem = verify_checkpoint(folder)
    if problem:
        raise OSError(f"checkpoint {str(folder)!r} did not verify after writing: {problem}")
    for old in checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def warn(message: str) -> None:
    """A warning line on stderr (damaged checkpoints, stale locks)."""
    print(message, file=sys.stderr, flush=True)


def latest_valid_checkpoint(run_dir: Path, warn=warn) -> Path | None:
    """The newest checkpoint that verifies; each newer bad one is named in a warning. None when
    there is no checkpoint; ValueError when there are some but none verifies."""
    found = checkpoints(run_dir)
    for folder in reversed(found):
        problem = verify_checkpoint(folder)
        if not problem:
            return folder
        warn(f"warning: checkpoint {str(folder)!r} is damaged ({problem}); falling back to an "
             "older one")
    if found:
        raise ValueError(f"no valid checkpoint in {str(run_dir / 'checkpoints')!r} (all "
                         f"{len(found)} are damaged); move that folder away to restart the run "
                         "from step 0")
    return None


def load_checkpoint_files(folder: Path) -> dict[str, Any]:
    """The objects of a verified checkpoint: trainable, optimizer, scheduler, rng (those it
    holds) and state."""
    out = {path.stem: torch.load(path, map_location="cpu", weights_only=path.name != "rng.pt")
           for path in sorted(folder.glob("*.pt"))}
    out["state"] = json.loads((folder / "state.json").read_text())
    return out


def save_best(run_dir: Path, trainable: dict[str, Tensor], state: dict) -> Path:
    """checkpoints/best: the trainable weights of the best evaluation so far and its loop
    state (enough for a final evaluation, not for resuming)."""
    return write_checkpoint(run_dir / "checkpoints" / "best", {"trainable.pt": trainable}, state)


def best_checkpoint(run_dir: Path) -> Path:
    """checkpoints/best, verified; ValueError naming the folder when absent or damaged."""
    folder = Path(run_dir) / "checkpoints" / "best"
    problem = verify_checkpoint(folder, ("trainable.pt", "state.json")) if folder.is_dir() \
        else "it does not exist (keep_best_checkpoint was off, or no evaluation ran)"
    if problem:
        raise ValueError(f"best checkpoint {str(folder)!r}: {problem}")
    return folder
