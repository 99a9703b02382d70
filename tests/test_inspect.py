"""`admmprune inspect`: what a recipe or model prunes, and what it leaves alone and why."""

from __future__ import annotations

import pytest
from conftest import REPO
from torch import nn

from admmprune.cli import main
from admmprune.models import registry


class _WithLSTM(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        out, _ = self.lstm(self.emb(x))
        return self.head(out[:, -1])


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_inspect_a_model_lists_pruned_and_skipped_with_reasons(capsys):
    assert main(["inspect", "lenet5", "--exclude", "[fc2]"]) == 0
    out = capsys.readouterr().out
    pruned, _, skipped = out.partition("not pruned")
    assert "425,500 weights" in pruned and "fc1.weight" in pruned
    assert "fc2.weight" in skipped and "excluded by pattern 'fc2'" in skipped


def test_inspect_a_recipe(capsys):
    assert main(["inspect", "recipes/alexnet_imagenet.yaml"]) == 0
    out = capsys.readouterr().out
    assert "pruned: 8 tensors, 60,954,656 weights" in out


def test_rnn_weights_are_listed_and_reachable_by_name(capsys, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "test_lstm", _WithLSTM)
    assert main(["inspect", "test_lstm"]) == 0
    out = capsys.readouterr().out
    skipped = out.partition("not pruned")[2]
    for name in ("emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"):
        assert name in skipped
    assert main(["inspect", "test_lstm", "--include",
                 "[head, lstm.weight_ih_l0, emb.weight]"]) == 0
    pruned = capsys.readouterr().out.partition("not pruned")[0]
    assert "lstm.weight_ih_l0" in pruned and "emb.weight" in pruned


def test_a_pattern_that_matches_nothing_is_an_error(capsys):
    assert main(["inspect", "lenet5", "--exclude", "[fc9]"]) == 2
    assert "fc9" in capsys.readouterr().err


def test_every_run_lists_its_selection_at_the_start_and_in_the_summary(tmp_path, capsys):
    import json

    run_dir = tmp_path / "run"
    assert main(["prune", "recipes/lenet5.yaml", "--dataset", "synthetic", "--train-subset",
                 "64", "--test-subset", "32", "--dense-epochs", "1", "--k-step", "1",
                 "--retraining-epochs", "1", "--exclude", "[fc2]", "--run-dir", str(run_dir),
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pruned: 3 tensors, 425,500 weights")
    assert out.index("excluded by pattern 'fc2'") < out.index("compression N/K")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["not_pruned"] == [{"name": "fc2.weight", "shape": [10, 500],
                                      "reason": "excluded by pattern 'fc2'"}]


def test_inspect_an_import_spec(tmp_path, capsys):
    path = tmp_path / "inspect_spec_user.py"
    path.write_text("from torch import nn\n\n\ndef net(width=8):\n    return nn.Sequential("
                    "nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))\n")
    assert main(["inspect", "inspect_spec_user:net", "--import", str(path),
                 "--model-args", "{width: 5}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("inspect_spec_user:net {'width': 5}")
    assert "pruned: 2 tensors, 30 weights" in out
