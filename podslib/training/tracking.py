"""Experiment tracking (TRL's `report_to`): a run's config, per-step metrics, evaluations and
tables sent to TensorBoard, Weights & Biases or MLflow, all written inside the run folder.

    tracker = make_tracker(["tensorboard", "wandb"], run_dir, run_name, cfg.to_dict())
    tracker.log_metrics(record, step)               # as train/<key>
    tracker.log_eval(record, step)                  # as eval/<key>
    tracker.log_table("completions", rows, step)    # rows: [{"prompt": ..., "reward": ...}, ...]
    tracker.close()

`report_to` is "none" (nothing is written), one backend name or a list of them. Backends live in
the `BACKENDS` registry (one decorated class each). `check_report_to` validates a value (names,
and that the backend's packages are installed, without importing them), so a config can be
checked before any model loads; `make_tracker` runs the same check. The packages come with the
optional extra `tracking` (`pip install -e '.[tracking]'`, which `make setup` installs).

Only numbers are metrics: None, bools, strings and other values of a record are skipped, and a
`step` key is the x-axis, not a metric. The config is logged once when the tracker is made. Make
and use a tracker in one process only (rank 0 of a distributed run).

Nothing is ever sent over the network; each backend writes to its own folder of the run folder,
to be opened later:

- tensorboard: event files in run_dir/tensorboard (config as JSON text, tables as markdown text):
  `tensorboard --logdir run_dir`, or the experiment folder to compare its runs.
- wandb: always offline (W&B's own usage telemetry and console capture off, process-wide), in
  run_dir/wandb/offline-run-*; tables as wandb.Table. Upload later with `wandb login` then
  `wandb sync run_dir/wandb/offline-run-*`.
- mlflow: a SQLite store run_dir/mlflow/mlflow.db with artifacts in run_dir/mlflow/artifacts
  (MLflow's file store, ./mlruns, is in maintenance mode and refuses to start without an opt-out);
  the config as params, tables with `log_table` as <name>/step_<step>.json artifacts; MLflow's
  usage telemetry off (MLFLOW_DISABLE_TELEMETRY). View with `pip install mlflow` then
  `mlflow ui --backend-store-uri sqlite:///run_dir/mlflow/mlflow.db` (the store keeps the
  artifacts' absolute path: a moved run folder shows its metrics and params, not its tables).

Resume: `make_tracker(..., resume_step=s)` continues the tracker run of an earlier process, where
s is the last step whose logs the run folder keeps (the checkpoint's step; -1 if none). Steps
after s that the earlier process logged are hidden by TensorBoard (purge_step); wandb reuses the
run id kept in run_dir/wandb/run_id and adds an offline part (`wandb sync` uploads the parts in
order; W&B resolves a step that both parts logged); MLflow reopens the run whose id is kept in
run_dir/mlflow/run_id, keeps both values of a step logged twice and appends the rows of a table
logged again, and params already logged keep their first value. Without an id to reuse, a new
tracker run starts, as for resume_step=None.
"""
from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any, Self

EXTRA = "pip install -e '.[tracking]'"
MLFLOW_EXPERIMENT = "pods-kit"
WANDB_PROJECT = "pods-kit"

BACKENDS: dict[str, type] = {}


def backend(name: str, packages: tuple[str, ...]) -> Callable[[type], type]:
    """Register a tracker backend class under `name`; `packages` are the import names it needs.

    The class is built as cls(run_dir, run_name, config, resume_step) and has
    log_scalars(values: dict[str, float], step), log_table(name, columns, rows, step) and close().
    """

    def register(cls: type) -> type:
        cls.packages = packages
        BACKENDS[name] = cls
        return cls

    return register


def check_report_to(value: Any) -> list[str]:
    """The backend names of a report_to value ([] for none); ValueError naming report_to for an
    unknown name or a backend whose packages are not installed."""
    accepted = f"none, {', '.join(sorted(BACKENDS))} or a list of them"
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"report_to must be {accepted}; got {value!r}")
    names = list(dict.fromkeys(names))
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"report_to: none cannot be combined with a tracker; got {value!r}")
        return []
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"report_to: unknown tracker {name!r}; accepted: {accepted}")
        missing = [p for p in BACKENDS[name].packages if importlib.util.find_spec(p) is None]
        if missing:
            raise ValueError(f"report_to: {name} needs the package(s) {', '.join(missing)}, "
                             f"not installed; install the tracking extra: {EXTRA}")
    return names


def make_tracker(report_to: str | list[str], run_dir: str | Path, run_name: str,
                 config: dict[str, Any], resume_step: int | None = None) -> Tracker:
    """A Tracker sending to every backend of `report_to`, with `config` logged.

    Args:
        report_to: "none", a backend name or a list of names (see `check_report_to`).
        run_dir: the run folder; each backend writes in its own subfolder.
        run_name: the name shown by the tracker (wandb and MLflow run name).
        config: the run's hyperparameters (JSON-like; other values are logged as text).
        resume_step: None for a new tracker run; s to continue the earlier one after step s.
    """
    names = check_report_to(report_to)
    config = json.loads(json.dumps(config, default=str))
    run_dir = Path(run_dir).resolve()
    if names:
        run_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker([])
    try:
        for name in names:
            tracker.backends.append(BACKENDS[name](run_dir, run_name, config, resume_step))
    except BaseException:
        tracker.close()                 # the backends made so far
        raise
    return tracker


class Tracker:
    """Sends a run's metrics, evaluations and tables to each of its backends (none: nowhere)."""

    def __init__(self, backends: list):
        self.backends = backends

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Per-step training metrics, as train/<key>."""
        self._log_scalars("train/", metrics, step)

    def log_eval(self, record: dict[str, Any], step: int) -> None:
        """An evaluation's results (accuracy, ...), as eval/<key>."""
        self._log_scalars("eval/", record, step)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """A table (e.g. completions: prompt, completion, reward, selected) at `step`; the
        columns are the rows' keys in first-seen order, a missing cell is None. No rows: nothing
        is logged."""
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        cells = [[row.get(c) for c in columns] for row in rows]
        for b in self.backends:
            b.log_table(name, columns, cells, step)

    def close(self) -> None:
        """Flush and close every backend (a second call does nothing)."""
        for b in self.backends:
            b.close()
        self.backends = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_scalars(self, prefix: str, record: dict[str, Any], step: int) -> None:
        values = {f"{prefix}{k}": float(v) for k, v in record.items()
                  if k != "step" and isinstance(v, Real) and not isinstance(v, bool)}
        if values:
            for b in self.backends:
                b.log_scalars(values, step)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": text}: strings as they are, other values as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _stored_id(path: Path, resume_step: int | None) -> str | None:
    """The tracker run id kept at `path`, when resuming and one is there."""
    if resume_step is None or not path.is_file():
        return None
    return path.read_text().strip() or None


# ----------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_|\[\]])")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A markdown table whose cells show the values' text exactly (escaped, newlines as <br>)."""
    def cell(value: Any) -> str:
        text = html.escape(str(value), quote=False)
        return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", "<br>")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@backend("tensorboard", packages=("tensorboard",))
class TensorBoardBackend:
    """Event files in run_dir/tensorboard (torch's SummaryWriter)."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        start = 0 if resume_step is None else resume_step + 1
        # purge_step: TensorBoard hides what earlier writers logged at steps >= start
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start)
        self.writer.add_text("config", f"```json\n{json.dumps(config, indent=2)}\n```", start)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        self.writer.add_text(name, markdown_table(columns, rows), step)

    def close(self) -> None:
        self.writer.close()


@backend("wandb", packages=("wandb",))
class WandbBackend:
    """An offline W&B run in run_dir/wandb; its id is kept in run_dir/wandb/run_id."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        import wandb

        # offline process-wide: W&B's usage telemetry follows the global settings, not the run's
        settings = wandb.Settings(mode="offline", console="off", silent=True)
        wandb.setup(settings=settings)
        id_path = run_dir / "wandb" / "run_id"
        run_id = _stored_id(id_path, resume_step) or secrets.token_hex(4)
        self.wandb = wandb
        self.run = wandb.init(project=WANDB_PROJECT, name=run_name, id=run_id, dir=run_dir,
                              config=config, resume="allow", reinit="create_new",
                              settings=settings)
        id_path.write_text(run_id)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


@backend("mlflow", packages=("mlflow", "sqlalchemy", "alembic"))
class MLflowBackend:
    """An MLflow run in the SQLite store run_dir/mlflow/mlflow.db; its id is kept in
    run_dir/mlflow/run_id."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int | None):
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"   # read when mlflow is imported
        import mlflow.telemetry
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        mlflow.telemetry.set_telemetry_client()             # off, also if imported before
        folder = run_dir / "mlflow"
        folder.mkdir(exist_ok=True)
        self.client = client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        self.run_id = _stored_id(folder / "run_id", resume_step)
        if self.run_id is None:
            experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                MLFLOW_EXPERIMENT, artifact_location=(folder / "artifacts").as_uri())
            self.run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
            (folder / "run_id").write_text(self.run_id)
        else:
            client.update_run(self.run_id, status="RUNNING")
        logged = client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flat_config(config).items() if k not in logged]
        for i in range(0, len(params), 100):                 # MLflow takes 100 params a batch
            client.log_batch(self.run_id, params=params[i:i + 100])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in values.items()])

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{name}/step_{step}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
