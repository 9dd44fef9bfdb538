"""Peak memory of the update phase: it follows micro_batch_size, not n (PODS's point: generate
many rollouts, train on few).

Each configuration runs in a fresh process that does one real trainer step up to the update
(generate n per prompt, score, select m, build the batch) with a randomly initialised tiny model,
then measures the update alone:

- memory is the process's resident set (VmRSS / VmHWM from /proc/self/status); the high-water
  mark is reset just before the update by writing 5 to /proc/self/clear_refs (Linux >= 4.0), so
  the figure is the update's own peak above what the process already held;
- glibc is told to serve every allocation above 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so
  freed tensor memory goes back to the OS at once and RSS tracks live tensors, rather than
  pages the generation phase left in malloc's free lists being reused silently;
- the optimizer's state is allocated by one warm-up update before the measurement, so the
  figure is activations + gradients of the micro-batch.

    .venv/bin/python bench/memory.py       # a table, then the figures as one JSON line
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [  # (n, m, micro_batch_size)
    (16, 16, 4), (64, 16, 4),
    (16, 16, 16), (64, 16, 16),
    (16, 16, 32), (64, 16, 32),
    (64, 64, 128),          # vanilla GRPO on all 64: the whole pool in one micro-batch
]
PROMPTS = 2
MODEL = {"hidden": 256, "layers": 4, "heads": 4, "warm_start": False}
COMPLETION_TOKENS = 64


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(n: int, m: int, micro_batch_size: int, cache_dir: str) -> dict:
    """One step up to the update, then the update's peak RSS above its starting RSS (MiB)."""
    import torch

    from podslib.config import Config
    from podslib.models.loading import load_policy
    from podslib.rollout import make_engine
    from podslib.tasks.templates import render_prompt
    from podslib.training.batch import build_batch
    from podslib.training.data import load_examples
    from podslib.training.step import generate, score, select_rollouts
    from podslib.training.update import optimizer_and_scheduler, update
    from podslib.training.warmstart import tiny_base

    cfg = Config(tiny=MODEL, n=n, m=m, micro_batch_size=micro_batch_size,
                 prompts_per_step=PROMPTS, max_completion_tokens=COMPLETION_TOKENS,
                 cache_dir=cache_dir, reward_weights={"correctness": 1.0, "format": 1.0})
    policy, tokenizer = load_policy(tiny_base(cfg.tiny, cache_dir))
    engine = make_engine("hf", policy=policy, tokenizer=tokenizer)
    optimizer, scheduler = optimizer_and_scheduler(cfg, policy)
    examples = load_examples(cfg, "train")[:PROMPTS]
    prompts = [render_prompt(e, "tiny", tokenizer) for e in examples]
    groups = generate(engine, prompts, cfg, seeds=list(range(PROMPTS)))
    scored = score(groups, [e.gold for e in examples], cfg)
    idx, adv = select_rollouts(scored.rewards, cfg, step=0)
    adv = torch.where(adv == 0, torch.ones_like(adv), adv)       # a gradient in every row
    batch = build_batch(groups, idx, adv, torch.ones_like(idx, dtype=torch.bool),
                        tokenizer.pad_token_id)
    sequences, tokens = len(batch), int(batch.completion_mask.sum())
    update(policy, optimizer, scheduler, batch.rows(0, 1), cfg, None, 1, 1)     # Adam state
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    update(policy, optimizer, scheduler, batch, cfg, None, sequences, tokens)
    peak = _status_kib("VmHWM")
    return {"n": n, "m": m, "micro_batch_size": micro_batch_size, "rollouts_trained": sequences,
            "seq_len": batch.input_ids.shape[1], "update_peak_mib": round((peak - before) / 1024, 1),
            "rss_before_update_mib": round(before / 1024, 1)}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--one":         # one configuration (subprocess)
        n, m, mb = map(int, sys.argv[2:5])
        print(json.dumps(measure(n, m, mb, sys.argv[5])))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for n, m, mb in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), str(m), str(mb),
                                  cache], env=env, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"n={r['n']:3d} m={r['m']:3d} micro_batch={r['micro_batch_size']:3d} "
                  f"trained={r['rollouts_trained']:3d} len={r['seq_len']:3d}  "
                  f"update peak +{r['update_peak_mib']:7.1f} MiB  "
                  f"(RSS before update {r['rss_before_update_mib']:.0f} MiB)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
