"""podslib.training.tracking: each backend's files read back with the backend's own reader; report_to
validation; no network use (the tracking extra is needed, see `need`)."""
import json
import os
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from podslib.training.tracking import (
    BACKENDS,
    check_report_to,
    flat_config,
    make_tracker,
    markdown_table,
)

pytestmark = [
    # third-party deprecations inside MLflow's SQLite store and log_table, not ours to fix
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:sqlalchemy.*"),
    pytest.mark.filterwarnings("ignore:.*select_dtypes:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:html5lib's sanitizer is deprecated:DeprecationWarning"),
]

CONFIG = {"model": "tiny", "lr": 1e-5, "rule": "max_variance", "m": 4, "beta": 0.0,
          "greedy": False, "max_steps": None, "stop": ["</answer>", "\n\n"],
          "lora": {"r": 8, "targets": ["q_proj", "v_proj"]}}
ROWS = [{"prompt": "What is 2+3?\nAnswer | briefly", "completion": "<answer>5</answer> *done*",
         "reward": 1.1, "selected": True},
        {"prompt": "What is 7*6?", "completion": "[42] `x_1` \\ 41", "reward": 0.0,
         "selected": False}]


def steps(tracker, first: int, last: int, scale: float = 1.0) -> None:
    """Log train records for steps first..last: loss = scale / step, plus non-metrics."""
    for s in range(first, last + 1):
        tracker.log_metrics({"step": s, "loss": scale / s, "tokens": 10 * s, "sel_var": None,
                             "rule": "max_variance", "greedy": True, "per_rank": [1, 2]}, s)


def log_run(tracker) -> None:
    """The run every backend test logs: steps 1..3, an evaluation and a table at step 3."""
    steps(tracker, 1, 3)
    tracker.log_eval({"step": 3, "accuracy": 0.25, "n_problems": 8, "greedy": False}, 3)
    tracker.log_table("completions", ROWS, 3)
    tracker.log_table("empty", [], 3)                   # no rows: not logged
    tracker.close()


@pytest.fixture
def need():
    """Skip when a backend's packages are missing (a user's machine without the tracking
    extra); under CI=true a missing package is a failure."""
    def check(name: str) -> None:
        try:
            check_report_to(name)
        except ValueError as err:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{err} (CI=true requires the tracking extra)")
            pytest.skip(str(err))
    return check


@pytest.fixture(autouse=True)
def wandb_home(monkeypatch, tmp_path):
    """W&B's own folders (cache, staging, settings) beside tmp_path (which stays the run
    folder), not in the home folder; its messages off."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path.parent / f"{tmp_path.name}-wandb" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


# ----------------------------------------------------------------------------------------------
# report_to
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, names", [
    ("none", []), (["none"], []), ([], []), ("tensorboard", ["tensorboard"]),
    (["wandb", "mlflow", "wandb"], ["wandb", "mlflow"]), (("mlflow",), ["mlflow"])])
def test_check_report_to_accepts(value, names, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # all "installed"
    assert check_report_to(value) == names


@pytest.mark.parametrize("value, says", [
    ("tensorbord", "unknown tracker 'tensorbord'"), ("TensorBoard", "unknown tracker"),
    (["wandb", 3], "report_to must be"), (None, "report_to must be"), (1, "report_to must be"),
    ("tensorboard,wandb", "unknown tracker"), (["none", "wandb"], "none cannot be combined")])
def test_bad_report_to_is_one_line(value, says, tmp_path):
    for call in (lambda: check_report_to(value),
                 lambda: make_tracker(value, tmp_path / "run", "r", CONFIG)):
        with pytest.raises(ValueError, match="report_to") as err:
            call()
        assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, package", [
    (name, package) for name, cls in BACKENDS.items() for package in cls.packages])
def test_missing_package_is_one_line(name, package, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)     # find_spec -> None: "not installed"
    for call in (lambda: check_report_to(name),
                 lambda: make_tracker([name], tmp_path / "run", "r", CONFIG)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"report_to: {name} needs the package(s) {package}")
        assert "pip install -e '.[tracking]'" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_none_writes_nothing(tmp_path):
    tracker = make_tracker("none", tmp_path / "run", "r", CONFIG)
    log_run(tracker)
    tracker.close()                                     # a second close does nothing
    assert list(tmp_path.iterdir()) == []


def test_flat_config():
    assert flat_config(CONFIG) == {
        "model": "tiny", "lr": "1e-05", "rule": "max_variance", "m": "4", "beta": "0.0",
        "greedy": "false", "max_steps": "null", "stop": '["</answer>", "\\n\\n"]',
        "lora.r": "8", "lora.targets": '["q_proj", "v_proj"]'}


# ----------------------------------------------------------------------------------------------
# tensorboard
# ----------------------------------------------------------------------------------------------

def tb_read(run_dir: Path):
    """(scalars {tag: [(step, value)]}, texts {tag: [(step, text)]}) as TensorBoard loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                         "tensors": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    texts = {t.removesuffix("/text_summary"): [(e.step, e.tensor_proto.string_val[0].decode())
                                              for e in acc.Tensors(t)]
             for t in acc.Tags()["tensors"]}
    return scalars, texts


class _Cells(HTMLParser):
    """The cells of an HTML table, row by row (<br> as a newline)."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True
        elif tag == "br":
            self.rows[-1][-1] += "\n"

    def handle_endtag(self, tag):
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data


def rendered_table(markdown: str) -> list[list[str]]:
    """The table TensorBoard's text dashboard shows for a markdown text."""
    import numpy as np
    from tensorboard.plugins.text.text_plugin import text_array_to_html

    parser = _Cells()
    parser.feed(text_array_to_html(np.array(markdown.encode()), enable_markdown=True))
    return parser.rows


def test_markdown_table_shows_the_text_exactly(need):
    need("tensorboard")
    columns = list(ROWS[0])
    cells = rendered_table(markdown_table(columns, [list(r.values()) for r in ROWS]))
    assert cells == [columns] + [[str(v) for v in r.values()] for r in ROWS]


def test_tensorboard_reads_back(need, tmp_path):
    need("tensorboard")
    log_run(make_tracker(["tensorboard"], tmp_path, "run-a", CONFIG))
    scalars, texts = tb_read(tmp_path)
    assert sorted(scalars) == ["eval/accuracy", "eval/n_problems", "train/loss", "train/tokens"]
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert scalars["train/tokens"] == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert scalars["eval/accuracy"] == [(3, 0.25)] and scalars["eval/n_problems"] == [(3, 8.0)]
    assert sorted(texts) == ["completions", "config"]
    (step, text), = texts["config"]
    assert step == 0 and json.loads(text.removeprefix("```json").removesuffix("```")) == CONFIG
    (step, text), = texts["completions"]
    assert step == 3
    assert rendered_table(text) == [list(ROWS[0])] + [[str(v) for v in r.values()] for r in ROWS]


def test_tensorboard_resume_hides_steps_after_the_checkpoint(need, tmp_path):
    need("tensorboard")
    first = make_tracker("tensorboard", tmp_path, "run-a", CONFIG)
    steps(first, 1, 4)                                   # crashed after step 4, checkpoint at 2
    first.close()
    second = make_tracker("tensorboard", tmp_path, "run-a", CONFIG, resume_step=2)
    steps(second, 3, 3, scale=7.0)
    second.close()
    scalars, _ = tb_read(tmp_path)
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(7 / 3))]


# ----------------------------------------------------------------------------------------------
# wandb (offline files read back)
# ----------------------------------------------------------------------------------------------

def wandb_records(path: Path):
    """The protobuf Records of an offline .wandb file: a 7-byte W&B header, then LevelDB log
    blocks of 32 KiB holding chunks (checksum u32, length u16, type u8: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:                                   # zero padding to the block's end
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_part(path: Path, timeout_s: float = 30.0) -> list:
    """The records of one offline part, once complete: W&B's service process writes the file
    shortly after run.finish() returns, its exit record last."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout_s} s"
        time.sleep(0.05)


def wandb_read(run_dir: Path) -> list[dict]:
    """Per offline part of the run, oldest first: run id, name, config and history."""
    parts = []
    for folder in (run_dir / "wandb").glob("offline-run-*"):
        part = {"folder": folder, "history": {}}
        for record in wandb_part(next(folder.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                part.update(id=record.run.run_id, name=record.run.display_name,
                            project=record.run.project, start=record.run.start_time.ToNanoseconds(),
                            config={i.key: json.loads(i.value_json)
                                    for i in record.run.config.update if i.key != "_wandb"})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                part["history"].setdefault(record.history.step.num, {}).update(
                    {k: v for k, v in row.items() if not k.startswith("_")})
        parts.append(part)
    return sorted(parts, key=lambda part: part["start"])


def test_wandb_reads_back(need, tmp_path):
    need("wandb")
    log_run(make_tracker("wandb", tmp_path, "run-a", CONFIG))
    (part,) = wandb_read(tmp_path)
    assert part["id"] == (tmp_path / "wandb" / "run_id").read_text()
    assert (part["name"], part["project"], part["config"]) == ("run-a", "pods-kit", CONFIG)
    history = part["history"]
    assert sorted(history) == [1, 2, 3]
    assert history[1] == {"train/loss": 1.0, "train/tokens": 10.0}
    assert history[2] == {"train/loss": 0.5, "train/tokens": 20.0}
    table = {k.removeprefix("completions/"): history[3].pop(k) for k in list(history[3])
             if k.startswith("completions/")}
    assert history[3] == {"train/loss": pytest.approx(1 / 3), "train/tokens": 30.0,
                          "eval/accuracy": 0.25, "eval/n_problems": 8.0}
    assert table["_type"] == "table-file" and table["nrows"] == 2
    saved = json.loads((part["folder"] / "files" / table["path"]).read_text())
    assert saved["columns"] == list(ROWS[0])
    assert saved["data"] == [list(r.values()) for r in ROWS]


def test_wandb_resume_keeps_the_run_id(need, tmp_path):
    need("wandb")
    first = make_tracker("wandb", tmp_path, "run-a", CONFIG)
    steps(first, 1, 4)
    first.close()
    second = make_tracker("wandb", tmp_path, "run-a", CONFIG, resume_step=2)
    steps(second, 3, 3, scale=7.0)
    second.close()
    old, new = wandb_read(tmp_path)
    assert new["id"] == old["id"] and new["name"] == "run-a" and new["config"] == CONFIG
    assert sorted(old["history"]) == [1, 2, 3, 4]
    assert new["history"] == {3: {"train/loss": pytest.approx(7 / 3), "train/tokens": 30.0}}
    fresh = make_tracker("wandb", tmp_path, "run-a", CONFIG)     # not a resume: a new run id
    fresh.close()
    assert wandb_read(tmp_path)[-1]["id"] not in (old["id"], "")


# ----------------------------------------------------------------------------------------------
# mlflow (SQLite store read back with MlflowClient)
# ----------------------------------------------------------------------------------------------

def mlflow_client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_reads_back(need, tmp_path):
    need("mlflow")
    log_run(make_tracker("mlflow", tmp_path, "run-a", CONFIG))
    client = mlflow_client(tmp_path)
    run_id = (tmp_path / "mlflow" / "run_id").read_text()
    run = client.get_run(run_id)
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params == flat_config(CONFIG)
    assert sorted(run.data.metrics) == ["eval/accuracy", "eval/n_problems", "train/loss",
                                        "train/tokens"]
    assert history(client, run_id, "train/loss") == [(1, 1.0), (2, 0.5),
                                                     (3, pytest.approx(1 / 3))]
    assert history(client, run_id, "eval/accuracy") == [(3, 0.25)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["completions"]
    local = Path(client.download_artifacts(run_id, "completions/step_3.json", str(tmp_path)))
    saved = json.loads(local.read_text())
    assert saved["columns"] == list(ROWS[0])
    assert saved["data"] == [list(r.values()) for r in ROWS]
    assert str(tmp_path / "mlflow" / "artifacts") in client.get_run(run_id).info.artifact_uri


def test_mlflow_resume_reopens_the_run(need, tmp_path):
    need("mlflow")
    first = make_tracker("mlflow", tmp_path, "run-a", CONFIG)
    steps(first, 1, 4)
    first.close()
    run_id = (tmp_path / "mlflow" / "run_id").read_text()
    second = make_tracker("mlflow", tmp_path, "run-a", {**CONFIG, "lr": 2e-5, "seed": 3},
                          resume_step=2)
    client = mlflow_client(tmp_path)
    assert client.get_run(run_id).info.status == "RUNNING"
    steps(second, 3, 3, scale=7.0)
    second.close()
    assert (tmp_path / "mlflow" / "run_id").read_text() == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {**flat_config(CONFIG), "seed": "3"}   # first values kept
    assert history(client, run_id, "train/loss") == [
        (1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (3, pytest.approx(7 / 3)), (4, 0.25)]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_several_backends_at_once(need, tmp_path):
    need("tensorboard")
    need("mlflow")
    need("wandb")
    with make_tracker(["tensorboard", "wandb"], tmp_path, "run-a", CONFIG) as tracker:
        steps(tracker, 1, 2)
    scalars, _ = tb_read(tmp_path)
    (part,) = wandb_read(tmp_path)
    assert scalars["train/loss"] == [(1, 1.0), (2, 0.5)]
    assert {s: row["train/loss"] for s, row in part["history"].items()} == {1: 1.0, 2: 0.5}


GUARDED_RUN = """
import socket, sys
log = open(sys.argv[2], "a")
real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
LOCAL = {"localhost", "127.0.0.1", "::1", "", None}

def blocked(target):
    log.write(f"{target}\\n")
    log.flush()
    raise OSError(f"test: no network ({target})")

def getaddrinfo(host, *args, **kwargs):
    return blocked(host) if host not in LOCAL else real_getaddrinfo(host, *args, **kwargs)

def connect(sock, address):
    remote = sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL
    return blocked(address) if remote else real_connect(sock, address)

socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
from podslib.training.tracking import make_tracker
with make_tracker(["tensorboard", "wandb", "mlflow"], sys.argv[1], "run-a", {"lr": 1e-5}) as t:
    t.log_metrics({"loss": 1.0}, 1)
    t.log_eval({"accuracy": 0.5}, 1)
    t.log_table("completions", [{"prompt": "p", "completion": "c", "reward": 1.0}], 1)
"""


@pytest.mark.slow
def test_no_network_use(need, tmp_path):
    """A whole process, exit included, with every backend: no host name is looked up and no
    remote address connected to (W&B and MLflow send usage telemetry unless told not to; MLflow
    skips it under pytest or CI, hence a process without their variables)."""
    for name in BACKENDS:
        need(name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "CI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    paths = [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    attempts = tmp_path / "attempts.txt"
    attempts.touch()
    done = subprocess.run([sys.executable, "-c", GUARDED_RUN,
                           str(tmp_path / "run"), str(attempts)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert attempts.read_text() == ""
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["mlflow", "tensorboard",
                                                                   "wandb"]
