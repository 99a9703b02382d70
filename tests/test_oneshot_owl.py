"""OWL ratios: the outlier count and the ratio rule worked out by hand on three blocks, the
size-weighted variant, equal outlier ratios, refused options, and the direction on blocks
built from Wanda scores (more outliers: pruned less)."""

from __future__ import annotations

import pytest
import torch

from admmprune.posttraining.owl import OWLError, outlier_ratio, owl_ratios
from admmprune.posttraining.wanda import wanda_scores
from admmprune.projection import ProjectionError


def test_outlier_ratio_by_hand():
    # mean of nine 1s and one 21 is 3; M = 5 puts the threshold at 15: one outlier in ten
    scores = torch.tensor([1.0] * 9 + [21.0])
    assert outlier_ratio(scores, m=5.0) == pytest.approx(10.0)
    # strictly above: mean 2, M = 3, threshold 6, and the 6 is not an outlier
    assert outlier_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0, 6.0]), m=3.0) == 0.0
    # a block's layers are pooled: one mean over both tensors (mean 3, as above)
    pooled = [torch.ones(3, 3), torch.tensor([21.0])]
    assert outlier_ratio(pooled, m=5.0) == pytest.approx(10.0)


def test_owl_ratios_on_three_blocks_by_hand():
    # outlier ratios 2.0, 5.0, 3.5 (percent); min 2, max 5, λ = 0.08:
    #   a = (r − 2) / 3 · 0.16 = (0, 0.16, 0.08);  mean(a) = 0.08
    #   S_l = 0.70 − (a − 0.08) = 0.78, 0.62, 0.70  -> 78%, 62%, 70%
    ratios = owl_ratios([2.0, 5.0, 3.5], 70.0, lam=0.08)
    assert ratios == pytest.approx([78.0, 62.0, 70.0])
    assert sum(ratios) / 3 == pytest.approx(70.0)  # the unweighted mean is the target


def test_size_weighted_owl_keeps_the_spread_and_the_weight_count():
    # same a = (0, 0.16, 0.08); sizes 200, 100, 100: weighted mean of a
    #   (0·200 + 0.16·100 + 0.08·100) / 400 = 0.06 -> S_l = 0.70 − (a − 0.06) = 76%, 60%, 68%
    ratios = owl_ratios([2.0, 5.0, 3.5], 70.0, lam=0.08, sizes=[200, 100, 100])
    assert ratios == pytest.approx([76.0, 60.0, 68.0])
    # 76·200 + 60·100 + 68·100 = 28000 = 70% of 400 weights
    assert (ratios[0] * 200 + ratios[1] * 100 + ratios[2] * 100) / 400 == pytest.approx(70.0)
    # equal sizes: the paper's rule
    assert owl_ratios([2.0, 5.0, 3.5], 70.0, sizes=[7, 7, 7]) == pytest.approx([78, 62, 70])


def test_equal_outlier_ratios_give_uniform_ratios():
    assert owl_ratios([3.0, 3.0, 3.0, 3.0], 60.0) == pytest.approx([60.0] * 4)
    assert owl_ratios([1.0, 9.0], 50.0, lam=0.0) == pytest.approx([50.0, 50.0])


def test_blocks_with_more_outliers_are_pruned_less():
    g = torch.Generator().manual_seed(0)
    blocks = []
    for heavy in (0, 4, 1):  # how many outlier input features each block's inputs have
        weight = torch.randn(32, 64, generator=g)
        norms = torch.ones(64)
        norms[:heavy] = 50.0
        blocks.append(wanda_scores(weight, norms))
    lods = [outlier_ratio(s) for s in blocks]
    assert lods[1] > lods[2] > lods[0]
    ratios = owl_ratios(lods, 70.0)
    assert ratios[1] < ratios[2] < ratios[0]
    assert max(ratios) - min(ratios) == pytest.approx(16.0)  # the full 2λ spread


def test_bad_inputs_are_refused():
    with pytest.raises(OWLError, match="lower lam"):
        owl_ratios([1.0, 2.0], 95.0, lam=0.08)  # 95 + 8 leaves [0, 100)
    with pytest.raises(OWLError, match="no blocks"):
        owl_ratios([], 50.0)
    with pytest.raises(OWLError, match="finite"):
        owl_ratios([1.0, float("nan")], 50.0)
    with pytest.raises(OWLError, match="sizes"):
        owl_ratios([1.0, 2.0], 50.0, sizes=[10])
    with pytest.raises(ProjectionError):
        owl_ratios([1.0, 2.0], 100.0)
    with pytest.raises(OWLError, match="no scores"):
        outlier_ratio([])
    with pytest.raises(OWLError, match="m must be"):
        outlier_ratio(torch.ones(3), m=0.0)
    with pytest.raises(OWLError, match="NaN"):
        outlier_ratio(torch.tensor([1.0, float("inf")]))


def test_a_block_pushed_past_the_cap_gives_its_excess_to_the_others():
    # by hand: ratios 1, 2, 3 at 90% with lam 0.08 over equal blocks: 98, 90, 82 before the
    # cap; with most=95 the first block keeps 95 and the 3 points it gives up go to the other
    # two alike: 91.5 and 83.5 (mean 90)
    assert owl_ratios([3.0, 2.0, 1.0], 90.0, 0.08, sizes=[1, 1, 1]) == pytest.approx(
        [82.0, 90.0, 98.0])
    assert owl_ratios([1.0, 2.0, 3.0], 90.0, 0.08, sizes=[1, 1, 1], most=95.0) == \
        pytest.approx([95.0, 91.5, 83.5])
