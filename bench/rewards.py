"""Grader benchmark: worst time per completion on adversarial strings, a batch of pathological
MATH answers, MATH-500 self/cross grading rates, and score_batch throughput. Run from the repo
root: `python bench/rewards.py [DATA]` (DATA defaults to ../shared/data)."""
import json
import random
import sys
import time
from pathlib import Path

from podslib.tasks.grading import extract_answer, grade_math, is_correct, start_math_pool
from podslib.tasks.rewards import REWARD_TERMS, score_batch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA
ADVERSARIAL = [
    "\\boxed{" * 20000, "\\boxed{" * 3000 + "1" + "}" * 3000, "9" * 100_000, "{" * 50_000,
    "1," * 50_000, "####" * 25_000, "<answer>" * 10_000, "$10**10**10$", "-" * 100_000 + "5",
    "\\boxed{" + "9" * 5000 + "}", "\\boxed{10^{10^{10^{10}}}}", "The answer is " * 7000,
    "\\boxed{Step 3: " * 5000, "#### Step 3\n" * 8000, "1\\," * 30000, "6 x 3 = " * 12000,
]
PATHOLOGICAL_MATH = [  # answers no MATH problem has (issue 21: 18 of them took 24 s in one batch)
    "\\boxed{" + "{" * 50_000 + "}", "{" * 50_000, "\\boxed{" + "\\frac{1}{" * 5000 + "2" + "}" * 5000 + "}",
    "\\boxed{2^{2^{2^{2^{100}}}}}", "\\boxed{10^{10^{10}}}", "\\boxed{(10!)!}", "\\boxed{9^{9^{9}}}",
    "$" + "(" * 3000 + "1" + ")" * 3000 + "$", "\\boxed{" + "9" * 5000 + "}",
] * 2


def random_unicode(rng: random.Random, n: int) -> str:
    ranges = [(32, 126), (0x80, 0x2FFF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def worst_numeric(texts: list[str]) -> float:
    """Worst seconds per completion for extraction plus every reward term, gsm8k and arith."""
    worst = 0.0
    for text in texts:
        for task in ("gsm8k", "arith"):
            t = time.perf_counter()
            is_correct(text, "5", task)
            extract_answer(text, task)
            for name in REWARD_TERMS:
                REWARD_TERMS.get(name)(text, "5", task)
            worst = max(worst, time.perf_counter() - t)
    return worst


def worst_math(texts: list[str]) -> float:
    worst = 0.0
    for text in texts:
        t = time.perf_counter()
        grade_math([text], ["\\frac{1}{2}"])
        worst = max(worst, time.perf_counter() - t)
    return worst


def main() -> None:
    rng = random.Random(0)
    fuzz = [random_unicode(rng, rng.choice([10, 1000, 100_000])) for _ in range(200)] + ADVERSARIAL
    print(f"gsm8k/arith worst per completion ({len(fuzz)} strings up to 100k chars): "
          f"{worst_numeric(fuzz) * 1e3:.1f} ms")
    start_math_pool(2)
    print(f"math worst per completion (5 s hard limit): {worst_math(fuzz[:40] + ADVERSARIAL):.2f} s")
    t = time.perf_counter()
    wrong = not any(grade_math(PATHOLOGICAL_MATH, ["5"] * len(PATHOLOGICAL_MATH), workers=2))
    print(f"math batch of {len(PATHOLOGICAL_MATH)} pathological answers: "
          f"{(time.perf_counter() - t) * 1e3:.0f} ms (all wrong: {wrong})")

    rows = [json.loads(line) for line in (DATA / "math500" / "test.jsonl").read_text().splitlines()]
    solutions, answers = [r["solution"] for r in rows], [r["answer"] for r in rows]
    shifted = answers[1:] + answers[:1]
    for workers in (1, 2):
        t = time.perf_counter()
        own = grade_math(solutions, answers, workers=workers)
        other = grade_math(solutions, shifted, workers=workers)
        rate = 2 * len(rows) / (time.perf_counter() - t)
        print(f"MATH-500 workers={workers}: own answer correct {sum(own)}/{len(rows)}, next row's answer "
              f"wrong {len(rows) - sum(other)}/{len(rows)}, {rate:.0f} grades/s")

    gsm = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()][:64]
    golds = [r["answer"].split("####")[-1].strip().replace(",", "") for r in gsm]
    completions = [[f"<think>\n{r['answer'].split('####')[0]}</think>\n<answer>\n{g}\n</answer>"] * 16
                   for r, g in zip(gsm, golds)]
    weights = {"correctness": 1.0, "format": 1.0, "tags": 1.0, "strict_format": 1.0}
    t = time.perf_counter()
    rewards, _ = score_batch(completions, golds, "gsm8k", weights)
    dt = time.perf_counter() - t
    print(f"score_batch gsm8k [64, 16], 4 terms: {dt * 1e3:.0f} ms ({rewards.numel() / dt:.0f} completions/s)")


if __name__ == "__main__":
    main()
