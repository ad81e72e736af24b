"""The calibration bias always reaches SDPA in the query's dtype, and the backends agree with the
eager reference in low precision.

Why the dtype matters: PyTorch's cuDNN SDPA on Hopper silently misreads a float32 mask given
with fp16/bf16 queries, so every mask we hand to ``scaled_dot_product_attention`` must be in the
query dtype.  A spy on the function records every mask of the sdpa backend and of flex's decode
fallback, in prefill and decode, with padding, in fp32, fp16 and bf16.

Low precision: bf16/fp16 outputs are compared with the eager formula in fp32 on the same
(rounded) inputs; the mean absolute error must stay within 2e-3, and the eager result with one
calibration term dropped must miss that bound by far.
"""
import pytest
import torch
import torch.nn.functional as F

from helpers import one_thread  # noqa: F401
from llava_restore.model.attention import attention
from test_attention_backends import _ctx

pytestmark = pytest.mark.usefixtures("one_thread")
B, H, HKV, D = 2, 4, 2, 32
SHAPES = [(40, 40), (1, 41)]  # prefill, one decode step


def _qkv(Lq, Lk, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g)
    k, v = torch.randn(B, HKV, Lk, D, generator=g), torch.randn(B, HKV, Lk, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_every_sdpa_mask_is_in_the_query_dtype(monkeypatch, dtype, backend):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.dtype, None if attn_mask is None else attn_mask.dtype))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    shapes = SHAPES if backend == "sdpa" else [(1, 41)]  # flex hands decode steps to sdpa
    for Lq, Lk in shapes:
        q, k, v = _qkv(Lq, Lk, dtype)
        for opts in (dict(size=True, dist=True), dict(size=True, dist=False), dict(size=False, dist=True),
                     dict(size=False, dist=False)):  # the last: plain, but padding needs a mask
            for layer in (0, 1):
                attention(q, k, v, _ctx(B, Lq, Lk, backend, **opts), layer)
    masks = [m for _, m in seen if m is not None]
    assert masks, "no masked SDPA call was exercised"
    assert all(m == qd for qd, m in seen if m is not None), seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Lq,Lk", SHAPES)
def test_low_precision_backends_agree_with_eager(dtype, Lq, Lk):
    q, k, v = _qkv(Lq, Lk, dtype)
    qf, kf, vf = q.float(), k.float(), v.float()  # the same rounded inputs, fp32 reference
    for layer in (0, 1):
        ref = attention(qf, kf, vf, _ctx(B, Lq, Lk, "eager"), layer)
        wrong = {
            "no size term": attention(qf, kf, vf, _ctx(B, Lq, Lk, "eager", size=False), layer),
            "no distance term": attention(qf, kf, vf, _ctx(B, Lq, Lk, "eager", dist=False), layer),
            "other layer's sizes": attention(qf, kf, vf, _ctx(B, Lq, Lk, "eager"), 1 - layer),
        }
        for name, w in wrong.items():
            assert (w - ref).abs().mean() > 5 * 2e-3, f"{name} is not distinguishable at this tolerance"
        for backend in ("eager", "sdpa", "flex"):
            out = attention(q, k, v, _ctx(B, Lq, Lk, backend), layer)
            assert out.dtype == dtype
            err = (out.float() - ref).abs().mean().item()
            assert err <= 2e-3, f"{backend} {dtype} layer {layer}: mean |diff| {err:.2e}"
