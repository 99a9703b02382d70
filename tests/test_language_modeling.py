"""The language-modeling task: next-token loss, perplexity, bits per byte, direction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from admmprune.tasks import create_task, list_tasks
from admmprune.train import evaluate, train_epoch


class Bigram(nn.Module):
    """Logits [B, T, V] from the current token alone; ``wrap`` returns an object with
    ``.logits`` like a Hugging Face ModelOutput."""

    def __init__(self, vocab: int = 5, wrap: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)
        self.wrap = wrap

    def forward(self, x):
        logits = self.table(x)
        return SimpleNamespace(logits=logits) if self.wrap else logits


def windows(n=6, t=7, vocab=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (n * t + 1,), generator=g)
    return tokens[:-1].view(n, t), tokens[1:].view(n, t)


def test_registered_with_bpb_as_a_lower_is_better_headline():
    task = create_task("language-modeling")
    assert "language-modeling" in list_tasks()
    assert task.metric == "bpb" and task.higher_is_better is False
    assert create_task("classification").higher_is_better is True


@pytest.mark.parametrize("wrap", [False, True])
def test_metrics_match_a_direct_computation(wrap):
    model, task = Bigram(wrap=wrap), create_task("language-modeling")
    x, y = windows()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]  # uneven batches: every token weighs alike
    metrics = evaluate(model, batches, device="cpu", task=task)
    logp = torch.log_softmax(model.table(x).detach(), -1)
    nats = float(-logp.gather(-1, y.unsqueeze(-1)).mean())
    assert metrics["loss"] == pytest.approx(nats, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(nats), rel=1e-6)
    assert metrics["bpb"] == pytest.approx(nats / math.log(2), rel=1e-6)
    with torch.no_grad():
        assert float(task.loss(model(x), y)) == pytest.approx(nats, rel=1e-6)


def test_training_lowers_the_loss_and_bad_shapes_are_refused():
    model, task = Bigram(), create_task("language-modeling")
    x, y = windows(n=32)
    before = evaluate(model, [(x, y)], device="cpu", task=task)["loss"]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(5):
        train_epoch(model, [(x, y)], optimizer, task=task, progress=False)
    assert evaluate(model, [(x, y)], device="cpu", task=task)["loss"] < before
    with pytest.raises(ValueError, match=r"logits \[B, T, V\]"):
        task.loss(torch.zeros(2, 3), y[:2])
