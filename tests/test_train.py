"""The training loop's options: gradient accumulation, mixed precision, the task seam."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune import ADMMPruner
from admmprune.tasks import create_task
from admmprune.tasks.classification import topk_correct
from admmprune.train import evaluate, train_epoch


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def data(n: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, generator=generator), torch.randint(4, (n,), generator=generator)


def one_step(batches, accumulate: int, with_penalty: bool):
    model = small_model()
    pruner = ADMMPruner(model, all_percent=50.0, rho=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, batches, optimizer, accumulate=accumulate, progress=False,
                penalty=pruner.penalty if with_penalty else None)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("with_penalty", [False, True])
def test_accumulating_two_half_batches_equals_one_full_batch(with_penalty):
    x, y = data(32)
    full = one_step([(x, y)], accumulate=1, with_penalty=with_penalty)
    halves = one_step([(x[:16], y[:16]), (x[16:], y[16:])], accumulate=2,
                      with_penalty=with_penalty)
    for a, b in zip(full, halves, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    single = one_step([(x[:16], y[:16]), (x[16:], y[16:])], accumulate=1,
                      with_penalty=with_penalty)
    assert any(not torch.allclose(a, b) for a, b in zip(full, single, strict=True))


def test_bf16_autocast_trains_on_the_cpu_and_fp16_says_it_needs_cuda():
    x, y = data(64)
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = train_epoch(model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)],
                        optimizer, amp="bf16", progress=False)
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["steps"] == 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    result = evaluate(model, [(x, y)], amp="bf16")
    assert 0 <= result["accuracy"] <= result["top5"] <= 1
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train_epoch(model, [(x, y)], optimizer, amp="fp16", progress=False)


def test_classification_reports_top1_top5_and_loss():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 8, 9, 1, 2, 3]])
    target = torch.tensor([0, 0, 1])
    assert topk_correct(logits, target, 1) == 1
    assert topk_correct(logits, target, 5) == 2  # row 2: class 0 is 6th; row 3: class 1 is 2nd
    assert topk_correct(logits[:, :3], target, 5) == 3  # fewer classes than k: every row
    task = create_task("classification")
    result = task.evaluate(nn.Identity(), [(logits, target)], device="cpu")
    assert result["accuracy"] == pytest.approx(1 / 3) and result["top5"] == pytest.approx(2 / 3)
    expected = nn.functional.cross_entropy(logits, target).item()
    assert result["loss"] == pytest.approx(expected)
