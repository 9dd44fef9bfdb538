"""The selected rollouts as training tensors, and their log-probabilities under a model.

A `Batch` holds B selected rollouts: the prompt left-padded to P tokens and the completion
right-padded to C, so every row's completion starts at column P and one forward pass gives the
log-probability of every completion token ([B, C]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """This rank's selected rollouts, flattened to B = (kept groups) * m rows."""

    input_ids: Tensor       # [B, P + C] prompt left-padded to P, completion right-padded to C
    attention_mask: Tensor  # [B, P + C]
    completion_mask: Tensor  # [B, C] 1 on completion tokens (EOS included)
    advantages: Tensor      # [B]
    prompt_len: int         # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.attention_mask[start:stop],
                     self.completion_mask[start:stop], self.advantages[start:stop], self.prompt_len)


def build_batch(groups: list, idx: Tensor, adv: Tensor, keep: Tensor, pad_id: int) -> Batch:
    """Tensors of the selected rollouts of the kept groups of this rank (idx, adv, keep are this
    rank's rows): prompt left-padded, completion right-padded."""
    prompts, completions, advantages = [], [], []
    for g, group in enumerate(groups):
        if not keep[g]:
            continue
        for j, i in enumerate(idx[g].tolist()):
            prompts.append(group.prompt_token_ids)
            completions.append(group.completions[i].token_ids)
            advantages.append(float(adv[g, j]))
    if not prompts:
        empty = torch.zeros((0, 1), dtype=torch.long)
        return Batch(empty, empty, empty.float(), torch.zeros(0), 0)
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    ids = torch.full((len(prompts), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros((len(prompts), C))
    for r, (p, c) in enumerate(zip(prompts, completions)):
        ids[r, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[r, P - len(p):P + len(c)] = 1
        if c:
            ids[r, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
            cmask[r, :len(c)] = 1
    return Batch(ids, attn, cmask, torch.tensor(advantages), P)


def completion_logprobs(model, batch: Batch) -> Tensor:
    """log pi(token) of each completion position, [B, C], from one forward pass (raw logits,
    temperature 1, as the engines report; position ids follow the left padding as in generate)."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    attn = batch.attention_mask.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits
    logits = logits[:, batch.prompt_len - 1:-1].float()                      # [B, C, V]
    targets = ids[:, batch.prompt_len:]                                      # [B, C]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def micro_batches(batch: Batch, size: int) -> list[Batch]:
    return [batch.rows(s, s + size) for s in range(0, len(batch), size)]


def blank_batch() -> Batch:
    """One row with no completion token: its GRPO loss and gradient are exactly 0. Pads a rank's
    micro-batches to the count of the busiest rank (each pass of a sharded model is collective)."""
    return Batch(torch.zeros((1, 2), dtype=torch.long), torch.ones((1, 2), dtype=torch.long),
                 torch.zeros((1, 1)), torch.zeros(1), 1)


