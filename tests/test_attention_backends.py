"""eager / sdpa / flex agree (fp32) with every calibration term, in prefill and decode.

q, k, v ~ N(0, 1) (pre-softmax logits of unit scale, not the near-uniform attention of a
0.02-init model); next to each agreement, the eager result with one term dropped, misapplied or
the padding unmasked must miss it by far (``assert_distinguishes``)."""
import math

import pytest
import torch

from helpers import assert_distinguishes
from llava_restore.model.attention import AttnContext, attention
from llava_restore.reduction import distance_bias


def _ctx(B, Lq, Lk, backend, *, size=True, dist=True, scope_visual=False, pad_left=(0, 3)):
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(B, Lk, dtype=torch.bool)
    for b, p in enumerate(pad_left[:B]):
        valid[b, :p] = False
    # retained positions with a gap (a reduced visual span), integer
    pos = torch.arange(Lk, dtype=torch.float32)[None].repeat(B, 1)
    pos[:, 10:] += 40
    vis = torch.zeros(B, Lk, dtype=torch.bool)
    vis[:, 5:20] = True
    log_size = torch.where(vis, torch.rand(B, Lk, generator=g) * 2, torch.zeros(B, Lk))
    return AttnContext(key_valid=valid, query_pos=pos[:, Lk - Lq:], key_pos=pos, backend=backend,
                       key_log_size=log_size if size else None,
                       key_log_size_l0=torch.where(vis, torch.full_like(log_size, math.log(3.0)), 0.0) if size else None,
                       distance=dist, distance_keys=vis if scope_visual else None, c=2.0, rope_theta=10000.0, head_dim=32)


@pytest.mark.parametrize("size,dist,scope_visual", [(False, False, False), (True, False, False), (False, True, False),
                                                    (True, True, False), (True, True, True)])
@pytest.mark.parametrize("layer", [0, 1])
def test_backends_agree_prefill_and_decode(size, dist, scope_visual, layer):
    torch.manual_seed(1)
    B, H, Hkv, d = 2, 4, 2, 32
    for Lq, Lk in [(40, 40), (1, 41)]:  # prefill, one decode step
        q = torch.randn(B, H, Lq, d)
        k, v = torch.randn(B, Hkv, Lk, d), torch.randn(B, Hkv, Lk, d)
        opts = dict(size=size, dist=dist, scope_visual=scope_visual)
        outs = {be: attention(q, k, v, _ctx(B, Lq, Lk, be, **opts), layer) for be in ("eager", "sdpa", "flex")}

        def eager(layer_idx=layer, **kw):
            return attention(q, k, v, _ctx(B, Lq, Lk, "eager", **{**opts, **kw}), layer_idx)

        wrong = {"padding keys attended": eager(pad_left=(0, 0))}
        if size:
            wrong["no size term"] = eager(size=False)
            wrong["layer-0 uniform sizes in every layer" if layer else "true sizes in layer 0"] = eager(layer_idx=1 - layer)
        if dist:
            wrong["no distance term"] = eager(dist=False)
            wrong["distance term on all keys" if scope_visual else "distance term on visual keys only"] = \
                eager(scope_visual=not scope_visual)
        for be in ("sdpa", "flex"):
            assert_distinguishes(outs["eager"], outs[be], wrong, rtol=1e-5, atol=1e-5)


def test_eager_is_the_hand_formula():
    """One query row computed by hand from spec §5: w_j ∝ s_j (c - D(p_i - p_j)) exp(q.k/√d)."""
    torch.manual_seed(2)
    B, H, L, d = 1, 1, 12, 32
    q, k, v = torch.randn(B, H, L, d), torch.randn(B, H, L, d), torch.randn(B, H, L, d)
    ctx = _ctx(B, L, L, "eager", pad_left=(0,))
    out = attention(q, k, v, ctx, layer_idx=1)
    i = L - 1
    s = ctx.key_log_size[0].exp()
    dist = torch.tensor([2.0 - sum(math.cos((ctx.key_pos[0, i] - ctx.key_pos[0, j]).item() * 10000 ** (-2 * kk / d))
                                   for kk in range(d // 2)) / (d // 2) for j in range(L)])
    e = torch.exp((q[0, 0, i] @ k[0, 0].T) / math.sqrt(d))

    def hand(w):
        return (w / w.sum()) @ v[0, 0]

    contiguous = torch.tensor([2.0 - sum(math.cos((i - j) * 10000 ** (-2 * kk / d)) for kk in range(d // 2)) / (d // 2)
                               for j in range(L)])  # D from reindexed positions: the gap ignored
    assert_distinguishes(hand(s * dist * e), out[0, 0, i], {
        "no size term": hand(dist * e), "no distance term": hand(s * e), "reindexed positions": hand(s * contiguous * e),
        "layer-0 uniform sizes": hand(ctx.key_log_size_l0[0].exp() * dist * e), "c = 1 (log D)": hand(s * (dist - 1) * e),
    }, rtol=1e-5, atol=1e-5)


def test_distance_term_zero_on_diagonal():
    assert distance_bias(torch.tensor([0.0]), 10000.0, 128, 2.0).item() == 0.0


def test_sdpa_kernel_choices_keep_the_cpu_result_and_reject_unknown_names():
    from llava_restore.model.attention import SDPA_KERNELS, sdpa_kernels

    B, L, H, d = 2, 12, 2, 32
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, d, generator=g) for _ in range(3))
    ctx = _ctx(B, L, L, "sdpa")
    ref = attention(q, k, v, ctx, 1)
    for name in ("no-cudnn", "math"):  # the eval default and an explicit pin, both runnable on the CPU
        with sdpa_kernels(name):
            torch.testing.assert_close(attention(q, k, v, ctx, 1), ref)
    assert set(SDPA_KERNELS) >= {"auto", "no-cudnn", "cudnn"}
    with pytest.raises(ValueError, match=r"unknown SDPA kernel 'cudn'.*no-cudnn"):
        sdpa_kernels("cudn")


def _bias_by_definition(ctx, layer, key_shift=0.0):
    """where(allowed, [log(c - D(p_i - p_j)) (float64, rounded once) x scope], -inf) + log s_j: the
    dense bias of spec §5 from its definition (distance_bias is the elementwise formula)."""
    qp, kp = ctx.query_pos.double(), ctx.key_pos.double() + key_shift
    Lq, Lk = ctx.q_len, ctx.k_len
    qi = torch.arange(Lq)[:, None] + (Lk - Lq)
    kj = torch.arange(Lk)[None, :]
    allowed = (kj <= qi)[None] & (ctx.key_valid[:, None, :] | (kj == qi)[None])  # (B, Lq, Lk)
    dist = torch.zeros(allowed.shape)
    if ctx.distance:
        dist = distance_bias(qp[:, :, None] - kp[:, None, :], ctx.rope_theta, ctx.head_dim, ctx.c).float()
        if ctx.distance_keys is not None:
            dist = dist * ctx.distance_keys[:, None, :]
    bias = torch.where(allowed, dist, float("-inf"))
    size = ctx.size_bias(layer)
    return bias if size is None else bias + size[:, None, :]


@pytest.mark.parametrize("Lq,Lk", [(40, 40), (1, 41), (5, 45), (64, 64), (65, 65)])
@pytest.mark.parametrize("pad,fractional", [((0, 0), False), ((0, 3), False), ((0, 0), True)])
@pytest.mark.parametrize("size,dist,scope_visual", [(True, True, False), (False, True, False), (True, False, False),
                                                    (True, True, True)])
def test_dense_bias_is_the_definition_bit_for_bit(Lq, Lk, pad, fractional, size, dist, scope_visual):
    """The sdpa/eager bias against its definition, every path: prefill and decode, no padding (the
    causal mask read from the offset table), padding, fractional positions (position_rep=mean), the
    term on visual keys only; spans at and past a power of two (64 / 65 keys without the gap)."""
    for gap in (0, 40):
        ctx = _ctx(2, Lq, Lk, "sdpa", size=size, dist=dist, scope_visual=scope_visual, pad_left=pad)
        ctx.key_pos[:, 10:] += gap - 40
        if fractional:
            ctx.key_pos[:, 7] += 0.5
        ctx.query_pos = ctx.key_pos if Lq == Lk else ctx.key_pos[:, Lk - Lq:]  # a prefill's: the same tensor
        for layer in (0, 1):
            got = ctx.dense_bias(layer, torch.float32)[:, 0]  # (B, Lq, Lk)
            assert torch.equal(got, _bias_by_definition(ctx, layer)), (gap, layer)
            if dist:  # the keys' positions one off: the table must be read at the right offset
                assert not torch.equal(got, _bias_by_definition(ctx, layer, key_shift=1.0))


def test_dense_bias_reads_the_query_positions_when_they_are_another_tensor():
    """As many queries as keys but their own positions (not the keys' tensor): the bias must read them,
    not assume a prefill's.  With the keys' positions in their place the bias would differ."""
    ctx = _ctx(1, 24, 24, "sdpa", size=True, dist=True, scope_visual=False, pad_left=(0,))
    ctx.query_pos = ctx.key_pos + 3.0  # queries 3 positions later than their keys
    got = ctx.dense_bias(0, torch.float32)[:, 0]
    assert torch.equal(got, _bias_by_definition(ctx, 0))
    same = _ctx(1, 24, 24, "sdpa", size=True, dist=True, scope_visual=False, pad_left=(0,))
    same.query_pos = same.key_pos
    assert not torch.equal(got, same.dense_bias(0, torch.float32)[:, 0])


def test_offset_table_width_covers_the_span_and_is_shared():
    from llava_restore.model.attention import offset_half_width, offset_table

    for span in (0, 1, 2, 3, 63, 64, 65, 700, 1023, 1024):
        half = offset_half_width(span)
        assert half > span and half & (half - 1) == 0 and (half // 2 <= max(span, 1))
    t = offset_table(offset_half_width(100), 10000.0, 32, 2.0, torch.device("cpu"))
    assert t is offset_table(offset_half_width(120), 10000.0, 32, 2.0, torch.device("cpu"))  # memoised, shared
    d = torch.arange(-128, 129, dtype=torch.float64)
    assert torch.equal(t[:-1], distance_bias(d, 10000.0, 32, 2.0).float()) and t[-1] == float("-inf")


def test_flex_refuses_fractional_positions_with_the_option_to_change():
    ctx = _ctx(1, 40, 40, "flex", pad_left=(0,))
    ctx.key_pos[:, 7] += 0.5
    ctx.query_pos = ctx.key_pos
    q = k = v = torch.randn(1, 2, 40, 32)
    with pytest.raises(ValueError, match="position_rep=mean"):
        attention(q, k, v, ctx, 1)
