"""Physical removal of zero filters/channels (admmprune.shrink, `admmprune shrink`)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import make_run_dir
from torch import nn

import admmprune
from admmprune.channels.shrink import ShrinkError, load_shrunk, save_shrunk, shrink
from admmprune.cli import main

TOL = 1e-5


def filter_masks(model: nn.Module, removed: dict[str, int], seed: int = 0) -> dict:
    """Masks zeroing ``removed[name]`` random whole filters of each named layer; the own
    biases of those filters are zeroed in the model (as the pruner does)."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, k in removed.items():
        module = model.get_submodule(name)
        out = module.weight.shape[0]
        mask = torch.ones_like(module.weight, dtype=torch.bool)
        gone = torch.randperm(out, generator=g)[:k]
        mask[gone] = False
        masks[f"{name}.weight"] = mask
        if module.bias is not None:
            with torch.no_grad():
                module.bias[gone] = 0
    return masks


def channel_masks(model: nn.Module, removed: dict[str, list[int]]) -> dict:
    """Masks zeroing the listed input channels (dim 1) of each named layer."""
    masks = {}
    for name, idxs in removed.items():
        w = model.get_submodule(name).weight
        mask = torch.ones_like(w, dtype=torch.bool)
        mask[:, idxs] = False
        masks[f"{name}.weight"] = mask
    return masks


def masked(model: nn.Module, masks: dict) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return model.eval()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_filter_masks_shrink_exactly():
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5").eval()
    masks = filter_masks(model, {"conv1": 8, "conv2": 20, "fc1": 300})
    x = torch.randn(8, 1, 28, 28)
    report = shrink(model, masks, x)
    small = report.model
    assert (small.conv1.out_channels, small.conv2.in_channels) == (12, 12)
    assert (small.conv2.out_channels, small.fc1.in_features) == (30, 30 * 16)
    assert (small.fc1.out_features, small.fc2.in_features, small.fc2.out_features) == \
        (200, 200, 10)
    expected = (12 * 25 + 12) + (30 * 12 * 25 + 30) + (200 * 480 + 200) + (10 * 200 + 10)
    assert params(small) == report.params_after == expected
    assert report.params_before == 431_080 and report.macs_after < report.macs_before
    with torch.no_grad():
        want = masked(model, masks)(x)
        assert (small(x) - want).abs().max() <= TOL
    assert report.max_abs_diff <= TOL and report.dropped == []
    assert params(model) == 431_080  # the original is left alone


def test_lenet5_channel_masks_remove_only_channels_every_consumer_drops():
    torch.manual_seed(1)
    model = admmprune.create_model("lenet5").eval()
    # conv2 drops input channels 0..6 -> conv1 filters 0..6 go, though they are not zero;
    # fc1 drops whole 4x4 blocks of conv2's channels 3 and 5, and one stray column
    fc1_cols = [c for ch in (3, 5) for c in range(ch * 16, ch * 16 + 16)] + [100]
    masks = channel_masks(model, {"conv2": list(range(7)), "fc1": fc1_cols})
    x = torch.randn(8, 1, 28, 28)
    report = shrink(model, masks, x)
    small = report.model
    assert small.conv1.out_channels == 13 and small.conv2.in_channels == 13
    assert small.conv2.out_channels == 48 and small.fc1.in_features == 48 * 16
    assert report.kept  # the stray column: conv2 channel 6 is still read elsewhere
    with torch.no_grad():
        assert (small(x) - masked(model, masks)(x)).abs().max() <= TOL
    assert report.dropped == []


def test_mlp_and_the_classifier_keeps_its_classes():
    torch.manual_seed(2)
    model = admmprune.create_model("mlp", depth=3, width=64).eval()
    masks = filter_masks(model, {"hidden.0": 20, "hidden.2": 40, "hidden.4": 64,
                                 "classifier": 3})
    x = torch.randn(16, 1, 28, 28)
    report = shrink(model, masks, x)
    small = report.model
    # hidden.4 is all zero: it keeps one filter, and as it reads nothing, hidden.2's
    # outputs are dead by their consumer too (one kept)
    assert [small.hidden[i].out_features for i in (0, 2, 4)] == [44, 1, 1]
    assert small.classifier.out_features == 10  # a network output: never removed
    assert report.kept.get("network output") == 3
    assert report.kept.get("every layer keeps a channel") == 2
    with torch.no_grad():
        assert (small(x) - masked(model, masks)(x)).abs().max() <= TOL


class ResidualNet(nn.Module):
    """Conv-BN stem, a residual block with a grouped conv, a depthwise conv, a concatenation
    and a flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1, groups=2, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.side = nn.Conv2d(16, 8, 1)
        self.bn_s = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(24, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.b(torch.relu(self.bn_a(self.a(y)))) + y)  # residual
        z = self.dw(y)
        z = torch.cat([z, torch.relu(self.bn_s(self.side(z)))], 1)
        z = torch.relu(self.head(z))
        z = nn.functional.adaptive_avg_pool2d(z, 4)
        return self.fc(z.flatten(1))


def residual_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ResidualNet()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def zero_bn_constants(model: nn.Module, bn: str, idxs) -> None:
    """BN output 0 for a zero input on these channels (so the removal is exact)."""
    m = model.get_submodule(bn)
    with torch.no_grad():
        m.bias[idxs] = 0
        m.running_mean[idxs] = 0


def test_residual_grouped_depthwise_concat_shrink_exactly():
    model = residual_net()
    # residual channels 1 and 9 (one per group of `a`): dead only if both writers are zero
    # (stem and b); side filters 2, 5; head filters 0, 3
    masks = filter_masks(model, {"side": 0, "head": 0})
    for name, rows in (("stem", [1, 9]), ("b", [1, 9]), ("side", [2, 5]), ("head", [0, 3])):
        mask = torch.ones_like(model.get_submodule(name).weight, dtype=torch.bool)
        mask[rows] = False
        masks[f"{name}.weight"] = mask
        if model.get_submodule(name).bias is not None:
            model.get_submodule(name).bias.data[rows] = 0
    # a's filter 4 alone is zero: its group would be unbalanced against the other -> kept
    mask = torch.ones_like(model.a.weight, dtype=torch.bool)
    mask[4] = False
    masks["a.weight"] = mask
    zero_bn_constants(model, "bn0", [1, 9])
    zero_bn_constants(model, "bn_s", [2, 5])
    with torch.no_grad():
        model.dw.bias[[1, 9]] = 0
    x = torch.randn(4, 3, 8, 8)
    report = shrink(model, masks, x)
    small = report.model
    assert small.stem.out_channels == 14 and small.bn0.num_features == 14
    assert (small.a.in_channels, small.a.groups) == (14, 2) and small.b.out_channels == 14
    assert small.dw.groups == small.dw.out_channels == 14
    assert small.side.out_channels == 6 and small.bn_s.num_features == 6
    assert small.side.in_channels == 14
    assert small.head.in_channels == 20 and small.head.out_channels == 10
    assert small.fc.in_features == 10 * 16
    assert small.a.out_channels == 16  # filter 4 kept (balance); its BN too
    assert report.kept.get("grouped convolution keeps equal groups", 0) >= 1
    assert report.dropped == []
    with torch.no_grad():
        assert (small(x) - masked(model, masks)(x)).abs().max() <= TOL
    assert params(small) == report.params_after < report.params_before


class CatIntoLinear(nn.Module):
    """A concatenation of a conv and a conv of it, pooled and flattened into a Linear:
    torch-pruning 1.6 cannot infer the parts' sizes here by itself."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12 * 4, 5)

    def forward(self, x):
        z = self.a(x)
        z = torch.cat([z, self.b(z)], 1)
        return self.fc(nn.functional.adaptive_avg_pool2d(z, 2).flatten(1))


def test_concatenation_into_a_linear_maps_each_part_to_its_features():
    torch.manual_seed(7)
    model = CatIntoLinear().eval()
    masks = filter_masks(model, {"a": 3, "b": 2})
    x = torch.randn(3, 3, 8, 8)
    report = shrink(model, masks, x)
    small = report.model
    assert (small.a.out_channels, small.b.in_channels, small.b.out_channels) == (5, 5, 2)
    assert small.fc.in_features == 7 * 4 and not report.kept
    with torch.no_grad():
        assert (small(x) - masked(model, masks)(x)).abs().max() <= TOL


def test_alexnet_keeps_channels_that_pass_through_local_response_norm():
    torch.manual_seed(6)
    model = admmprune.create_model("alexnet", num_classes=10, image_size=67, fc_width=64)
    model.eval()
    # conv4/conv5 are grouped (2 groups): remove 2 filters of each group
    masks = filter_masks(model, {"conv1": 6, "conv3": 40})
    for name in ("conv4", "conv5"):
        half = model.get_submodule(name).out_channels // 2
        mask = torch.ones_like(model.get_submodule(name).weight, dtype=torch.bool)
        mask[[0, 1, half, half + 1]] = False
        masks[f"{name}.weight"] = mask
        model.get_submodule(name).bias.data[[0, 1, half, half + 1]] = 0
    x = torch.randn(2, 3, 67, 67)
    report = shrink(model, masks, x)
    small = report.model
    assert small.conv1.out_channels == 96  # LRN mixes neighbouring channels: kept
    assert report.kept["passes through LocalResponseNorm"] == 6
    assert small.conv3.out_channels == 344 and small.conv4.in_channels == 344
    assert (small.conv4.out_channels, small.conv5.in_channels) == (380, 380)
    assert small.conv5.out_channels == 252 and small.fc6.in_features == 252
    with torch.no_grad():
        assert (small(x) - masked(model, masks)(x)).abs().max() <= TOL


def test_nonzero_constants_are_dropped_and_reported():
    model = residual_net(1)
    mask = torch.ones_like(model.side.weight, dtype=torch.bool)
    mask[[0, 7]] = False
    with torch.no_grad():
        model.bn_s.bias[[0, 7]] = 3.0  # a positive shift passes the ReLU
    report = shrink(model, {"side.weight": mask}, torch.randn(2, 3, 8, 8))
    assert report.model.side.out_channels == 6
    dropped = {(d.module, d.index) for d in report.dropped}
    assert ("side", 0) in dropped and ("bn_s", 7) in dropped  # bias of side, BN's shift
    assert report.max_abs_diff > 0  # said honestly: the function changed


def test_unstructured_masks_are_refused_with_advice():
    torch.manual_seed(3)
    model = admmprune.create_model("lenet5")
    masks = {n: torch.rand_like(p) > 0.5 for n, p in model.named_parameters()
             if n.endswith("weight")}
    with pytest.raises(ShrinkError, match="structure: filter"):
        shrink(model, masks, torch.randn(1, 1, 28, 28))
    with pytest.raises(ShrinkError, match="nothing to remove"):
        shrink(model, None, torch.randn(1, 1, 28, 28))
    with pytest.raises(ShrinkError, match="names no parameter"):
        shrink(model, {"nope.weight": masks["fc1.weight"]}, torch.randn(1, 1, 28, 28))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(4)
    model = admmprune.create_model("mlp", depth=2, width=32).eval()
    masks = filter_masks(model, {"hidden.0": 10, "hidden.2": 5})
    x = torch.randn(5, 784)
    small = shrink(model, masks, x).model
    path = save_shrunk(small, tmp_path / "m.safetensors", model_name="mlp",
                       model_args={"depth": 2, "width": 32})
    loaded = load_shrunk(path)
    assert loaded.hidden[0].out_features == 22 and loaded.hidden[2].in_features == 22
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    with pytest.raises(ShrinkError, match="no shrunk architecture"):
        from admmprune.export import save_dense

        load_shrunk(save_dense(model, tmp_path / "plain.safetensors"))


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(5)
    model = admmprune.create_model("lenet5")
    masked(model, filter_masks(model, {"conv1": 10, "conv2": 25, "fc1": 400}))
    run = make_run_dir(tmp_path, model.state_dict())
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "structure": "filter"}))
    return run


def test_shrink_command_prints_the_report_and_writes_a_loadable_file(run_dir, capsys):
    assert main(["shrink", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "conv2" in out and "50x20x5x5" in out and "25x10x5x5" in out
    assert "total" in out and "fewer" in out and "max |difference|" in out
    loaded = load_shrunk(run_dir / "model-shrunk.safetensors")
    assert loaded.fc1.out_features == 100
    assert main(["shrink", str(run_dir), "--out", str(run_dir / "x.safetensors")]) == 0
    assert (run_dir / "x.safetensors").is_file()


def test_shrink_command_refuses_an_unstructured_run(run_dir, capsys):
    model = admmprune.create_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) > 0.3)
    torch.save(model.state_dict(), run_dir / "model.pt")
    assert main(["shrink", str(run_dir)]) == 2
    assert "structure: filter" in capsys.readouterr().err


def test_shrink_command_refuses_a_run_pruned_unstructured(run_dir, capsys):
    # the README's rule: an unstructured run is refused, even where some whole filters and
    # channels happen to be zero (the weights here would shrink)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for structure in ("unstructured", "nm"):
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "structure": structure,
                                                             "all_percent": 50}))
        assert main(["shrink", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"pruned with structure {structure!r}" in err and "structure: filter" in err
        assert not (run_dir / "model-shrunk.safetensors").exists()
