"""Rollout throughput of the hf and vllm engines, side by side in one run.

Default: the tiny model (random init, so completions rarely stop early), 64 prompts x n = 16,
64 new tokens, T = 0.9 (`--seeded`: one seed per prompt, as the trainer does). Reports engine start time separately from generation, the median over
`--repeats` timed calls (after one warm-up call), rollouts/s, generated tokens/s and the
vllm / hf ratio.

    .venv/bin/python bench/rollout.py [--prompts 64 --n 16 --max-tokens 64 --repeats 3]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def measure(
    name: str, model_path, prompts: list[str], n: int, sampling, repeats: int, seeded: bool
) -> dict:
    """Start the engine, warm it up, time `repeats` generate calls; medians. `seeded`: one seed
    per prompt, as the trainer passes them."""
    from podslib.rollout import make_engine

    start = time.perf_counter()
    engine = make_engine(name, model_path=model_path, seed=0)
    start_s = time.perf_counter() - start
    engine.generate(prompts[:4], 2, sampling)
    times, tokens = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seeds = list(range(len(prompts))) if seeded else None
        groups = engine.generate(prompts, n, sampling, seeds=seeds)
        times.append(time.perf_counter() - t0)
        tokens.append(sum(len(c.token_ids) for g in groups for c in g.completions))
    engine.close()
    gen_s = statistics.median(times)
    return {
        "engine": name,
        "start_s": round(start_s, 2),
        "generate_s": round(gen_s, 3),
        "rollouts_per_s": round(len(prompts) * n / gen_s, 1),
        "tokens_per_s": round(statistics.median(tokens) / gen_s, 1),
        "mean_completion_tokens": round(statistics.median(tokens) / (len(prompts) * n), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument("--seeded", action="store_true", help="pass one seed per prompt")
    args = parser.parse_args()

    from podslib.models.tiny import make_tiny_model
    from podslib.rollout import SamplingParams

    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    prompts = [
        f"Q:{i % 97 + 1}+{(7 * i) % 89 + 1}-{(3 * i) % 13 + 1}\nA:" for i in range(args.prompts)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(tmp, seed=0)
        rows = [
            measure(name, path, prompts, args.n, sampling, args.repeats, args.seeded)
            for name in args.engines.split(",")
        ]
    print(
        f"\n{args.prompts} prompts x n = {args.n}, {args.max_tokens} new tokens, "
        f"T = {args.temperature}, median of {args.repeats}, seeded: {args.seeded}"
    )
    header = ("engine", "start s", "gen s", "rollouts/s", "tokens/s", "mean len")
    print(f"{header[0]:8}" + "".join(f"{h:>12}" for h in header[1:]))
    keys = ("start_s", "generate_s", "rollouts_per_s", "tokens_per_s", "mean_completion_tokens")
    for r in rows:
        print(f"{r['engine']:8}" + "".join(f"{r[k]:>12}" for k in keys))
    by_name = {r["engine"]: r for r in rows}
    if {"hf", "vllm"} <= set(by_name):
        ratio = by_name["vllm"]["rollouts_per_s"] / by_name["hf"]["rollouts_per_s"]
        print(f"vllm / hf rollouts/s: {ratio:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
