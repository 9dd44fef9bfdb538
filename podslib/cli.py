"""The `pods` command (also `python -m podslib`): parse arguments, call `podslib.pipeline`.

    pods run CONFIG [--seeds 0 1 2] [--only VARIANT ...]   run an experiment grid (papermill)
    pods report [EXPERIMENT ...]                            rebuild figures and summary tables
    pods config CONFIG VARIANT [--seed S]                   print one run's full Config YAML
    pods reproduce                                          the tiny default end to end
    pods paper [--data DIR] [--out DIR]                     the paper's figures and tables
                                                            from the authors' logs

Exit status: 0 on success, 1 when a run failed (the others still ran), 2 on a usage or
configuration error (reported in one sentence, nothing run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from . import pipeline


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results-root", default=None,
                        help="root folder of the results (default: results/ of the repository)")
    common.add_argument("--kernel", default=None,
                        help="Jupyter kernel for the notebooks (default: pods-kit if registered)")
    common.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    parser = argparse.ArgumentParser(prog="pods", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common],
                         help="run an experiment grid through notebooks/03_train.ipynb")
    run.add_argument("config", help="grid file, e.g. configs/tiny.yaml")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the file's)")
    run.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    report = sub.add_parser("report", parents=[common],
                            help="rebuild figures and tables (04_plots.ipynb)")
    report.add_argument("experiments", nargs="*", help="default: every experiment under the root")
    report.add_argument("--baseline", default="grpo",
                        help="variant the speedup is measured against")
    show = sub.add_parser("config", parents=[common],
                          help="print the full Config YAML of one run of a grid "
                          "(input for `torchrun -m podslib.trainer`)")
    show.add_argument("config", help="grid file, e.g. configs/gsm8k_8gpu.yaml")
    show.add_argument("variant")
    show.add_argument("--seed", type=int, default=None, help="default: the first of the file")
    repro = sub.add_parser("reproduce", parents=[common],
                           help="the tiny default end to end (results/tiny/)")
    repro.add_argument("--config", default=str(pipeline.CONFIGS / "tiny.yaml"),
                       help="grid file (default: configs/tiny.yaml)")
    paper = sub.add_parser("paper", help="the paper's figures and summary table, recomputed "
                           "from the authors' published logs (results/paper/)")
    paper.add_argument("--data", default=None,
                       help="folder of the authors' logs (default: data/pods_official)")
    paper.add_argument("--out", default=None, help="output folder (default: results/paper)")
    return parser


def _experiments(root: Path) -> list[str]:
    """Experiments under `root`: folders marked by `pods run` (experiment.json)."""
    return sorted(p.parent.name for p in root.glob("*/experiment.json"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pipeline.kernel_environment()        # before torch is imported (the warm-start runs here)
    progress = not getattr(args, "no_progress", False)       # `paper` has no notebooks
    try:
        if args.command == "run":
            out = pipeline.run_grid(args.config, seeds=args.seeds, only=args.only,
                                    results_root=args.results_root, kernel=args.kernel,
                                    progress=progress)
        elif args.command == "report":
            root = Path(args.results_root or pipeline.REPO / "results")
            names = args.experiments or _experiments(root)
            if not names:
                raise FileNotFoundError(f"no experiments under {str(root)!r}; run `pods run "
                                        "CONFIG` first")
            for name in names:
                path = pipeline.report(name, root, kernel=args.kernel, progress=progress,
                                       baseline=args.baseline)
                print(f"report: {path}")
            return 0
        elif args.command == "paper":
            from . import paper

            paths = paper.write(args.data or paper.DATA, args.out or paper.OUT)
            print(f"paper: {len(paths)} files under {paths[-1].parent}")
            return 0
        elif args.command == "config":
            grid = pipeline.load_grid(args.config)
            seed = grid.seeds[0] if args.seed is None else args.seed
            print(yaml.safe_dump(grid.config(args.variant, seed).to_dict(), sort_keys=False),
                  end="")
            return 0
        else:
            root = args.results_root or pipeline.REPO / "results"
            out = pipeline.reproduce(args.config, root, kernel=args.kernel, progress=progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"pods {args.command}: error: {err}", file=sys.stderr)
        return 2
    except pipeline.NotebookError as err:
        print(f"pods {args.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in out.items() if k != "elapsed_s"}))
    if out["failed"]:
        print(f"pods {args.command}: {len(out['failed'])} run(s) failed: "
              f"{', '.join(out['failed'])}", file=sys.stderr)
        return 1
    return 0
