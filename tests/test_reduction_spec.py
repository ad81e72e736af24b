"""Hand-checked cases for RESTORE_SPEC.md §1, §2, §4 and §5.

Every expected value below is derived by hand from the spec's definitions (features are built
from orthogonal / unit vectors so the cosines are 0, 1, 1/2 or 1/sqrt(2)); none is produced by
the code under test.
"""
import math

import pytest
import torch

from llava_restore.reduction import (
    anchor_merge,
    distance_bias,
    divprune_select,
    holov_allocate,
    holov_chunk_scores,
    holov_select,
    representative_positions,
    tome_partition,
    uniform_select,
    vispruner_select,
    visionzip_partition,
)
from llava_restore.reduction.holov import chunk_sizes
from llava_restore.reduction.positions import build_result


def basis(dim: int, *combos) -> torch.Tensor:
    """One row per combo: the sum of the listed unit vectors e_i.  -> (1, len(combos), dim)."""
    x = torch.zeros(len(combos), dim)
    for row, idx in enumerate(combos):
        for i in (idx if isinstance(idx, tuple) else (idx,)):
            x[row, i] += 1.0
    return x.unsqueeze(0)


# ----------------------------------------------------------------------------- DivPrune
def test_divprune_picks_by_hand():
    # tokens:      0    1    2    3       4    5    6    7       8    9    10      11
    x = basis(6, 0, 0, 1, (1, 2), 2, 2, 3, (3, 4), 4, 5, (0, 1), 3)
    # Distances 1 - cos: identical 0, orthogonal 1, unit vs two-hot 1 - 1/sqrt2 (~0.29),
    # two-hot vs two-hot sharing one axis 1/2.
    # Pick 1: distance to the nearest *other* token: only token 9 (e5) has 1 -> 9.
    # Pick 2: every token is at distance 1 from e5 -> tie -> lowest index 0.
    # Pick 3: min distance to {e5, e0}: 1 for 2,3,4,5,6,7,8,11; 0.29 for 10; 0 for 1 -> 2.
    # Pick 4: {e5, e0, e1}: 3 drops to 0.29 -> first at 1 is 4.
    # Pick 5: 5 is a copy of 4 (0) -> 6.   Pick 6: 7 drops to 0.29, 11 to 0 -> 8.
    # Pick 7: left 1 (0), 3 (0.29), 5 (0), 7 (0.29), 10 (0.29), 11 (0) -> tie -> 3.
    # Pick 8: 7 (0.29) vs 10 (min(0.29, 0.29, 0.5)) -> tie -> 7.  Pick 9: 10.
    # Picks 10-12: 1, 5, 11 are all at distance 0 -> ascending.
    expected = [9, 0, 2, 4, 6, 8, 3, 7, 10, 1, 5, 11]
    assert divprune_select(x, 12).tolist() == [expected]
    assert divprune_select(x, 4).tolist() == [expected[:4]]
    assert divprune_select(x, 0).shape == (1, 0)


def test_divprune_first_pick_is_the_most_isolated_not_the_first():
    # 0, 1 identical; 2 at 1 - 1/sqrt2 from 1's axis; 3 orthogonal to everything -> first pick 3
    x = basis(4, 0, 0, (0, 1), 2)
    assert divprune_select(x, 1).tolist() == [[3]]


# ----------------------------------------------------------------------------- VisPruner
def _vispruner_case():
    # CLS attention strictly decreasing in t -> order by attention = 0, 1, ..., 11.
    a = (12.0 - torch.arange(12.0)).unsqueeze(0) / 78.0
    # residual tokens 3..11; B of the first round = 4, 6, 8, 10 = e0, e1, e2, e3
    #                0  1  2       3  4  5  6       7  8  9  10 11
    x = basis(8, 6, 7, (6, 7), 0, 0, 4, 1, (1, 4), 2, 5, 3, 2)
    return x, a


def test_vispruner_loop_by_hand():
    x, a = _vispruner_case()
    # k = 6: n_imp = floor(6 * 0.5) = 3 -> important 0, 1, 2; residual [3..11] (R=9), n_div = 3.
    # step 2 (so the loop scores): round 1, r = min(2, 9-3, 5) = 2:
    #   A = [3,5,7,9,11], B = [4,6,8,10]; max cos to B: 3->1 (e0), 5->0, 7->1/sqrt2, 9->0, 11->1 (e2)
    #   sorted desc (stable): 3, 11, 7, 5, 9 -> drop 3, 11 -> residual [7, 5, 9] + [4, 6, 8, 10]
    # round 2, r = min(2, 7-3, 4) = 2: A = [7, 9, 6, 10], B = [5, 4, 8]
    #   scores 7->1/sqrt2 (e4 of token 5), 9->0, 6->0, 10->0 -> drop 7, 9 -> [6, 10] + [5, 4, 8]
    # round 3, r = min(2, 5-3, 3) = 2: A = [6, 5, 8], B = [10, 4]; all scores 0 -> drop 6, 5
    #   -> residual [8] + [10, 4]; R = 3 = n_div: stop.
    got = vispruner_select(x, a, 6, important_ratio=0.5, drop_per_step=2)
    assert got.tolist() == [[0, 1, 2, 8, 10, 4]]


def test_vispruner_reference_step_of_8():
    x, a = _vispruner_case()
    # round 1: r = min(8, 6, |A|=5) = 5 -> all A dropped -> residual B = [4, 6, 8, 10]
    # round 2: R = 4, r = min(8, 1, 2) = 1: A = [4, 8], B = [6, 10]; scores 0, 0 -> drop 4
    #   -> residual [8] + [6, 10]
    assert vispruner_select(x, a, 6).tolist() == [[0, 1, 2, 8, 6, 10]]


# ----------------------------------------------------------------------------- HoloV
def test_holov_chunk_sizes():
    assert chunk_sizes(576, 16) == [36] * 16
    assert chunk_sizes(12, 5) == [3, 3, 2, 2, 2]  # the first N % C chunks one longer
    assert chunk_sizes(3, 5) == [1, 1, 1]  # empty chunks are left out


def _holov_case():
    # chunk 0 = tokens 0,1,2 = e0, e0, e1; chunk 1 = tokens 3,4,5 = e2, e3, e4 (orthogonal)
    x = basis(5, 0, 0, 1, 2, 3, 4)
    a = torch.tensor([[0.10, 0.20, 0.15, 0.05, 0.05, 0.50]])
    return x, a


def test_holov_chunk_scores_by_hand():
    x, a = _holov_case()
    # chunk 0: S rows (diagonal zeroed) [0,1,0], [1,0,0], [0,0,0]; mean = row sum / 2 = .5, .5, 0
    # reference variance (default): the whole row, the zeroed diagonal's (0 - mean)^2 included:
    #   ((0-.5)^2 + (1-.5)^2 + (0-.5)^2) / 2 = .375, .375; token 2: 0
    #   1000a = 100, 200, 150: mean|1000a| = 150, mean|var| = .25
    scale = 150.0 / (0.25 + 1e-6)
    chunk0 = (100 + 0.09 * 0.375 * scale + 200 + 0.09 * 0.375 * scale + 150) / 3
    # chunk 1: orthogonal -> S = 0, mean 0, var 0 -> score = mean(50, 50, 500)
    chunk1 = 200.0
    got = holov_chunk_scores(x, a, [3, 3])
    torch.testing.assert_close(got, torch.tensor([[chunk0, chunk1]]), rtol=1e-5, atol=1e-4)
    # over the other tokens only (option): ((1-.5)^2 + (0-.5)^2) / 2 = .25, .25, 0
    scale_ex = 150.0 / (0.5 / 3 + 1e-6)
    chunk0_ex = (300 + 2 * 0.09 * 0.25 * scale_ex + 150) / 3
    got_ex = holov_chunk_scores(x, a, [3, 3], var_excludes_self=True)
    torch.testing.assert_close(got_ex, torch.tensor([[chunk0_ex, chunk1]]), rtol=1e-5, atol=1e-4)


def test_holov_variance_definition_matters_for_identical_tokens():
    # The variance term enters a chunk's score as 0.09 mean|1000a| mean(var) / (mean|var| + 1e-6):
    # scale-free, so it only matters where the variance is (near) zero.  Three identical tokens:
    # S off-diagonal = 1, mean = 1; reference variance (0 - 1)^2 / 2 = .5 each; without the
    # diagonal it is 0.
    x = basis(2, 0, 0, 0)
    a = torch.tensor([[0.1, 0.2, 0.3]])  # mean 1000a = 200
    ref = 200 + 0.09 * 200 * 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(holov_chunk_scores(x, a, [3]), torch.tensor([[ref]]), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(holov_chunk_scores(x, a, [3], var_excludes_self=True), torch.tensor([[200.0]]))


def test_holov_single_token_chunk_scores_raw_attention():
    # chunks of one token (N < 2C): the reference scores them by the raw a, not 1000 a
    x = basis(3, 0, 1, 2)
    a = torch.tensor([[0.2, 0.3, 0.5]])
    torch.testing.assert_close(holov_chunk_scores(x, a, [1, 1, 1]), a)
    torch.testing.assert_close(holov_chunk_scores(x, a, [1, 1, 1], single_token_scaled=True), 1000 * a)


def test_holov_allocation_by_hand():
    sizes = [3, 3, 3, 3]
    # w = .6, .1, .1, .2; k=6 -> floors 3, 0, 0, 1 (=4); remainder 2 -> chunks 0, 3 -> 4, 0, 0, 2;
    # clamp chunk 0 to 3 -> shortfall 1 -> highest weight with room: chunk 3 -> 3, 0, 0, 3
    assert holov_allocate(torch.tensor([[6.0, 1.0, 1.0, 2.0]]), sizes, 6).tolist() == [[3, 0, 0, 3]]
    # equal weights: floors 1 each, remainder 2 -> ties -> lowest chunks
    assert holov_allocate(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), sizes, 6).tolist() == [[2, 2, 1, 1]]
    # one chunk has all the weight: 5 -> clamp 2, deficit 3.  The reference hands it out in
    # rounds of +1 to each of the top-`deficit` chunks with room: chunks 1, 2, 3 (tied at 0) -> 2, 1, 1, 1
    got = holov_allocate(torch.tensor([[10.0, 0.0, 0.0, 0.0]]), [2, 2, 2, 2], 5)
    assert got.tolist() == [[2, 1, 1, 1]]
    # 'fill' fills the chunks with room in weight order instead: chunk 1 (2), chunk 2 (1)
    got = holov_allocate(torch.tensor([[10.0, 0.0, 0.0, 0.0]]), [2, 2, 2, 2], 5, redistribute="fill")
    assert got.tolist() == [[2, 2, 1, 0]]
    # rounds: w = .7, .2, .1 over sizes 1, 2, 6, k = 8 -> floors 5, 1, 0, remainder 2 -> 6, 2, 0;
    # clamp -> 1, 2, 0 (deficit 5); round 1: room = chunk 2 only -> +1; ... 5 rounds -> 1, 2, 5
    got = holov_allocate(torch.tensor([[7.0, 2.0, 1.0]]), [1, 2, 6], 8)
    assert got.tolist() == [[1, 2, 5]]
    # w = .5, .3, .2 over sizes 1, 4, 4, k = 6 -> floors 3, 1, 1, remainder 1 -> 4, 1, 1; clamp -> 1, 1, 1
    # (deficit 3); round 1: chunks 1, 2 have room, top-2 -> 1, 2, 2 (deficit 1); round 2: chunk 1 -> 1, 3, 2
    got = holov_allocate(torch.tensor([[5.0, 3.0, 2.0]]), [1, 4, 4], 6)
    assert got.tolist() == [[1, 3, 2]]
    # fill: chunk 1 takes the whole deficit -> 1, 4, 1
    assert holov_allocate(torch.tensor([[5.0, 3.0, 2.0]]), [1, 4, 4], 6, redistribute="fill").tolist() == [[1, 4, 1]]
    # batch rows are independent
    both = holov_allocate(torch.tensor([[6.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]]), sizes, 6)
    assert both.tolist() == [[3, 0, 0, 3], [2, 2, 1, 1]]


def test_holov_select_by_hand():
    x, a = _holov_case()
    # chunk scores ~163.5 and 200 -> w ~ .45, .55 -> k=3: floors 1, 1, remainder -> chunk 1
    # chunk 0 keeps its top-1 by a: token 1; chunk 1 its top-2: 5 (.5), then 3/4 tie -> 3
    # kept in the reference's output order: chunk by chunk, by a descending inside: 1, 5, 3
    # dropped 0 (.10), 2 (.15), 4 (.05) ranked by a descending: 2, 0, 4
    kept, dropped = holov_select(x, a, 3, num_chunks=2)
    assert kept.tolist() == [[1, 5, 3]]
    assert dropped.tolist() == [[2, 0, 4]]
    # k = 5: chunk 1 is kept whole (3) and chunk 0 partly (2: 1 (.20), 2 (.15)); a whole chunk
    # enters in index order (the reference appends it as it is): 1, 2, then 3, 4, 5
    kept, dropped = holov_select(x, a, 5, num_chunks=2)
    assert kept.tolist() == [[1, 2, 3, 4, 5]] and dropped.tolist() == [[0]]


# ----------------------------------------------------------------------------- Stage B
def _angles(*deg):
    rad = torch.tensor(deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1).float().unsqueeze(0)  # (1, M, 2)


def test_reference_anchors_vs_dpc_higher():
    # unit vectors at 120, 60, 0, 0 degrees: cosines 1, 1/2, -1/2
    y = _angles(120, 60, 0, 0)
    # S rows: y0 [1, .5, -.5, -.5], y1 [.5, 1, .5, .5], y2 [-.5, .5, 1, 1], y3 = y2
    # rho = .5, 2.5, 2, 2
    # reference (lower density): y2, y3: lower j = y0 -> delta = 1 - (-.5) = 1.5 -> score 3
    #   y1: lower = y0, y2, y3 -> max S .5 -> delta .5 -> 1.25;  y0 lowest -> delta 1 -> .5
    #   top-2: y2, y3 (tie at 3) -> anchors [2, 3]
    anchors, assign = anchor_merge(y, 2, "reference")
    assert anchors.tolist() == [[2, 3]]
    # y0: -.5 to both anchors -> lowest anchor; y1: .5 to both -> lowest anchor
    assert assign.tolist() == [[0, 0, 0, 1]]
    # dpc_higher: y1 densest -> delta = its largest distance 1 - min_j S_1j = .5 -> 1.25;
    #   y2, y3: higher = y1 -> delta .5 -> 1;  y0: higher all -> max S .5 -> .25
    #   top-2: y1 (1.25), y2 (1; tie with y3 -> lowest) -> anchors [1, 2]
    anchors, assign = anchor_merge(y, 2, "dpc_higher")
    assert anchors.tolist() == [[1, 2]]
    # y0 -> y1 (.5 vs -.5); y3 -> y2 (1 vs .5)
    assert assign.tolist() == [[0, 0, 1, 1]]


def test_reference_lowest_density_gets_delta_one():
    # 0, 30, 90 degrees: S rows [1, c, 0], [c, 1, .5], [0, .5, 1] with c = cos 30 ~ .866
    # rho = 1.866, 2.366, 1.5.  y1: lower = y0, y2 -> delta 1 - c ~ .134 -> score ~ .32;
    # y0: lower = y2 -> delta 1 -> 1.866;  y2 is the lowest -> delta 1 -> 1.5
    y = _angles(0, 30, 90)
    assert anchor_merge(y, 1, "reference")[0].tolist() == [[0]]
    anchors, assign = anchor_merge(y, 2, "reference")
    assert anchors.tolist() == [[0, 2]]
    assert assign.tolist() == [[0, 0, 1]]  # y1: c to y0 > .5 to y2
    anchors, assign = anchor_merge(y, 3, "reference")
    assert anchors.tolist() == [[0, 1, 2]] and assign.tolist() == [[0, 1, 2]]


def test_uniform_anchor_rule_uses_raster_order():
    y = torch.randn(1, 10, 4)
    token_index = torch.tensor([[50, 3, 7, 40, 1, 30, 9, 20, 60, 11]])
    # raster order of the 10 tokens: 1(4) 3(1) 7(2) 9(6) 11(9) 20(7) 30(5) 40(3) 50(0) 60(8)
    # ranks floor((i + .5) * 10 / 3) = 1, 5, 8 -> patches 3, 20, 50 = local 1, 7, 0 -> sorted
    anchors, _ = anchor_merge(y, 3, "uniform", token_index=token_index)
    assert anchors.tolist() == [[0, 1, 7]]


def test_anchor_merge_zero_anchors_merges_nothing():
    anchors, assign = anchor_merge(torch.randn(2, 5, 3), 0)
    assert anchors.shape == (2, 0) and assign.tolist() == [[-1] * 5] * 2


def test_uniform_pruner_grid():
    # 64 of 24 x 24: the 8 x 8 lattice at rows/columns floor((i + .5) * 3) = 1, 4, ..., 22
    lattice = [r * 24 + c for r in range(1, 24, 3) for c in range(1, 24, 3)]
    assert uniform_select(576, 64).tolist() == lattice
    # 4 of 4 x 4: 2 x 2 lattice at rows/cols floor((i + .5) * 2) = 1, 3
    assert uniform_select(16, 4).tolist() == [5, 7, 13, 15]


def test_tome_repeated_bipartite_matching_by_hand():
    #              0   1   2   3   4   5
    x = basis(3, 0, 1, 0, 2, 1, 2)
    # round 1 (t=6 -> 2): r = min(4, 3) = 3; A = 0, 2, 4 (e0, e0, e1), B = 1, 3, 5 (e1, e2, e2)
    #   best B: 0 -> 1 (all 0, lowest), 2 -> 1 (0), 4 -> 1 (1)  -> all three merge into 1
    #   survivors by root: 1 (size 4, mean (e0 + e1) / 2), 3, 5
    # round 2 (t=3): r = 1; A = 1, 5, B = 3: 5 -> 3 (cos 1) beats 1 -> 3 (cos 0) -> merge 5 into 3
    source, roots = tome_partition(x, 2)
    assert source.tolist() == [[0, 0, 0, 1, 0, 1]]
    assert roots.tolist() == [[1, 3]]


def test_visionzip_contextual_merging_by_hand():
    #                0  1  2  3  4  5       6  7
    x = basis(3, 2, 2, 0, 0, 1, 1, (0, 1), 1)
    a = torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0]])
    # n = 4, ratio .5: dominant = top-2 by a = 0, 1; rest = 2..7 (R = 6), n_ctx = 2, step 3
    # targets at ranks 0, 3 = tokens 2 (e0), 5 (e1); 3 -> 2, 4 -> 5, 6 -> tie .707 -> 2, 7 -> 5
    source = visionzip_partition(x, a, 4, 0.5)
    assert source.tolist() == [[0, 1, 2, 2, 3, 3, 2, 3]]


# ----------------------------------------------------------------------------- positions
def test_lower_median_and_other_representatives():
    source = torch.tensor([[0, 1, 1, 2, 1, 2, 2, 2, -1, 1, 0, 3]])
    # group 0 = {0, 10}; 1 = {1, 2, 4, 9}; 2 = {3, 5, 6, 7}; 3 = {11}; token 8 dropped
    # lower median = element (s - 1) // 2 of the sorted members
    assert representative_positions(source, 4, "median").tolist() == [[0.0, 2.0, 5.0, 11.0]]
    assert representative_positions(source, 4, "first").tolist() == [[0.0, 1.0, 3.0, 11.0]]
    assert representative_positions(source, 4, "last").tolist() == [[10.0, 9.0, 7.0, 11.0]]
    assert representative_positions(source, 4, "mean").tolist() == [[5.0, 4.0, 5.25, 11.0]]


def test_output_order_by_position_then_lowest_member():
    feats = torch.arange(8.0).view(1, 8, 1)
    # group 0 = {2, 6} (mean 4), group 1 = {4} (4), group 2 = {0, 1} (.5), group 3 = {3, 5, 7} (5)
    source = torch.tensor([[2, 2, 0, 3, 1, 3, 0, 3]])
    res = build_result(feats, source, 4, "mean")
    # by position .5, 4, 4, 5; the tie at 4 goes to the group whose lowest member is lower (2 < 4)
    assert res.positions.tolist() == [[0.5, 4.0, 4.0, 5.0]]
    assert res.source.tolist() == [[0, 0, 1, 3, 2, 3, 1, 3]]
    assert res.sizes.tolist() == [[2.0, 2.0, 1.0, 3.0]]
    assert res.features.flatten().tolist() == [0.5, 4.0, 4.0, 5.0]  # member means


# ----------------------------------------------------------------------------- distance term
def test_distance_bias_zero_at_d0_exactly():
    d = torch.zeros(3, 4)
    assert torch.equal(distance_bias(d, 10000.0, 128), torch.zeros(3, 4))
    assert distance_bias(0.0, 10000.0, 128).item() == 0.0


def test_distance_bias_by_hand():
    # head_dim 4: theta_0 = 1, theta_1 = 10000^(-2/4) = 0.01
    for dist in (1.0, 2.5, -7.0):
        decay = (math.cos(dist * 1.0) + math.cos(dist * 0.01)) / 2
        expected = math.log(2.0 - decay)
        got = distance_bias(torch.tensor([dist], dtype=torch.float64), 10000.0, 4)
        assert got.dtype == torch.float64
        assert abs(got.item() - expected) < 1e-12
    # c is a parameter: log(3 - D)
    decay = (math.cos(3.0) + math.cos(0.03)) / 2
    assert abs(distance_bias(torch.tensor([3.0], dtype=torch.float64), 10000.0, 4, c=3.0).item() - math.log(3.0 - decay)) < 1e-12


def test_distance_bias_dtypes_and_errors():
    assert distance_bias(torch.tensor([1.0, 2.0], dtype=torch.float16), 1e4, 8).dtype == torch.float16
    assert distance_bias(torch.tensor([1, 2]), 1e4, 8).dtype == torch.float32  # ints -> default float
    assert distance_bias(torch.tensor([0.5], dtype=torch.bfloat16), 1e4, 8).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="head_dim=7"):
        distance_bias(torch.tensor([1.0]), 1e4, 7)
    with pytest.raises(ValueError, match="c=1.0"):
        distance_bias(torch.tensor([1.0]), 1e4, 8, c=1.0)
