"""The `pods` command (also `python -m podslib`): parse arguments, call the library.

    pods run CONFIG [--seeds 0 1 2] [--only VARIANT ...] [--jobs 2]   run an experiment grid
    pods report [EXPERIMENT ...]                          rebuild figures and summary tables
    pods config CONFIG VARIANT [--seed S]                 print one run's full Config YAML
    pods train CONFIG RUN_DIR [--resume] [key=value ...]  train one run (torchrun entry point)
    pods evaluate RUN_DIR [--checkpoint best] [key=value ...]  test accuracy of a checkpoint
    pods reproduce                                        the tiny default end to end
    pods paper [--data DIR] [--out DIR]                   the paper's figures and tables from
                                                          the authors' logs (results/paper/)
    pods doctor                                           versions, machine, and whether the
                                                          engines start (for bug reports)

Exit status: 0 on success, 1 when a run failed (the others still ran) or a check of `pods
doctor` failed, 2 on a usage or configuration error (reported in one line, nothing run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from podslib.analysis import paper
from podslib.config import Config, parse_yaml_value
from podslib.lab import doctor, notebook, pipeline
from podslib.training import distributed as D
from podslib.training.trainer import evaluate_checkpoint, train


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2), like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--results-root", default=None,
                        help="root folder of the results (default: results/ of the repository)")
    common.add_argument("--kernel", default=None,
                        help="Jupyter kernel for the notebooks (default: pods-kit if registered)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser = _Parser(prog="pods", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", parents=[common],
                         help="run an experiment grid through notebooks/03_train.ipynb")
    run.add_argument("config", help="grid file, e.g. configs/tiny.yaml")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the file's)")
    run.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    run.add_argument("--jobs", type=int, default=1,
                     help="runs at a time (each gets one torch thread on a CPU machine)")
    report = sub.add_parser("report", parents=[common],
                            help="rebuild figures and tables (04_plots.ipynb)")
    report.add_argument("experiments", nargs="*", help="default: every experiment under the root")
    report.add_argument("--baseline", default="grpo",
                        help="variant the speedup is measured against")
    show = sub.add_parser("config", parents=[common],
                          help="print the full Config YAML of one run of a grid "
                          "(input for `pods train` / torchrun)")
    show.add_argument("config", help="grid file, e.g. configs/gsm8k_8gpu.yaml")
    show.add_argument("variant")
    show.add_argument("--seed", type=int, default=None, help="default: the first of the file")
    train = sub.add_parser("train", help="train one run from a full Config YAML (the entry "
                           "point for torchrun / accelerate launch: python -m podslib train)")
    train.add_argument("config", help="Config YAML, e.g. from `pods config`")
    train.add_argument("run_dir", help="run folder to write")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="Config fields to change, value read as YAML (tiny.hidden=64)")
    evaluate = sub.add_parser("evaluate", help="test accuracy of a run's best or latest "
                              "checkpoint (on other problems with test_source=..., test_size=...)")
    evaluate.add_argument("run_dir", help="run folder")
    evaluate.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="Config fields to change for the evaluation")
    repro = sub.add_parser("reproduce", parents=[common],
                           help="the tiny default end to end (results/tiny/)")
    repro.add_argument("--config", default=str(pipeline.CONFIGS / "tiny.yaml"),
                       help="grid file (default: configs/tiny.yaml)")
    repro.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    paper = sub.add_parser("paper", help="the paper's figures and summary table, recomputed "
                           "from the authors' published logs (results/paper/)")
    paper.add_argument("--data", default=None,
                       help="folder of the authors' logs (default: data/pods_official)")
    paper.add_argument("--out", default=None, help="output folder (default: results/paper)")
    sub.add_parser("doctor", help="versions, the machine and whether each engine starts: what "
                   "a bug report needs (exit 1 with one line per problem)")
    return parser


def parse_overrides(items: list[str]) -> dict:
    """['lr=2e-4', 'tiny.hidden=64'] -> {'lr': 0.0002, 'tiny.hidden': 64} (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"overrides must be key=value; got {item!r}")
        try:
            out[key] = parse_yaml_value(value)
        except ValueError as err:
            raise ValueError(f"override {item!r}: {err}") from None
    return out


def _experiments(root: Path) -> list[str]:
    """Experiments under `root`: folders marked by `pods run` (experiment.json)."""
    return sorted(p.parent.name for p in root.glob("*/experiment.json"))


def _train(args) -> dict:
    cfg = Config.from_yaml(args.config, **parse_overrides(args.overrides))
    summary = train(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    if D.DistInfo.from_env().is_main:
        print(json.dumps(summary, indent=2))
    return {"done": [str(args.run_dir)], "failed": []}


def _report(args) -> dict:
    root = Path(args.results_root or pipeline.REPO / "results")
    names = args.experiments or _experiments(root)
    if not names:
        raise FileNotFoundError(f"no experiments under {str(root)!r}; run `pods run CONFIG` "
                                "first")
    for name in names:
        path = pipeline.report(name, root, kernel=args.kernel, progress=not args.no_progress,
                               baseline=args.baseline)
        print(f"report: {path}")
    return {"done": names, "failed": []}


def _dispatch(args) -> dict:
    progress = not getattr(args, "no_progress", False)          # `paper` runs no notebook
    if args.command == "run":
        return pipeline.run_grid(args.config, seeds=args.seeds, only=args.only,
                                 results_root=args.results_root, kernel=args.kernel,
                                 progress=progress, jobs=args.jobs)
    if args.command == "report":
        return _report(args)
    if args.command == "config":
        import yaml

        grid = pipeline.load_grid(args.config)
        seed = grid.seeds[0] if args.seed is None else args.seed
        print(yaml.safe_dump(grid.config(args.variant, seed).to_dict(), sort_keys=False), end="")
        return {"done": [], "failed": []}
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        result = evaluate_checkpoint(args.run_dir, args.checkpoint, **parse_overrides(
            args.overrides))
        print(json.dumps(result, indent=2))
        return {"done": [args.run_dir], "failed": []}
    if args.command == "paper":
        paths = paper.write(args.data or paper.DATA, args.out or paper.OUT)
        print(f"paper: {len(paths)} files under {paths[-1].parent}")
        return {"done": [str(p) for p in paths], "failed": []}
    root = args.results_root or pipeline.REPO / "results"
    return pipeline.reproduce(args.config, root, kernel=args.kernel, progress=progress,
                              jobs=args.jobs)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    notebook.kernel_environment()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():      # read by torch before it was set
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.command == "doctor":
        return doctor.main()
    try:
        out = _dispatch(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"pods {args.command}: error: {err}", file=sys.stderr)
        return _exit(args, 2)
    except notebook.NotebookError as err:
        print(f"pods {args.command}: {err}", file=sys.stderr)
        return 1
    if args.command in ("run", "reproduce"):
        print(json.dumps({k: v for k, v in out.items() if k != "elapsed_s"}))
    if out["failed"]:
        print(f"pods {args.command}: {len(out['failed'])} run(s) failed: "
              f"{', '.join(out['failed'])}", file=sys.stderr)
        return 1
    return _exit(args, 0)


def _exit(args, code: int) -> int:
    """`code`; a rank of a multi-process `pods train` ends its process here (no gloo abort at
    interpreter shutdown, see distributed.exit_process)."""
    if args.command == "train" and D.DistInfo.from_env().enabled:
        D.exit_process(code)
    return code
