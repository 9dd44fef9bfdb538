"""Selection benchmark: batched O(n log n) max-variance vs the official per-group loop vs brute force.

Run: `make bench` (or `.venv/bin/python bench/selection.py [--repeats 15]`), on an otherwise idle
machine; writes results/bench/selection.{json,md}. One CPU thread; each repeat times every
method once, in turn (interleaved, so that a change of the machine's load hits all alike):
    batched   podslib.core.selection.select on [G, n] -> m in one call
    loop      per group: sort, then recompute `.var()` for each of the m + 1 candidates k (the
              official PODS code's method), in a Python loop over groups
    brute     all C(n, m) subsets per group at small n (per group), with batched at that size
Reported: the median ms per call of each, and the ratio loop / batched of each repeat (median,
min and max; target >= 50x at [1024, 64] -> 16).
"""

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch

from podslib.core.selection import select
from podslib.files import REPO, atomic_write

REPEATS = 15
G, N, M = 1024, 64, 16
BRUTE_G, BRUTE_N, BRUTE_M = 32, 12, 4


def loop_reference(rewards: torch.Tensor, m: int) -> torch.Tensor:
    """[G, n] -> [G, m] indices, one group at a time as the official code does: sort, then
    for k = m, m-1, ..., 0 build "k highest + (m - k) lowest" and recompute its `.var()`,
    moving away from the top-m set only on a strictly larger variance."""
    n = rewards.shape[1]
    out = []
    for row in rewards:
        order = row.argsort(descending=True, stable=True)
        ranked = row[order]
        best_k, best_var = m, ranked[:m].var() if m > 1 else 0.0
        for k in range(m - 1, -1, -1):
            subset = torch.cat([ranked[:k], ranked[n - (m - k) :]])
            var = subset.var() if m > 1 else 0.0
            if var > best_var:
                best_k, best_var = k, var
        out.append(torch.cat([order[:best_k], order[n - (m - best_k) :]]))
    return torch.stack(out)


def brute_force(rewards: torch.Tensor, m: int) -> torch.Tensor:
    """[G, n] -> [G] the largest subset variance over all C(n, m) subsets, group by group."""
    combos = torch.tensor(list(itertools.combinations(range(rewards.shape[1]), m)))
    return torch.stack([row[combos].var(dim=1).max() for row in rewards])


def seconds(fn) -> float:
    """Wall time of one call of fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(repeats: int = REPEATS) -> dict:
    """Every method timed once per repeat, in turn, after one warm-up call each: the per-call
    seconds of each repeat, their medians and the per-repeat ratios."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rewards, small = torch.rand(G, N), torch.rand(BRUTE_G, BRUTE_N)
    methods = {"batched": lambda: select(rewards, M),
               "loop": lambda: loop_reference(rewards, M),
               "brute": lambda: brute_force(small, BRUTE_M),
               "batched_small": lambda: select(small, BRUTE_M)}
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(seconds(fn))
    ratios = [loop / batched for loop, batched in zip(times["loop"], times["batched"],
                                                      strict=True)]
    return {"torch": torch.__version__, "threads": 1, "repeats": repeats,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
            "size": [G, N, M], "brute_size": [BRUTE_G, BRUTE_N, BRUTE_M],
            "seconds": times,
            "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
            "loop_over_batched": {"median": statistics.median(ratios), "min": min(ratios),
                                  "max": max(ratios)}}


def markdown(r: dict) -> str:
    ms, ratio = r["median_ms"], r["loop_over_batched"]
    per_group = {k: 1e3 * ms[k] / BRUTE_G for k in ("brute", "batched_small")}
    return (f"Selection of m of n by maximum variance, 1 CPU thread, torch {r['torch']}, "
            f"{r['repeats']} interleaved repeats ({r['started']}, {r['cpus']} CPUs; "
            "`python bench/selection.py`)\n\n"
            "| method | size | ms per call (median) |\n|---|---|---|\n"
            f"| batched `select` (podslib) | [{G}, {N}] -> {M} | {ms['batched']:.2f} |\n"
            f"| per-group loop, `.var()` per candidate (official code) | [{G}, {N}] -> {M} | "
            f"{ms['loop']:.1f} |\n"
            f"| brute force over all C({BRUTE_N}, {BRUTE_M}) subsets | [{BRUTE_G}, {BRUTE_N}] -> "
            f"{BRUTE_M} | {ms['brute']:.1f} ({per_group['brute']:.0f} us per group) |\n"
            f"| batched `select` (podslib) | [{BRUTE_G}, {BRUTE_N}] -> {BRUTE_M} | "
            f"{ms['batched_small']:.3f} ({per_group['batched_small']:.2f} us per group) |\n\n"
            f"Per-group loop / batched at [{G}, {N}] -> {M}: {ratio['median']:.0f}x (median of "
            f"the repeats' ratios; range {ratio['min']:.0f}-{ratio['max']:.0f}x; target >= "
            "50x).\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = parser.parse_args(argv)
    result = measure(args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "selection.json", json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    atomic_write(out / "selection.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
