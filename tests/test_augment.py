import torch

from admmprune.data import TensorBatches
from admmprune.data.augment import RandomShift, random_shift


def test_shift_moves_each_image_by_at_most_max_shift():
    images = torch.zeros(50, 1, 28, 28)
    images[:, 0, 14, 14] = 1.0  # one bright pixel in the middle
    out = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    positions = [tuple((o[0] == 1).nonzero()[0].tolist()) for o in out]
    assert all(12 <= r <= 16 and 12 <= c <= 16 for r, c in positions)
    assert len(set(positions)) > 5  # images get their own offsets
    assert torch.equal(out.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))


def test_uncovered_border_takes_the_background_value():
    images = torch.full((8, 1, 6, 6), -0.5)
    images[:, :, 2:4, 2:4] = 1.0
    out = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) == {-0.5, 1.0}


def test_zero_shift_is_identity_and_batches_apply_the_transform():
    images = torch.randn(4, 1, 5, 5)
    assert random_shift(images, 0, torch.Generator()) is images
    x = torch.randn(10, 1, 8, 8)
    batches = TensorBatches(x, torch.arange(10), 5, shuffle=False, transform=RandomShift(1, 0))
    shifted = torch.cat([b for b, _ in batches])
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
