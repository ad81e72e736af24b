"""Any batch size: mixed prompt lengths, left/right padding, KV cache vs recomputation."""
import torch

from helpers import make_batch

QUESTIONS = ["What is it?", "What is left of the red square in the picture?", "How many blue circles are there?"]
SEEDS = [11, 12, 13]


def _real_positions(mask_row_prepared):
    return mask_row_prepared.nonzero(as_tuple=True)[0]


def test_batch_of_three_equals_singles(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    for side in ("left", "right"):
        ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS, side=side)
        assert len({s.shape[0] for s in seqs}) == 3  # really different prompt lengths
        with torch.no_grad():
            batch = model(ids, mask, images, padding_side=side)
            for b in range(3):
                single = model(seqs[b][None], images=images[b:b + 1])
                real = batch.prepared.valid[b]
                torch.testing.assert_close(batch.logits[b][real], single.logits[0], rtol=1e-5, atol=1e-5)


def test_batched_greedy_equals_singles(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    batch = model.generate(ids, mask, images, max_new_tokens=12, eos_token_id=-1)
    for b in range(3):
        single = model.generate(seqs[b][None], images=images[b:b + 1], max_new_tokens=12, eos_token_id=-1)
        assert batch[b].tolist() == single[0].tolist()


def test_kv_cache_equals_recomputation(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    with_cache = model.generate(ids, mask, images, max_new_tokens=10, eos_token_id=-1, use_cache=True)
    without = model.generate(ids, mask, images, max_new_tokens=10, eos_token_id=-1, use_cache=False)
    assert with_cache.tolist() == without.tolist()


def test_image_count_mismatch_is_named(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS[:2], SEEDS[:2])
    try:
        model(ids, mask, images[:1], padding_side="left")
    except ValueError as exc:
        assert "2 image placeholders" in str(exc) and "1 images" in str(exc)
    else:
        raise AssertionError("a placeholder/image count mismatch must raise")


def test_rows_finishing_early_are_dropped_without_changing_answers():
    """Rows that emit EOS leave the batch (the KV cache shrinks); every row's tokens still equal
    its single-sequence decode, with and without RESTORE, cached and recomputed."""
    from llava_restore.reduction.config import ReductionConfig

    from llava_restore.tools.make_tiny import build_tiny

    tok, model, proc = build_tiny(seed=0)
    with torch.no_grad():  # scaled up so that each row decodes differently
        for name, p in model.named_parameters():
            if not name.startswith("model.vision_tower") and p.dim() > 1 and "embed" not in name:
                p.mul_(10.0)
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    free = model.generate(ids, mask, images, max_new_tokens=8, eos_token_id=-1)  # (3, 8), no EOS
    # an "EOS" that the rows emit at different steps (or never): rows then finish at different times
    def lengths_for(t):
        return [(r.tolist().index(t) + 1) if t in r.tolist() else 8 for r in free]

    eos = max(sorted(set(free.flatten().tolist())), key=lambda t: (len(set(lengths_for(t))), -min(lengths_for(t))))
    lengths = lengths_for(eos)
    assert len(set(lengths)) > 1, f"the rows' free decodes {free.tolist()} share every token position"
    for red in (None, ReductionConfig(method="divprune", n_vis=7, restore=True, distance_in_decode=True).resolve()):
        for cache in (True, False):
            batch = model.generate(ids, mask, images, reduction=red, max_new_tokens=8, eos_token_id=eos,
                                   pad_token_id=0, use_cache=cache)
            for b in range(3):
                single = model.generate(seqs[b][None], images=images[b:b + 1], reduction=red, max_new_tokens=8,
                                        eos_token_id=eos, pad_token_id=0, use_cache=cache)[0].tolist()
                row = batch[b].tolist()
                assert row[:len(single)] == single and all(t == 0 for t in row[len(single):]), (red, cache, b)
            if red is None:
                assert batch.shape[1] == max(lengths)


def test_visual_keep_equals_the_same_pruning_at_retained_positions(tiny_loaded):
    """``visual_keep`` (a training curriculum / oracle ablation) keeps the given patches at their
    original positions: all patches = the plain forward; DivPrune's picks = DivPrune in retain mode."""
    import pytest

    from llava_restore.reduction.config import ReductionConfig

    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS, side="left")
    N = model.get_vision_tower().num_patches
    with torch.no_grad():
        plain = model(ids, mask, images, padding_side="left")
        every = model(ids, mask, images, padding_side="left", visual_keep=[torch.arange(N)] * 3)
        torch.testing.assert_close(every.logits, plain.logits)
        cfg = ReductionConfig(method="divprune", n_vis=9, position_mode="retain").resolve()
        picks = [r.source[0].ge(0).nonzero(as_tuple=True)[0] for r in model.reduce(images, cfg)]
        assert [len(p) for p in picks] == [9, 9, 9]
        pruned = model(ids, mask, images, padding_side="left", reduction=cfg)
        kept = model(ids, mask, images, padding_side="left", visual_keep=picks)
        torch.testing.assert_close(kept.logits, pruned.logits)
        assert torch.equal(kept.prepared.positions, pruned.prepared.positions)
        for bad, what in (([torch.arange(0)] * 3, "0 indices"), ([torch.tensor([3, 1])] * 3, "increasing"),
                          ([torch.tensor([N])] * 3, f"in \\[0, {N}\\)"), ([torch.arange(3)] * 2, "2 index lists")):
            with pytest.raises(ValueError, match=what):
                model(ids, mask, images, padding_side="left", visual_keep=bad)
        with pytest.raises(ValueError, match="exclusive"):
            model(ids, mask, images, padding_side="left", reduction=cfg, visual_keep=picks)
