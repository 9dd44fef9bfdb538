"""The vLLM engine's start and generation, two versions of the kit side by side.

Each measurement is a fresh process (a start in a process that already started vLLM is not a
first start) that imports podslib from one source tree, starts the vllm engine on the tiny model
as that version's trainer does for the tiny default (`engine_limits` where the version has it,
else gpu_memory_utilization 0.05 alone), and times: the start, the first generation (two
tokens), a training step's rollouts (8 prompts x n = 16, 48 tokens, a seed per prompt; median of
3) and an evaluation (`--eval-prompts` problems x 5, 48 tokens). Processes alternate between the
two trees; medians over `--repeats`, and the after / before ratio.

    .venv/bin/python bench/engine_start.py --before /path/to/older/checkout [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import inspect, json, os, statistics, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from podslib.rollout import SamplingParams, make_engine

path, eval_prompts = sys.argv[1], int(sys.argv[2])
step = [f"Q:{i}+{(7 * i) % 19}\nA:" for i in range(8)]
evals = [f"Q:{i % 19}-{(3 * i) % 19}+{i % 7}\nA:" for i in range(eval_prompts)]
limits = {}
if "max_num_seqs" in inspect.signature(make_engine).parameters:   # the trainer's limits
    limits = {"max_model_len": max(len(p) for p in step + evals) + 48,
              "max_num_seqs": max(8 * 16, eval_prompts * 5)}
sampling = SamplingParams(temperature=0.9, max_tokens=48)
out = {}
t = time.perf_counter()
engine = make_engine("vllm", model_path=path, seed=0, gpu_memory_utilization=0.05, **limits)
out["start_s"] = time.perf_counter() - t
t = time.perf_counter()
engine.generate(step[:1], 1, SamplingParams(temperature=0, max_tokens=2))
out["first_generation_s"] = time.perf_counter() - t
times = []
for r in range(3):
    t = time.perf_counter()
    engine.generate(step, 16, sampling, seeds=[100 * r + i for i in range(8)])
    times.append(time.perf_counter() - t)
out["step_rollouts_s"] = statistics.median(times)
t = time.perf_counter()
engine.generate(evals, 5, sampling, seeds=list(range(len(evals))))
out["evaluation_s"] = time.perf_counter() - t
engine.close()
print("RESULT " + json.dumps(out))
"""


def measure(tree: Path, model: Path, eval_prompts: int) -> dict:
    # `python -c` puts the working directory first on sys.path: run in `tree`, so that its
    # podslib is the one imported whatever directory the bench is started from.
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
           "VLLM_LOGGING_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), str(eval_prompts)],
                          capture_output=True, text=True, env=env, check=True, cwd=tree)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path, help="source tree of the older kit")
    parser.add_argument("--after", default=REPO, type=Path, help="default: this checkout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-prompts", type=int, default=400)
    args = parser.parse_args()
    sys.path.insert(0, str(args.after))
    from podslib.models.tiny import make_tiny_model

    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs = {side: [] for side in trees}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model(Path(tmp) / "tiny")
        for r in range(args.repeats):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                runs[side].append(measure(trees[side], model, args.eval_prompts))
                print(side, json.dumps(runs[side][-1]), flush=True)
    print(f"\n| {'median of ' + str(args.repeats):<20} | before | after | after / before |")
    print("|---|---|---|---|")
    for key in runs["before"][0]:
        before, after = (statistics.median(x[key] for x in runs[s]) for s in trees)
        print(f"| {key:<20} | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
