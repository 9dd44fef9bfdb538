"""A few supervised steps on the tiny model so that greedy output depends on the prompt (shared
by the engine tests; not a test module)."""

import torch


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
