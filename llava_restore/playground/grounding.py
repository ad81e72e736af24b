"""Optional attention supervision for playground training (a training aid, not part of RESTORE).

A from-scratch 1M-parameter decoder learns to *find* the object a question is about very slowly
(see playground/README.md). With the builder's grounding side file (the boxes of the objects each
training turn is about), this adds a loss that asks one head of some layers, at the position that
predicts the first answer token, to put its attention mass on those objects' patches:

    L_ground = mean over grounded turns t, supervised layers l of  -log sum_{j in P_t} a_l(q_t, j)

where a_l is the softmax attention of head 0 of layer l, q_t the last prompt position of turn t
and P_t the sequence positions of the patches whose centre lies in one of the turn's boxes. Only
unreduced batches are supervised (patch k is then the k-th visual position of its sample).

The capture is per model instance (forward hooks on the chosen attention modules, removed by
``close``); no library class is patched.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from llava_restore.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_restore.model.llama import apply_rope


class AttnInputs:
    """Records the (normed) input and RoPE tables of the chosen layers' attention, per forward."""

    def __init__(self, model, layers: Sequence[int]):
        blocks = model.model.layers
        n = len(blocks)
        bad = [l for l in layers if not -n <= l < n]
        if bad:
            raise ValueError(f"ground_layers {list(bad)} out of range for a {n}-layer decoder")
        self.layers = sorted({l % n for l in layers})
        self.modules = {l: blocks[l].self_attn for l in self.layers}
        self.seen: Dict[int, tuple] = {}
        self._hooks = [m.register_forward_hook(self._hook(l)) for l, m in self.modules.items()]

    def _hook(self, layer: int):
        def fn(module, args, out):
            x, cos, sin = args[0], args[1], args[2]
            self.seen[layer] = (x, cos, sin)
        return fn

    def clear(self) -> None:
        self.seen = {}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def patch_mask(boxes: Sequence[Sequence[int]], grid: int, patch: int, device) -> torch.Tensor:
    """(grid*grid,) bool: patches whose centre lies inside one of ``boxes`` ([x, y, w, h] pixels)."""
    c = torch.arange(grid, device=device) * patch + patch // 2
    m = torch.zeros(grid, grid, dtype=torch.bool, device=device)
    for x, y, w, h in boxes:
        m |= ((c >= y) & (c < y + h))[:, None] & ((c >= x) & (c < x + w))[None, :]
    return m.flatten()


def answer_queries(labels: torch.Tensor) -> List[List[int]]:
    """Per sample, the position before each supervised span (it predicts the span's first token)."""
    sup = labels != IGNORE_INDEX  # (B, L)
    starts = sup & ~torch.nn.functional.pad(sup, (1, 0))[:, :-1]
    return [(row.nonzero(as_tuple=True)[0] - 1).tolist() for row in starts]


def spliced_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, prepared) -> torch.Tensor:
    """(B, L) the text token id at each position of the spliced sequence (-1 on visual/padding)."""
    out = torch.full(prepared.valid.shape, -1, dtype=torch.long, device=prepared.valid.device)
    for b in range(out.shape[0]):
        text = input_ids[b][attention_mask[b].bool() & (input_ids[b] != IMAGE_TOKEN_INDEX)]
        slots = prepared.valid[b] & ~prepared.visual[b]
        out[b, slots] = text.to(out.device)
    return out


def query_spans(ids: torch.Tensor, labels: torch.Tensor, mention_ids: torch.Tensor, from_mention: bool):
    """Per sample, per supervised turn, the query positions to supervise: the position predicting
    the answer's first token, and with ``from_mention`` every position from the turn's last
    mention word (a colour, a shape, "object") up to it."""
    ends = answer_queries(labels)
    spans = []
    for b, row in enumerate(ends):
        sup = (labels[b] != IGNORE_INDEX).tolist()
        is_mention = torch.isin(ids[b], mention_ids).tolist()
        turns, prev_end = [], 0
        for q in row:
            start = q
            if from_mention:
                for p in range(q, prev_end - 1, -1):
                    if is_mention[p]:
                        start = p
                        break
            turns.append(list(range(start, q + 1)))
            prev_end = q + 1
            while prev_end < len(sup) and sup[prev_end]:
                prev_end += 1
        spans.append(turns)
    return spans


def grounding_loss(cap: AttnInputs, prepared, grounding: Sequence[Sequence[Sequence[Sequence[int]]]],
                   grid: int, patch: int, head: int = 0, spans=None) -> torch.Tensor | None:
    """The mean -log attention mass on the asked-about patches, or None when nothing is grounded.
    ``spans`` (from ``query_spans``): the query positions per turn; default: the answer position."""
    if prepared.labels is None or any(r.features.shape[1] != grid * grid for r in prepared.reductions):
        return None
    if spans is None:
        spans = [[[q] for q in row] for row in answer_queries(prepared.labels)]
    terms = []
    for layer in cap.layers:
        x, cos, sin = cap.seen[layer]
        attn = cap.modules[layer]
        B, L, _ = x.shape
        d = attn.head_dim
        kv_head = head // (attn.n_heads // attn.n_kv)
        q = attn.q_proj(x).view(B, L, attn.n_heads, d)[:, :, head].unsqueeze(1)  # (B, 1, L, d)
        k = attn.k_proj(x).view(B, L, attn.n_kv, d)[:, :, kv_head].unsqueeze(1)
        q, k = apply_rope(q, cos, sin)[:, 0], apply_rope(k, cos, sin)[:, 0]  # (B, L, d)
        for b in range(B):
            vis = prepared.visual[b].nonzero(as_tuple=True)[0]  # (N,) sequence positions of the patches
            turns = [(ps, boxes) for ps, boxes in zip(spans[b], grounding[b]) if boxes]
            if not turns:
                continue
            pos = torch.tensor([p for ps, _ in turns for p in ps], device=x.device)
            logits = q[b, pos] @ k[b].T / math.sqrt(d)  # (P, L)
            allowed = prepared.valid[b][None, :] & (torch.arange(L, device=x.device)[None, :] <= pos[:, None])
            logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
            row = 0
            for ps, boxes in turns:
                target = vis[patch_mask(boxes, grid, patch, x.device)]
                if target.numel():
                    terms.append(-torch.logsumexp(logp[row:row + len(ps)][:, target], dim=1).mean())
                row += len(ps)
    return torch.stack(terms).mean() if terms else None


def mention_answer_targets(ids: torch.Tensor, labels: torch.Tensor, mention_ids: torch.Tensor,
                           option_ids: torch.Tensor, max_answer_tokens: int = 4) -> tuple:
    """The hop-1 aid's targets: per eligible turn, (sample, position of the question's last mention
    word, the answer's first token). ``ids`` (B, L) spliced text ids (``spliced_ids``), ``labels``
    (B, L) spliced labels.

    A turn is eligible when its question names an object (a mention word after the previous answer)
    and its answer is short (at most ``max_answer_tokens`` tokens with ``</s>``, so no captions) and not an option
    letter (in a multiple-choice prompt the last mention is inside an option). Returns three (N,)
    long tensors, empty when no turn is eligible."""
    rows, pos, tgt = [], [], []
    for b, turns in enumerate(query_spans(ids, labels, mention_ids, True)):
        sup = (labels[b] != IGNORE_INDEX).tolist()
        for span in turns:
            start, q = span[0], span[-1]
            n_ans = 0
            while q + 1 + n_ans < len(sup) and sup[q + 1 + n_ans]:
                n_ans += 1
            first = int(labels[b, q + 1])
            if start < q and n_ans <= max_answer_tokens and first not in option_ids:
                rows.append(b)
                pos.append(start)
                tgt.append(first)
    as_t = lambda v: torch.tensor(v, dtype=torch.long, device=labels.device)
    return as_t(rows), as_t(pos), as_t(tgt)
