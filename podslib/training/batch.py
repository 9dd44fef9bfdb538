"""The selected rollouts as training tensors, and what a model says about their tokens.

A `Batch` holds B selected rollouts: the prompt left-padded to P tokens and the completion
right-padded to C, so every row's completion starts at column P and one forward pass gives,
for every completion token ([B, C]): its log-probability and the entropy under the training
distribution, softmax(logits / T) (what the GRPO ratio, the KL and the entropy bonus use; T is 1
or the sampling temperature, Config.logprob_temperature), and, for the importance correction,
its log-probability under the sampling distribution (temperature and top-p applied, as the
engines report it).
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
    completion_mask: Tensor  # [B, C] 1 on completion tokens (EOS included) that are trained
    advantages: Tensor      # [B]
    sampler_logprobs: Tensor  # [B, C] the engine's log-probs of the tokens (0 on padding)
    prompt_len: int         # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.attention_mask[start:stop],
                     self.completion_mask[start:stop], self.advantages[start:stop],
                     self.sampler_logprobs[start:stop], self.prompt_len)


@dataclass
class TokenOutputs:
    """What one forward pass gives for each completion token."""

    logprobs: Tensor                  # [B, C] log pi(token) under softmax(logits / T)
    entropy: Tensor                   # [B, C] entropy of softmax(logits / T)
    sampling_logprobs: Tensor | None  # [B, C] log-prob under the sampling distribution


def build_batch(groups: list, idx: Tensor, adv: Tensor, train: Tensor, pad_id: int) -> Batch:
    """Tensors of the selected rollouts (idx [g, m], adv [g, m]) of this rank's groups; a row
    whose `train` [g, m] is False (its group dropped, or its completion truncated and masked)
    is left out: prompt left-padded, completion right-padded."""
    rows = [(group.prompt_token_ids, group.completions[i], float(adv[g, j]))
            for g, group in enumerate(groups) for j, i in enumerate(idx[g].tolist())
            if train[g, j]]
    if not rows:
        empty = torch.zeros((0, 1), dtype=torch.long)
        return Batch(empty, empty, empty.float(), torch.zeros(0), empty.float(), 0)
    P = max(len(p) for p, _, _ in rows)
    C = max(1, max(len(c.token_ids) for _, c, _ in rows))
    ids = torch.full((len(rows), P + C), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask, sampler = torch.zeros((len(rows), C)), torch.zeros((len(rows), C))
    for r, (p, c, _) in enumerate(rows):
        n = len(c.token_ids)
        ids[r, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[r, P - len(p):P + n] = 1
        if n:
            ids[r, P:P + n] = torch.tensor(c.token_ids, dtype=torch.long)
            cmask[r, :n] = 1
            if c.logprobs is not None:
                sampler[r, :n] = torch.tensor(c.logprobs)
    return Batch(ids, attn, cmask, torch.tensor([a for _, _, a in rows]), sampler, P)


def completion_logits(model, batch: Batch) -> tuple[Tensor, Tensor]:
    """One forward pass (position ids follow the left padding, as in generate) -> (logits
    [B, C, V] float of every completion position, targets [B, C, 1] its tokens)."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    attn = batch.attention_mask.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions).logits
    return logits[:, batch.prompt_len - 1:-1].float(), ids[:, batch.prompt_len:].unsqueeze(-1)


def completion_logprobs(model, batch: Batch, temperature: float = 1.0) -> Tensor:
    """log-probs [B, C] of each completion token under softmax(logits / temperature)."""
    logits, targets = completion_logits(model, batch)
    return _token_logprobs(logits / temperature, targets)


def _token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """logits [B, C, V], targets [B, C, 1] -> log softmax(logits) at the targets, [B, C]."""
    return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_outputs(model, batch: Batch, temperature: float = 1.0,
                       sampler: tuple[float, float] | None = None) -> TokenOutputs:
    """The TokenOutputs of every completion position from one forward pass: log-probs and
    entropy under softmax(logits / temperature); with `sampler` = (temperature, top_p) of the
    engine, also the sampling distribution's log-probs (a sort over the vocabulary if
    top_p < 1)."""
    logits, targets = completion_logits(model, batch)
    scaled = logits / temperature
    logprobs = _token_logprobs(scaled, targets)
    log_p = torch.log_softmax(scaled, dim=-1)                                 # [B, C, V]
    entropy = -(log_p.exp() * log_p).sum(-1)
    sampled = None
    if sampler is not None:
        sampling_temperature, top_p = sampler
        tempered = (log_p if sampling_temperature == temperature
                    else torch.log_softmax(logits / sampling_temperature, dim=-1))
        if top_p < 1:
            tempered = nucleus_log_softmax(tempered, top_p)
        sampled = tempered.gather(-1, targets).squeeze(-1)
    return TokenOutputs(logprobs, entropy, sampled)


def nucleus_log_softmax(logp: Tensor, top_p: float) -> Tensor:
    """log-probs [..., V] restricted to the smallest set of tokens with mass >= top_p (the
    most likely first) and renormalised; -inf outside it."""
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    probs = sorted_logp.exp()
    outside = (probs.cumsum(-1) - probs) >= top_p            # mass before the token already >= p
    kept = sorted_logp.masked_fill(outside, float("-inf"))
    kept = kept - torch.logsumexp(kept, dim=-1, keepdim=True)
    return torch.empty_like(logp).scatter_(-1, order, kept)


def micro_batches(batch: Batch, size: int) -> list[Batch]:
    return [batch.rows(s, s + size) for s in range(0, len(batch), size)]


def blank_batch() -> Batch:
    """One row with no completion token: its GRPO loss and gradient are exactly 0. Pads a rank's
    micro-batches to the count of the busiest rank (each pass of a sharded model is collective)."""
    return Batch(torch.zeros((1, 2), dtype=torch.long), torch.ones((1, 2), dtype=torch.long),
                 torch.zeros((1, 1)), torch.zeros(1), torch.zeros((1, 1)), 1)


