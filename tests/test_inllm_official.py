"""FastV and PDrop against transcriptions of their official inference loops run on transformers'
own LLaMA modules (``LlamaModel``, eager attention) with our tiny model's weights: one sample,
no padding, the official index arithmetic (FastV's ``SYS_LENGTH``/``IMAGE_TOKEN_LENGTH`` slice of
layer K-1's head-mean attention row of the last token, ``position_ids = keep_indexs``; PDrop's
``pdrop_rank_drop``: the next layer's q/k on the entering sequence, the last instruction token's
softmax row, ``int(N * ratio)`` kept, ``position_ids = arange``).  Only the weights are shared
with the code under test.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from helpers import assert_distinguishes, make_batch, one_thread  # noqa: F401
from llava_restore.reduction import make_reduction_config
from test_inllm_fastv_pdrop import LAYERS, N, tiny4

pytestmark = pytest.mark.usefixtures("one_thread")


def hf_decoder(model) -> LlamaModel:
    t = model.config.text
    cfg = LlamaConfig(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                      num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, vocab_size=t.vocab_size,
                      rms_norm_eps=t.rms_norm_eps, rope_theta=t.rope_theta, max_position_embeddings=2048)
    cfg._attn_implementation = "eager"
    hf = LlamaModel(cfg).eval()
    sd = {k[len("model."):]: v for k, v in model.state_dict().items()
          if k.startswith("model.") and not k.startswith(("model.mm_projector", "model.vision_tower"))}
    hf.load_state_dict(sd, strict=True)
    return hf


def causal_mask(L: int) -> torch.Tensor:  # (1, 1, L, L) additive, as transformers' eager path takes it
    m = torch.full((L, L), torch.finfo(torch.float32).min).triu(1)
    return m[None, None]


def run_layer(layer, h, position_ids, rotary):
    cos, sin = rotary(h, position_ids)
    x = layer.input_layernorm(h)
    out, weights = layer.self_attn(hidden_states=x, position_embeddings=(cos, sin), attention_mask=causal_mask(h.shape[1]))
    h = h + out
    return h + layer.mlp(layer.post_attention_layernorm(h)), weights


@torch.no_grad()
def official_fastv(hf, lm_head, embeds, sys_length, image_len, K, rank):
    h = embeds
    L = h.shape[1]
    position_ids = torch.arange(L)[None]
    last_attention, kept = None, None
    for idx, layer in enumerate(hf.layers):
        if idx == K:  # the in-place branch of FastV's modeling_llama.py
            avg = last_attention.mean(dim=1)[0]
            img = avg[-1][sys_length:sys_length + image_len]
            top = img.topk(rank).indices + sys_length
            keep = torch.cat((torch.arange(sys_length), top, torch.arange(sys_length + image_len, L))).sort().values
            h = h[:, keep, :]
            position_ids = keep.unsqueeze(0)
            kept = top.sort().values.tolist()
        h, weights = run_layer(layer, h, position_ids, hf.rotary_emb)
        if idx == K - 1:
            last_attention = weights
    return lm_head(hf.norm(h))[0, -1], kept


@torch.no_grad()
def official_pdrop(hf, lm_head, embeds, image_index, n_image, layer_list, ratios):
    """``pdrop_forward`` + ``pdrop_rank_drop`` at inference (``ratios`` with the leading 1.0)."""
    h = embeds
    prompt_len = h.shape[1] - n_image  # text tokens (the placeholder already replaced)
    position_ids = torch.arange(h.shape[1])[None]
    kept = []
    for layer_idx, layer in enumerate(hf.layers):
        h, _ = run_layer(layer, h, position_ids, hf.rotary_emb)
        rank_layer = layer_idx + 1
        if rank_layer in layer_list:
            stage = layer_list.index(rank_layer)
            image_tokens = int(n_image * ratios[stage])
            keep_length = int(n_image * ratios[stage + 1])
            attn = hf.layers[rank_layer].self_attn
            x = hf.layers[rank_layer].input_layernorm(h)
            q_len = x.shape[1]
            q = attn.q_proj(x).view(1, q_len, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, q_len, -1, attn.head_dim).transpose(1, 2)
            cos, sin = hf.rotary_emb(x, position_ids)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA (LLaVA-1.5 has none)
            mask = causal_mask(q_len)[0]
            row = prompt_len + image_tokens - 1  # the last instruction token
            w = torch.matmul(q[0][:, row:row + 1, :], k[0].transpose(1, 2)) / math.sqrt(attn.head_dim)
            w = torch.softmax(w + mask[:, row:row + 1, :], dim=-1, dtype=torch.float32)
            avg = w.mean(dim=0)[:, image_index:image_index + image_tokens].mean(dim=0)
            top = (avg.topk(keep_length).indices + image_index).sort().values
            start = image_index + image_tokens
            h = torch.cat([h[0, :image_index], h[0, top], h[0, start:]], dim=0)[None]
            position_ids = torch.arange(h.shape[1])[None]
            kept.append(top)
    return lm_head(hf.norm(h))[0, -1], kept


def one_sample(question, seed):
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, [question], [seed])
    prep = model.prepare_multimodal(ids, mask, images)
    vis = prep.visual[0].nonzero().flatten()
    assert vis.numel() == N and bool((vis == vis[0] + torch.arange(N)).all())
    return model, ids, mask, images, prep, int(vis[0])


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_fastv_equals_its_official_loop(backend):
    model, ids, mask, images, prep, sys_length = one_sample("What colour is the large object?", 11)
    hf = hf_decoder(model)
    K, R = 1, 208
    ref, ref_kept = official_fastv(hf, model.lm_head, prep.embeds, sys_length, N, K, R)
    cfg = make_reduction_config(method="fastv", n_vis=300, fastv_k=K).resolve()
    out = model(ids, mask, images, reduction=cfg, attn_backend=backend)
    got = out.prepared.inllm.kept[0][0] & prep.visual[0]
    assert got.nonzero().flatten().tolist() == ref_kept
    bad, _ = official_fastv(hf, model.lm_head, prep.embeds, sys_length, N, K, R - 1)
    assert_distinguishes(ref, out.logits[0, -1], bad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_pdrop_equals_its_official_loop(backend):
    model, ids, mask, images, prep, image_index = one_sample("Where is the small red thing?", 12)
    hf = hf_decoder(model)
    layers, lam = [1, 2, 3], 0.5
    ratios = [1.0, 0.5, 0.25, 0.125]  # the official "[0.5,0.25,0.125]" with 1.0 inserted
    ref, ref_kept = official_pdrop(hf, model.lm_head, prep.embeds, image_index, N, layers, ratios)
    cfg = make_reduction_config(method="pdrop", pdrop_layers=layers, pdrop_lambda=lam).resolve()
    out = model(ids, mask, images, reduction=cfg, attn_backend=backend)
    rep = out.prepared.inllm
    assert rep.schedule.counts == [N, 288, 144, 72]
    # stage by stage: the official indices are into the then-current sequence, ours into the input
    cur = torch.arange(prep.embeds.shape[1])
    for s, top in enumerate(ref_kept):
        stay = torch.ones(len(cur), dtype=torch.bool)
        vis_now = prep.visual[0][cur]
        stay[vis_now] = False
        stay[top] = True
        cur = cur[stay]
        ours = (rep.kept[s][0] & prep.visual[0]).nonzero().flatten()
        assert ours.tolist() == cur[prep.visual[0][cur]].tolist(), f"stage {s + 1}"
    bad, _ = official_pdrop(hf, model.lm_head, prep.embeds, image_index, N, layers, [1.0, 0.5, 0.25, 0.12])
    assert_distinguishes(ref, out.logits[0, -1], bad, rtol=1e-4, atol=1e-4)
    assert LAYERS == len(hf.layers)
