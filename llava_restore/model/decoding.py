"""The decoding loop every model family shares: greedy or sampled, left-padded batch, EOS handling.

The model supplies three things: the prefill's output (``.logits`` (B, L|1, V) and ``.cache``), one
cached step (``step_cached(next_ids (A, 1), cache)``; finished rows are dropped from the cache, so
the batch shrinks instead of padding on) and one full recomputation (``step_full(ids, mask, step)``,
for ``use_cache=False``). What a family does differently (positions, vision cache, M-RoPE ids) lives
in those callables.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def pick_next(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: Optional[float],
              generator: Optional[torch.Generator]) -> torch.Tensor:  # (B, V) -> (B,)
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p is not None and top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p  # always keeps the top token
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def decode(first, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, eos: int, pad: int,
           use_cache: bool, step_cached: Callable, step_full: Callable, do_sample: bool = False,
           temperature: float = 1.0, top_p: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """-> new tokens (B, T), T <= max_new_tokens, ``pad`` after a row's EOS."""
    B, dev = ids.shape[0], ids.device
    tokens = torch.full((B, max(max_new_tokens, 0)), pad, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    active = torch.arange(B, device=dev)  # rows of the full batch still decoding (cached path)
    out, n_steps = first, 0
    for step in range(max_new_tokens):
        nxt = pick_next(out.logits[:, -1].float(), do_sample, temperature, top_p, generator)  # (A,)
        n_steps = step + 1
        if use_cache:
            tokens[active, step] = nxt
            finished = nxt == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if bool(finished.any()):  # drop finished rows: the batch shrinks instead of padding on
                keep = (~finished).nonzero(as_tuple=True)[0]
                out.cache.select_rows(keep)
                active, nxt = active[keep], nxt[keep]
            out = step_cached(nxt[:, None], out.cache)
        else:
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            tokens[:, step] = nxt
            done = done | (nxt == eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
            out = step_full(ids, mask, step)
    return tokens[:, :n_steps]
