"""Grading regression check: an earlier grader (from git) against this checkout's, over a large
and varied corpus, with every disagreement counted by class and shown by example.

Run from the repo root: `python bench/grading_regression.py [--old REF] [--data DIR]`. REF is a
git revision holding the earlier `podslib/tasks/grading.py` (default: a7a19be, the grader before
the careful-reader rule of docs/grading.md). The corpus, each item tagged with the class that
built it:
    gsm8k/*        every GSM8K solution (train and test) as a completion, and for each test
                   solution the same answer written in other formats (\\boxed, <answer>, "The
                   answer is", commas, units, a justification, headings, numbered steps, LaTeX
                   and Unicode forms), each graded against its gold and against gold + 1;
    table          the probed completions of the issue that introduced the rule;
    fuzz           seeded random completions from answer fragments, against a pool of golds;
    math500/*      MATH-500 solutions against their own and the next row's answer, each gold
                   boxed, and the LaTeX forms of the table (MATH grader).
A disagreement "old right, new wrong" must be one the new rule means (see the printed classes).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import random
import re
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

from podslib.tasks import grading as new

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
FRAGMENTS = ["#### ", "<answer>", "</answer>", "\\boxed{", "}", "The answer is ", "Answer: ",
             " or ", " = ", " x ", " + ", "\n", ". ", ", ", " ", "$", "%", "5", "7", "-5", "1/2",
             "0.5", ".5", "1e5", "1,000", "1\\,000", "12", "57", "\u22125", "\\frac{1}{2}",
             "Step 3: ", "#### Step 2", "(", ")", "apples", "0.0000005", "0.000001", "0"]
GOLD_POOL = ["0", "1", "5", "7", "-5", "0.5", "12", "57", "1000", "100000", "0.000001"]
CAUSES = [  # (class, pattern) naming why two graders read a completion differently, first match
    ("Unicode minus or space", r"[\u2212\u2013\uff0d\u00a0\u2009\u202f]"),
    ("LaTeX thousands separator", r"[0-9](?:\\[,!:; ]|\{,\}|,\\!)"),
    ("step number", r"(?i)\b(?:step|part|case) ?[0-9]"),
    ("#### heading", r"####[ \t]*[*_]*[A-Za-z]"),
    ("'Answer:' field", r"(?i)answer\s*:"),
    ("leading decimal point", r"(?<![0-9])\.[0-9]"),
    ("LaTeX fraction", r"\\[dt]?frac"),
    ("equation in an answer field", r"="),
]


def written(value: Fraction, form: str) -> str | None:
    """`value` written in one supported format, or None where the format does not apply."""
    text = new.normalize_number(str(value.numerator) + ("" if value.denominator == 1 else f"/{value.denominator}"))
    whole = value.denominator == 1
    n = value.numerator
    forms = {
        "plain": text,
        "commas": f"{n:,}" if whole and abs(n) >= 1000 else None,
        "dollars": ("-$" + text[1:] if n < 0 else "$" + text),
        "trailing_zeros": f"{text}.00" if whole else f"{text}00" if "." in text else None,
        "percent": f"{text}%",
        "bold": f"**{text}**",
        "unicode_minus": text.replace("-", "\u2212") if n < 0 else None,
        "arabic_digits": "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in text),
        "latex_thin_space": f"{n:,}".replace(",", "\\,") if whole and abs(n) >= 1000 else None,
        "latex_comma": f"{n:,}".replace(",", "{,}") if whole and abs(n) >= 1000 else None,
        "latex_comma_bang": f"{n:,}".replace(",", ",\\!") if whole and abs(n) >= 1000 else None,
        "narrow_nbsp": f"{n:,}".replace(",", "\u202f") if whole and abs(n) >= 1000 else None,
        "slash_fraction": None if whole else f"{n}/{value.denominator}",
        "latex_frac": None if whole else ("-" if n < 0 else "") + f"\\frac{{{abs(n)}}}{{{value.denominator}}}",
        "latex_dfrac_short": (("-" if n < 0 else "") + f"\\dfrac{abs(n)}{value.denominator}"
                              if not whole and abs(n) < 10 and value.denominator < 10 else None),
        "leading_point": text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else None,
        "scientific": (f"{n // 1000}e3" if whole and n % 1000 == 0 and n else None),
        "latex_scientific": (f"{n // 1000} \\times 10^{{3}}" if whole and n % 1000 == 0 and n else None),
    }
    return forms[form]


FORMS = ["plain", "commas", "dollars", "trailing_zeros", "percent", "bold", "unicode_minus",
         "arabic_digits", "latex_thin_space", "latex_comma", "latex_comma_bang", "narrow_nbsp",
         "slash_fraction", "latex_frac", "latex_dfrac_short", "leading_point", "scientific",
         "latex_scientific"]
FIELDS = {"hashes": "#### {}", "answer_tag": "<answer>\n{}\n</answer>", "boxed": "$\\boxed{{{}}}$",
          "answer_is": "The answer is {}.", "final_answer": "**Final Answer:** {}",
          "last_number": "So the result is {}."}
JUSTIFICATIONS = ["none", "unit", "equation_after", "because", "equation_before"]
CONTEXTS = ["reasoning", "step_headings", "numbered_steps", "trailing_heading"]


def generated(rng: random.Random, count: int) -> list[tuple]:
    """(class, completion, gold, expected) items: a value written in a random supported format, field,
    justification and context, against its gold and against gold + 1."""
    items = []
    while len(items) < 2 * count:
        value = Fraction(rng.choice([rng.randint(-99, 99), rng.randint(1000, 10**7),
                                     rng.randint(1, 9) * 1000, rng.randint(-999, 999)]),
                         rng.choice([1, 1, 1, 2, 4, 5, 8, 10, 100]))
        form, field, why = rng.choice(FORMS), rng.choice(list(FIELDS)), rng.choice(JUSTIFICATIONS)
        answer = written(value, form)
        if answer is None or (field == "last_number" and why != "none"):
            continue
        gold = new.normalize_number(f"{value.numerator}/{value.denominator}")
        a = new.normalize_number(f"{value.numerator - 3 * value.denominator}/{value.denominator}")
        working = f"{a} + 3"
        answer = {"none": answer, "unit": f"{answer} apples",
                  "equation_after": f"{answer} ({working} = {answer})",
                  "because": f"{answer}, because {working} = {answer}",
                  "equation_before": f"{working} = {answer}"}[why]
        context = rng.choice(CONTEXTS)
        before = {"reasoning": "She had 3 bags of 7 apples and ate 2, so 3 * 7 - 2 = 19.\n",
                  "step_headings": "#### Step 1: Count\nShe had 3 bags.\n#### Step 2: Answer\n",
                  "numbered_steps": "1. She had 3 bags.\n2. Each held 7 apples.\n",
                  "trailing_heading": "She had 3 bags of 7 apples.\n"}[context]
        after = "\n\n#### Explanation 2\nShe used 3 steps." if context == "trailing_heading" else ""
        if field == "last_number":
            after = ""
        text = before + FIELDS[field].format(answer) + after
        cls = f"gen/{form}"
        items += [(cls, text, gold, True),
                  (cls, text, str(value.numerator // value.denominator + 1), False)]
    return items


def cause(text: str, old_answer: str | None, new_answer: str | None) -> str:
    """Why two graders disagree on a completion: the same answer read (only the tolerance
    differs), or the first feature of CAUSES it holds."""
    if old_answer == new_answer:
        return "same answer, no 1e-6 tolerance now"
    for name, pattern in CAUSES:
        if re.search(pattern, text):
            return name
    return "other, new: no answer" if new_answer is None else "other"


def load_old(ref: str):
    """The grading module at git revision `ref`, imported under another name."""
    source = subprocess.run(["git", "show", f"{ref}:podslib/tasks/grading.py"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_grading.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_grading", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_grading"] = module        # its MATH workers unpickle functions by module name
    spec.loader.exec_module(module)
    return module


def gsm8k_rows(data: Path, split: str) -> list[tuple[str, str]]:
    """(solution, gold) of every row of a GSM8K split."""
    rows = [json.loads(line) for line in (data / "gsm8k" / f"{split}.jsonl").open()]
    return [(r["answer"], r["answer"].split("####")[-1].strip().replace(",", "")) for r in rows]


def variants(solution: str, gold: str) -> dict[str, str]:
    """The same answer `gold` written in other formats after the solution's working."""
    body = solution.rsplit("####", 1)[0].rstrip() + "\n"
    value = int(gold)
    comma = f"{value:,}"
    calc = re.findall(r"<<([^=<>]+)=([^<>]+)>>", body)
    last = calc[-1] if calc and calc[-1][1] == gold else (f"{value - 1}+1", gold)
    working = f"{last[0]} = {last[1]}"         # the solution's last calculation, if it gives gold
    numbered = "".join(f"{i}. {line}\n" for i, line in enumerate(body.splitlines(), 1))
    out = {
        "boxed": f"{body}So the total is $\\boxed{{{gold}}}$.",
        "answer_tag": f"<think>\n{body}</think>\n<answer>\n{gold}\n</answer>",
        "answer_is": f"{body}The answer is {gold}.",
        "final_answer_colon": f"{body}**Final Answer:** {gold}",
        "no_field": body,
        "commas": f"{body}#### {comma}",
        "dollars": f"{body}#### ${comma}.00",
        "units": f"{body}#### {gold} apples",
        "bold": f"{body}#### **{gold}**",
        "justified": f"{body}#### {gold} ({working})",
        "answer_is_equation": f"{body}The answer is {working}.",
        "heading_after": f"{body}#### {gold}\n\n#### Explanation 2\nWe used 3 steps.",
        "step_heading": f"#### Step 1: Work\n{body}#### Step 3: Final Answer\nThe total is \\boxed{{{gold}}}.",
        "numbered_steps": f"{numbered}#### {gold}",
        "boxed_frac": f"{body}\\boxed{{\\frac{{{2 * value}}}{{2}}}}",
        "hedge": f"{body}#### {gold} or {value + 1}",
        "unicode_minus": f"{body}#### {gold.replace('-', chr(0x2212))}",
    }
    if abs(value) >= 1000:
        out["latex_thin_space"] = f"{body}\\boxed{{{comma.replace(',', chr(92) + ',')}}}"
        out["latex_comma"] = f"{body}\\boxed{{{comma.replace(',', '{,}')}}}"
        out["latex_comma_bang"] = f"{body}\\boxed{{{comma.replace(',', ',' + chr(92) + '!')}}}"
        out["narrow_nbsp"] = f"{body}#### {comma.replace(',', chr(0x202F))}"
    return out


TABLE = [  # (completion, gold, what a careful reader says)
    ("#### Step 3: Final Answer\nSo she has \\boxed{18} apples.", "18", True),
    ("#### 18\n\nWhy:\n#### Explanation 2\nShe bought 3 bags of 6.", "18", True),
    ("#### \u22125", "-5", True), ("\\boxed{\u22125}", "-5", True),
    ("\\boxed{1\\,000}", "1000", True), ("\\boxed{1{,}000}", "1000", True),
    ("\\boxed{1,\\!000}", "1000", True), ("\\boxed{\\dfrac12}", "0.5", True),
    ("She had 7 cookies. #### .5", "0.5", True), ("#### 18 (6 x 3 = 18)", "18", True),
    ("The answer is 6 * 3 = 18.", "18", True),
    ("#### 0.0000005", "0", False), ("#### 0.0000005", "0.000001", False),
]


PATHOLOGICAL = ["\\boxed{" + "{" * 50_000 + "}", "{" * 50_000,  # no MATH answer: wrong at once
                "\\boxed{" + "\\frac{1}{" * 5000 + "2" + "}" * 5000 + "}",
                "\\boxed{2^{2^{2^{2^{100}}}}}", "\\boxed{10^{10^{10}}}", "\\boxed{(10!)!}",
                "\\boxed{" + "9" * 5000 + "}", "$" + "(" * 3000 + "1" + ")" * 3000 + "$"]


def numeric_corpus(data: Path, rng: random.Random, fuzz: int) -> list[tuple]:
    """(class, completion, gold, expected or None) items for the numeric graders."""
    items = []
    for split in ("train", "test"):
        for solution, gold in gsm8k_rows(data, split):
            items += [(f"gsm8k/{split}", solution, gold, True),
                      (f"gsm8k/{split}", solution, str(int(gold) + 1), False)]
    for solution, gold in gsm8k_rows(data, "test"):
        for name, text in variants(solution, gold).items():
            right = None if name == "no_field" else name != "hedge"   # no field: the last number
            items += [(f"gsm8k/{name}", text, gold, right),
                      (f"gsm8k/{name}", text, str(int(gold) + 1), False)]
    items += [("table", completion, gold, right) for completion, gold, right in TABLE]
    items += generated(rng, fuzz)
    for _ in range(fuzz):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))
        items += [("fuzz", text, gold, None) for gold in GOLD_POOL]
    return items


def math_corpus(data: Path) -> list[tuple]:
    """(class, completion, gold, expected or None) items for the MATH grader."""
    rows = [json.loads(line) for line in (data / "math500" / "test.jsonl").open()]
    items = []
    for i, row in enumerate(rows):
        gold, other = row["answer"], rows[(i + 1) % len(rows)]["answer"]
        items += [("math500/solution", row["solution"], gold, None),
                  ("math500/solution", row["solution"], other, None),
                  ("math500/boxed_gold", f"\\boxed{{{gold}}}", gold, True)]
        if re.fullmatch(r"[0-9]{4,}", gold):
            grouped = f"{int(gold):,}"
            for name, sep in (("thin_space", "\\,"), ("comma", "{,}"), ("comma_bang", ",\\!"),
                              ("narrow_nbsp", "\u202f")):
                items += [(f"math500/{name}", f"\\boxed{{{grouped.replace(',', sep)}}}", gold, True)]
    items += [("table", completion, gold, right) for completion, gold, right in TABLE
              if "\\boxed" in completion or "0.0000005" in completion or "\u2212" in completion]
    items += [("pathological", text, "5", False) for text in PATHOLOGICAL]
    return items


def family(cls: str) -> str:
    """The line of the summary a class is counted in: gen/* and fuzz* together."""
    cls = cls.split(" |")[0]
    return cls.split("/")[0] if cls.startswith(("gen/", "fuzz")) else cls


def compare(items, old_grade, new_grade, label: str, show: int, explain=None) -> None:
    """Prints the disagreements of two graders (fn(completions, golds) -> [bool]) by class, and
    where the new grader differs from an item's expected grade; a disagreement's class is refined
    by `explain(completion)` when given (fuzz: every one; others: old right, new wrong)."""
    completions, golds = [c for _, c, _, _ in items], [g for _, _, g, _ in items]
    old, newer = old_grade(completions, golds), new_grade(completions, golds)
    totals = collections.Counter(family(cls) for cls, _, _, _ in items)
    flips, misses = collections.defaultdict(list), collections.defaultdict(list)
    for (cls, completion, gold, expected), a, b in zip(items, old, newer, strict=True):
        if expected is not None and b != expected:
            misses[cls].append((completion, gold))
        if a != b:
            if explain is not None and (cls == "fuzz" or a):
                cls = f"{cls} | {explain(completion)}"
            flips[(cls, "old right, new wrong" if a else "old wrong, new right")].append(
                (completion, gold))
    print(f"\n== {label}: {len(items)} gradings, {sum(map(len, flips.values()))} disagreements, "
          f"{sum(map(len, misses.values()))} new grades unlike the expected one")
    for name, n in sorted(totals.items()):
        flipped = sum(len(v) for k, v in flips.items() if family(k[0]) == name)
        missed = sum(len(v) for k, v in misses.items() if family(k) == name)
        print(f"{name:28s} {n:7d} gradings {flipped:6d} disagreements {missed:4d} unexpected")
    print(f"\n{'disagreement class':60s} old right, new wrong   old wrong, new right")
    for cls in sorted({k[0] for k in flips}):
        a, b = len(flips[(cls, "old right, new wrong")]), len(flips[(cls, "old wrong, new right")])
        print(f"{cls:60s} {a:20d} {b:22d}")
    for (cls, direction), cases in sorted(flips.items()):
        if cases:
            print(f"\n-- {cls}: {direction} ({len(cases)})")
            for completion, gold in cases[:show]:
                print(f"   gold {gold!r:12s} {completion[-150:]!r}")
    for cls, cases in sorted(misses.items()):
        print(f"\n-- UNEXPECTED new grade, {cls} ({len(cases)})")
        for completion, gold in cases[:show]:
            print(f"   gold {gold!r:12s} {completion[-150:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="a7a19be", help="git revision of the earlier grader")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with gsm8k/, math500/")
    parser.add_argument("--fuzz", type=int, default=5000,
                        help="generated and random completions each (numeric)")
    parser.add_argument("--show", type=int, default=5, help="examples shown per class")
    parser.add_argument("--no-math", action="store_true", help="skip the MATH grader (slow)")
    args = parser.parse_args()
    old = load_old(args.old)
    rng = random.Random(0)
    items = numeric_corpus(args.data, rng, args.fuzz)
    compare(items, lambda c, g: [old.is_correct(x, y, "gsm8k") for x, y in zip(c, g)],
            lambda c, g: [new.is_correct(x, y, "gsm8k") for x, y in zip(c, g)],
            "numeric grader (gsm8k; arith is the same grader)", args.show,
            lambda text: cause(text, old.extract_answer(text, "gsm8k"),
                               new.extract_answer(text, "gsm8k")))
    if not args.no_math:
        items = math_corpus(args.data)
        compare(items, lambda c, g: old.grade_math(c, g, workers=2),
                lambda c, g: new.grade_math(c, g, workers=2), "MATH grader", args.show)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
