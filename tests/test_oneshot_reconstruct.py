"""The layer-wise ADMM solver: no pruning gives W back, lower reconstruction error than
SparseGPT and Wanda on correlated inputs, exact budgets (layer, row, N:M), the final update
against a direct least-squares solve, the cubic schedule worked out by hand, layouts, scale
invariance and refused options."""

from __future__ import annotations

import pytest
import torch

from admmprune.posttraining.reconstruct import (
    LayerSolverError,
    admm_reconstruct,
    keep_schedule,
    masked_least_squares,
    reconstruction_error,
    row_topk_mask,
)
from admmprune.posttraining.sparsegpt import sparsegpt_prune
from admmprune.posttraining.wanda import row_masks, wanda_scores
from admmprune.projection import ProjectionError, survivor_count


def correlated_layer(out: int = 48, inputs: int = 64, tokens: int = 256, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense weight and calibration inputs with a non-identity covariance: a random
    mixing of the features and log-normal feature scales (a few features dominate, as in
    transformer activations)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(inputs, inputs, generator=g, dtype=torch.float64)
    scales = torch.exp(torch.randn(inputs, generator=g, dtype=torch.float64))
    x = torch.randn(tokens, inputs, generator=g, dtype=torch.float64) @ mixing * scales
    weight = torch.randn(out, inputs, generator=g, dtype=torch.float64)
    return weight, x


def test_keeping_every_weight_returns_the_dense_weight():
    weight, x = correlated_layer(seed=3)
    gram = x.t() @ x
    new, mask = admm_reconstruct(weight, gram, keep=weight.numel(), cg_tol=1e-13)
    assert bool(mask.all())
    torch.testing.assert_close(new, weight, rtol=1e-9, atol=1e-9)
    # the default tolerance of the final update: W to about 1e-5
    new, _ = admm_reconstruct(weight, gram, keep=weight.numel())
    assert float((new - weight).norm() / weight.norm()) < 1e-5


@pytest.mark.parametrize("percent", [50, 70, 90])
def test_admm_reconstructs_better_than_sparsegpt_and_wanda(percent):
    for seed in range(3):
        weight, x = correlated_layer(seed=seed)
        gram = x.t() @ x
        keep = survivor_count(weight.numel(), percent)
        admm, mask = admm_reconstruct(weight, gram, keep=keep)
        sparsegpt, _ = sparsegpt_prune(weight, gram, all_percent=percent)
        wanda = weight * row_masks(wanda_scores(weight, torch.diagonal(gram).sqrt()), percent)
        # the error is ‖X(Ŵ − W)ᵀ‖², computed here from X itself
        error = float((x @ (admm - weight).t()).pow(2).sum())
        assert error == pytest.approx(reconstruction_error(weight, admm, gram), rel=1e-9)
        assert error < reconstruction_error(weight, sparsegpt, gram)
        assert error < reconstruction_error(weight, wanda, gram)
        assert int(mask.sum()) == keep


@pytest.mark.parametrize("projection", ["layer", "row"])
@pytest.mark.parametrize("keep", [1, 37, 1000, 1536, 3071])
def test_unstructured_budget_is_exact(projection, keep):
    weight, x = correlated_layer(seed=1)
    new, mask = admm_reconstruct(weight, x.t() @ x, keep=keep, projection=projection,
                                 iterations=6)
    assert mask.dtype == torch.bool and int(mask.sum()) == keep
    assert bool((new[~mask] == 0).all())
    if projection == "row":  # every row keeps its share, the first rows one more
        per_row = mask.sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1


@pytest.mark.parametrize("nm", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_are_valid(nm):
    n, m = nm
    weight, x = correlated_layer(out=16, inputs=66, seed=2)  # 66: a last group of 2
    new, mask = admm_reconstruct(weight, x.t() @ x, nm=nm, iterations=8)
    groups = mask[:, :64].reshape(16, -1, m).sum(dim=2)
    assert bool((groups == n).all())
    assert bool((mask[:, 64:].sum(dim=1) == min(n, 2)).all())
    assert bool((new[~mask] == 0).all())


def test_two_four_beats_sparsegpt_two_four():
    weight, x = correlated_layer(seed=4)
    gram = x.t() @ x
    admm, _ = admm_reconstruct(weight, gram, nm=(2, 4))
    sparsegpt, _ = sparsegpt_prune(weight, gram, nm=(2, 4))
    assert reconstruction_error(weight, admm, gram) < reconstruction_error(weight, sparsegpt,
                                                                           gram)


def direct_masked_solution(weight, x, mask, damp):
    """Row by row: least squares on the kept columns of X, with the dampening as extra
    rows sqrt(λ)·I (so the normal equations are (XᵀX + λI)_SS w_S = ((XᵀX + λI) wᵢ)_S)."""
    gram = x.t() @ x
    lam = damp * float(torch.diagonal(gram).mean())
    augmented = torch.cat([x, lam ** 0.5 * torch.eye(x.shape[1], dtype=x.dtype)])
    out = torch.zeros_like(weight)
    for i in range(weight.shape[0]):
        kept = mask[i].nonzero().squeeze(1)
        target = augmented @ weight[i]
        out[i, kept] = torch.linalg.lstsq(augmented[:, kept], target.unsqueeze(1)).solution[:, 0]
    return out


def test_final_update_is_the_masked_least_squares_optimum():
    weight, x = correlated_layer(out=6, inputs=10, tokens=40, seed=5)
    gram = x.t() @ x
    new, mask = admm_reconstruct(weight, gram, keep=25, iterations=10, cg_tol=1e-13)
    expected = direct_masked_solution(weight, x, mask, damp=0.01)
    torch.testing.assert_close(new, expected, rtol=1e-7, atol=1e-9)


def test_masked_least_squares_on_a_given_mask():
    weight, x = correlated_layer(out=5, inputs=12, tokens=30, seed=6)
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) < 0.4
    mask[:, 0] = True  # every row keeps something
    solved = masked_least_squares(weight, x.t() @ x, mask, damp=0.05, tol=1e-13)
    torch.testing.assert_close(solved, direct_masked_solution(weight, x, mask, damp=0.05),
                               rtol=1e-7, atol=1e-9)
    # a mask that keeps everything leaves the weight as it is
    full = masked_least_squares(weight, x.t() @ x, torch.ones_like(mask), tol=1e-13)
    torch.testing.assert_close(full, weight, rtol=1e-7, atol=1e-9)


def test_cubic_schedule_by_hand():
    # total 100, from 100 to 20 over 4 steps: 20 + round(80 · (1 − t/4)³)
    # t=1: 80 · 27/64 = 33.75 -> 54; t=2: 80/8 = 10 -> 30; t=3: 80/64 = 1.25 -> 21; t=4: 20
    assert keep_schedule(100, 100, 20, 4) == [54, 30, 21, 20]
    assert keep_schedule(100, 100, 20, 4, "linear") == [80, 60, 40, 20]
    assert keep_schedule(100, 100, 20, 4, "none") == [20, 20, 20, 20]
    assert keep_schedule(100, 60, 20, 1) == [20]


def test_conv1d_layout_gives_the_transposed_result():
    weight, x = correlated_layer(out=8, inputs=16, tokens=64, seed=7)
    gram = x.t() @ x
    linear, mask = admm_reconstruct(weight, gram, keep=50, iterations=6)
    conv1d, mask_t = admm_reconstruct(weight.t().contiguous(), gram, keep=50, iterations=6,
                                      input_dim=0)
    assert torch.equal(mask_t, mask.t())
    torch.testing.assert_close(conv1d, linear.t())


def test_scaling_the_gram_or_the_weight_changes_nothing_but_the_scale():
    weight, x = correlated_layer(out=8, inputs=16, tokens=64, seed=8)
    gram = x.t() @ x
    new, mask = admm_reconstruct(weight, gram, keep=40, iterations=8)
    new_h, mask_h = admm_reconstruct(weight, 1000.0 * gram, keep=40, iterations=8)
    new_w, mask_w = admm_reconstruct(3.0 * weight, gram, keep=40, iterations=8)
    assert torch.equal(mask, mask_h) and torch.equal(mask, mask_w)
    torch.testing.assert_close(new_h, new, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(new_w, 3.0 * new, rtol=1e-5, atol=1e-8)


def test_float32_weight_comes_back_float32_and_options_run():
    weight, x = correlated_layer(out=8, inputs=16, tokens=64, seed=9)
    gram = x.t() @ x
    keep = 40
    warm = row_masks(wanda_scores(weight, torch.diagonal(gram).sqrt()), 70)
    runs = [dict(score="magnitude"), dict(rho=[0.1 * 1.3 ** t for t in range(12)]),
            dict(warm_mask=warm), dict(final_update=False), dict(precision=torch.float64),
            dict(projection=lambda scores, k: row_topk_mask(scores, k))]
    for options in runs:
        new, mask = admm_reconstruct(weight.float(), gram, keep=keep, iterations=12,
                                     **options)
        assert new.dtype == torch.float32 and int(mask.sum()) == keep, options
        assert bool(torch.isfinite(new).all()) and bool((new[~mask] == 0).all())


def test_growing_rho_and_a_warm_mask_still_beat_zeroing():
    weight, x = correlated_layer(seed=10)
    gram = x.t() @ x
    keep = survivor_count(weight.numel(), 70)
    warm = row_masks(wanda_scores(weight, torch.diagonal(gram).sqrt()), 70)
    for options in (dict(rho=[0.2 * 1.2 ** t for t in range(20)]), dict(warm_mask=warm)):
        new, mask = admm_reconstruct(weight, gram, keep=keep, **options)
        assert reconstruction_error(weight, new, gram) < \
            reconstruction_error(weight, weight * mask, gram)


def test_bad_options_are_refused_with_a_reason():
    weight, x = correlated_layer(out=4, inputs=8, tokens=16)
    gram = x.t() @ x
    with pytest.raises(LayerSolverError, match="exactly one"):
        admm_reconstruct(weight, gram, keep=10, nm=(2, 4))
    with pytest.raises(LayerSolverError, match="exactly one"):
        admm_reconstruct(weight, gram)
    with pytest.raises(LayerSolverError, match="keep must be"):
        admm_reconstruct(weight, gram, keep=0)
    with pytest.raises(LayerSolverError, match="Gram"):
        admm_reconstruct(weight, gram[:4, :4], keep=10)
    with pytest.raises(LayerSolverError, match="damp"):
        admm_reconstruct(weight, gram, keep=10, damp=0.0)
    with pytest.raises(LayerSolverError, match="no calibration input"):
        admm_reconstruct(weight, torch.zeros_like(gram), keep=10)
    with pytest.raises(LayerSolverError, match="rho"):
        admm_reconstruct(weight, gram, keep=10, iterations=3, rho=[1.0, 2.0])
    with pytest.raises(LayerSolverError, match="projection"):
        admm_reconstruct(weight, gram, keep=10, projection="column")
    with pytest.raises(LayerSolverError, match="score"):
        admm_reconstruct(weight, gram, keep=10, score="hessian")
    with pytest.raises(LayerSolverError, match="warm mask"):
        admm_reconstruct(weight, gram, keep=10, warm_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(LayerSolverError, match="boolean mask"):
        admm_reconstruct(weight, gram, keep=10, projection=lambda scores, k: scores[:2] > 0)
    with pytest.raises(ProjectionError):
        admm_reconstruct(weight, gram, nm=(4, 2))
