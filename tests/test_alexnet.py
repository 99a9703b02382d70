"""Caffe AlexNet and its bvlc_alexnet.npy loader, checked against a numpy forward pass written
here directly on the file's raw NHWC layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from admmprune import ADMMPruner, create_model, prunable_parameters
from admmprune.models import weights_loader
from admmprune.models.alexnet import (
    CAFFE_LAYERS,
    alexnet_feature_size,
    caffe_alexnet_state_dict,
    load_caffe_alexnet,
)

# ------------------------------------------------------------ an independent numpy AlexNet

CONVS = {  # name: (c_in, c_out, kernel, stride, pad, groups), from Caffe's prototxt
    "conv1": (3, 96, 11, 4, 0, 1),
    "conv2": (96, 256, 5, 1, 2, 2),
    "conv3": (256, 384, 3, 1, 1, 1),
    "conv4": (384, 384, 3, 1, 1, 2),
    "conv5": (384, 256, 3, 1, 1, 2),
}


def np_conv(x, w, b, stride, pad, groups):
    """x (N, H, W, C); w (kh, kw, C/groups, c_out) as stored in the .npy."""
    kh, kw, cin_g, cout = w.shape
    cout_g = cout // groups
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for g in range(groups):
        xg = x[..., g * cin_g:(g + 1) * cin_g]
        wg = w[..., g * cout_g:(g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                rows = slice(i, i + stride * (ho - 1) + 1, stride)
                cols = slice(j, j + stride * (wo - 1) + 1, stride)
                patch = xg[:, rows, cols]
                out[..., g * cout_g:(g + 1) * cout_g] += patch @ wg[i, j]
    return out + b


def np_lrn(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe ACROSS_CHANNELS: x / (k + alpha/n * sum of x^2 over the n channels around)^beta,
    the window cut off at the first and last channel."""
    channels = x.shape[-1]
    sums = np.zeros_like(x)
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels, c + n // 2 + 1)
        sums[..., c] = (x[..., lo:hi] ** 2).sum(-1)
    return x / (k + alpha / n * sums) ** beta


def np_maxpool(x, size=3, stride=2):
    """Caffe max pooling: output ceil((H - size) / stride) + 1, windows clipped at the edge."""
    h, w = x.shape[1:3]
    ho = math.ceil((h - size) / stride) + 1
    wo = math.ceil((w - size) / stride) + 1
    out = np.empty((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            rows = slice(i * stride, min(i * stride + size, h))
            cols = slice(j * stride, min(j * stride + size, w))
            window = x[:, rows, cols]
            out[:, i, j] = window.max(axis=(1, 2))
    return out


def np_alexnet(weights, images_nchw):
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    x = images_nchw.transpose(0, 2, 3, 1).astype(np.float64)  # NHWC, as Caffe->TF keeps it
    params = {name: [np.asarray(a, np.float64) for a in weights[name]] for name in CAFFE_LAYERS}
    for name, (_, _, _, stride, pad, groups) in CONVS.items():
        x = relu(np_conv(x, *params[name], stride, pad, groups))
        if name in ("conv1", "conv2"):
            x = np_lrn(x)
        if name in ("conv1", "conv2", "conv5"):
            x = np_maxpool(x)
    x = x.reshape(x.shape[0], -1)  # NHWC flatten: (h, w, c), the order of fc6's rows
    x = relu(x @ params["fc6"][0] + params["fc6"][1])
    x = relu(x @ params["fc7"][0] + params["fc7"][1])
    return x @ params["fc8"][0] + params["fc8"][1]


def make_weights(seed, image_size=227, fc_width=16, num_classes=10):
    """A dict in bvlc_alexnet.npy's format, with He-scaled random values."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, (cin, cout, k, _, _, groups) in CONVS.items():
        fan_in = k * k * cin // groups
        weights[name] = [
            (rng.standard_normal((k, k, cin // groups, cout)) * math.sqrt(2 / fan_in)
             ).astype(np.float32),
            (rng.standard_normal(cout) * 0.1).astype(np.float32),
        ]
    features = 256 * alexnet_feature_size(image_size) ** 2
    for name, (cin, cout) in {"fc6": (features, fc_width), "fc7": (fc_width, fc_width),
                              "fc8": (fc_width, num_classes)}.items():
        weights[name] = [(rng.standard_normal((cin, cout)) * math.sqrt(2 / cin)
                          ).astype(np.float32),
                         (rng.standard_normal(cout) * 0.1).astype(np.float32)]
    return weights


def save_npy(path, weights):
    np.save(path, weights, allow_pickle=True)  # a 0-d object array holding the dict
    return path


# ------------------------------------------------------------------------------ the model

def test_alexnet_has_the_caffe_parameter_count_and_shapes():
    with torch.device("meta"):  # no 61M-weight initialisation
        model = create_model("alexnet")
    assert sum(p.numel() for p in model.parameters()) == 60_965_224
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["conv1.weight"] == (96, 3, 11, 11)
    assert shapes["conv2.weight"] == (256, 48, 5, 5)
    assert shapes["conv4.weight"] == (384, 192, 3, 3)
    assert shapes["conv5.weight"] == (256, 192, 3, 3)
    assert shapes["fc6.weight"] == (4096, 9216)
    assert shapes["fc8.weight"] == (1000, 4096)
    names = [n for n, _ in prunable_parameters(model)]
    assert names == [f"{layer}.weight" for layer in CAFFE_LAYERS]


def test_conv_stack_sizes_and_ceil_mode_pooling():
    assert alexnet_feature_size(227) == 6
    assert alexnet_feature_size(67) == 1
    # 224: conv1 gives 54, where floor pooling would give 26 -> 12 -> 5; Caffe rounds up.
    assert alexnet_feature_size(224) == 6
    model = create_model("alexnet", image_size=224, num_classes=3, fc_width=8).eval()
    assert model.fc6.in_features == 9216
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 40}, "image_size must be an integer >= 55"),
    ({"num_classes": 0}, "num_classes"),
    ({"dropout": 1.0}, "dropout"),
    ({"fc_width": 0}, "fc_width"),
])
def test_bad_factory_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("alexnet", **kwargs)


def test_input_of_another_size_gets_a_clear_error():
    model = create_model("alexnet", image_size=67, num_classes=10, fc_width=8)
    with pytest.raises(ValueError, match="built for 67x67 images"):
        model(torch.randn(1, 3, 99, 99))


def test_torch_lrn_equals_caffe_across_channel_lrn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 4)) * 3.0
    # A large alpha makes the normalisation dominate, so a wrong window or divisor shows.
    lrn = nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=1.0)
    got = lrn(torch.from_numpy(x)).numpy()
    expected = np_lrn(x.transpose(0, 2, 3, 1), alpha=0.5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    model_lrn = create_model("alexnet", image_size=67, num_classes=2, fc_width=2).lrn
    assert (model_lrn.size, model_lrn.alpha, model_lrn.beta, model_lrn.k) == (5, 1e-4, 0.75, 1.0)


# ------------------------------------------------------------------------------ the loader

@pytest.mark.parametrize("image_size", [227, 95])  # 95: ceil pooling clips (22 -> 11), 2x2
def test_loaded_npy_gives_the_logits_of_a_numpy_caffe_forward(tmp_path, image_size):
    weights = make_weights(seed=image_size, image_size=image_size)
    path = save_npy(tmp_path / "bvlc_alexnet.npy", weights)
    model = create_model("alexnet", image_size=image_size, num_classes=10, fc_width=16).eval()
    weights_loader("alexnet", path)(model, path)
    images = np.random.default_rng(1).standard_normal((2, 3, image_size, image_size)) * 60.0
    with torch.no_grad():
        got = model(torch.from_numpy(images).float()).double().numpy()
    expected = np_alexnet(weights, images)
    scale = np.abs(expected).max()
    assert scale > 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)
    # The raw fc6 rows really are in (h, w, c) order: a (c, h, w) reading would differ.
    assert not np.allclose(model.fc6.weight.detach().numpy(), weights["fc6"][0].T)


def test_fc6_is_reordered_from_hwc_to_chw():
    model = create_model("alexnet", num_classes=10, fc_width=16)
    weights = make_weights(seed=3)
    state = caffe_alexnet_state_dict(weights, model)
    raw = weights["fc6"][0]  # row (h*6 + w)*256 + c
    fc6 = state["fc6.weight"].numpy()  # column c*36 + h*6 + w
    for out, c, h, w in [(0, 0, 0, 1), (5, 17, 2, 4), (15, 255, 5, 5), (7, 100, 3, 0)]:
        assert fc6[out, c * 36 + h * 6 + w] == raw[(h * 6 + w) * 256 + c, out]
    conv2 = state["conv2.weight"].numpy()
    assert conv2[200, 40, 1, 3] == weights["conv2"][0][1, 3, 40, 200]
    assert set(state) == {n for n, _ in model.named_parameters()}


def test_byte_keys_and_extra_keys_are_accepted(tmp_path):
    weights = make_weights(seed=4, image_size=67)
    raw = {name.encode(): value for name, value in weights.items()}
    raw[b"prob"] = []
    path = save_npy(tmp_path / "w.npy", raw)
    model = create_model("alexnet", image_size=67, num_classes=10, fc_width=16)
    load_caffe_alexnet(model, path)
    np.testing.assert_array_equal(model.fc8.bias.detach().numpy(), weights["fc8"][1])


def _load_error(tmp_path, weights, **model_args) -> str:
    args = {"image_size": 67, "num_classes": 10, "fc_width": 16, **model_args}
    model = create_model("alexnet", **args)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    path = save_npy(tmp_path / "w.npy", weights)
    with pytest.raises(ValueError) as info:
        load_caffe_alexnet(model, path)
    for name, param in model.named_parameters():  # a failed load changes nothing
        assert torch.equal(param, before[name])
    return str(info.value)


def test_missing_key_is_named(tmp_path):
    weights = make_weights(seed=5, image_size=67)
    del weights["fc7"]
    message = _load_error(tmp_path, weights)
    assert "missing layer(s) fc7" in message


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    weights = make_weights(seed=6, image_size=67)
    weights["conv2"][0] = np.zeros((5, 5, 96, 256), np.float32)  # not grouped
    message = _load_error(tmp_path, weights)
    assert "conv2 weight" in message
    assert "(5, 5, 48, 256)" in message and "(5, 5, 96, 256)" in message


def test_other_class_count_says_to_set_num_classes(tmp_path):
    weights = make_weights(seed=7, image_size=67, num_classes=1000)
    message = _load_error(tmp_path, weights)
    assert "fc8 weight" in message and "num_classes: 1000" in message


def test_file_for_227_input_into_a_small_model_says_to_set_image_size(tmp_path):
    weights = make_weights(seed=8, image_size=227)
    message = _load_error(tmp_path, weights)
    assert "fc6 weight" in message and "9216" in message and "image_size" in message


@pytest.mark.parametrize("content, match", [
    (np.arange(6.0), "holds an array of shape"),
    ([1, 2], "expected a dict"),
    ({"conv1": 3}, "missing layer"),
])
def test_not_a_dict_of_arrays(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    if isinstance(content, list):  # a pickled list, stored like the real file's dict
        holder = np.empty((), dtype=object)
        holder[()] = content
        content = holder
    np.save(path, content, allow_pickle=True)
    model = create_model("alexnet", image_size=67, num_classes=10, fc_width=16)
    with pytest.raises(ValueError, match=match):
        load_caffe_alexnet(model, path)


def test_entry_that_is_not_weight_and_bias(tmp_path):
    weights = make_weights(seed=9, image_size=67)
    weights["conv3"] = [weights["conv3"][0]]
    assert "conv3: expected [weight, bias]" in _load_error(tmp_path, weights)
    weights = make_weights(seed=9, image_size=67)
    weights["fc7"][1] = "zeros"
    assert "fc7 bias: expected a real-valued numpy array" in _load_error(tmp_path, weights)
    weights = make_weights(seed=9, image_size=67)
    weights["conv1"][0][0, 0, 0, 0] = np.nan
    assert "conv1 weight contains NaN" in _load_error(tmp_path, weights)


def test_unreadable_file_raises_value_error_and_the_pipeline_reports_it(tmp_path):
    from admmprune.runs.pipeline import RunError, load_weights

    path = tmp_path / "garbage.npy"
    path.write_bytes(b"this is not numpy" * 10)
    model = create_model("alexnet", image_size=67, num_classes=10, fc_width=16)
    with pytest.raises(ValueError, match="cannot read .* as a .npy file"):
        load_caffe_alexnet(model, path)
    with pytest.raises(RunError, match="cannot load .* into alexnet"):
        load_weights(model, path, torch.device("cpu"), model_name="alexnet",
                     trust_pickle=True)
    with pytest.raises(RunError, match="unpickling.*--trust-pickle"):
        load_weights(model, path, torch.device("cpu"), model_name="alexnet")
    truncated = tmp_path / "truncated.npy"
    good = save_npy(tmp_path / "good.npy", make_weights(seed=10, image_size=67))
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot read"):
        load_caffe_alexnet(model, truncated)


# ------------------------------------------------------------------------ with the pruner

def test_small_alexnet_with_admm_pruner(tmp_path):
    torch.manual_seed(0)
    model = create_model("alexnet", image_size=67, num_classes=10, fc_width=32)
    path = save_npy(tmp_path / "w.npy", make_weights(seed=11, image_size=67, fc_width=32))
    load_caffe_alexnet(model, path)
    pruner = ADMMPruner(model, all_percent=90.0, rho=1e-3, rho_growth=2.0, exclude=["fc8"])
    assert pruner.total == sum(p.numel() for n, p in prunable_parameters(model, exclude=["fc8"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 67, 67), torch.randint(0, 10, (4,))
    for _ in range(2):
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        record = pruner.admm_step()
        assert record["primal_residual"] > 0
    assert len(pruner.history) == 2
    pruner.hard_prune()
    summary = pruner.summary()
    assert summary["kept"] == summary["total"] - round(0.9 * summary["total"])
    kept = sum(int((p != 0).sum()) for _, p in prunable_parameters(model, exclude=["fc8"]))
    assert kept == summary["kept"]
    assert bool(torch.isfinite(model(x)).all())
