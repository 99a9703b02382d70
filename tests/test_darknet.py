"""Darknet cfg models (YOLOv3/v4 and tiny) and the darknet .weights format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from admmprune import create_model, prunable_parameters
from admmprune.models import weights_loader
from admmprune.models.darknet import (
    CfgError,
    CfgWarning,
    DarknetMaxPool,
    DarknetModel,
    YoloLayer,
    builtin_cfg,
    darknet_from_cfg,
    parse_cfg,
)
from admmprune.models.darknet_weights import (
    darknet_float_count,
    load_darknet_weights,
    save_darknet_weights,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_outputs(model: DarknetModel, x: torch.Tensor) -> list[torch.Tensor]:
    """Output of every darknet layer, through forward hooks."""
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out))
               for m in model.module_list]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


@pytest.fixture(scope="module")
def yolov4() -> DarknetModel:
    torch.manual_seed(0)
    return create_model("yolov4")


# ----------------------------------------------------------------------------- architecture


def test_yolov4_has_64363101_parameters_and_three_heads(yolov4):
    assert n_params(yolov4) == 64_363_101
    assert len(yolov4.module_list) == 162
    assert (yolov4.width, yolov4.height, yolov4.channels) == (608, 608, 3)
    heads = yolov4.yolo_layers
    assert [h.stride for h in heads] == [8, 16, 32]
    assert [h.scale_x_y for h in heads] == [1.2, 1.1, 1.05]
    assert heads[0].anchors.tolist() == [[12, 16], [19, 36], [40, 28]]
    assert heads[2].anchors.tolist() == [[142, 110], [192, 243], [459, 401]]
    assert heads[0].all_anchors.shape == (9, 2)
    assert heads[0].classes == 80 and heads[0].ignore_thresh == 0.7
    assert heads[0].iou_loss == "ciou" and heads[0].options["max_delta"] == 5
    # anchors move with the model but are not part of its state dict
    assert not any("anchors" in k for k in yolov4.state_dict())


def test_yolov4_small_input_shapes_including_spp_and_upsample(yolov4):
    yolov4.eval()
    outs = layer_outputs(yolov4, torch.randn(1, 3, 64, 64))
    # SPP: three stride-1 max-pools (5, 9, 13) keep the 2x2 map; the route stacks 4 x 512
    for i in (108, 110, 112):
        assert outs[i].shape == (1, 512, 2, 2)
    assert outs[113].shape == (1, 2048, 2, 2)
    assert outs[118].shape == (1, 256, 4, 4)  # upsample x2
    assert outs[121].shape == (1, 512, 4, 4)  # route -1,-3: upsampled + layer 85
    heads = [outs[i] for i in (139, 150, 161)]
    assert [tuple(h.shape) for h in heads] == [(1, 255, 8, 8), (1, 255, 4, 4), (1, 255, 2, 2)]


def test_yolov4_tiny_parameters_heads_and_group_route():
    torch.manual_seed(0)
    model = create_model("yolov4-tiny")
    assert n_params(model) == 6_056_606
    assert (model.width, model.height) == (416, 416)
    assert [h.mask for h in model.yolo_layers] == [(3, 4, 5), (1, 2, 3)]
    assert [h.stride for h in model.yolo_layers] == [32, 16]
    assert model.yolo_layers[1].anchors.tolist() == [[23, 27], [37, 58], [81, 82]]
    model.eval()
    x = torch.randn(2, 3, 96, 96)
    outs = layer_outputs(model, x)
    # route layers=-1 groups=2 group_id=1: the second half of layer 2's channels
    assert outs[3].shape == (2, 32, 24, 24)
    assert torch.equal(outs[3], outs[2][:, 32:])
    assert torch.equal(outs[6], torch.cat([outs[5], outs[4]], 1))  # route -1,-2
    assert torch.equal(outs[8], torch.cat([outs[2], outs[7]], 1))  # route -6,-1
    assert outs[34].shape == (2, 384, 6, 6)  # route -1, 23 (absolute)
    with torch.no_grad():
        heads = model(x)
    assert [tuple(h.shape) for h in heads] == [(2, 255, 3, 3), (2, 255, 6, 6)]
    assert torch.equal(heads[0], outs[29]) and torch.equal(heads[1], outs[36])


def test_train_mode_also_returns_raw_heads_and_backpropagates():
    torch.manual_seed(0)
    model = create_model("yolov4-tiny", num_classes=2).train()
    heads = model(torch.randn(2, 3, 64, 64))
    assert [tuple(h.shape) for h in heads] == [(2, 21, 2, 2), (2, 21, 4, 4)]
    sum(h.square().mean() for h in heads).backward()
    assert model.module_list[0].conv.weight.grad is not None


def test_yolov3_and_yolov3_tiny_cfgs_build_with_the_published_counts():
    v3 = darknet_from_cfg(builtin_cfg("yolov3"))
    assert n_params(v3) == 61_949_149
    assert [h.stride for h in v3.yolo_layers] == [32, 16, 8]
    tiny = darknet_from_cfg(builtin_cfg("yolov3-tiny")).eval()
    assert n_params(tiny) == 8_852_366
    outs = layer_outputs(tiny, torch.randn(1, 3, 64, 64))
    assert outs[10].shape == outs[11].shape == (1, 512, 2, 2)  # maxpool size 2 stride 1


def test_num_classes_rewrites_every_head():
    model = create_model("yolov4-tiny", num_classes=3, image_size=320)
    assert [h.classes for h in model.yolo_layers] == [3, 3]
    assert (model.width, model.height) == (320, 320)
    assert model.module_list[29].conv.out_channels == 3 * (5 + 3)
    assert model.module_list[36].conv.out_channels == 3 * (5 + 3)
    assert "classes=3\n" in model.cfg_text and "classes=80" not in model.cfg_text
    # only the two head convolutions change: 256*24+24 and 512*24+24 instead of 255 outputs
    assert n_params(model) == 6_056_606 - (256 + 512 + 2) * (255 - 24)
    with torch.no_grad():
        heads = model.eval()(torch.randn(1, 3, 64, 64))
    assert [h.shape[1] for h in heads] == [24, 24]
    # the effective cfg text rebuilds the same network
    assert n_params(darknet_from_cfg(model.cfg_text)) == n_params(model)


def test_prunable_tensors_follow_darknet_layer_order():
    model = create_model("yolov4-tiny")
    convs = [i for i, m in enumerate(model.module_list) if hasattr(m, "conv")]
    assert len(convs) == 21
    # by default the first convolution and the two feeding the YOLO heads stay dense
    assert model.prune_exclude_default == ("module_list.0.conv", "module_list.29.conv",
                                           "module_list.36.conv")
    names = [name for name, _ in prunable_parameters(model)]
    assert names == [f"module_list.{i}.conv.weight" for i in convs if i not in (0, 29, 36)]
    everything = [f"module_list.{i}.conv" for i in convs]
    names = [name for name, _ in prunable_parameters(model, include=everything)]
    assert names == [f"{n}.weight" for n in everything]
    assert model.module_list[0].bn is not None and model.module_list[29].bn is None


# ----------------------------------------------------------------------------- layers


def reference_maxpool(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """darknet's loop: padding size-1, window starts at out*stride - padding//2."""
    pad = size - 1
    h, w = x.shape[-2:]
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = torch.empty(*x.shape[:-2], oh, ow)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride - pad // 2, j * stride - pad // 2
            window = x[..., max(r0, 0):min(r0 + size, h), max(c0, 0):min(c0 + size, w)]
            out[..., i, j] = window.amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize("size,stride,n", [(2, 1, 5), (2, 2, 7), (2, 2, 6), (3, 1, 5),
                                           (5, 1, 6), (4, 1, 5), (3, 2, 7), (13, 1, 4)])
def test_maxpool_pads_like_darknet(size, stride, n):
    torch.manual_seed(0)
    x = torch.randn(1, 2, n, n)
    got = DarknetMaxPool(size, stride, size - 1)(x)
    assert torch.equal(got, reference_maxpool(x, size, stride))
    if stride == 1:
        assert got.shape == x.shape


TINY_CFG = """\
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=8
size=1
stride=1
pad=1
activation=swish

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=2

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
groups=2
activation=relu

[convolutional]
filters=14
size=1
stride=1
pad=0
activation=linear

[yolo]
mask=0,1
anchors=4,5, 6,7, 8,9
classes=2
num=3
scale_x_y=1.1
ignore_thresh=.5
"""


def test_handwritten_cfg_builds_runs_and_computes_what_it_says():
    torch.manual_seed(0)
    model = darknet_from_cfg(TINY_CFG).eval()
    assert model.max_stride == 4
    x = torch.randn(2, 3, 16, 16)
    outs = layer_outputs(model, x)
    assert torch.equal(outs[2], outs[1] + outs[0])  # shortcut from=-2, linear
    assert outs[3].shape == (2, 8, 4, 4)
    assert outs[4].shape == (2, 8, 8, 8)
    assert torch.equal(outs[4], outs[3].repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert torch.equal(outs[5], torch.cat([outs[4], outs[0]], 1))
    assert model.module_list[6].conv.weight.shape == (4, 8, 3, 3)  # groups=2: 16/2 inputs
    assert model.module_list[1].conv.bias is not None and model.module_list[1].bn is None
    assert model.module_list[7].conv.padding == (0, 0)
    head = model.yolo_layers[0]
    assert isinstance(head, YoloLayer)
    assert head.anchors.tolist() == [[4, 5], [6, 7]] and head.stride == 2
    assert head.scale_x_y == pytest.approx(1.1) and head.ignore_thresh == 0.5
    with torch.no_grad():
        (y,) = model(x)
    assert y.shape == (2, 14, 8, 8)
    # conv 3x3 stride 2 pad 1 with BN in eval mode, then mish
    layer = model.module_list[0]
    expected = torch.nn.functional.mish(layer.bn(torch.nn.functional.conv2d(
        x, layer.conv.weight, stride=2, padding=1)))
    assert torch.allclose(outs[0], expected)


def test_input_size_must_be_a_multiple_of_the_stride():
    model = create_model("yolov4-tiny")
    with pytest.raises(ValueError, match="multiple of the network's stride 32"):
        model(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("cfg,message", [
    ("[convolutional]\nfilters=4\n", r"line 1: the cfg must start with a \[net\]"),
    ("# only a comment\n", "no sections"),
    ("[net]\nwidth=8\nheight=8\n[conv]\nfilters=4\n", r"line 4: unknown section \[conv\]"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\ndilation=2\n",
     "line 6: unsupported key 'dilation'"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=four\n",
     r"line 5, layer 0 \[convolutional\]: filters must be an integer, got 'four'"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\nactivation=gelu\n",
     "unknown activation 'gelu'"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\n[route]\nlayers=-2\n",
     r"line 7, layer 1 \[route\]: layers=-2 refers to layer -1, which does not exist"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\n[route]\nlayers=1\n",
     "layers=1 refers to layer 1, which does not exist"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\n[convolutional]\nfilters=6\n"
     "[shortcut]\nfrom=-2\n", r"layer 2 \[shortcut\]: shortcut adds layer 0 \(4 channels"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\n[convolutional]\nfilters=4\n"
     "stride=2\n[route]\nlayers=-1,-2\n", "route joins outputs of different spatial sizes"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=4\n[route]\nlayers=-1\ngroups=3\n",
     "groups=3 does not divide the 4 channels"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=20\n[yolo]\nanchors=1,2\nclasses=2\n",
     r"layer 1 \[yolo\]: its input has 20 channels but len\(mask\)\*\(classes\+5\) = 1\*"),
    ("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=7\n[yolo]\nmask=3\nanchors=1,2\n"
     "classes=2\n", "mask .3. must pick anchors among 0..0"),
    ("[net]\nheight=8\n[convolutional]\nfilters=4\n",
     r"line 1, \[net\]: width, height and channels must be positive"),
    ("[net]\nwidth=8\nheight=8\nfilters\n", "line 4 is not key=value"),
])
def test_bad_cfgs_raise_errors_naming_the_line_and_layer(cfg, message):
    with pytest.raises(CfgError, match=message):
        darknet_from_cfg(cfg)


def test_missing_cfg_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        darknet_from_cfg(tmp_path / "nope.cfg")
    with pytest.raises(ValueError, match="num_classes must be positive"):
        create_model("yolov4-tiny", num_classes=0)
    with pytest.raises(ValueError, match="no built-in cfg"):
        builtin_cfg("yolov9")
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_CFG.replace("pad=0", "pad=0\nweird=1"))
    with pytest.raises(CfgError, match=r"tiny.cfg line \d+: unsupported key 'weird'"):
        darknet_from_cfg(path)
    path.write_text(TINY_CFG)
    assert darknet_from_cfg(str(path), num_classes=1).yolo_layers[0].num_outputs == 12


# ----------------------------------------------------------------------------- weights


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen)
                tensor.copy_(values.abs() + 0.1 if name.endswith("running_var") else values)


def test_weights_round_trip_is_bitwise_exact(tmp_path):
    model = create_model("yolov4-tiny")
    randomize(model)
    path = tmp_path / "tiny.weights"
    save_darknet_weights(model, path, seen=123_456_789_012)
    count = darknet_float_count(model)
    assert path.stat().st_size == 20 + 4 * count
    # conv weights + conv biases + 4 per BN channel (bias, weight, mean, var)
    bn_channels = sum(m.bn.num_features for m in model.module_list
                      if getattr(m, "bn", None) is not None)
    assert count == n_params(model) + 2 * bn_channels
    fresh = create_model("yolov4-tiny")
    header = load_darknet_weights(fresh, path)
    assert header.version == (0, 2, 5) and header.seen == 123_456_789_012
    reference, loaded = model.state_dict(), fresh.state_dict()
    for key, value in reference.items():
        if value.is_floating_point():
            assert torch.equal(loaded[key], value), key
    again = tmp_path / "again.weights"
    save_darknet_weights(fresh, again, seen=123_456_789_012)
    assert again.read_bytes() == path.read_bytes()


def test_weights_file_layout_matches_the_darknet_order(tmp_path):
    cfg = ("[net]\nwidth=8\nheight=8\nchannels=2\n"
           "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\nactivation=leaky\n"
           "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
    model = darknet_from_cfg(cfg)
    floats = np.arange(1, 3 * 4 + 3 * 2 + 2 + 2 * 3 + 1, dtype="<f4")
    path = tmp_path / "hand.weights"
    path.write_bytes(struct.pack("<3iq", 0, 2, 0, 7) + floats.tobytes())
    assert load_darknet_weights(model, path).seen == 7
    first, second = model.module_list[0], model.module_list[1]
    assert first.bn.bias.tolist() == [1, 2, 3]
    assert first.bn.weight.tolist() == [4, 5, 6]
    assert first.bn.running_mean.tolist() == [7, 8, 9]
    assert first.bn.running_var.tolist() == [10, 11, 12]
    assert first.conv.weight.flatten().tolist() == [13, 14, 15, 16, 17, 18]
    assert first.conv.weight[1, :, 0, 0].tolist() == [15, 16]  # (out, in, kh, kw) row-major
    assert second.conv.bias.tolist() == [19, 20]
    assert second.conv.weight.flatten().tolist() == [21, 22, 23, 24, 25, 26]


def test_version_0_1_header_has_a_32_bit_seen(tmp_path):
    model = create_model("yolov4-tiny")
    randomize(model, seed=1)
    path = tmp_path / "old.weights"
    save_darknet_weights(model, path, seen=32_000, version=(0, 1, 0))
    data = path.read_bytes()
    assert struct.unpack_from("<4i", data) == (0, 1, 0, 32_000)
    assert len(data) == 16 + 4 * darknet_float_count(model)
    fresh = create_model("yolov4-tiny")
    header = load_darknet_weights(fresh, path)
    assert header == ((0, 1, 0), 32_000)
    assert torch.equal(fresh.module_list[36].conv.weight, model.module_list[36].conv.weight)
    # the same floats behind a 0.2 header (64-bit seen) read the same
    wide = tmp_path / "new.weights"
    wide.write_bytes(struct.pack("<3iq", 0, 2, 0, 32_000) + data[16:])
    other = create_model("yolov4-tiny")
    load_darknet_weights(other, wide)
    assert torch.equal(other.module_list[0].bn.running_var, model.module_list[0].bn.running_var)


def test_too_short_and_too_long_files_say_by_how_many_floats(tmp_path):
    model = create_model("yolov4-tiny")
    randomize(model)
    path = tmp_path / "w.weights"
    save_darknet_weights(model, path)
    data = path.read_bytes()
    target = create_model("yolov4-tiny")
    before = target.module_list[0].conv.weight.clone()
    short, long_ = tmp_path / "short.weights", tmp_path / "long.weights"
    short.write_bytes(data[:-12])
    long_.write_bytes(data + np.zeros(5, "<f4").tobytes())
    with pytest.raises(ValueError, match="3 floats too short"):
        load_darknet_weights(target, short)
    with pytest.raises(ValueError, match="5 floats too long"):
        load_darknet_weights(target, long_)
    assert torch.equal(target.module_list[0].conv.weight, before)  # untouched on error
    ragged = tmp_path / "ragged.weights"
    ragged.write_bytes(data[:-2])
    with pytest.raises(ValueError, match="not a whole number of float32"):
        load_darknet_weights(target, ragged)
    tiny = tmp_path / "tiny.weights"
    tiny.write_bytes(data[:8])
    with pytest.raises(ValueError, match="too short for a darknet weights header"):
        load_darknet_weights(target, tiny)
    # weights of another class count do not fit either
    with pytest.raises(ValueError, match="floats too long"):
        load_darknet_weights(create_model("yolov4-tiny", num_classes=2), path)


def test_weights_loader_is_registered_for_both_models(tmp_path):
    for name in ("yolov4", "yolov4-tiny"):
        assert weights_loader(name, "coco.WEIGHTS") is not None
    model = create_model("yolov4-tiny")
    randomize(model, seed=2)
    path = tmp_path / "reg.weights"
    save_darknet_weights(model, path)
    fresh = create_model("yolov4-tiny")
    weights_loader("yolov4-tiny", path)(fresh, path)
    assert torch.equal(fresh.module_list[35].bn.weight, model.module_list[35].bn.weight)
    with pytest.raises(ValueError, match="not a darknet model"):
        load_darknet_weights(torch.nn.Linear(2, 2), path)


def test_a_repeated_key_keeps_its_first_value_as_darknet_does_and_warns_with_the_line():
    # yolov3-openimages.cfg sets batch/subdivisions twice in [net] (testing, then training);
    # darknet's option_find returns the first occurrence of a key
    cfg = TINY_CFG.replace("[net]\n", "[net]\nbatch=1\nsubdivisions=1\nbatch=64\n"
                           "subdivisions=16\n", 1).replace("filters=8\n", "filters=8\n"
                                                           "filters=16\n", 1)
    assert cfg.splitlines()[3] == "batch=64" and cfg.splitlines()[12] == "filters=16"
    with pytest.warns(CfgWarning) as caught:
        sections = parse_cfg(cfg, "openimages.cfg")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    assert messages[0] == ("openimages.cfg line 4: batch=64 is ignored: [net] already sets "
                           "batch on line 2, and darknet reads the first value")
    assert messages[1].startswith("openimages.cfg line 5: subdivisions=16 is ignored")
    assert messages[2].startswith("openimages.cfg line 13: filters=16 is ignored: layer 0 "
                                  "[convolutional] already sets filters on line 12")
    assert sections[0].options["batch"] == "1" and sections[0].options["subdivisions"] == "1"
    assert sections[1].options["filters"] == "8" and sections[1].key_lines["filters"] == 12
    with pytest.warns(CfgWarning):
        model = darknet_from_cfg(cfg, num_classes=1)
    assert model.module_list[0].conv.out_channels == 8
