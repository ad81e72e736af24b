"""ToMe bipartite soft matching, applied repeatedly until n tokens remain (pure function).

One round on t tokens (kept in original order of their root token):
  A = tokens at even positions, B = odd positions; for every A token its most similar B token
  (cosine of the current size-weighted mean features, ties -> lowest B); the r = min(t - n, t//2)
  A tokens with the highest such similarity (ties -> lowest A) are merged into their B match
  (size-weighted mean, i.e. sums and sizes add up); the other A tokens stay.
A group's *root* is the B-side token that survives all rounds (its representative original).
"""
from __future__ import annotations

import torch

from .common import argsort_desc, normalize


def tome_partition(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the N tokens of x (B, N, D) into n groups.

    Returns (source (B, N) long: group in [0, n) of every token, groups ordered by root;
             roots (B, n) long: the surviving token index of each group, ascending).
    """
    B, N, D = x.shape
    if not 1 <= n <= N:
        raise ValueError(f"tome: n={n} must be in 1..N={N}")
    dev = x.device
    sums = x.float().clone()  # (B, t, D) member sums of each current token
    sizes = torch.ones(B, N, dtype=torch.float32, device=dev)  # (B, t)
    roots = torch.arange(N, device=dev).expand(B, N).clone()  # (B, t), ascending
    source = roots.clone()  # (B, N): current token of every original
    t = N
    while t > n:
        r = min(t - n, t // 2)
        metric = normalize(sums / sizes.unsqueeze(-1))  # (B, t, D)
        a_pos = torch.arange(0, t, 2, device=dev)  # (ta,)
        b_pos = torch.arange(1, t, 2, device=dev)  # (tb,)
        scores = metric[:, a_pos] @ metric[:, b_pos].transpose(1, 2)  # (B, ta, tb)
        best_b = scores.argmax(dim=-1)  # (B, ta), first max -> lowest B
        best = scores.gather(2, best_b.unsqueeze(-1)).squeeze(-1)  # (B, ta)
        edge = argsort_desc(best)  # (B, ta)
        src, unm = edge[:, :r], edge[:, r:]  # A-local indices
        dst = best_b.gather(1, src)  # (B, r) B-local

        a_sums, b_sums = sums[:, a_pos], sums[:, b_pos].clone()
        a_sizes, b_sizes = sizes[:, a_pos], sizes[:, b_pos].clone()
        b_sums.scatter_add_(1, dst.unsqueeze(-1).expand(-1, -1, D), a_sums.gather(1, src.unsqueeze(-1).expand(-1, -1, D)))
        b_sizes.scatter_add_(1, dst, a_sizes.gather(1, src))

        # survivors: unmerged A then all B, re-sorted by root so the sequence order is kept
        surv_old = torch.cat([a_pos[unm], b_pos.expand(B, -1)], dim=1)  # (B, t - r) old positions
        surv_sums = torch.cat([a_sums.gather(1, unm.unsqueeze(-1).expand(-1, -1, D)), b_sums], dim=1)
        surv_sizes = torch.cat([a_sizes.gather(1, unm), b_sizes], dim=1)
        surv_roots = roots.gather(1, surv_old)
        perm = torch.sort(surv_roots, dim=1, stable=True).indices  # (B, t - r)

        old_to_new = torch.empty(B, t, dtype=torch.long, device=dev)
        new_pos = torch.empty_like(perm)
        new_pos.scatter_(1, perm, torch.arange(t - r, device=dev).expand(B, -1))
        old_to_new.scatter_(1, surv_old, new_pos)  # survivors
        merged_old = a_pos[src]  # (B, r)
        dst_old = b_pos[dst]  # (B, r)
        old_to_new.scatter_(1, merged_old, old_to_new.gather(1, dst_old))

        sums = surv_sums.gather(1, perm.unsqueeze(-1).expand(-1, -1, D))
        sizes = surv_sizes.gather(1, perm)
        roots = surv_roots.gather(1, perm)
        source = old_to_new.gather(1, source)
        t -= r
    return source, roots
