"""Step-cost ratio of PODS (16 -> 4) to GRPO (4/4) on the tiny default, for each engine.

The two variants of one engine train side by side, one torch thread each (as `pods run --jobs
2` runs a study on a 2-core CPU), from the same warm-started model, for `--steps` steps; the
cost of a variant is its median seconds per step (generate + score + select + update + sync)
after `--skip` warm-up steps, and c = PODS / GRPO. Repeated `--repeats` times; reported: each
repeat's c and the median, with the phase split. Run it on an otherwise idle machine:

    .venv/bin/python bench/step_cost.py            # writes results/bench/step_cost.{json,md}

Which engine has the lower c is the better one for PODS relative to GRPO on this machine (the
wall-clock speedup predicted from the per-step speedup is per_step / c). Engines: hf, vllm (as
configured by default: compiled) and vllm-eager (vllm with enforce_eager).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"grpo": {"n": 4, "m": 4}, "pods": {"n": 16, "m": 4}}
PHASES = ("t_generate", "t_score", "t_select", "t_update", "t_sync")


def run_pair(engine: str, steps: int, work: Path) -> dict[str, list[dict]]:
    """Train GRPO and PODS side by side with `engine`; their metrics.jsonl records."""
    from podslib.config import Config

    procs = {}
    for name, nm in VARIANTS.items():
        cfg = Config(engine=engine.removesuffix("-eager"), enforce_eager=engine.endswith("-eager"),
                     max_steps=steps, max_train_seconds=0, eval_every_s=0, test_size=50,
                     eval_repeats=1, checkpoint_every_s=0, keep_best_checkpoint=False,
                     log_completions=0, **nm)
        config = work / f"{engine}-{name}.yaml"
        cfg.to_yaml(config)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "podslib", "train", str(config), str(work / config.stem),
             "--no-progress"], env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{engine} {name} failed:\n{err[-3000:]}")
    return {name: [json.loads(x) for x in (work / f"{engine}-{name}" / "metrics.jsonl")
                   .read_text().splitlines()] for name in VARIANTS}


def medians(records: list[dict], skip: int) -> dict[str, float]:
    """Median seconds per step, in total and per phase, after `skip` warm-up steps."""
    rows = records[skip:]
    out = {p: statistics.median(r[p] for r in rows) for p in PHASES}
    out["step"] = statistics.median(sum(r[p] for p in PHASES) for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm", "vllm-eager"],
                        help="vllm-eager: vllm with enforce_eager (not compiled)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = parser.parse_args()
    from podslib.config import Config
    from podslib.lab.notebook import kernel_environment
    from podslib.lab.pipeline import prepare_models

    kernel_environment()
    prepare_models([Config()])                       # the warm-start, built once, all cores
    result = {"steps": args.steps, "skip": args.skip, "engines": {},
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}
    for engine in args.engines:
        repeats = []
        for k in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs = run_pair(engine, args.steps, Path(tmp))
            cost = {name: medians(recs, args.skip) for name, recs in runs.items()}
            repeats.append({**cost, "c": cost["pods"]["step"] / cost["grpo"]["step"]})
            print(f"{engine} repeat {k + 1}: GRPO {cost['grpo']['step']:.3f} s/step, PODS "
                  f"{cost['pods']['step']:.3f} s/step, c = {repeats[-1]['c']:.2f}", flush=True)
        result["engines"][engine] = {"repeats": repeats,
                                     "c_median": statistics.median(r["c"] for r in repeats)}
    write(result, Path(args.out))


def write(result: dict, out: Path) -> None:
    """results/bench/step_cost.{json,md}, each written atomically."""
    from podslib.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "step_cost.json", json.dumps(result, indent=2) + "\n")
    lines = [("| engine | c = PODS / GRPO (median) | per repeat | GRPO s/step (gen + upd) "
              "| PODS s/step (gen + upd) |"), "|---|---|---|---|---|"]
    for engine, r in result["engines"].items():
        last = r["repeats"][len(r["repeats"]) // 2]
        g, p = last["grpo"], last["pods"]
        each = ", ".join(f"{x['c']:.2f}" for x in r["repeats"])
        lines.append(f"| {engine} | {r['c_median']:.2f} | {each} | "
                     f"{g['step']:.3f} ({g['t_generate']:.3f} + {g['t_update']:.3f}) | "
                     f"{p['step']:.3f} ({p['t_generate']:.3f} + {p['t_update']:.3f}) |")
    head = (f"Step-cost ratio on the tiny default, GRPO 4/4 vs PODS 16/4 side by side, one "
            f"thread each, median over steps {result['skip'] + 1}-{result['steps']} "
            f"({result['started']}, {result['cpus']} CPUs; bench/step_cost.py)\n\n")
    atomic_write(out / "step_cost.md", head + "\n".join(lines) + "\n")
    print((out / "step_cost.md").read_text())


if __name__ == "__main__":
    main()
