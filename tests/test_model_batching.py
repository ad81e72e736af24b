"""Any batch size: mixed prompt lengths, left/right padding, KV cache vs recomputation.

On ``helpers.sensitive_tiny()`` (init std 0.2): at make_tiny's 0.02 a decode position off by
one changes no greedy token.  Each equivalence is paired with deliberately wrong variants that
must fail it (padding keys attended, rows read at the wrong side, token order, positions)."""
import pytest
import torch

from helpers import one_thread  # noqa: F401  (fixture)
from helpers import (assert_distinguishes, assert_tokens_distinguish, forward_prepared, greedy_cached, make_batch,
                     retained_to_reindexed, sensitive_tiny, swap_first_two)

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is it?", "What is left of the red square in the picture?", "How many blue circles are there?"]
SEEDS = [11, 12, 13]


def _real_positions(mask_row_prepared):
    return mask_row_prepared.nonzero(as_tuple=True)[0]


def test_batch_of_three_equals_singles():
    tok, model, proc = sensitive_tiny()
    for side in ("left", "right"):
        ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS, side=side)
        assert len({s.shape[0] for s in seqs}) == 3  # really different prompt lengths
        with torch.no_grad():
            batch = model(ids, mask, images, padding_side=side)
            valid = batch.prepared.valid
            leaky = forward_prepared(model, batch.prepared, key_valid=torch.ones_like(valid), backend="sdpa")
            for b in range(3):
                single = model(seqs[b][None], images=images[b:b + 1])
                real = valid[b]
                n = int(real.sum())
                wrong = {"two visual tokens swapped": forward_prepared(model, single.prepared, visual_order=swap_first_two,
                                                                       backend="sdpa")[0]}
                if n < valid.shape[1]:  # a padded row
                    if side == "left":  # (right padding follows the real tokens: causally unseen anyway)
                        wrong["padding keys attended"] = leaky[b][real]
                    wrong["rows read at the other padding side"] = batch.logits[b][:n] if side == "left" else batch.logits[b][-n:]
                assert_distinguishes(single.logits[0], batch.logits[b][real], wrong, rtol=1e-5, atol=1e-5)


def test_batched_greedy_equals_singles():
    tok, model, proc = sensitive_tiny()
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    batch = model.generate(ids, mask, images, max_new_tokens=12, eos_token_id=-1)
    singles = torch.cat([model.generate(seqs[b][None], images=images[b:b + 1], max_new_tokens=12, eos_token_id=-1)
                         for b in range(3)])
    assert_tokens_distinguish(singles, batch, {
        "decode positions off by one": greedy_cached(model, ids, mask, images, None, 12, next_pos_offset=1)})


def test_kv_cache_equals_recomputation():
    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    with_cache = model.generate(ids, mask, images, max_new_tokens=10, eos_token_id=-1, use_cache=True)
    without = model.generate(ids, mask, images, max_new_tokens=10, eos_token_id=-1, use_cache=False)
    assert_tokens_distinguish(without, with_cache, {
        f"cached decode positions off by {k:+d}": greedy_cached(model, ids, mask, images, None, 10, next_pos_offset=k)
        for k in (1, -1)})


def test_image_count_mismatch_is_named(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS[:2], SEEDS[:2])
    try:
        model(ids, mask, images[:1], padding_side="left")
    except ValueError as exc:
        assert "2 image placeholders" in str(exc) and "1 images" in str(exc)
    else:
        raise AssertionError("a placeholder/image count mismatch must raise")


def test_rows_finishing_early_are_dropped_without_changing_answers(monkeypatch):
    """Rows that emit EOS leave the batch (the KV cache shrinks); every row's tokens still equal
    its single-sequence decode, with and without RESTORE, cached and recomputed.  A shrink that
    leaves the rows' decode positions behind must change some row."""
    from llava_restore.model.llama import KVCache
    from llava_restore.reduction.config import ReductionConfig

    tok, model, proc = sensitive_tiny()  # init 0.2: each row decodes differently
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    free = model.generate(ids, mask, images, max_new_tokens=8, eos_token_id=-1)  # (3, 8), no EOS
    # an "EOS" that the rows emit at different steps (or never): rows then finish at different times
    def lengths_for(t):
        return [(r.tolist().index(t) + 1) if t in r.tolist() else 8 for r in free]

    eos = max(sorted(set(free.flatten().tolist())), key=lambda t: (len(set(lengths_for(t))), -min(lengths_for(t))))
    lengths = lengths_for(eos)
    assert len(set(lengths)) > 1, f"the rows' free decodes {free.tolist()} share every token position"
    def matches(batch, singles):
        return all(batch[b].tolist()[:len(s)] == s and all(t == 0 for t in batch[b].tolist()[len(s):])
                   for b, s in enumerate(singles))

    restore = ReductionConfig(method="divprune", n_vis=7, restore=True, distance_in_decode=True).resolve()
    for red in (None, restore):
        for cache in (True, False):
            batch = model.generate(ids, mask, images, reduction=red, max_new_tokens=8, eos_token_id=eos,
                                   pad_token_id=0, use_cache=cache)
            singles = [model.generate(seqs[b][None], images=images[b:b + 1], reduction=red, max_new_tokens=8,
                                      eos_token_id=eos, pad_token_id=0, use_cache=cache)[0].tolist() for b in range(3)]
            assert matches(batch, singles), (red, cache, batch.tolist(), singles)
            if red is None:
                assert batch.shape[1] == max(lengths)

    shrink = KVCache.select_rows

    def forgets_positions(self, rows):  # a planted bug: the kept rows get their neighbours' decode positions
        next_pos = self.next_pos
        shrink(self, rows)
        self.next_pos = next_pos[(rows + 1) % next_pos.shape[0]]

    monkeypatch.setattr(KVCache, "select_rows", forgets_positions)
    for red in (None, restore):
        batch = model.generate(ids, mask, images, reduction=red, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
        singles = [model.generate(seqs[b][None], images=images[b:b + 1], reduction=red, max_new_tokens=8,
                                  eos_token_id=eos, pad_token_id=0)[0].tolist() for b in range(3)]
        assert not matches(batch, singles), f"a shrink that loses the decode positions goes unseen ({red})"


def test_visual_keep_equals_the_same_pruning_at_retained_positions():
    """``visual_keep`` (a training curriculum / oracle ablation) keeps the given patches at their
    original positions: all patches = the plain forward; DivPrune's picks = DivPrune in retain mode."""
    from llava_restore.reduction.config import ReductionConfig

    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS, side="left")
    N = model.get_vision_tower().num_patches
    tol = dict(rtol=1.3e-6, atol=1e-5)  # assert_close's fp32 default
    with torch.no_grad():
        plain = model(ids, mask, images, padding_side="left")
        every = model(ids, mask, images, padding_side="left", visual_keep=[torch.arange(N)] * 3)
        assert_distinguishes(plain.logits, every.logits, {"two visual tokens swapped": forward_prepared(
            model, plain.prepared, visual_order=swap_first_two, backend="sdpa")}, **tol)
        cfg = ReductionConfig(method="divprune", n_vis=9, position_mode="retain").resolve()
        picks = [r.source[0].ge(0).nonzero(as_tuple=True)[0] for r in model.reduce(images, cfg)]
        assert [len(p) for p in picks] == [9, 9, 9]
        pruned = model(ids, mask, images, padding_side="left", reduction=cfg)
        kept = model(ids, mask, images, padding_side="left", visual_keep=picks)
        assert_distinguishes(pruned.logits, kept.logits, {"reindexed instead of retained positions": forward_prepared(
            model, kept.prepared, positions=retained_to_reindexed(kept.prepared), backend="sdpa")}, **tol)
        assert torch.equal(kept.prepared.positions, pruned.prepared.positions)
        for bad, what in (([torch.arange(0)] * 3, "0 indices"), ([torch.tensor([3, 1])] * 3, "increasing"),
                          ([torch.tensor([N])] * 3, f"in \\[0, {N}\\)"), ([torch.arange(3)] * 2, "2 index lists")):
            with pytest.raises(ValueError, match=what):
                model(ids, mask, images, padding_side="left", visual_keep=bad)
        with pytest.raises(ValueError, match="exclusive"):
            model(ids, mask, images, padding_side="left", reduction=cfg, visual_keep=picks)
