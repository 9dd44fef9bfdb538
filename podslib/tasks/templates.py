"""Prompt templates: an `Example` as the prompt a model sees, through the tokenizer's chat
template when it has one. "pods" (system prompt, <think>/<answer>), "gsm8k" (plain, "####"),
"tiny" (the tiny char model, "Q:{expression}\\nA:"). A new template is one decorated function
(`@template("mine")` on `fn(example) -> (chat messages, plain text)`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from podslib.registry import Registry
from podslib.tasks.datasets import Example

log = logging.getLogger(__name__)

PODS_SYSTEM_PROMPT = (
    "You are a careful problem solver. First reason step by step inside <think> </think> tags, "
    "then give only the final answer inside <answer> </answer> tags, in this format:\n"
    "<think>\n...\n</think>\n<answer>\n...\n</answer>"
)

# name -> fn(example) -> (chat messages, plain-text prompt used when there is no chat template)
TEMPLATES = Registry("template")
template = TEMPLATES.register


@template("pods")
def _pods(example: Example) -> tuple[list[dict], str]:
    """System prompt asking for <think>...</think><answer>...</answer>, then the question."""
    messages = [{"role": "system", "content": PODS_SYSTEM_PROMPT},
                {"role": "user", "content": example.question}]
    return messages, f"{PODS_SYSTEM_PROMPT}\n\nQuestion: {example.question}\nAnswer:\n"


@template("gsm8k")
def _gsm8k(example: Example) -> tuple[list[dict], str]:
    """The question, then an instruction to finish with '#### <answer>'."""
    content = (f"{example.question}\nLet's think step by step and end with the final answer "
               "on its own line as '#### <answer>'.")
    return [{"role": "user", "content": content}], f"Question: {content}\nAnswer:"


@template("tiny")
def _tiny(example: Example) -> tuple[list[dict], str]:
    """The tiny char model's "Q:{content}\\nA:"; content = the expression for arith."""
    content = example.expression or example.question
    return [{"role": "user", "content": content}], f"Q:{content}\nA:"


def render_prompt(example: Example, template: str, tokenizer=None) -> str:
    """The prompt text of `example`: the tokenizer's chat template when it has one, else plain."""
    messages, plain = TEMPLATES.get(template)(example)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain


class Prompts(NamedTuple):
    """`build_prompts`' result."""

    prompts: list[str]            # the rendered prompts that fit
    kept: list[Example]           # their examples, aligned with prompts
    n_dropped: int                # examples whose prompt was too long
    longest: int                  # tokens of the longest kept prompt (0: none, or no tokenizer)


def build_prompts(examples: Sequence[Example], template: str, tokenizer,
                  max_prompt_tokens: int | None = None) -> Prompts:
    """Renders prompts and drops those longer than `max_prompt_tokens` tokens. Tokens are
    counted once, with add_special_tokens=False, as the engines encode prompts; the longest
    kept prompt is what an engine's max_model_len must hold besides the completion."""
    if max_prompt_tokens is not None and (tokenizer is None or max_prompt_tokens < 1):
        raise ValueError("max_prompt_tokens must be None, or >= 1 with a tokenizer to count tokens; "
                         f"got {max_prompt_tokens} with tokenizer={tokenizer!r}")
    rendered = [render_prompt(example, template, tokenizer) for example in examples]
    lengths = ([len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
               if tokenizer is not None and rendered else [0] * len(rendered))
    fits = [max_prompt_tokens is None or n <= max_prompt_tokens for n in lengths]
    prompts = [p for p, ok in zip(rendered, fits) if ok]
    kept = [e for e, ok in zip(examples, fits) if ok]
    n_dropped = len(examples) - len(kept)
    if n_dropped:
        log.warning("dropped %d of %d prompts longer than %d tokens", n_dropped, len(examples),
                    max_prompt_tokens)
    return Prompts(prompts, kept, n_dropped, max((n for n, ok in zip(lengths, fits) if ok),
                                                 default=0))
