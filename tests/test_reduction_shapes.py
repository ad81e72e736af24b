"""Contracts of reduce_visual_tokens for every registered method (shapes, partitions, errors,
batch independence, dtypes).  N = 576 as in LLaVA-1.5, small D so it stays fast."""
import pytest
import torch

from llava_restore.reduction import (
    ANCHOR_RULES,
    ReductionResult,
    anchor_merge,
    get_reducer,
    known_reducers,
    make_reduction_config,
    reduce_visual_tokens,
)

N, D, DV, DK = 576, 16, 8, 4
METHODS = known_reducers()
MERGING = {"tome", "visionzip"}  # cover every original even without Stage B
PROJ = torch.nn.Linear(DV, D)  # a stand-in mm_projector for plain VisionZip (merges before it)


def test_registry_lists_all_methods():
    assert METHODS == ["divprune", "holov", "random", "tome", "uniform", "visionzip", "vispruner"]
    assert sorted(ANCHOR_RULES) == ["bipartite", "dpc_higher", "kmeans", "random", "reference", "uniform"]
    with pytest.raises(ValueError, match="divprune.*vispruner"):
        get_reducer("nope")


def inputs(batch=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, N, D, generator=g).to(dtype)
    vis = torch.randn(batch, N, DV, generator=g).to(dtype)
    attn = torch.rand(batch, N, generator=g).softmax(-1)
    return feats, vis, attn


def tower_extras(vis):
    """Stand-ins for the CLS feature and attention keys plain VisionZip needs: functions of each
    sample's own pre-projector features, so no sample depends on its batch."""
    if vis is None:
        return dict(projector=PROJ)
    return dict(vis_cls=vis.float().mean(1), attn_keys=vis.float()[..., :DK].flip(-1) ** 2 - 0.5, projector=PROJ)


def run(feats, vis, attn, **cfg):
    return reduce_visual_tokens(feats, make_reduction_config(**cfg).resolve(), vis_feats=vis, cls_attn=attn,
                                **tower_extras(vis))


def by_position(**cfg) -> bool:
    """Whether the result is ordered by position (else the method's own output order)."""
    c = make_reduction_config(**cfg).resolve()
    return not (c.reference_order and get_reducer(c.method).emits_order)


def member_means(**cfg) -> bool:
    """Whether every patch-made output token is the mean of its members' projected features."""
    c = make_reduction_config(**cfg).resolve()
    return not (c.method == "visionzip" and not c.merge and c.visionzip_merge == "reference")


def check_result(res: ReductionResult, feats: torch.Tensor, n: int, covers_all: bool, sorted_positions: bool = True,
                 means: bool = True):
    B = feats.shape[0]
    assert res.features.shape == (B, n, D) and res.features.dtype == feats.dtype
    assert res.source.shape == (B, N) and res.sizes.shape == (B, n) and res.positions.shape == (B, n)
    if sorted_positions:
        assert bool((res.positions[:, 1:] >= res.positions[:, :-1]).all()), "positions not sorted"
    extra = res.is_extra  # (B, n) non-patch tokens (VisionZip's CLS): size 1, no members
    for b in range(B):
        counts = torch.bincount(res.source[b][res.source[b] >= 0], minlength=n)
        assert counts.masked_fill(extra[b], 1).tolist() == res.sizes[b].long().tolist()  # sizes = member counts
        assert bool((counts[~extra[b]] >= 1).all()) and bool((counts[extra[b]] == 0).all())
        assert bool((res.positions[b][extra[b]] == -1).all())
        if covers_all:
            assert bool((res.source[b] >= 0).all())  # every original in exactly one member set
            assert res.sizes[b].sum().item() == N + int(extra[b].sum())
        else:
            assert res.sizes[b].tolist() == [1.0] * n and int((res.source[b] >= 0).sum()) == n - int(extra[b].sum())
        # each output feature is the mean of its members; its position lies among them
        for j in (0, n // 2, n - 1):
            if bool(extra[b, j]):
                continue
            members = res.members(b, j)
            if means:
                expected = feats[b, members].float().mean(0).to(feats.dtype)  # float32 math, cast back
                tol = 1e-5 if feats.dtype == torch.float32 else 1e-3
                torch.testing.assert_close(res.features[b, j], expected, rtol=tol, atol=tol)
            assert members.min() <= res.positions[b, j] <= members.max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("merge", [False, True])
def test_every_method_every_budget(method, merge):
    feats, vis, attn = inputs()
    for n in (1, 7, 64, 575):
        c = dict(method=method, n_vis=n, merge=merge)
        res = run(feats, vis, attn, **c)
        check_result(res, feats, n, covers_all=merge or method in MERGING, sorted_positions=by_position(**c),
                     means=member_means(**c))
        if not by_position(**c):  # token_order=position: the same tokens, sorted
            pos = run(feats, vis, attn, token_order="position", **c)
            check_result(pos, feats, n, covers_all=merge or method in MERGING, means=member_means(**c))
            assert sorted(map(tuple, res.features[0].tolist())) == sorted(map(tuple, pos.features[0].tolist()))


@pytest.mark.parametrize("rule", sorted(ANCHOR_RULES))
def test_every_anchor_rule_partitions(rule):
    feats, vis, attn = inputs()
    for n in (1, 64):
        res = run(feats, vis, attn, method="divprune", n_vis=n, restore=True, anchor_rule=rule)
        check_result(res, feats, n, covers_all=True)


@pytest.mark.parametrize("rep", ["first", "median", "last", "mean"])
def test_position_reps(rep):
    feats, vis, attn = inputs()
    res = run(feats, vis, attn, method="holov", n_vis=64, restore=True, position_rep=rep)
    check_result(res, feats, 64, covers_all=True)
    b, j = 1, int(res.sizes[1].argmax())  # a merged token
    m = res.members(b, j).float()
    expected = {"first": m.min(), "last": m.max(), "mean": m.mean(), "median": m.sort().values[(len(m) - 1) // 2]}[rep]
    assert res.positions[b, j].item() == pytest.approx(expected.item())


def test_kept_tokens_are_exact_and_pruning_keeps_n():
    feats, vis, attn = inputs()
    res = run(feats, vis, attn, method="divprune", n_vis=64, restore=True)
    # restore: 32 kept (size 1, feature bit-identical) + 32 anchors
    singles = res.sizes == 1
    assert int(singles.sum(1).min()) >= 32
    for b in range(2):
        for j in singles[b].nonzero().flatten().tolist()[:5]:
            t = res.members(b, j).item()
            assert torch.equal(res.features[b, j], feats[b, t]) and res.positions[b, j].item() == t


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("restore", [False, True])
def test_batch_of_three_equals_each_alone(method, restore):
    feats, vis, attn = inputs(batch=3, seed=1)
    together = run(feats, vis, attn, method=method, n_vis=64, restore=restore)
    for b in range(3):
        alone = run(feats[b : b + 1], vis[b : b + 1], attn[b : b + 1], method=method, n_vis=64, restore=restore)
        assert torch.equal(alone.source[0], together.source[b])
        assert torch.equal(alone.sizes[0], together.sizes[b])
        assert torch.equal(alone.positions[0], together.positions[b])
        torch.testing.assert_close(alone.features[0], together.features[b], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule", ["random", "kmeans", "bipartite"])
def test_batch_independence_of_seeded_anchor_rules(rule):
    feats, vis, attn = inputs(batch=3, seed=2)
    together = run(feats, vis, attn, method="vispruner", n_vis=64, restore=True, anchor_rule=rule)
    for b in range(3):
        alone = run(feats[b : b + 1], vis[b : b + 1], attn[b : b + 1], method="vispruner", n_vis=64, restore=True, anchor_rule=rule)
        assert torch.equal(alone.source[0], together.source[b])


def test_seed_and_generator():
    feats, vis, attn = inputs()
    a = run(feats, vis, attn, method="random", n_vis=64, seed=0)
    b = run(feats, vis, attn, method="random", n_vis=64, seed=0)
    c = run(feats, vis, attn, method="random", n_vis=64, seed=1)
    assert torch.equal(a.source, b.source) and not torch.equal(a.source, c.source)
    cfg = make_reduction_config(method="random", n_vis=64).resolve()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r1 = reduce_visual_tokens(feats, cfg, generator=g1)
    r2 = reduce_visual_tokens(feats, cfg, generator=g2)
    assert torch.equal(r1.source, r2.source)


def test_identity():
    feats, vis, attn = inputs()
    for cfg in (dict(method="none"), dict(method="divprune", n_vis=N), dict(method="holov", n_vis=N, restore=False)):
        res = run(feats, vis, attn, **cfg)
        assert torch.equal(res.features, feats)
        assert res.source.tolist() == [list(range(N))] * 2 and res.sizes.tolist() == [[1.0] * N] * 2
        assert res.positions.tolist() == [[float(t) for t in range(N)]] * 2


def test_merge_with_nothing_to_merge_is_graceful():
    feats, vis, attn = inputs()
    # split 1.0: n_keep = n, n_merge = 0 -> pure pruning even with merge on
    res = run(feats, vis, attn, method="divprune", n_vis=64, restore=True, split_ratio=1.0)
    check_result(res, feats, 64, covers_all=False)
    # split 0: everything comes from merging
    res = run(feats, vis, attn, method="divprune", n_vis=64, restore=True, split_ratio=0.0)
    check_result(res, feats, 64, covers_all=True)
    # n = N with merge on: the N - n_keep pruned tokens are each their own anchor
    res = run(feats, vis, attn, method="divprune", n_vis=N, restore=True)
    assert res.sizes.tolist() == [[1.0] * N] * 2 and torch.equal(res.features, feats)


def test_half_precision_inputs():
    feats, vis, attn = inputs(dtype=torch.float16)
    res = run(feats, vis, attn, method="vispruner", n_vis=64, restore=True)
    check_result(res, feats, 64, covers_all=True)
    assert res.sizes.dtype == torch.float32 and res.positions.dtype == torch.float32


def test_bad_inputs_have_clear_errors():
    feats, vis, attn = inputs()
    with pytest.raises(ValueError, match="n_vis=0"):
        run(feats, vis, attn, method="divprune", n_vis=0)
    with pytest.raises(ValueError, match=r"n_vis=577.*N=576"):
        run(feats, vis, attn, method="divprune", n_vis=577)
    with pytest.raises(ValueError, match=r"'prune_all'.*divprune"):
        run(feats, vis, attn, method="prune_all", n_vis=64)
    with pytest.raises(ValueError, match=r"anchor_rule='densest'.*reference"):
        run(feats, vis, attn, method="divprune", n_vis=64, restore=True, anchor_rule="densest")
    with pytest.raises(ValueError, match="position_rep='middle'"):
        run(feats, vis, attn, method="divprune", n_vis=64, position_rep="middle")
    with pytest.raises(Exception, match="n_visual"):  # typo'd option: OmegaConf names the key
        make_reduction_config(overrides=["n_visual=64"])
    with pytest.raises(ValueError, match=r"cls_attn.*N.*576"):
        run(feats, vis, None, method="holov", n_vis=64)
    with pytest.raises(ValueError, match=r"vis_feats.*N=576"):
        run(feats, None, attn, method="vispruner", n_vis=64)
    with pytest.raises(ValueError, match="cls_attn shape"):
        run(feats, vis, attn[:, :10], method="visionzip", n_vis=64)
    with pytest.raises(ValueError, match=r"attn_keys.*N=576"):
        reduce_visual_tokens(feats, make_reduction_config(method="visionzip", n_vis=64).resolve(), vis_feats=vis,
                             cls_attn=attn, vis_cls=vis[:, 0], projector=PROJ)
    with pytest.raises(ValueError, match="projector"):
        reduce_visual_tokens(feats, make_reduction_config(method="visionzip", n_vis=64).resolve(), vis_feats=vis,
                             cls_attn=attn, attn_keys=vis, vis_cls=vis[:, 0])
    with pytest.raises(ValueError, match=r"position_mode=retain.*visionzip_cls=false"):
        run(feats, vis, attn, method="visionzip", n_vis=64, position_mode="retain")
    with pytest.raises(ValueError, match=r"token_order='pick'.*\['reference', 'position'\]"):
        make_reduction_config(["token_order=pick"])
    with pytest.raises(ValueError, match="resolve"):
        reduce_visual_tokens(feats, make_reduction_config(method="divprune", n_vis=64))
    with pytest.raises(ValueError, match="method 'none'"):
        run(feats, vis, attn, method="none", n_vis=64)
    with pytest.raises(ValueError, match="grid_hw"):
        reduce_visual_tokens(feats[:, :575], make_reduction_config(method="uniform", n_vis=64).resolve())
    with pytest.raises(ValueError, match="n_anchors=9"):
        anchor_merge(torch.randn(1, 8, 4), 9)
