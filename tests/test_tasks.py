"""podslib.tasks: loaders (local JSONL, folders, hub ids offline), the arith generator, templates."""
import ast
import json
import operator
import re

import pytest

from podslib.models.tiny import char_tokenizer
from podslib.tasks import datasets
from podslib.tasks.datasets import Example, load_task, make_arith
from podslib.tasks.templates import build_prompts, render_prompt

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expression: str) -> int:
    """Independent oracle: walk the Python AST of the expression (only ints and + - *)."""
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise AssertionError(f"unexpected node {ast.dump(node)}")
    return walk(ast.parse(expression, mode="eval"))


# --------------------------------------------------------------------------- arith

@pytest.mark.parametrize("operators", [("+", "-"), ("+", "-", "*")])
def test_arith_gold_matches_independent_evaluation(operators):
    for ex in make_arith(2000, seed=3, steps=(1, 5), operators=operators):
        value = _evaluate(ex.expression)
        assert ex.gold == str(value)
        assert ex.solution.endswith(f"\n#### {value}")


def test_arith_solution_lines_evaluate_left_to_right():
    """Each line 'a op b = c' is right, chains from the previous result, and values stay >= 0."""
    for ex in make_arith(500, seed=1, steps=(2, 4)):
        *lines, final = ex.solution.split("\n")
        assert 2 <= len(lines) <= 4
        previous = None
        for line in lines:
            lhs, rhs = line.split("=")
            assert _evaluate(lhs) == int(rhs) >= 0
            if previous is not None:
                assert lhs.startswith(str(previous))
            previous = int(rhs)
        assert final == f"#### {previous}"


def test_arith_question_tells_the_same_story():
    """The word problem states the operands in the order of the expression."""
    for ex in make_arith(200, seed=2, operators=("+", "-", "*")):
        operands = [int(x) for x in re.findall(r"\d+", ex.expression)]
        assert [int(x) for x in re.findall(r"\d+", ex.question)] == operands
        assert ex.question.endswith("now?") and ex.id.startswith("arith-train-2-")


def test_arith_deterministic_per_seed_and_seeds_differ():
    assert make_arith(300, seed=7) == make_arith(300, seed=7)
    assert load_task("arith", "train", limit=50, seed=7) == make_arith(50, seed=7)
    assert [e.expression for e in make_arith(50, seed=7)] != [e.expression for e in make_arith(50, seed=8)]


def test_arith_train_and_test_never_overlap():
    train = {e.expression for s in range(3) for e in make_arith(20000, seed=s, split="train")}
    test = {e.expression for s in range(3) for e in make_arith(2000, seed=s, split="test")}
    assert len(test) > 5000 and not train & test


def test_arith_knobs_are_respected():
    for ex in make_arith(300, seed=0, steps=(4, 4), operand_range=(10, 20)):
        nums = [int(x) for x in ex.expression.replace("-", "+").split("+")]
        assert len(nums) == 5 and all(10 <= x <= 20 for x in nums)
    assert any("*" in e.expression for e in make_arith(50, seed=0, operators=("+", "*")))


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": (3, 2)}, "steps"), ({"operand_range": (5, 1)}, "operand_range"),
    ({"operators": ("/",)}, "operators"), ({"split": "dev"}, "split"),
])
def test_arith_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_arith(10, seed=0, **kwargs)


def test_arith_too_small_space_fails_clearly():
    with pytest.raises(ValueError, match="distinct"):
        make_arith(100, seed=0, steps=(1, 1), operand_range=(1, 2))


# --------------------------------------------------------------------------- real data

def test_gsm8k_local_folder_and_file(data_dir):
    test = load_task("gsm8k", "test", str(data_dir / "gsm8k"))
    assert len(test) == 1319
    assert test[0].gold == "18" and test[0].question.startswith("Janet")
    assert load_task("gsm8k", "test", str(data_dir / "gsm8k" / "test.jsonl")) == test
    assert all("," not in e.gold for e in test)


def test_math500_local(data_dir):
    rows = load_task("math500", "test", str(data_dir / "math500"))
    assert len(rows) == 500 and rows[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0].id == "test/precalculus/807.json"
    assert load_task("math", "test", str(data_dir / "math500")) != []


def test_limit_is_a_deterministic_subsample(data_dir):
    folder = str(data_dir / "gsm8k")
    a = load_task("gsm8k", "test", folder, limit=20, seed=1)
    assert a == load_task("gsm8k", "test", folder, limit=20, seed=1)
    assert a != load_task("gsm8k", "test", folder, limit=20, seed=2)
    full = load_task("gsm8k", "test", folder)
    positions = [full.index(e) for e in a]
    assert len(a) == 20 and positions == sorted(positions)


# --------------------------------------------------------------------------- bad inputs

def test_math_train_row_without_answer_uses_last_boxed(tmp_path):
    row = {"problem": "1+1?", "solution": "It is $\\boxed{1}$... no, $\\boxed{\\frac{4}{2}}$."}
    (tmp_path / "train.jsonl").write_text(json.dumps(row) + "\n")
    assert load_task("math", "train", str(tmp_path))[0].gold == "\\frac{4}{2}"


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": oops}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl' line 3 is not valid JSON"):
        load_task("gsm8k", "test", str(path))


def test_an_empty_data_file_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"gsm8k train data '.*train\.jsonl' holds no examples"):
        load_task("gsm8k", "train", str(tmp_path))


def test_missing_file_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_task("gsm8k", "test", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task("gsm8k", "test", "data/nope.jsonl")
    with pytest.raises(ValueError, match="task must be one of"):
        load_task("mmlu", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_task("gsm8k", "validation")
    with pytest.raises(ValueError, match="math500"):
        load_task("math500", "train")


def test_hub_id_without_network_says_so(monkeypatch):
    def offline(hub_id, config, split):
        raise ConnectionError("Failed to resolve 'huggingface.co'")
    monkeypatch.setattr(datasets, "_load_hub_rows", offline)
    with pytest.raises(ValueError, match="no network.*local JSONL") as err:
        load_task("gsm8k", "test")          # default source: openai/gsm8k
    assert "openai/gsm8k" in str(err.value)
    with pytest.raises(datasets.SourceUnavailableError, match="HuggingFaceH4/MATH-500"):
        load_task("math500", "test", "HuggingFaceH4/MATH-500")


def test_hub_subsets_are_concatenated(monkeypatch):
    """MATH train from EleutherAI/hendrycks_math: 7 subjects, gold from the last \\boxed."""
    calls = []

    def fake(hub_id, config, split):
        calls.append(config)
        return [{"problem": f"{config}?", "solution": f"so $\\boxed{{{len(calls)}}}$"}]
    monkeypatch.setattr(datasets, "_load_hub_rows", fake)
    rows = load_task("math", "train")
    assert len(calls) == 7 and [r.gold for r in rows] == [str(i) for i in range(1, 8)]


# --------------------------------------------------------------------------- templates

EX = Example(question="Tom has 3 apples. Then Tom gets 4 more apples.", gold="7", task="arith",
             solution="3+4=7\n#### 7", expression="3+4")


class FakeChatTokenizer:
    """Records messages; renders '<|role|>content' lines, then '<|assistant|>'."""
    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"


def test_tiny_template_with_and_without_chat_template():
    assert render_prompt(EX, "tiny") == "Q:3+4\nA:"
    assert render_prompt(EX, "tiny", char_tokenizer()) == "Q:3+4\nA:"
    no_expr = Example(question="What is 2+2?", gold="4", task="gsm8k")
    assert render_prompt(no_expr, "tiny") == "Q:What is 2+2?\nA:"


def test_pods_and_gsm8k_templates():
    chat = render_prompt(EX, "pods", FakeChatTokenizer())
    assert chat.startswith("<|system|>") and "<think>" in chat and "<answer>" in chat
    assert f"<|user|>{EX.question}\n<|assistant|>" in chat
    plain = render_prompt(EX, "pods")
    assert "<think>" in plain and EX.question in plain
    assert "####" in render_prompt(EX, "gsm8k") and EX.question in render_prompt(EX, "gsm8k")
    with pytest.raises(ValueError, match="template must be one of"):
        render_prompt(EX, "alpaca")


def test_build_prompts_drops_long_prompts(caplog):
    """Char tokenizer: 'Q:3+4\\nA:' is 8 tokens; a 9-op expression gives 2 ('Q:') + 19 + 3 ('\\nA:') = 24."""
    tok = char_tokenizer()
    long = Example(question="q", gold="0", task="arith", expression="1+1+1+1+1+1+1+1+1+1")
    prompts, kept, n_dropped, longest = build_prompts([EX, long, EX], "tiny", tok,
                                                      max_prompt_tokens=8)
    assert prompts == ["Q:3+4\nA:"] * 2 and kept == [EX, EX] and n_dropped == 1
    assert longest == 8                                 # of the kept prompts, not the dropped 24
    assert build_prompts([EX, long], "tiny", tok).longest == 24
    assert build_prompts([], "tiny", tok).longest == 0
    assert "dropped 1 of 3" in caplog.text
    assert build_prompts([EX, long], "tiny", tok, max_prompt_tokens=24)[2] == 0
    assert build_prompts([EX, long], "tiny", tok, max_prompt_tokens=23)[2] == 1
    assert build_prompts([EX, long], "tiny", None, None)[2] == 0
