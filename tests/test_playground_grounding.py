"""Attention supervision helpers (playground training aid): hand-checked positions and losses."""
import math
from types import SimpleNamespace

import torch

from llava_restore.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_restore.playground.grounding import (AttnInputs, answer_queries, grounding_loss, mention_answer_targets,
                                                patch_mask, query_spans, spliced_ids)


def test_patch_mask_uses_patch_centres():
    m = patch_mask([[0, 4, 8, 8]], grid=6, patch=4, device="cpu").view(6, 6)  # centres 2, 6, 10, ...
    expect = torch.zeros(6, 6, dtype=torch.bool)
    expect[1:3, 0:2] = True
    assert torch.equal(m, expect)
    assert patch_mask([], 6, 4, "cpu").sum() == 0


def test_answer_queries_and_spans():
    # positions: 0..9; answers (supervised) at 4-5 and 8-9; mention words at 2 and 6
    labels = torch.full((1, 10), IGNORE_INDEX)
    labels[0, 4:6] = 7
    labels[0, 8:10] = 7
    assert answer_queries(labels) == [[3, 7]]
    ids = torch.tensor([[1, 1, 50, 1, 9, 9, 51, 1, 9, 9]])
    mention = torch.tensor([50, 51])
    assert query_spans(ids, labels, mention, from_mention=False) == [[[3], [7]]]
    assert query_spans(ids, labels, mention, from_mention=True) == [[[2, 3], [6, 7]]]
    # no mention word in the second turn: only its answer position (the first turn's word is not reused)
    ids2 = ids.clone()
    ids2[0, 6] = 1
    assert query_spans(ids2, labels, mention, from_mention=True) == [[[2, 3], [7]]]


def test_spliced_ids_skip_visual_and_padding():
    input_ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, 7, 0]])  # one image placeholder, right padding
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    prepared = SimpleNamespace(valid=torch.tensor([[1, 1, 1, 1, 1, 0]]).bool(),
                               visual=torch.tensor([[0, 1, 1, 0, 0, 0]]).bool())
    assert spliced_ids(input_ids, mask, prepared).tolist() == [[5, -1, -1, 6, 7, -1]]


class _OneLayer(torch.nn.Module):
    """Just enough of the decoder for AttnInputs: model.layers[0].self_attn with projections."""

    def __init__(self, d=4, heads=1):
        super().__init__()
        attn = torch.nn.Module()
        attn.head_dim, attn.n_heads, attn.n_kv = d, heads, heads
        attn.q_proj = torch.nn.Linear(d, d, bias=False)
        attn.k_proj = torch.nn.Linear(d, d, bias=False)
        attn.forward = lambda x, cos, sin, ctx, cache: x
        block = torch.nn.Module()
        block.self_attn = attn
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([block])


def test_grounding_loss_is_minus_log_mass_on_the_target_patches():
    net = _OneLayer()
    with torch.no_grad():
        net.model.layers[0].self_attn.q_proj.weight.copy_(torch.eye(4))
        net.model.layers[0].self_attn.k_proj.weight.copy_(torch.eye(4))
    cap = AttnInputs(net, [0])
    # sequence: [text, v0, v1, v2, v3, text(query)]; 2x2 patch grid, patch 4 px
    x = torch.zeros(1, 6, 4)
    x[0, 2, 0] = 2.0  # patch 1's key matches the query direction
    x[0, 5, 0] = 1.0  # the query
    cos, sin = torch.ones(1, 1, 6, 4), torch.zeros(1, 1, 6, 4)  # RoPE off
    net.model.layers[0].self_attn(x, cos, sin, None, None)
    labels = torch.full((1, 6), IGNORE_INDEX)
    labels[0, 5] = 3  # the answer starts at position 5 -> its query is position 4
    prepared = SimpleNamespace(labels=labels, valid=torch.ones(1, 6, dtype=torch.bool),
                               visual=torch.tensor([[0, 1, 1, 1, 1, 0]]).bool(),
                               reductions=[SimpleNamespace(features=torch.zeros(1, 4, 1))])
    # query position 4 (v3, a zero vector): keys 0..4 all score 0 -> uniform over 5
    box_patch1 = [[4, 0, 4, 4]]  # patch (row 0, col 1) = patch index 1 = sequence position 2
    loss = grounding_loss(cap, prepared, [[box_patch1]], grid=2, patch=4)
    assert math.isclose(loss.item(), math.log(5), rel_tol=1e-5)
    # query at position 5 (spans given explicitly): logits q.k/sqrt(4) = 1 for key 2, 0.5 for key 5
    # (itself), 0 for keys 0, 1, 3, 4
    loss5 = grounding_loss(cap, prepared, [[box_patch1]], grid=2, patch=4, spans=[[[5]]])
    expect = -math.log(math.e / (4 + math.e + math.exp(0.5)))
    assert math.isclose(loss5.item(), expect, rel_tol=1e-5)
    # a turn with no boxes is not supervised; a reduced batch is skipped
    assert grounding_loss(cap, prepared, [[[]]], grid=2, patch=4) is None
    prepared.reductions = [SimpleNamespace(features=torch.zeros(1, 3, 1))]
    assert grounding_loss(cap, prepared, [[box_patch1]], grid=2, patch=4) is None
    cap.close()


def test_grounding_side_file_matches_the_conversations_and_scenes(tmp_path):
    import json

    from llava_restore.playground.config import Sizes
    from llava_restore.playground.data import build
    from llava_restore.playground.train_data import GROUNDING_JSON, TRAIN_JSON

    build(str(tmp_path), seed=0, sizes=Sizes.tiny(), progress=False)
    recs = json.loads((tmp_path / TRAIN_JSON).read_text())
    boxes = json.loads((tmp_path / GROUNDING_JSON).read_text())
    scenes = {json.loads(l)["image"]: json.loads(l)["scene"] for l in (tmp_path / "scenes/train.jsonl").open()}
    image_recs = [r for r in recs if "image" in r]
    assert set(boxes) == {r["id"] for r in image_recs}
    n_grounded = 0
    for r in image_recs:
        turns = boxes[r["id"]]
        assert len(turns) == len(r["conversations"]) // 2, r["id"]
        objs = {(o["x"], o["y"], o["w"], o["w"]) for o in scenes[r["image"]]["objects"]}
        for t in turns:
            assert all(tuple(b) in objs for b in t), (r["id"], t)  # each box is one of the scene's objects
            n_grounded += bool(t)
    assert n_grounded > 0


def test_mention_answer_targets_pick_the_last_mention_of_short_non_option_answers():
    # positions 0..19; turns: answer 5-6 (mention at 2 and 3 -> the last, 3), answer 10-11 (no mention),
    # answer 14 (option letter 40, mention at 12), answer 17-19 + more (long: 3 tokens + 1 beyond the cap of 2)
    L = 21
    labels = torch.full((1, L), IGNORE_INDEX)
    labels[0, 5:7] = torch.tensor([30, 2])
    labels[0, 10:12] = torch.tensor([31, 2])
    labels[0, 14] = 40
    labels[0, 17:21] = torch.tensor([32, 33, 34, 2])
    ids = torch.ones(1, L, dtype=torch.long)
    ids[0, [2, 3, 12, 15]] = 50
    mention, options = torch.tensor([50]), torch.tensor([40])
    rows, pos, tgt = mention_answer_targets(ids, labels, mention, options, max_answer_tokens=2)
    assert rows.tolist() == [0] and pos.tolist() == [3] and tgt.tolist() == [30]
    rows, pos, tgt = mention_answer_targets(ids, labels, mention, options, max_answer_tokens=4)
    assert pos.tolist() == [3, 15] and tgt.tolist() == [30, 32]  # the long answer now fits; 12 is an option turn
    none = mention_answer_targets(torch.ones(1, L, dtype=torch.long), labels, mention, options)
    assert [len(t) for t in none] == [0, 0, 0]


def test_with_background_adds_a_seeded_fraction_of_the_other_patches():
    from llava_restore.playground.train import with_background

    fg = torch.tensor([3, 4, 10])
    a = with_background(fg, 20, 0.25, torch.Generator().manual_seed(0))
    b = with_background(fg, 20, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(a) == 3 + 4  # round(0.25 * 17) = 4 background patches
    assert set(fg.tolist()) <= set(a.tolist()) and torch.equal(a, a.sort().values) and len(set(a.tolist())) == len(a)
    assert torch.equal(with_background(fg, 20, 0.0, torch.Generator()), fg)
    assert len(with_background(fg, 20, 1.0, torch.Generator())) == 20


def test_training_with_attention_supervision_aux_and_foreground_steps(tmp_path):
    from llava_restore.playground.config import Sizes
    from llava_restore.playground.data import build
    from llava_restore.playground.train import PlaygroundTrainConfig, train
    from llava_restore.tools.make_tiny import TinySpec

    build(str(tmp_path / "data"), seed=0, sizes=Sizes.tiny(), progress=False)
    seen = []
    cfg = PlaygroundTrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "ckpt"), tb_dir=str(tmp_path / "tb"),
                                steps=3, batch_size=4, warmup=1, vision_pretrain_steps=1, vision_pretrain_batch=2,
                                model=TinySpec(vision_hidden=32, vision_layers=2, hidden=64, layers=2, intermediate=128,
                                               vocab_size=400), log_every=1, ground_weight=1.0, ground_layers=[-1],
                                ground_from_mention=True, decoder_init_std=0.09, vision_fg_weight=3.0, aux_weight=0.5,
                                foreground_steps=2, foreground_background=0.1, warmup_steps=1)
    vis = []
    summary = train(cfg, on_step=lambda step, model, tok, proc, stats: (seen.append((stats["ground"], stats["aux"])),
                                                                       vis.append(stats["visual_tokens"])))
    assert len(seen) == 3 and any(g is not None for g, _ in seen) and any(a is not None for _, a in seen)
    assert 0 < vis[0] < 576 and 0 < vis[1] < 576 and vis[2] == 576  # foreground patches only, then all
    assert summary["final_ground_loss"] is not None and 0 < summary["final_ground_loss"] < 20
    assert summary["final_aux_loss"] is not None and 0 < summary["final_aux_loss"] < 20
