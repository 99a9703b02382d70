"""Caffe's AlexNet (models/bvlc_alexnet) and a loader for the converted ``bvlc_alexnet.npy``.

The layer names are Caffe's (conv1..conv5, fc6..fc8), so include/exclude patterns and the
keys of the ``.npy`` file read the same. With 1000 classes the model has 60,965,224
parameters.

The pretrained weights expect Caffe's input: 227x227 images in BGR channel order, on the
0-255 scale, minus the per-channel ImageNet mean (about B 104, G 117, R 123). Preparing the
images that way is the data pipeline's job, not the model's.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .registry import register_model, register_weights_loader

__all__ = ["AlexNet", "alexnet", "alexnet_feature_size", "caffe_alexnet_state_dict",
           "load_caffe_alexnet", "CAFFE_LAYERS"]

CAFFE_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5",
                                 "fc6", "fc7", "fc8")
CONV_CHANNELS = 256  # conv5's output channels, the depth of the features fed to fc6


def _pool_out(size: int) -> int:
    # Caffe rounds pooling output sizes up: ceil((n - 3) / 2) + 1. PyTorch's ceil_mode agrees
    # here: without padding and with stride 2 <= kernel 3, the last window always starts
    # inside the input, so PyTorch never drops it and Caffe never clips it (only with pad > 0).
    return -(-(size - 3) // 2) + 1


def alexnet_feature_size(image_size: int) -> int:
    """Side of the square feature map that conv5's pooling gives for ``image_size`` input
    (6 at 227 and also at 224, thanks to ceil-mode pooling; 1 at 67); 0 if too small."""
    size = (image_size - 11) // 4 + 1          # conv1, 11x11 stride 4, no padding
    for _ in range(3):                          # pool1, pool2, pool5 (the convs keep the size)
        if size < 3:
            return 0
        size = _pool_out(size)
    return size


def _smallest_image_size() -> int:
    size = 11
    while alexnet_feature_size(size) < 1:
        size += 1
    return size


class AlexNet(nn.Module):
    """Caffe's AlexNet, two-group convolutions included (conv2, conv4, conv5).

    conv1 96@11x11/4 → ReLU → LRN → max-pool 3/2 → conv2 256@5x5 pad 2 groups 2 → ReLU →
    LRN → max-pool 3/2 → conv3 384@3x3 → ReLU → conv4 384@3x3 groups 2 → ReLU →
    conv5 256@3x3 groups 2 → ReLU → max-pool 3/2 → fc6 → ReLU → dropout → fc7 → ReLU →
    dropout → fc8. Pooling rounds up like Caffe (``ceil_mode=True``): at 227x227 rounding
    changes nothing (55 → 27 → 13 → 6), but at e.g. 224x224 it gives Caffe's 6x6 where
    flooring would give 5x5, so fc6 keeps the pretrained size.

    Weights start from PyTorch's default initialisation; pretrained ones come from
    :func:`load_caffe_alexnet`.
    """

    def __init__(self, num_classes: int = 1000, image_size: int = 227, dropout: float = 0.5,
                 fc_width: int = 4096) -> None:
        super().__init__()
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not (isinstance(fc_width, int) and fc_width >= 1):
            raise ValueError(f"fc_width must be an integer >= 1, got {fc_width!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(image_size, int) or alexnet_feature_size(image_size) < 1:
            raise ValueError(f"image_size must be an integer >= {_smallest_image_size()} "
                             f"(AlexNet's conv stack needs it), got {image_size!r}")
        self.image_size = image_size
        self.feature_size = alexnet_feature_size(image_size)
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, CONV_CHANNELS, 3, padding=1, groups=2)
        self.fc6 = nn.Linear(CONV_CHANNELS * self.feature_size ** 2, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.fc8 = nn.Linear(fc_width, num_classes)
        # Caffe's across-channel LRN is x / (k + alpha/n · Σ_window x²)^beta, the window being
        # the n channels centred on the current one and cut off at the first and last channel.
        # nn.LocalResponseNorm computes the same thing: it zero-pads the channels by n//2 on
        # each side (zeros add nothing to Σx², which is Caffe's cut-off for odd n), averages
        # x² over the window (that is Σ/n, divided by n even at the edges, as Caffe does) and
        # multiplies by alpha. tests/test_alexnet.py checks it against the formula.
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.lrn(torch.relu(self.conv1(x))))
        x = self.pool(self.lrn(torch.relu(self.conv2(x))))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = self.pool(torch.relu(self.conv5(x)))
        if x.shape[-2:] != (self.feature_size, self.feature_size):
            raise ValueError(
                f"AlexNet was built for {self.image_size}x{self.image_size} images "
                f"({self.feature_size}x{self.feature_size} features into fc6), got input "
                "that gives "
                f"{x.shape[-2]}x{x.shape[-1]}; resize the images or set image_size")
        x = x.flatten(1)  # (c, h, w) order; the .npy loader reorders fc6 to match
        x = self.dropout(torch.relu(self.fc6(x)))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


@register_model("alexnet")
def alexnet(num_classes: int = 1000, image_size: int = 227, dropout: float = 0.5,
            fc_width: int = 4096) -> AlexNet:
    """Caffe's AlexNet; ``image_size`` sets fc6's input (6x6x256 at 227, 1x1x256 at 67) and
    ``fc_width`` the width of fc6/fc7 (4096 in the pretrained model)."""
    return AlexNet(num_classes=num_classes, image_size=image_size, dropout=dropout,
                   fc_width=fc_width)


# --------------------------------------------------------------------------- the .npy file

def _read_npy(path: str | Path) -> dict:
    try:
        # The file is a pickled dict written by Python 2: latin1 decodes its byte strings.
        data = np.load(path, encoding="latin1", allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"cannot read {path} as a .npy file: {err}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise ValueError(f"{path} is an .npz archive; expected a .npy file holding a pickled "
                         "dict {layer name: [weight, bias]} like bvlc_alexnet.npy")
    if not (isinstance(data, np.ndarray) and data.dtype == object and data.shape == ()):
        raise ValueError(f"{path} holds an array of shape {data.shape} and dtype {data.dtype}; "
                         "expected a pickled dict {layer name: [weight, bias]} like "
                         "bvlc_alexnet.npy")
    return data.item()


def _layer_module(model: nn.Module, name: str) -> nn.Module:
    module = getattr(model, name, None)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"the model has no Conv2d/Linear module named {name!r}; "
                         "Caffe AlexNet weights fit only the 'alexnet' model")
    return module


def _fc6_spatial(model: nn.Module) -> int:
    size = getattr(model, "feature_size", None)
    if size is None:  # not our AlexNet class: infer a square map from fc6's input size
        channels = _layer_module(model, "conv5").out_channels
        size = math.isqrt(_layer_module(model, "fc6").in_features // channels)
    return int(size)


def _expected_caffe_shape(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module, nn.Conv2d):
        c_out, c_in_group, kh, kw = module.weight.shape
        return (kh, kw, c_in_group, c_out)
    c_out, c_in = module.weight.shape
    return (c_in, c_out)


def _shape_hint(name: str, found: tuple[int, ...], expected: tuple[int, ...],
                model: nn.Module) -> str:
    if name == "fc8" and len(found) == 2 and found[0] == expected[0]:
        return f"; the file has {found[1]} classes: set model_args num_classes: {found[1]}"
    if name == "fc6" and len(found) == 2 and found[0] != expected[0]:
        size = _fc6_spatial(model)
        return (f"; this model feeds {size}x{size}x{CONV_CHANNELS} features into fc6 "
                f"(image_size {getattr(model, 'image_size', '?')}), the file "
                f"{found[0]} (227x227 input gives 6x6x256 = 9216): set model_args image_size")
    if name in ("fc6", "fc7") and len(found) == 2 and found[1] != expected[1]:
        return f"; the file's fc6/fc7 width is {found[1]}: set model_args fc_width: {found[1]}"
    return ""


def _as_array(value: object, key: str, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or not (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        kind = (f"an array of dtype {value.dtype}" if isinstance(value, np.ndarray)
                else type(value).__name__)
        raise ValueError(f"{key} {what}: expected a real-valued numpy array, found {kind}")
    if not np.isfinite(value).all():
        raise ValueError(f"{key} {what} contains NaN or infinite values")
    return value


def caffe_alexnet_state_dict(weights: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert Caffe AlexNet arrays into ``model``'s state-dict tensors (nothing is copied
    into the model).

    ``weights`` maps conv1..conv5, fc6..fc8 (``str`` or ``bytes`` keys; other keys are
    ignored) to ``[W, b]``. Caffe/TensorFlow layouts: a conv W is (kh, kw, c_in/groups, c_out)
    and becomes (c_out, c_in/groups, kh, kw); an fc W is (c_in, c_out) and is transposed.
    fc6's rows follow an NHWC flatten, (h, w, c); PyTorch flattens (c, h, w), so fc6 is
    reshaped to (h, w, c, out), permuted to (out, c, h, w) and flattened again. Every shape
    is checked against ``model`` before anything is returned; a bad entry raises
    ``ValueError`` naming the key and the expected and found shapes.
    """
    if not isinstance(weights, Mapping):
        raise ValueError(f"expected a dict {{layer name: [weight, bias]}}, found "
                         f"{type(weights).__name__}")
    by_name: dict[str, object] = {}
    for key, value in weights.items():
        by_name[key.decode("latin1") if isinstance(key, bytes) else str(key)] = value
    missing = [name for name in CAFFE_LAYERS if name not in by_name]
    if missing:
        raise ValueError(f"missing layer(s) {', '.join(missing)}; found keys "
                         f"{', '.join(sorted(by_name)) or 'none'}; Caffe AlexNet weights need "
                         f"{', '.join(CAFFE_LAYERS)}")
    state: dict[str, torch.Tensor] = {}
    for name in CAFFE_LAYERS:
        module = _layer_module(model, name)
        entry = by_name[name]
        if isinstance(entry, np.ndarray) and entry.dtype == object:
            entry = list(entry)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"{name}: expected [weight, bias], found {type(entry).__name__}"
                             + (f" of length {len(entry)}" if isinstance(entry, (list, tuple))
                                else ""))
        w = _as_array(entry[0], name, "weight")
        b = _as_array(entry[1], name, "bias")
        expected = _expected_caffe_shape(module)
        if w.shape != expected:
            layout = ("(kh, kw, c_in/groups, c_out)" if isinstance(module, nn.Conv2d)
                      else "(c_in, c_out)")
            raise ValueError(f"{name} weight: expected shape {expected} {layout} for this "
                             f"model, found {w.shape}"
                             + _shape_hint(name, w.shape, expected, model))
        if b.shape != (expected[-1],):
            raise ValueError(f"{name} bias: expected shape {(expected[-1],)}, found {b.shape}")
        if isinstance(module, nn.Conv2d):
            w = w.transpose(3, 2, 0, 1)
        elif name == "fc6":
            size = _fc6_spatial(model)
            w = w.reshape(size, size, -1, w.shape[1]).transpose(3, 2, 0, 1)
            w = w.reshape(w.shape[0], -1)
        else:
            w = w.T
        dtype = module.weight.dtype
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w)).to(dtype)
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(b)).to(dtype)
    return state


@register_weights_loader("alexnet", ".npy", runs_code=True)
def load_caffe_alexnet(model: nn.Module, path: str | Path) -> None:
    """Fill ``model`` in place from a Caffe-converted ``bvlc_alexnet.npy``.

    The file is ``np.save`` of a dict {layer: [W, b]} and is read with
    ``np.load(..., allow_pickle=True)``: unpickling can run arbitrary code, so load only
    files from a source you trust. A file that cannot be read, is not such a dict, lacks a
    layer or has a shape that does not fit ``model`` raises ``ValueError`` (the model is
    left unchanged). See :func:`caffe_alexnet_state_dict` for the layout conversion.
    """
    state = caffe_alexnet_state_dict(_read_npy(path), model)
    with torch.no_grad():
        for name, tensor in state.items():
            model.get_parameter(name).copy_(tensor)
