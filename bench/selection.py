"""Selection benchmark: batched O(n log n) max-variance vs the official per-group loop vs brute force.

Run: `make bench` (or `.venv/bin/python bench/selection.py`). Prints medians over REPEATS runs of
    batched   podslib.core.selection.select on [G, n] -> m in one call
    loop      per group: sort, then recompute `.var()` for each of the m + 1 candidates k (the
              official PODS code's method), in a Python loop over groups
    brute     all C(n, m) subsets per group at small n (per group)
and the loop / batched ratio (target >= 50x at [1024, 64] -> 16).
"""

import itertools
import statistics
import time

import torch

from podslib.core.selection import select

REPEATS = 7
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


def median_seconds(fn, repeats: int = REPEATS) -> float:
    """Median wall time of fn() over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rewards = torch.rand(G, N)
    small = torch.rand(BRUTE_G, BRUTE_N)
    batched = median_seconds(lambda: select(rewards, M))
    loop = median_seconds(lambda: loop_reference(rewards, M))
    brute = median_seconds(lambda: brute_force(small, BRUTE_M))
    batched_small = median_seconds(lambda: select(small, BRUTE_M))
    print(
        f"selection benchmark: medians of {REPEATS} runs, 1 CPU thread, torch {torch.__version__}"
    )
    print(f"batched max_variance [{G}, {N}] -> {M}: {batched * 1e3:9.3f} ms")
    print(f"per-group loop (.var() per k)  [{G}, {N}] -> {M}: {loop * 1e3:9.3f} ms")
    print(f"loop / batched: {loop / batched:.1f}x (target >= 50x)")
    print(
        f"brute force [{BRUTE_G}, {BRUTE_N}] -> {BRUTE_M}: {brute / BRUTE_G * 1e6:9.1f} us per group"
        f" (batched at that size: {batched_small / BRUTE_G * 1e6:.2f} us per group)"
    )


if __name__ == "__main__":
    main()
