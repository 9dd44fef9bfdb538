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
    pods cost CONFIG [--steps K] [--only VARIANT ...] [--sweep n=16,32,64]   what a step costs here,
                                                          and the wall-clock speedup it predicts

key=value arguments may come anywhere after the command's own positionals.

Exit status: 0 on success, 1 when a run failed (the others still ran), the disk is full or a
check of `pods doctor` failed, 2 on a usage or configuration error (reported in one line,
nothing run), 130 when stopped by Ctrl-C (SIGINT) or SIGTERM: a training run stops at its next step boundary with a checkpoint, and the
same command again (`pods train ... --resume`) continues it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from podslib import rundir
from podslib.analysis import paper
from podslib.config import Config, parse_yaml_value
from podslib.files import NoSpaceError
from podslib.lab import cost, doctor, notebook, pipeline
from podslib.training import distributed as D
from podslib.training.trainer import Interrupted, evaluate_checkpoint, train


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
    report.add_argument("--baseline", default=None,
                        help="variant the speedups are measured against: the main one "
                        "(summary.md; default: the one it names, else grpo) or another "
                        "(summary_vs_BASELINE.md)")
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
    _cost_parser(sub)
    sub.add_parser("doctor", help="versions, the machine and whether each engine starts: what "
                   "a bug report needs (exit 1 with one line per problem)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; `key=value` items after options (`pods train C R --resume
    max_steps=60`), which argparse leaves over, join the command's overrides."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extra and overrides is not None and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = overrides + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _cost_parser(sub) -> None:
    p = sub.add_parser("cost", help="run a few dozen real steps of each variant side by side on "
                       "this machine: seconds per step, phases, memory, the step-cost ratio c "
                       "and the wall-clock speedup it predicts (results/<experiment>/cost.md)")
    p.add_argument("config", help="grid file, e.g. configs/tiny.yaml")
    p.add_argument("--steps", type=int, default=cost.STEPS,
                   help=f"timed steps per variant (default {cost.STEPS})")
    p.add_argument("--warmup", type=int, default=cost.WARMUP,
                   help=f"warm-up steps per variant, not counted (default {cost.WARMUP})")
    p.add_argument("--only", nargs="+", metavar="VARIANT",
                   help="measure only these variants (and the baseline)")
    p.add_argument("--sweep", metavar="FIELD=V1,V2,...",
                   help="measure each variant once per value of one Config field, e.g. n=16,32,64")
    p.add_argument("--baseline", default="grpo", help="variant c is counted in (default grpo)")
    p.add_argument("--per-step", type=float, default=None, metavar="GAIN",
                   help="per-step speedup to predict with (default: your runs of the "
                   "experiment, else the paper's nearest setting)")
    p.add_argument("--jobs", type=int, default=None,
                   help="variants stepping at a time (default: 2 on a CPU, 1 on a GPU)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="Config fields to change in every variant, value read as YAML")
    p.add_argument("--results-root", default=None,
                   help="root folder of the results (default: results/ of the repository)")


def _cost(args) -> dict:
    try:
        report = cost.run(args.config, steps=args.steps, warmup=args.warmup, only=args.only,
                          sweep=args.sweep, baseline=args.baseline, per_step=args.per_step,
                          jobs=args.jobs, results_root=args.results_root,
                          overrides=parse_overrides(args.overrides))
    except cost.WorkerError as err:
        print(f"pods cost: {err}", file=sys.stderr)
        return {"done": [], "failed": [err.variant]}
    return {"done": [str(p) for p in report.paths], "failed": []}


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


def _train(args) -> dict:
    cfg = Config.from_yaml(args.config, **parse_overrides(args.overrides))
    summary = train(cfg, args.run_dir, resume=args.resume, progress=not args.no_progress)
    if D.DistInfo.from_env().is_main:
        print(json.dumps(summary, indent=2))
    return {"done": [str(args.run_dir)], "failed": []}


def _report(args) -> dict:
    root = Path(args.results_root or pipeline.REPO / "results")
    names = args.experiments or pipeline.experiments(root)
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
        root = {"results_root": str(Path(args.results_root).resolve())} if args.results_root \
            else {}
        print(yaml.safe_dump(grid.config(args.variant, seed, **root).to_dict(), sort_keys=False),
              end="")
        return {"done": [], "failed": []}
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        result = evaluate_checkpoint(args.run_dir, args.checkpoint, **parse_overrides(
            args.overrides))
        print(json.dumps(result, indent=2))
        return {"done": [args.run_dir], "failed": []}
    if args.command == "cost":
        return _cost(args)
    if args.command == "paper":
        paths = paper.write(args.data or paper.DATA, args.out or paper.OUT)
        print(f"paper: {len(paths)} files under {paths[-1].parent}")
        return {"done": [str(p) for p in paths], "failed": []}
    root = args.results_root or pipeline.REPO / "results"
    return pipeline.reproduce(args.config, root, kernel=args.kernel, progress=progress,
                              jobs=args.jobs)


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread; the trainer and the
    pipeline handle both themselves while they run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(args, err: KeyboardInterrupt, argv: list[str]) -> str:
    """The line of a command stopped by a signal: where its work stands and how to go on (a
    training run resumes with the overrides it was started with)."""
    if args.command == "train":
        resume = shlex.join(["pods", "train", args.config, args.run_dir, "--resume",
                             *args.overrides])
        if isinstance(err, Interrupted):                # stopped at a step, checkpoint written
            return f"{err}: {resume}"
        found = rundir.checkpoints(args.run_dir)
        if found:
            return f"stopped at once; the run resumes from {str(found[-1])!r}: {resume}"
        return "stopped before its first checkpoint; nothing to resume: run it again"
    if args.command in ("run", "reproduce"):
        return (f"stopped; `{shlex.join(['pods', *argv])}` again goes on (complete runs are "
                "skipped, interrupted ones resume)")
    return "stopped"


def _stopped(args, out: dict, argv: list[str]) -> str:
    """The line of a grid stopped by a signal: what was interrupted, what did not start."""
    parts = [f"{len(out[key])} {what} ({', '.join(out[key])})"
             for key, what in (("interrupted", "interrupted"), ("not_started", "not started"))
             if out[key]]
    return (f"pods {args.command}: stopped by {out['stopped_by']}: "
            f"{'; '.join(parts) or 'every run had ended'}; `{shlex.join(['pods', *argv])}` "
            "again resumes them")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    notebook.kernel_environment()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():      # read by torch before it was set
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        with _sigterm_interrupts():
            if args.command == "doctor":                # its own report and exit status
                return doctor.main()
            out = _dispatch(args)
    except KeyboardInterrupt as err:
        print(f"pods {args.command}: {_interrupted(args, err, argv)}", file=sys.stderr)
        return _exit(args, 130)
    except NoSpaceError as err:
        print(f"pods {args.command}: error: {err}", file=sys.stderr)
        return _exit(args, 1)
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
    if out.get("stopped_by"):
        print(_stopped(args, out, argv), file=sys.stderr)
        return 130
    return 1 if out["failed"] else _exit(args, 0)


def _exit(args, code: int) -> int:
    """`code`; a rank of a multi-process `pods train` ends its process here (no gloo abort at
    interpreter shutdown, see distributed.exit_process)."""
    if args.command == "train" and D.DistInfo.from_env().enabled:
        D.exit_process(code)
    return code
