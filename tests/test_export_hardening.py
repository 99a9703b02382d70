"""Export of awkward models and files written with the umask (issue 24, items 3, 11, 14)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune.export import BITS, ExportError, save_compressed


def _pruned_linear() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            weight = layer.weight
            weight[weight.abs() < weight.abs().median()] = 0.0
    return model


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 1e300])
@pytest.mark.parametrize("bits", [b for b in BITS if b < 32])
def test_quantized_export_refuses_a_non_finite_survivor_naming_the_tensor(bits, bad, tmp_path):
    model = _pruned_linear()
    if bad == 1e300:  # finite in float64, inf once it becomes a float32 centroid
        model = model.double()
    with torch.no_grad():
        row, col = torch.nonzero(model[2].weight)[0].tolist()
        model[2].weight[row, col] = bad
    path = tmp_path / "m.apz"
    with pytest.raises(ExportError, match=r"^2\.weight holds 1 non-finite survivor.*bits=32"):
        save_compressed(model, path, bits=bits)
    assert not path.exists()
    save_compressed(model, path, bits=32)  # stored as it is
    got = admmprune.export.load_state_dict(path)["2.weight"]
    want = model[2].weight.detach()
    assert torch.equal(got.view(torch.int64 if got.dtype == torch.float64 else torch.int32),
                       want.view(torch.int64 if want.dtype == torch.float64 else torch.int32))


def test_quantized_export_of_finite_weights_still_works(tmp_path):
    model = _pruned_linear()
    save_compressed(model, tmp_path / "m.apz", bits=4)
    loaded = admmprune.export.load_state_dict(tmp_path / "m.apz")
    assert bool(torch.isfinite(loaded["0.weight"]).all())
    assert torch.equal(loaded["0.weight"] != 0, model[0].weight != 0)

