"""Which tensors are pruned: frozen and shared weights, parameter-name patterns, the report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune import ADMMPruner
from admmprune.selection import SelectionError, describe_selection, prunable_parameters


def names(model, include=None, exclude=None) -> list[str]:
    return [n for n, _ in prunable_parameters(model, include, exclude)]


def reasons(model, include=None, exclude=None) -> dict[str, str]:
    return {s.name: s.reason for s in describe_selection(model, include, exclude)[1]}


class Tied(nn.Module):
    """Two Linear layers sharing one weight (as tied encoder/decoder layers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6)
        self.mid = nn.Linear(6, 4)
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.mid(self.dec(self.enc(x)))


class Sequence_(nn.Module):  # noqa: N801
    """Embedding, LSTM, attention and a Linear head: only the head is a default weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        h, _ = self.attn(h, h, h)
        return self.head(self.norm(h[:, -1]))


# -- frozen weights -----------------------------------------------------------------------------


def frozen_lenet():
    model = admmprune.create_model("lenet5")
    model.conv1.weight.requires_grad_(False)
    return model


def test_frozen_weights_are_skipped_by_default_and_by_wildcards():
    model = frozen_lenet()
    assert names(model) == ["conv2.weight", "fc1.weight", "fc2.weight"]
    assert names(model, include=["conv*"]) == ["conv2.weight"]
    assert "frozen" in reasons(model)["conv1.weight"]
    assert "'conv1.weight' in include" in reasons(model)["conv1.weight"]


def test_frozen_weight_named_exactly_is_pruned_and_hard_prune_works():
    model = frozen_lenet()
    assert names(model, include=["conv1", "fc*"]) == ["conv1.weight", "fc1.weight",
                                                      "fc2.weight"]
    assert names(model, include=["conv1.weight"]) == ["conv1.weight"]
    pruner = ADMMPruner(model, all_percent=90.0, include=["conv1.weight", "conv2"])
    pruner.hard_prune()  # no hook can go on a frozen tensor: it gets none, and no error
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    pruner.enforce()


def test_hard_prune_on_a_model_with_frozen_layers():
    model = frozen_lenet()
    pruner = ADMMPruner(model, all_percent=90.0)
    pruner.hard_prune()
    x = torch.randn(2, 1, 28, 28)
    model(x).sum().backward()
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert bool((p.grad[~m] == 0).all())
    assert model.conv1.weight.grad is None


# -- shared parameters --------------------------------------------------------------------------


def test_a_shared_parameter_is_one_tensor_under_its_first_name():
    model = Tied()
    assert names(model) == ["enc.weight", "mid.weight"]
    pruner = ADMMPruner(model, all_percent=50.0)
    assert pruner.total == 36 + 24
    pruner.hard_prune()
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep == 30
    assert "shared with enc.weight" in reasons(model)["dec.weight"]


def test_a_shared_parameter_is_excluded_by_any_of_its_names():
    assert names(Tied(), exclude=["dec"]) == ["mid.weight"]
    assert names(Tied(), include=["dec.weight"]) == ["enc.weight"]


def test_tied_embedding_and_linear_head_count_once():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    model = LM()
    model.hidden = nn.Linear(4, 4)
    # a Linear head tied to the embedding is an LM head: left dense unless named
    assert names(model) == ["hidden.weight"]
    assert "left dense by default" in reasons(model)["emb.weight"]
    assert names(model, include=["out", "hidden"]) == ["emb.weight", "hidden.weight"]
    pruned, skipped = describe_selection(model, include=["out"])
    assert [p.numel for p in pruned] == [40]  # once
    assert [s.name for s in skipped] == ["out.weight", "hidden.weight"]


# -- patterns on parameter names ----------------------------------------------------------------


def test_default_selection_is_conv_and_linear_weights_only():
    model = Sequence_()
    assert names(model) == ["attn.out_proj.weight", "head.weight"]
    why = reasons(model)
    for name in ("emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "attn.in_proj_weight"):
        assert why[name].startswith("not a Conv/Linear weight")
    assert "norm.weight" not in why and "lstm.bias_ih_l0" not in why  # 1-D: not weights


def test_include_reaches_rnn_embedding_and_attention_weights_by_parameter_name():
    model = Sequence_()
    chosen = names(model, include=["lstm.weight_ih_l0", "*.in_proj_weight", "emb.weight",
                                   "head"])
    assert chosen == ["emb.weight", "lstm.weight_ih_l0", "attn.in_proj_weight", "head.weight"]
    pruner = ADMMPruner(model, all_percent=80.0, include=chosen)
    tokens = torch.randint(0, 20, (4, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = model(tokens).sum() + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.admm_step()
    pruner.hard_prune()
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    assert pruner.params[1] is model.lstm.weight_ih_l0


def test_a_module_name_reaches_its_weight_tensors_but_never_biases_or_norm_scales():
    model = Sequence_()
    assert names(model, include=["lstm"]) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    assert names(model, include=["*.weight"]) == ["emb.weight", "attn.out_proj.weight",
                                                  "head.weight"]
    assert names(model, exclude=["head.weight"]) == ["attn.out_proj.weight"]


@pytest.mark.parametrize(("include", "exclude", "bad"), [
    (["lstm.weight_ih_l9"], None, "lstm.weight_ih_l9"),
    (None, ["*.bias"], "*.bias"),  # biases are not weight tensors
    (["head", "nothing*"], None, "nothing*"),
])
def test_a_pattern_matching_nothing_raises_naming_it(include, exclude, bad):
    with pytest.raises(SelectionError, match="matches no") as info:
        prunable_parameters(Sequence_(), include, exclude)
    assert repr(bad) in str(info.value)
    assert "lstm.weight_ih_l0" in str(info.value)  # and lists what exists
    with pytest.raises(SelectionError):
        describe_selection(Sequence_(), include, exclude)


# -- parametrizations and the report -------------------------------------------------------------


def test_weight_norm_and_spectral_norm_tensors_are_skipped_with_the_reason():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    nn.utils.parametrizations.weight_norm(model[0])
    nn.utils.parametrizations.spectral_norm(model[1])
    assert names(model) == ["2.weight"]
    why = reasons(model)
    assert "WeightNorm" in why["0.parametrizations.weight.original1"]
    assert "SpectralNorm" in why["1.parametrizations.weight.original"]
    chosen = names(model, include=["1.parametrizations.weight.original", "2"])
    assert chosen == ["1.parametrizations.weight.original", "2.weight"]


def test_old_style_weight_norm_is_skipped_with_the_reason():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.warns(FutureWarning):
        nn.utils.weight_norm(model[0])
    assert names(model) == ["1.weight"]
    assert "weight_norm" in reasons(model)["0.weight_v"]


def test_describe_selection_lists_every_weight_tensor_once_with_a_reason():
    model = Sequence_()
    model.head.weight.requires_grad_(False)
    pruned, skipped = describe_selection(model, exclude=["attn.out_proj"])
    assert pruned == []  # nothing left: reported, not raised
    assert {s.name for s in skipped} == {
        "emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "attn.in_proj_weight",
        "attn.out_proj.weight", "head.weight"}
    why = {s.name: s.reason for s in skipped}
    assert why["attn.out_proj.weight"] == "excluded by pattern 'attn.out_proj'"
    assert why["head.weight"].startswith("frozen")
    with pytest.raises(SelectionError, match="no prunable tensor"):
        prunable_parameters(model, exclude=["attn.out_proj"])
    pruned, _ = describe_selection(admmprune.create_model("lenet5"))
    assert [(p.name, p.shape, p.numel) for p in pruned][:1] == [("conv1.weight", (20, 1, 5, 5),
                                                                 500)]
    assert sum(p.numel for p in pruned) == 430500
