"""A user's own model and data, from a file of their own, through the command line:
``--import FILE.py`` and import specs (``"module:factory"``) in recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from admmprune.cli import main
from admmprune.imports import ImportSpecError, is_spec, parse_spec, resolve_spec
from admmprune.projection import survivor_count

# A user's file: a registered model with BatchNorm and a residual block, and a dataset
# factory returning map-style datasets (referred to by a spec naming the file's module).
USER_CODE = '''
import torch
from torch import nn
from torch.utils.data import Dataset

from admmprune.models import register_model
from admmprune.tasks import create_task


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


@register_model("{name}")
def tiny_net(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), Block(width),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))


class Blobs(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(3, (n,), generator=g)
        self.x = torch.randn(n, 1, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def splits(seed):
    return {{"train": Blobs(48, seed), "test": Blobs(16, seed + 1), "num_classes": 3}}


def wide_net():
    return tiny_net(width=6)


def task():
    return create_task("classification")


def not_a_task():
    return 42
'''

SMALL = {"batch_size": 16, "dense_epochs": 1, "k_step": 2, "epochs": 1, "retraining_epochs": 2,
         "all_percent": 80.0, "workers": 0, "progress": False, "device": "cpu", "threads": 1,
         "seed": 3}


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    """The user's file, written once per module: its model registers a name only once."""
    path = tmp_path_factory.mktemp("user") / "yourmodel_cli_user.py"
    path.write_text(USER_CODE.format(name="yourmodel-cli-net"))
    return path


def recipe(folder: Path, **keys) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": "yourmodel-cli-net",
                                    "dataset": "yourmodel_cli_user:splits", **SMALL, **keys}))
    return path


def prunable_total(run_dir: Path) -> int:
    return json.loads((run_dir / "summary.json").read_text())["total"]


def test_import_prune_eval_export_report(tmp_path, user_file, capsys):
    run_dir = tmp_path / "run"
    assert main(["prune", str(recipe(tmp_path, task="yourmodel_cli_user:task")),
                 "--import", str(user_file), "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # conv 1·4·9 + block conv 4·4·9 + linear 16·3 (BatchNorm is not pruned)
    assert summary["total"] == 36 + 144 + 48
    assert summary["kept"] == survivor_count(228, 80.0)  # exactly K
    state = torch.load(run_dir / "model.pt")
    nonzero = sum(int(state[k].count_nonzero()) for k in
                  ("0.weight", "2.conv.weight", "5.weight"))
    assert nonzero == summary["kept"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["imports"] == [str(user_file.resolve())]
    assert config["dataset"] == "yourmodel_cli_user:splits"
    sources = json.loads((run_dir / "sources.json").read_text())
    assert list(sources) == [str(user_file.resolve())]
    assert summary["sources"] == sources
    capsys.readouterr()

    assert main(["eval", str(run_dir)]) == 0  # the recorded import is run again
    assert f"sparsity {100 * (228 - summary['kept']) / 228:.3f}%" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--import", str(user_file)]) == 0
    assert (run_dir / "model.apz").is_file()
    from admmprune.export import load

    model = load(run_dir / "model.apz")  # rebuilt from the registered name it records
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    capsys.readouterr()
    assert main(["report", str(run_dir), "--no-plots"]) == 0
    assert "model.apz" in capsys.readouterr().out


def test_interrupted_run_resumes_bitwise(tmp_path, user_file, interrupt_training):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    path = recipe(tmp_path)
    assert main(["prune", str(path), "--import", str(user_file), "--run-dir",
                 str(straight)]) == 0
    interrupt_training(3)  # dense epoch, first W-step, then Ctrl-C in the second W-step
    assert main(["prune", str(path), "--import", str(user_file), "--run-dir",
                 str(resumed)]) == 130
    assert not (resumed / "model.pt").exists()
    interrupt_training(None)
    assert main(["prune", "--resume", str(resumed), "--import", str(user_file)]) == 0
    a, b = torch.load(straight / "model.pt"), torch.load(resumed / "model.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_changed_spec_or_file_is_refused_on_resume(tmp_path, interrupt_training, capsys):
    # a model spec naming a local file of its own: that file's sha256 is recorded
    path = tmp_path / "yourmodel_changed_user.py"
    path.write_text(USER_CODE.format(name="yourmodel-changed-net"))
    run_dir = tmp_path / "run"
    args = [str(recipe(tmp_path, model="yourmodel_changed_user:tiny_net",
                       dataset="yourmodel_changed_user:splits")),
            "--import", str(path), "--run-dir", str(run_dir)]
    interrupt_training(2)
    assert main(["prune", *args]) == 130
    interrupt_training(None)
    sources = json.loads((run_dir / "sources.json").read_text())
    assert list(sources) == [str(path.resolve())]  # the file and the specs' module: once
    capsys.readouterr()

    assert main(["prune", "--resume", str(run_dir), "--model-args", "{width: 6}"]) == 2
    err = capsys.readouterr().err
    assert "model_args" in err and "resuming cannot change" in err
    assert main(["prune", "--resume", str(run_dir), "--model",
                 "yourmodel_changed_user:wide_net"]) == 2
    assert "model: 'yourmodel_changed_user:tiny_net' -> 'yourmodel_changed_user:wide_net'" \
        in capsys.readouterr().err

    path.write_text(path.read_text() + "\n# edited after the run started\n")
    assert main(["prune", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{path.resolve()} changed since the run started" in err
    assert "Traceback" not in err


def test_bad_specs_and_imports_exit_2_with_a_message(tmp_path, user_file, capsys):
    cases = [
        (["--model", "no_such_module_xyz:build"], "no module named 'no_such_module_xyz'"),
        (["--dataset", "yourmodel_cli_user:nothing"], "has no 'nothing'"),
        (["--task", "yourmodel_cli_user:not_a_task"], "gave a int, not an admmprune.tasks.Task"),
        (["--task", "yourmodel_cli_user:Blobs"], "missing 2 required positional arguments"),
    ]
    for extra, message in cases:
        code = main(["prune", str(recipe(tmp_path)), "--import", str(user_file),
                     "--run-dir", str(tmp_path / "never"), *extra])
        assert code == 2, extra
        assert message in capsys.readouterr().err, extra
    broken = tmp_path / "yourmodel_broken.py"
    broken.write_text("x = 1\nraise RuntimeError('no GPU here')\n")
    assert main(["prune", str(recipe(tmp_path)), "--import", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken.resolve()}, line 2" in err and "no GPU here" in err
    assert main(["eval", str(tmp_path), "--import", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_spec_rule():
    assert is_spec("pkg.mod:factory") and is_spec("mod:Outer.build")
    assert not is_spec("lenet5") and not is_spec("yolov4-tiny") and not is_spec("a:b:c")
    assert parse_spec("pkg.mod:Outer.build") == ("pkg.mod", "Outer.build")
    assert resolve_spec("collections:OrderedDict") is __import__("collections").OrderedDict
    with pytest.raises(ImportSpecError, match="not an import spec"):
        parse_spec("lenet5")


class Tied(torch.nn.Module):
    """An embedding and an output layer sharing one weight, as a language model ties them."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.body = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("form", ["pt", "safetensors", "hf-safetensors", "hf-bin"])
def test_pretrained_reads_state_dicts_in_every_form(tmp_path, form):
    from safetensors.torch import save_file

    from admmprune.runs.build import load_weights

    torch.manual_seed(0)
    source = Tied()
    # a Hugging Face file stores the tied weight once
    state = {k: v for k, v in source.state_dict().items() if k != "head.weight"}
    if form == "pt":
        path = tmp_path / "dense.pt"
        torch.save({"model": state}, path)
    elif form == "safetensors":
        path = tmp_path / "dense.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "hf"
        path.mkdir()
        (path / "config.json").write_text("{}")
        if form == "hf-bin":
            torch.save(state, path / "pytorch_model.bin")
        else:
            save_file(state, str(path / "model.safetensors"))
    target = Tied()
    load_weights(target, path, torch.device("cpu"), "tied-test")
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_pretrained_that_does_not_fit_names_the_difference(tmp_path):
    from admmprune.runs.build import load_weights
    from admmprune.runs.rundir import RunError

    path = tmp_path / "dense.pt"
    state = Tied().state_dict()
    state["body.weight"] = torch.zeros(4, 3)
    torch.save(state, path)
    with pytest.raises(RunError, match=r"body.weight: shape \(3, 3\) here, \(4, 3\) saved"):
        load_weights(Tied(), path, torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="needs config.json and model.safetensors"):
        load_weights(Tied(), tmp_path / "empty", torch.device("cpu"))


EXAMPLE = ["--dense-epochs", "1", "--k-step", "1", "--retraining-epochs", "1",
           "--train-subset", "64", "--test-subset", "32", "--no-progress", "--threads", "1"]


def prune_example(run_dir: Path, *extra: str) -> list[str]:
    """``admmprune prune examples/your_model/recipe.yaml`` in tiny form: one recipe, one
    command; its imports and specs bring the model and the data."""
    from conftest import REPO

    return ["prune", str(REPO / "examples/your_model/recipe.yaml"), "--run-dir", str(run_dir),
            *EXAMPLE, *extra]


def metrics_line(out: str) -> str:
    """The metrics and sparsity `admmprune eval` prints after the weights file's name."""
    return out.splitlines()[0].split(": ", 1)[1]


def test_your_model_example_through_every_command(tmp_path, capsys):
    """The README's "Your own model" commands on examples/your_model: prune, eval, export in
    every format and 4-bit, eval of the exported files, admmprune.load, report."""
    import admmprune

    run_dir = tmp_path / "run"
    assert main(prune_example(run_dir)) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "your_resnet:tiny_resnet"
    assert summary["kept"] == survivor_count(summary["total"], 95.0)
    assert {"layers.1.shortcut.0.weight", "layers.0.conv2.weight"} <= \
        {layer["name"] for layer in summary["layers"]}  # residual blocks, BatchNorm skipped
    capsys.readouterr()

    assert main(["eval", str(run_dir)]) == 0
    evaluated = metrics_line(capsys.readouterr().out)
    assert f"top-1 accuracy {100 * summary['pruned_accuracy']:.2f}%" in evaluated
    for extra, name in (((), "model.apz"), (("--format", "dense"), "model.safetensors"),
                        (("--format", "onnx"), "model.onnx"), (("--bits", "4"),
                                                                "model-4bit.apz")):
        assert main(["export", str(run_dir), *extra]) == 0, capsys.readouterr().err
        assert (run_dir / name).is_file()
    exported = capsys.readouterr().out
    assert "onnxruntime matches PyTorch" in exported
    assert "after 4-bit quantization: loss " in exported
    # the exported files evaluate as the project's own files: the lossless ones like model.pt
    for name in ("model.apz", "model.safetensors", "model-4bit.apz"):
        assert main(["eval", str(run_dir), "--weights", str(run_dir / name)]) == 0, \
            capsys.readouterr().err
        if name != "model-4bit.apz":
            assert metrics_line(capsys.readouterr().out) == evaluated, name
    # from Python: the file rebuilds the spec's model once its module is allowed
    state = torch.load(run_dir / "model.pt")
    for name in ("model.apz", "model.safetensors"):
        model = admmprune.load(run_dir / name, allow_modules=["your_resnet"])
        assert type(model).__name__ == "TinyResNet"
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, state[key]), (name, key)
    capsys.readouterr()
    assert main(["report", str(run_dir), "--no-plots"]) == 0
    report = capsys.readouterr().out
    assert "model.apz:" in report and "model-4bit.apz:" in report


def test_your_model_example_shrinks_when_pruned_by_filters(tmp_path, capsys):
    from admmprune.channels.shrink import load_shrunk

    run_dir = tmp_path / "run"
    assert main(prune_example(run_dir, "--structure", "filter", "--all-percent", "50")) == 0
    capsys.readouterr()
    assert main(["shrink", str(run_dir)]) == 0, capsys.readouterr().err
    assert "matches the masked one" in capsys.readouterr().out
    small = load_shrunk(run_dir / "model-shrunk.safetensors", allow_modules=["your_resnet"])
    masked = torch.load(run_dir / "model.pt")
    assert sum(t.numel() for t in small.state_dict().values()) < \
        sum(t.numel() for t in masked.values())
    x = torch.randn(2, 3, 16, 16)
    import your_resnet  # loaded by the recipe's imports

    full = your_resnet.tiny_resnet(width=8, blocks=[1, 1])
    full.load_state_dict(masked)
    with torch.no_grad():
        assert torch.allclose(small(x), full.eval()(x), atol=1e-5)


def test_your_model_example_goes_on_after_an_interrupt_before_the_first_checkpoint(
        tmp_path, interrupt_training, capsys):
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    assert main(prune_example(straight)) == 0
    interrupt_training(1)  # Ctrl-C in the first dense epoch: nothing is checkpointed yet
    assert main(prune_example(run_dir)) == 130
    assert not (run_dir / "checkpoint.pt").exists()
    interrupt_training(None)
    capsys.readouterr()
    # the directory either resumes (what the interrupted run advises) or starts again
    if main(["prune", "--resume", str(run_dir)]) != 0:
        assert main(prune_example(run_dir)) == 0, capsys.readouterr().err
    a, b = torch.load(straight / "model.pt"), torch.load(run_dir / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


# A dataset whose training split alone names the classes (torchvision's datasets have a
# `classes` attribute); the model's factory defaults to another class count.
CLASSES_CODE = """
import torch
from torch import nn
from torch.utils.data import Dataset


class Points(Dataset):
    def __init__(self, n, seed, classes=None):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(5, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) + self.y.view(-1, 1).float()
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def splits(seed):
    return {"train": Points(48, seed, classes=list("abcde")), "test": Points(16, seed + 1)}


def net(num_classes=3):
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, num_classes))
"""


def test_a_class_count_from_the_training_split_is_recorded_for_eval_and_export(tmp_path,
                                                                                capsys):
    import admmprune

    path = tmp_path / "yourmodel_classes_user.py"
    path.write_text(CLASSES_CODE)
    run_dir = tmp_path / "run"
    assert main(["prune", str(recipe(tmp_path, model="yourmodel_classes_user:net",
                                      dataset="yourmodel_classes_user:splits",
                                      imports=[str(path)])),
                 "--run-dir", str(run_dir)]) == 0
    assert torch.load(run_dir / "model.pt")["2.weight"].shape == (5, 8)
    capsys.readouterr()
    # eval and export read the test split only, which does not name the classes
    assert main(["eval", str(run_dir)]) == 0, capsys.readouterr().err
    assert main(["export", str(run_dir)]) == 0, capsys.readouterr().err
    assert main(["export", str(run_dir), "--bits", "4"]) == 0, capsys.readouterr().err
    model = admmprune.load(run_dir / "model.apz", allow_modules=["yourmodel_classes_user"])
    assert model[2].out_features == 5


# A user's file of data and models that do not fit together, each a mistake a user makes.
BAD_CODE = '''
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def net(num_classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, num_classes))


def out_of_memory(num_classes=3):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def typo(num_classes=3):
    return nn.Linear(16, "8")


def pairs(n, seed, side=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, side, side, generator=g), torch.randint(classes, (n,), generator=g)


class Overstated(Dataset):
    def __init__(self):
        self.x, self.y = pairs(32, 0)

    def __len__(self):
        return len(self.y) + 8

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def overstated():
    return {"train": Overstated(), "test": TensorDataset(*pairs(16, 1)), "num_classes": 3}


def test_shape():
    return {"train": TensorDataset(*pairs(32, 0)), "test": TensorDataset(*pairs(16, 1, side=5))}


def out_of_range():
    return {"train": TensorDataset(*pairs(32, 0, classes=5)), "test": TensorDataset(*pairs(16, 1))}


def fits():
    return {"train": TensorDataset(*pairs(32, 0)), "test": TensorDataset(*pairs(16, 1))}
'''


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "yourmodel_bad_user.py"
    path.write_text(BAD_CODE)
    return path


def bad_recipe(folder: Path, **keys) -> Path:
    return recipe(folder, **{"model": "yourmodel_bad_user:net",
                             "dataset": "yourmodel_bad_user:overstated", **keys})


@pytest.mark.parametrize("dataset, message", [
    ("test_shape", "'test' split does not fit the model: the model on its inputs of shape "
                   "(16, 1, 5, 5) failed: RuntimeError: mat1 and mat2 shapes cannot be "
                   "multiplied (16x25 and 16x8); the 'train' split's are (16, 1, 4, 4)"),
    ("out_of_range", "'train' split: label 4 is out of range: the model outputs 3 class "
                     "scores (labels 0..2)"),
    ("overstated", "'train' split: item 3"),
])
def test_data_mistakes_exit_2_naming_the_cause(tmp_path, bad_file, capsys, dataset, message):
    run_dir = tmp_path / "run"
    code = main(["prune", str(bad_recipe(tmp_path)), "--import", str(bad_file), "--dataset",
                 f"yourmodel_bad_user:{dataset}", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    if dataset == "overstated":
        line = BAD_CODE.splitlines().index("        return self.x[i], self.y[i]") + 1
        assert f"({bad_file.resolve()}, line {line}): IndexError" in err, err
        assert "__len__ says 40 items" in err, err
    assert message in err, err
    assert not (run_dir / "metrics.jsonl").exists()  # nothing trained


def test_an_error_inside_a_factory_is_not_called_a_misfit(tmp_path, bad_file, capsys):
    cases = [("out_of_memory", "RuntimeError: CUDA out of memory"),
             ("typo", "TypeError: empty(): argument 'size'")]
    for factory, cause in cases:
        assert main(["prune", str(bad_recipe(tmp_path)), "--import", str(bad_file), "--model",
                     f"yourmodel_bad_user:{factory}", "--run-dir", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "do not fit" not in err and cause in err, err
        line = BAD_CODE.splitlines().index(f"def {factory}(num_classes=3):") + 2
        assert f"building model 'yourmodel_bad_user:{factory}' failed ({bad_file.resolve()}, " \
               f"line {line})" in err, err  # the user's file and line
    assert main(["prune", str(bad_recipe(tmp_path)), "--import", str(bad_file),
                 "--model-args", "{depth: 3}", "--run-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "model_args {'depth': 3} do not fit model 'yourmodel_bad_user:net'" in err, err
    assert "unexpected keyword argument 'depth'" in err, err


def test_nan_pretrained_weights_are_named_not_called_divergence(tmp_path, bad_file, capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))  # the file's net
    state = net.state_dict()
    state["3.weight"][1, 2] = float("inf")
    torch.save(state, tmp_path / "dense.pt")
    assert main(["prune", str(bad_recipe(tmp_path, dataset="yourmodel_bad_user:fits")),
                 "--import", str(bad_file), "--pretrained", str(tmp_path / "dense.pt"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "diverged" not in err, err
    assert "hold NaN or infinite values: 3.weight (1 of 24)" in err, err


def test_importing_a_file_that_registers_a_builtin_name_exits_2(tmp_path):
    from conftest import REPO

    path = tmp_path / "yourmodel_clash.py"
    path.write_text("from torch import nn\nfrom admmprune.models import register_model\n\n"
                    "@register_model('lenet5')\ndef mine():\n    return nn.Linear(2, 2)\n")
    # a fresh process: the built-in models are not loaded yet when the file registers its own
    done = subprocess.run([sys.executable, "-m", "admmprune", "inspect", "lenet5", "--import",
                           str(path)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"--import {path.resolve()} failed ({path.resolve()}, line 4): ValueError: model " \
        "'lenet5' is registered twice (a built-in one of admmprune); register yours under " \
        "another name" in done.stderr, done.stderr


def test_a_user_registration_under_a_builtin_name_says_so():
    from admmprune.data import register_dataset
    from admmprune.tasks import Task, register_task

    with pytest.raises(ValueError, match=r"dataset 'mnist' is registered twice \(a built-in "
                                         r"one of admmprune\); register yours under another"):
        register_dataset("mnist", "mine")(lambda options, device, splits: None)
    with pytest.raises(ValueError, match=r"task 'classification' is registered twice \(a "
                                         r"built-in one of admmprune\)"):
        register_task("classification")(type("Mine", (Task,), {}))


def test_commands_refuse_a_run_whose_code_changed_unless_allowed(tmp_path, capsys):
    """eval, export and shrink rebuild the run's model from its config: with the imported
    file edited since (ReLU -> Sigmoid) they would report another model's results. They
    refuse, naming the file; --allow-changed-sources runs anyway with a warning."""
    path = tmp_path / "yourmodel_edited_user.py"
    path.write_text(USER_CODE.format(name="yourmodel-edited-net"))
    run_dir = tmp_path / "run"
    assert main(["prune", str(recipe(tmp_path, model="yourmodel-edited-net",
                                     dataset="yourmodel_edited_user:splits")),
                 "--import", str(path), "--run-dir", str(run_dir)]) == 0
    before = sorted(p.name for p in run_dir.iterdir())
    path.write_text(path.read_text().replace("nn.ReLU()", "nn.Sigmoid()"))
    capsys.readouterr()
    run = str(run_dir)
    for command in (["eval", run], ["export", run], ["export", run, "--format", "dense"],
                    ["shrink", run]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{path.resolve()} changed since the run" in err, command
        assert "--allow-changed-sources" in err and "Traceback" not in err, command
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written

    assert main(["eval", run, "--allow-changed-sources"]) == 0
    captured = capsys.readouterr()
    assert "sparsity" in captured.out
    assert "warning" in captured.err and str(path.resolve()) in captured.err
    assert main(["export", run, "--allow-changed-sources"]) == 0
    assert str(path.resolve()) in capsys.readouterr().err
    assert (run_dir / "model.apz").is_file()


def test_a_run_interrupted_before_its_first_checkpoint_resumes_or_restarts(
        tmp_path, interrupt_training, capsys):
    """Ctrl-C in the first dense epoch of a run that records sources.json: the command the
    message gives works, and so does the same command again."""
    path = tmp_path / "yourmodel_early_user.py"
    path.write_text(USER_CODE.format(name="yourmodel-early-net"))
    run_dir = tmp_path / "run"
    args = ["prune", str(recipe(tmp_path, model="yourmodel_early_user:tiny_net",
                                dataset="yourmodel_early_user:splits")),
            "--import", str(path), "--run-dir", str(run_dir)]
    interrupt_training(1)
    assert main(args) == 130
    assert {p.name for p in run_dir.iterdir()} - {"run.lock"} == {"config.yaml", "sources.json"}
    advice = capsys.readouterr().err.strip().splitlines()[-1].split()
    assert advice == ["admmprune", "prune", "--resume", str(run_dir)]
    # the same command again starts the run over (and is interrupted once more)
    interrupt_training(1)
    assert main(args) == 130
    assert "already holds" not in capsys.readouterr().err
    interrupt_training(None)
    assert main(advice[1:]) == 0  # the command the message gave
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["kept"] == survivor_count(summary["total"], 80.0)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records if r["phase"] == "dense"] == [1]
