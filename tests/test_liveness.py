"""Dead units (admmprune.channels.liveness) and what the compressed export does with them."""

from __future__ import annotations

import pytest
import torch
from conftest import make_run_dir
from torch import nn

import admmprune
from admmprune.channels import liveness
from admmprune.channels.liveness import dead_units, drop_dead_units
from admmprune.cli import main
from admmprune.export import load_state_dict, read_manifest, save_compressed


def lenet_with_dead_units() -> tuple[nn.Module, set[int], int]:
    """LeNet-5 whose fc2 reads no fc1 unit in DEAD, and whose fc1 reads nothing of conv2's
    channel 3 except through those dead units (so channel 3 dies on the second pass)."""
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5").eval()
    dead = {0, 5, 17, 499}
    with torch.no_grad():
        for unit in dead:
            model.fc2.weight[:, unit] = 0
        # conv2 channel 3 -> fc1 columns 48..63 (4x4 map each): read only by dead units
        live = [u for u in range(500) if u not in dead]
        model.fc1.weight[live, 48:64] = 0
    return model, dead, 3


def test_dead_units_are_the_units_nothing_reads():
    model, dead, channel = lenet_with_dead_units()
    found = dead_units(model, torch.randn(2, 1, 28, 28))
    assert set(torch.nonzero(found["fc1"]).view(-1).tolist()) == dead
    assert not found["fc2"].any()  # the output layer is never dead
    assert not found["conv2"].any()  # still read by the dead fc1 units, before zeroing


def test_dropping_repeats_until_nothing_is_dead_and_keeps_the_output_exactly():
    model, dead, channel = lenet_with_dead_units()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    report = drop_dead_units(model, x)
    assert report.applied and report.max_abs_diff == 0.0
    assert report.units == {"fc1": len(dead), "conv2": 1}
    assert report.biases_zeroed == len(dead) + 1
    for unit in dead:
        assert not model.fc1.weight[unit].any() and model.fc1.bias[unit] == 0
    assert not model.conv2.weight[channel].any() and model.conv2.bias[channel] == 0
    with torch.no_grad():
        assert torch.equal(model(x), before)


class Residual(nn.Module):
    """a(x) + b(x) read by c; d reads the concatenation of a(x) and e(x). (A concatenation
    with the model's input itself has no known layout in the traced graph: every channel
    meeting it stays alive.)"""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.e = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 2, 1)
        self.d = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        s = torch.relu(self.bn(self.a(x) + self.b(x)))
        return self.c(s) + self.d(torch.cat([self.a(x), self.e(x)], 1))


def test_residual_partners_die_together_and_every_reader_must_be_zero():
    torch.manual_seed(0)
    model = Residual().eval()
    with torch.no_grad():
        model.c.weight[:, 1] = 0  # channel 1 of a+b: c does not read it, but d reads a's
        model.c.weight[:, 3] = 0  # channel 3: neither c nor d reads it -> dead in a and b
        model.d.weight[:, 3] = 0
    x = torch.randn(2, 3, 8, 8)
    found = dead_units(model, x)
    assert torch.nonzero(found["a"]).view(-1).tolist() == [3]
    # b's channel 1 is really dead too, but b is coupled to a, which d reads: kept (safe)
    assert torch.nonzero(found["b"]).view(-1).tolist() == [3]
    assert not found["c"].any() and not found["d"].any()
    with torch.no_grad():
        before = model(x)
    report = drop_dead_units(model, x)
    assert report.applied
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=0, rtol=0)


def test_a_wrong_analysis_is_caught_and_undone(monkeypatch):
    model, _, _ = lenet_with_dead_units()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def everything_dead(model, graph, blocked):
        return {"fc1": torch.ones(500, dtype=torch.bool)}

    monkeypatch.setattr(liveness, "_dead_units", everything_dead)
    report = drop_dead_units(model, torch.randn(4, 1, 28, 28))
    assert not report.applied and "changed the output" in report.reason
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_biases_with_zeros_are_stored_sparse_and_exactly(tmp_path):
    model, _, _ = lenet_with_dead_units()
    with torch.no_grad():
        model.fc1.bias[:400] = 0
        model.fc1.bias[400] = -0.0
    path = save_compressed(model, tmp_path / "m.apz", model_name="lenet5")
    entry = {e["name"]: e for e in read_manifest(path)["tensors"]}["fc1.bias"]
    assert entry["layout"] == "sparse"
    back = load_state_dict(path)["fc1.bias"]
    want = model.fc1.bias.detach()
    assert torch.equal(back.view(torch.int32), want.view(torch.int32))  # -0.0 kept too


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path, lenet_with_dead_units()[0].state_dict())


def test_export_drops_dead_units_for_quantized_files_only_by_default(run_dir, capsys):
    assert main(["export", str(run_dir), "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "dead units dropped" in out and "fc1 4" in out
    quantized = load_state_dict(run_dir / "model-4bit.apz")
    assert (quantized["fc1.bias"][[0, 5, 17, 499]] == 0).all()

    assert main(["export", str(run_dir)]) == 0  # float32: the state dict as it is
    assert "dead units" not in capsys.readouterr().out
    kept = load_state_dict(run_dir / "model.apz")
    original = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], original[k]) for k in original)

    out_file = run_dir / "dropped.apz"
    assert main(["export", str(run_dir), "--dead-units", "drop", "--out", str(out_file)]) == 0
    assert "dead units dropped" in capsys.readouterr().out
    assert out_file.stat().st_size < (run_dir / "model.apz").stat().st_size
    dropped = admmprune.load(out_file).eval()
    reference = admmprune.create_model("lenet5").eval()
    reference.load_state_dict(original)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(dropped(x), reference(x))


# -- live weights in the global filter projection ---------------------------------------------

def test_filter_readers_map_columns_to_the_filters_they_read():
    from admmprune.channels.liveness import filter_readers

    model = admmprune.create_model("lenet5")
    names = [n for n, _ in admmprune.prunable_parameters(model)]
    readers = filter_readers(model, names, torch.randn(2, 1, 28, 28))
    assert readers[0] == ()  # conv1 reads the image
    (i, cols, filters), = readers[1]
    assert i == 0 and torch.equal(cols, torch.arange(20)) and torch.equal(filters, cols)
    (i, cols, filters), = readers[2]  # fc1 reads conv2's 50 maps of 4x4 through flatten
    assert i == 1 and torch.equal(filters[cols.argsort()], torch.arange(800) // 16)
    (i, cols, filters), = readers[3]
    assert i == 2 and torch.equal(cols, filters)


def test_channels_that_meet_a_sum_are_not_mapped():
    from admmprune.channels.liveness import filter_readers

    model = Residual()
    names = [n for n, _ in admmprune.prunable_parameters(model)]
    readers = filter_readers(model, names, torch.randn(2, 3, 8, 8))
    assert all(entries == () for entries in readers)


@pytest.mark.parametrize("percent", [80.0, 95.0])
def test_global_filter_budget_counts_live_weights_and_zeroes_dead_columns(percent):
    from admmprune.pruner import ADMMPruner

    torch.manual_seed(0)
    model = admmprune.create_model("mlp", depth=3, width=64)
    example = torch.randn(2, 1, 28, 28)
    pruner = ADMMPruner(model, all_percent=percent, structure="filter",
                        group_score="lamp", example_inputs=example)
    pruner.hard_prune()
    kept = sum(int(m.sum()) for m in pruner.masks)
    assert kept >= pruner.keep
    # every column that reads a removed filter is removed too
    for producer, reader in zip(pruner.masks, pruner.masks[1:], strict=False):
        removed = ~producer.any(1)
        assert not reader[:, removed].any()
    # the same budget without tracing keeps dead columns, so fewer filters survive
    torch.manual_seed(0)
    plain = ADMMPruner(admmprune.create_model("mlp", depth=3, width=64), all_percent=percent,
                       structure="filter", group_score="lamp")
    plain.hard_prune()
    filters = [int(m.any(1).sum()) for m in pruner.masks]
    plain_filters = [int(m.any(1).sum()) for m in plain.masks]
    assert sum(filters) > sum(plain_filters)
    # and one budget step less would not reach the target: the budget is the smallest
    live = sum(int(m.sum()) for m in pruner.masks)
    assert live - pruner.keep < max(m.shape[1] for m in pruner.masks)


def test_a_channel_mixed_into_its_neighbours_is_not_dead():
    # LocalResponseNorm divides every channel by its neighbours' energy: a channel the next
    # layer does not read still changes the channels it does read
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.LocalResponseNorm(3, alpha=1.0),
                          nn.Conv2d(6, 2, 1)).eval()
    with torch.no_grad():
        model[3].weight[:, 2] = 0
    found = dead_units(model, torch.randn(2, 3, 8, 8))
    assert not found["0"].any()
