"""Helpers shared by the engine tests (not a test module): vLLM required or skipped, a few
supervised steps that make the tiny model's greedy output prompt-dependent, and the check of
reported log-probs."""

import os

import pytest
import torch

from podslib.rollout import vllm_available


def require_vllm() -> None:
    """Skip without vLLM, except under CI=true, where that is a failure."""
    if vllm_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("vllm is not importable but CI=true requires the vLLM tests (run `make setup`)",
                    pytrace=False)
    pytest.skip("vllm is not importable (run `make setup`)")


def sft(model, tok, steps: int = 60, lr: float = 3e-3, seed: int = 0):
    """AdamW steps on "Q:a+b\\nA:a+b=c<eos>" (a, b drawn from `seed`): enough to make greedy
    output prompt-dependent, and, run again with another seed, to change it. Returns `model`."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        a, b = torch.randint(1, 99, (2, 16), generator=gen).tolist()
        texts = [f"Q:{x}+{y}\nA:{x}+{y}={x + y}{tok.eos_token}" for x, y in zip(a, b)]
        batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model


def assert_sampling_logprobs(model, group, temperature: float, top_p: float = 1.0) -> None:
    """Each completion's reported log-probs are those of the distribution its tokens were drawn
    from: one forward pass over prompt + completion, logits / temperature, restricted to the
    smallest set of tokens with mass >= top_p and renormalised (brute force, token by token)."""
    p = len(group.prompt_token_ids)
    for c in group.completions:
        ids = torch.tensor([group.prompt_token_ids + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, p - 1 : -1].float()
        expected = []
        for row, token in zip(logits, c.token_ids):
            probs = torch.softmax(row / temperature, dim=-1)
            order = probs.argsort(descending=True)
            mass, nucleus = 0.0, []
            for i in order.tolist():
                nucleus.append(i)
                mass += float(probs[i])
                if mass >= top_p:
                    break
            assert token in nucleus, "a token outside the nucleus was sampled"
            expected.append(torch.log(probs[token] / probs[nucleus].sum()))
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.stack(expected),
                                   atol=1e-4, rtol=1e-4)
