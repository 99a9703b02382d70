"""Darknet networks (YOLOv3/v4 and their tiny variants) built from darknet ``.cfg`` files.

A cfg file is a list of ``[section]`` blocks of ``key=value`` lines. The first block is
``[net]`` (input size); every later block is one layer, numbered from 0 in file order, and
``[route]``/``[shortcut]`` refer to earlier layers by that number. The model keeps one entry
of ``module_list`` per layer, so ``module_list.<i>.conv`` is darknet layer ``i`` and the Conv
weights come in the order of the ``.weights`` file (see :mod:`.darknet_weights`).

``forward`` returns the raw output of every ``[yolo]`` layer, shape
``(B, len(mask) * (5 + classes), H, W)``; decoding and the loss live elsewhere and read the
anchors, stride, classes and ``scale_x_y`` stored on each :class:`YoloLayer`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# importing the weights module registers its .weights loaders for the models below
from .darknet_weights import load_darknet_weights, save_darknet_weights
from .registry import register_model

__all__ = [
    "CfgError",
    "CfgSection",
    "CfgWarning",
    "ConvBlock",
    "DarknetModel",
    "Route",
    "Shortcut",
    "DarknetMaxPool",
    "Upsample",
    "YoloLayer",
    "builtin_cfg",
    "darknet_from_cfg",
    "format_cfg",
    "load_darknet_weights",
    "parse_cfg",
    "save_darknet_weights",
]

BUILTIN_CFGS = ("yolov3", "yolov3-tiny", "yolov4", "yolov4-tiny")

# Keys each layer type understands. Anything else in these sections would change the network
# (dilation, binary weights, ...), so it is an error rather than silently ignored. [net] and
# [yolo] hold training settings too: there every key is accepted and kept.
_LAYER_KEYS: dict[str, frozenset[str]] = {
    "convolutional": frozenset({"batch_normalize", "filters", "size", "stride", "pad",
                                "padding", "groups", "activation"}),
    "route": frozenset({"layers", "groups", "group_id"}),
    "shortcut": frozenset({"from", "activation"}),
    "maxpool": frozenset({"size", "stride", "padding"}),
    "upsample": frozenset({"stride", "scale"}),
}
_OPEN_SECTIONS = ("net", "yolo")
_ACTIVATIONS = ("linear", "leaky", "mish", "logistic", "swish", "relu")


class CfgError(ValueError):
    """A darknet cfg that cannot be parsed or built; the message names the line and layer."""


class CfgWarning(UserWarning):
    """A cfg line that is read but has no effect (a key repeated within its section)."""


@dataclass
class CfgSection:
    """One ``[kind]`` block: ``line`` is its 1-based header line, ``index`` its layer number
    (-1 for ``[net]``)."""

    kind: str
    line: int
    index: int
    options: dict[str, str] = field(default_factory=dict)
    key_lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key else self.line
        layer = "[net]" if self.index < 0 else f"layer {self.index} [{self.kind}]"
        return f"line {line}, {layer}"

    def error(self, message: str, key: str | None = None) -> CfgError:
        return CfgError(f"{self.where(key)}: {message}")

    # Typed access; a value of the wrong type is an error naming its line.
    def get_str(self, key: str, default: str | None = None) -> str:
        value = self.options.get(key, default)
        if value is None:
            raise self.error(f"missing key {key!r}")
        return value

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self.error(f"missing key {key!r}")
            return default
        try:
            return int(self.options[key])
        except ValueError:
            raise self.error(f"{key} must be an integer, got {self.options[key]!r}",
                             key) from None

    def get_float(self, key: str, default: float) -> float:
        if key not in self.options:
            return default
        try:
            return float(self.options[key])
        except ValueError:
            raise self.error(f"{key} must be a number, got {self.options[key]!r}",
                             key) from None

    def get_ints(self, key: str) -> list[int]:
        try:
            return [int(v) for v in self.get_str(key).split(",") if v.strip()]
        except ValueError:
            raise self.error(f"{key} must be a comma-separated list of integers, "
                             f"got {self.options[key]!r}", key) from None

    def get_floats(self, key: str) -> list[float]:
        try:
            return [float(v) for v in self.get_str(key).split(",") if v.strip()]
        except ValueError:
            raise self.error(f"{key} must be a comma-separated list of numbers, "
                             f"got {self.options[key]!r}", key) from None


def parse_cfg(text: str, source: str = "cfg") -> list[CfgSection]:
    """Split cfg text into sections; ``[net]`` must come first. Comments start with # or ;.

    A key repeated within a section keeps its first value, as darknet reads it; each
    ignored line is reported as a :class:`CfgWarning` naming its line number."""
    sections: list[CfgSection] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"{source} line {number}: malformed section header {raw!r}")
            kind = line[1:-1].strip().lower()
            if kind == "network":  # darknet's own alias
                kind = "net"
            if kind not in _LAYER_KEYS and kind not in _OPEN_SECTIONS:
                known = ", ".join(sorted([*_LAYER_KEYS, *_OPEN_SECTIONS]))
                raise CfgError(f"{source} line {number}: unknown section [{kind}] "
                               f"(supported: {known})")
            if kind == "net" and sections:
                raise CfgError(f"{source} line {number}: [net] must be the first section "
                               "and appear once")
            if not sections and kind != "net":
                raise CfgError(f"{source} line {number}: the cfg must start with a [net] "
                               f"section (width, height, channels), found [{kind}]")
            sections.append(CfgSection(kind, number, len(sections) - 1))
            continue
        if not sections:
            raise CfgError(f"{source} line {number}: {raw.strip()!r} comes before any section; "
                           "the cfg must start with [net]")
        key, sep, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        section = sections[-1]
        if not sep or not key:
            raise CfgError(f"{source} {section.where()}: line {number} is not key=value: "
                           f"{raw.strip()!r}")
        allowed = _LAYER_KEYS.get(section.kind)
        if allowed is not None and key not in allowed:
            raise CfgError(f"{source} line {number}: unsupported key {key!r} in "
                           f"[{section.kind}] (supported: {', '.join(sorted(allowed))})")
        if key in section.options:
            # darknet's option_find scans a section's options from the front, so the first
            # value wins (official cfgs repeat batch/subdivisions: testing, then training)
            layer = "[net]" if section.index < 0 else f"layer {section.index} [{section.kind}]"
            warnings.warn(f"{source} line {number}: {key}={value} is ignored: {layer} already "
                          f"sets {key} on line {section.key_lines[key]}, and darknet reads "
                          "the first value", CfgWarning, stacklevel=2)
            continue
        section.options[key] = value
        section.key_lines[key] = number
    if not sections:
        raise CfgError(f"{source}: no sections; the cfg must start with a [net] section")
    return sections


def format_cfg(sections: list[CfgSection]) -> str:
    """Cfg text for ``sections`` (the inverse of :func:`parse_cfg`, comments dropped)."""
    blocks = []
    for section in sections:
        body = "".join(f"{k}={v}\n" for k, v in section.options.items())
        blocks.append(f"[{section.kind}]\n{body}")
    return "\n".join(blocks)


# ----------------------------------------------------------------------------- layers


def _activation(name: str) -> nn.Module:
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "mish":
        return nn.Mish()
    if name == "logistic":
        return nn.Sigmoid()
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    return nn.Identity()


class ConvBlock(nn.Module):
    """``[convolutional]``: conv, optional batch norm (then the conv has no bias), activation."""

    def __init__(self, in_channels: int, filters: int, size: int, stride: int, padding: int,
                 groups: int, batch_normalize: bool, activation: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, size, stride, padding, groups=groups,
                              bias=not batch_normalize)
        # darknet's rolling statistics: 0.99 * old + 0.01 * new, variance + 1e-5
        self.bn = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.01) if batch_normalize else None
        self.act = _activation(activation)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class Route(nn.Module):
    """``[route]``: concatenate earlier outputs along channels; with ``groups`` take the
    ``group_id``-th of ``groups`` equal channel chunks of each input first."""

    def __init__(self, layers: list[int], groups: int = 1, group_id: int = 0) -> None:
        super().__init__()
        self.layers = layers
        self.groups = groups
        self.group_id = group_id

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            inputs = [x.chunk(self.groups, dim=1)[self.group_id] for x in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class Shortcut(nn.Module):
    """``[shortcut]``: add an earlier output to the previous one, then the activation."""

    def __init__(self, source: int, activation: str) -> None:
        super().__init__()
        self.source = source
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.act(x + other)


class DarknetMaxPool(nn.Module):
    """``[maxpool]`` as darknet pads it: ``padding`` (default ``size - 1``) extra cells,
    ``padding // 2`` before and the rest after, so stride 1 keeps the size for odd and even
    sizes alike; the output is ``(n + padding - size) // stride + 1``."""

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if p % 2 == 0 and p // 2 <= self.size // 2:
            return F.max_pool2d(x, self.size, self.stride, padding=p // 2)
        before, after = p // 2, p - p // 2
        x = F.pad(x, (before, after, before, after), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}, padding={self.padding}"


class Upsample(nn.Module):
    """``[upsample]``: nearest-neighbour enlargement by ``stride``, times ``scale``."""

    def __init__(self, stride: int, scale: float = 1.0) -> None:
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return x if self.scale == 1.0 else x * self.scale

    def extra_repr(self) -> str:
        return f"stride={self.stride}, scale={self.scale}"


def _parse_value(value: str) -> int | float | str | list[int | float]:
    """A [yolo] option as a number, a list of numbers, or the string itself."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if "," in value:
        try:
            return [float(v) if "." in v or "e" in v.lower() else int(v)
                    for v in (p.strip() for p in value.split(",")) if v]
        except ValueError:
            pass
    return value


class YoloLayer(nn.Module):
    """``[yolo]``: passes its input through unchanged; holds what decoding and the loss need.

    ``anchors`` (buffer, ``(len(mask), 2)``, pixels of the network input) are the masked
    anchors; ``all_anchors`` all ``num`` of them; ``stride`` is input pixels per output cell.
    Every other option of the section is kept in ``options`` and, where its name is free,
    as an attribute (``ignore_thresh``, ``iou_loss``, ...).
    """

    def __init__(self, all_anchors: list[tuple[float, float]], mask: list[int], classes: int,
                 stride: int, scale_x_y: float, options: dict[str, str]) -> None:
        super().__init__()
        self.mask = tuple(mask)
        self.num = len(all_anchors)
        self.classes = classes
        self.stride = stride
        self.scale_x_y = scale_x_y
        self.register_buffer("anchors", torch.tensor([all_anchors[m] for m in mask],
                                                     dtype=torch.float32), persistent=False)
        self.register_buffer("all_anchors", torch.tensor(all_anchors, dtype=torch.float32),
                             persistent=False)
        self.options = {k: _parse_value(v) for k, v in options.items()}
        for key, value in self.options.items():
            if key.isidentifier() and not hasattr(self, key):
                setattr(self, key, value)

    @property
    def num_outputs(self) -> int:
        """Channels of this head: ``len(mask) * (5 + classes)``."""
        return len(self.mask) * (5 + self.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return (f"mask={self.mask}, classes={self.classes}, stride={self.stride}, "
                f"scale_x_y={self.scale_x_y}")


# ----------------------------------------------------------------------------- model


class DarknetModel(nn.Module):
    """The network of a darknet cfg; ``forward`` returns the list of raw yolo head tensors.

    ``width``, ``height`` and ``channels`` come from ``[net]`` (the size the cfg was made
    for); any input whose sides are multiples of ``max_stride`` works. ``cfg_text`` is the
    effective cfg (after ``num_classes`` / ``image_size`` changes), ``net_options`` the
    ``[net]`` settings. ``prune_exclude_default`` names the first convolution and the
    convolutions feeding the YOLO heads, which pruning leaves dense unless included by name.
    """

    def __init__(self, sections: list[CfgSection]) -> None:
        super().__init__()
        net = sections[0]
        self.net_options = dict(net.options)
        self.width = net.get_int("width", 0)
        self.height = net.get_int("height", 0)
        self.channels = net.get_int("channels", 3)
        if self.width <= 0 or self.height <= 0 or self.channels <= 0:
            raise net.error("width, height and channels must be positive integers "
                            f"(got width={net.options.get('width')}, "
                            f"height={net.options.get('height')}, "
                            f"channels={net.options.get('channels', 3)})")
        self.cfg_text = format_cfg(sections)
        self.module_list = nn.ModuleList()
        channels: list[int] = []  # output channels of each layer
        strides: list[Fraction] = []  # input pixels per output cell of each layer
        needed: set[int] = set()  # layers whose output a route/shortcut reads later
        for section in sections[1:]:
            prev_c = channels[-1] if channels else self.channels
            prev_s = strides[-1] if strides else Fraction(1)
            module, c, s = _build_layer(section, prev_c, prev_s, channels, strides)
            if isinstance(module, Route):
                needed.update(module.layers)
            elif isinstance(module, Shortcut):
                needed.add(module.source)
            self.module_list.append(module)
            channels.append(c)
            strides.append(s)
        if not self.module_list:
            raise net.error("the cfg has no layers after [net]")
        self._needed = frozenset(needed)
        self.out_channels = channels
        self.max_stride = max(math.ceil(s) for s in strides)
        # Pruning advice (admmprune.selection): the first convolution (few weights, every
        # feature depends on it) and the convolutions that produce the YOLO heads (their
        # outputs are the predictions) stay dense unless named in include, as YOLObile does.
        convs = [i for i, m in enumerate(self.module_list) if isinstance(m, ConvBlock)]
        heads = [i - 1 for i, m in enumerate(self.module_list) if isinstance(m, YoloLayer)
                 and i > 0 and isinstance(self.module_list[i - 1], ConvBlock)]
        self.prune_exclude_default = tuple(f"module_list.{i}.conv"
                                           for i in sorted(set(convs[:1] + heads)))

    @property
    def yolo_layers(self) -> list[YoloLayer]:
        return [m for m in self.module_list if isinstance(m, YoloLayer)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected input (B, {self.channels}, H, W), got "
                             f"{tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"input size {h}x{w} is not a multiple of the network's stride "
                             f"{self.max_stride}; resize to e.g. "
                             f"{self.max_stride * max(1, round(h / self.max_stride))}")
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, layer in enumerate(self.module_list):
            if isinstance(layer, Route):
                x = layer([saved[j] for j in layer.layers])
            elif isinstance(layer, Shortcut):
                x = layer(x, saved[layer.source])
            else:
                x = layer(x)
                if isinstance(layer, YoloLayer):
                    heads.append(x)
            if i in self._needed:
                saved[i] = x
        return heads


def _layer_ref(section: CfgSection, ref: int, key: str, count: int) -> int:
    """An absolute layer number from a relative (negative) or absolute reference."""
    index = section.index + ref if ref < 0 else ref
    if not 0 <= index < section.index:
        raise section.error(
            f"{key}={ref} refers to layer {index}, which does not exist before this layer "
            f"(layers 0..{count - 1} come before it)", key)
    return index


def _build_layer(section: CfgSection, prev_c: int, prev_s: Fraction, channels: list[int],
                 strides: list[Fraction]) -> tuple[nn.Module, int, Fraction]:
    kind = section.kind
    if kind == "convolutional":
        filters = section.get_int("filters", 1)
        size = section.get_int("size", 1)
        stride = section.get_int("stride", 1)
        groups = section.get_int("groups", 1)
        padding = size // 2 if section.get_int("pad", 0) else section.get_int("padding", 0)
        activation = section.get_str("activation", "logistic")
        if activation not in _ACTIVATIONS:
            raise section.error(f"unknown activation {activation!r} "
                                f"(supported: {', '.join(_ACTIVATIONS)})", "activation")
        if filters <= 0 or size <= 0 or stride <= 0 or groups <= 0 or padding < 0:
            raise section.error("filters, size, stride and groups must be positive and "
                                "padding non-negative")
        if prev_c % groups or filters % groups:
            raise section.error(f"groups={groups} must divide the input channels ({prev_c}) "
                                f"and filters ({filters})", "groups")
        block = ConvBlock(prev_c, filters, size, stride, padding, groups,
                          bool(section.get_int("batch_normalize", 0)), activation)
        return block, filters, prev_s * stride
    if kind == "route":
        refs = section.get_ints("layers")
        if not refs:
            raise section.error("layers= is empty", "layers")
        layers = [_layer_ref(section, r, "layers", len(channels)) for r in refs]
        groups = section.get_int("groups", 1)
        group_id = section.get_int("group_id", 0)
        if groups <= 0 or not 0 <= group_id < groups:
            raise section.error(f"need groups >= 1 and 0 <= group_id < groups, got "
                                f"groups={groups} group_id={group_id}")
        sizes = {strides[j] for j in layers}
        if len(sizes) > 1:
            detail = ", ".join(f"layer {j}: stride {strides[j]}" for j in layers)
            raise section.error(f"route joins outputs of different spatial sizes ({detail})",
                                "layers")
        for j in layers:
            if channels[j] % groups:
                raise section.error(f"groups={groups} does not divide the {channels[j]} "
                                    f"channels of layer {j}", "groups")
        out_c = sum(channels[j] // groups for j in layers)
        return Route(layers, groups, group_id), out_c, strides[layers[0]]
    if kind == "shortcut":
        source = _layer_ref(section, section.get_int("from"), "from", len(channels))
        activation = section.get_str("activation", "linear")
        if activation not in _ACTIVATIONS:
            raise section.error(f"unknown activation {activation!r} "
                                f"(supported: {', '.join(_ACTIVATIONS)})", "activation")
        if channels[source] != prev_c or strides[source] != prev_s:
            raise section.error(
                f"shortcut adds layer {source} ({channels[source]} channels, stride "
                f"{strides[source]}) to layer {section.index - 1} ({prev_c} channels, stride "
                f"{prev_s}); their shapes must match", "from")
        return Shortcut(source, activation), prev_c, prev_s
    if kind == "maxpool":
        size = section.get_int("size", 1)
        stride = section.get_int("stride", size)
        padding = section.get_int("padding", size - 1)
        if size <= 0 or stride <= 0 or padding < 0:
            raise section.error("maxpool size and stride must be positive, padding >= 0")
        return DarknetMaxPool(size, stride, padding), prev_c, prev_s * stride
    if kind == "upsample":
        stride = section.get_int("stride", 2)
        if stride <= 0:
            raise section.error(f"upsample stride must be positive, got {stride}", "stride")
        return Upsample(stride, section.get_float("scale", 1.0)), prev_c, prev_s / stride
    if kind == "yolo":
        return _build_yolo(section, prev_c, prev_s), prev_c, prev_s
    raise section.error(f"unsupported section [{kind}]")  # parse_cfg already rejects these


def _build_yolo(section: CfgSection, prev_c: int, prev_s: Fraction) -> YoloLayer:
    classes = section.get_int("classes")
    values = section.get_floats("anchors")
    if not values or len(values) % 2:
        raise section.error("anchors must be an even, non-empty list of w,h pairs", "anchors")
    anchors = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    num = section.get_int("num", len(anchors))
    if num != len(anchors):
        raise section.error(f"num={num} but anchors holds {len(anchors)} pairs", "num")
    mask = section.get_ints("mask") if "mask" in section.options else list(range(num))
    if not mask or any(not 0 <= m < num for m in mask):
        raise section.error(f"mask {mask} must pick anchors among 0..{num - 1}", "mask")
    if classes <= 0:
        raise section.error(f"classes must be positive, got {classes}", "classes")
    expected = len(mask) * (classes + 5)
    if prev_c != expected:
        raise section.error(
            f"its input has {prev_c} channels but len(mask)*(classes+5) = {len(mask)}*"
            f"({classes}+5) = {expected}; set filters={expected} in the convolution before it")
    if prev_s.denominator != 1:
        raise section.error(f"its input has a fractional stride {prev_s}")
    rest = {k: v for k, v in section.options.items()
            if k not in ("anchors", "mask", "classes", "num", "scale_x_y")}
    return YoloLayer(anchors, mask, classes, int(prev_s), section.get_float("scale_x_y", 1.0),
                     rest)


# ----------------------------------------------------------------------------- entry points


def builtin_cfg(name: str) -> str:
    """The text of a cfg shipped with admmprune: yolov3, yolov3-tiny, yolov4, yolov4-tiny."""
    if name not in BUILTIN_CFGS:
        raise ValueError(f"no built-in cfg {name!r}; available: {', '.join(BUILTIN_CFGS)}")
    return resources.files(__package__).joinpath("cfg").joinpath(f"{name}.cfg").read_text()


def _apply_overrides(sections: list[CfgSection], num_classes: int | None,
                     image_size: int | tuple[int, int] | None) -> None:
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        sections[0].options["height"], sections[0].options["width"] = str(h), str(w)
    if num_classes is None:
        return
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    for i, section in enumerate(sections):
        if section.kind != "yolo":
            continue
        before = sections[i - 1]
        if before.kind != "convolutional":
            raise section.error("num_classes needs a [convolutional] right before each "
                                f"[yolo] to resize, found [{before.kind}]")
        mask = section.get_ints("mask") if "mask" in section.options else None
        n_masks = len(mask) if mask is not None else section.get_int(
            "num", len(section.get_floats("anchors")) // 2)
        section.options["classes"] = str(num_classes)
        before.options["filters"] = str(n_masks * (num_classes + 5))


def darknet_from_cfg(path_or_text: str | Path, num_classes: int | None = None,
                     image_size: int | tuple[int, int] | None = None) -> DarknetModel:
    """Build a :class:`DarknetModel` from a cfg file path or cfg text.

    ``num_classes`` rewrites ``classes=`` of every ``[yolo]`` and ``filters=`` of the
    convolution before it; ``image_size`` (an int, or ``(height, width)``) rewrites the
    ``[net]`` size. Raises :class:`CfgError` (a ``ValueError``) naming the line and layer.
    """
    if isinstance(path_or_text, Path) or ("[" not in str(path_or_text)
                                          and "\n" not in str(path_or_text)):
        path = Path(path_or_text)
        if not path.is_file():
            raise FileNotFoundError(f"darknet cfg {path} not found; pass a .cfg path or the "
                                    f"cfg text (built in: {', '.join(BUILTIN_CFGS)})")
        text, source = path.read_text(), path.name
    else:
        text, source = str(path_or_text), "cfg"
    sections = parse_cfg(text, source)
    _apply_overrides(sections, num_classes, image_size)
    try:
        return DarknetModel(sections)
    except CfgError as error:
        raise CfgError(f"{source} {error}") from None


@register_model("yolov4")
def yolov4(num_classes: int = 80, image_size: int = 608) -> DarknetModel:
    """YOLOv4 (CSPDarknet53, SPP, PAN): 64,363,101 parameters with 80 classes."""
    return darknet_from_cfg(builtin_cfg("yolov4"), num_classes, image_size)


@register_model("yolov4-tiny")
def yolov4_tiny(num_classes: int = 80, image_size: int = 416) -> DarknetModel:
    """YOLOv4-tiny: 6,056,606 parameters with 80 classes."""
    return darknet_from_cfg(builtin_cfg("yolov4-tiny"), num_classes, image_size)
