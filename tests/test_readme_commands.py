"""Every `admmprune` command the README shows still runs (issue 24).

All of them must parse with the real argument parser (placeholders such as RUN_DIR filled
in, `a|b` alternatives and `[optional]` parts expanded). The ones that need only MNIST then
run for real, in order, in a temporary directory, with tiny overrides appended (a few steps,
small subsets): a change of recipe, flag or default that breaks a README command fails here.
Commands that need data this machine does not have (ImageNet, the digit detection set,
several GPUs) are parsed only; their code paths have their own tests on generated files.
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
from pathlib import Path

import pytest

from admmprune.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

PLACEHOLDERS = {"RECIPE": "recipes/lenet5.yaml", "RUN_DIR...": "runs/a", "RUN_DIR": "runs/a",
                "MODEL": "lenet5", "ROOT": "imagenet", "DIR": "somewhere",
                "FILE": "runs/a/model.pt"}
# appended to commands that train, so that each takes seconds
TINY = ["--train-subset", "256", "--test-subset", "128", "--dense-epochs", "1", "--k-step", "1",
        "--epochs", "1", "--retraining-epochs", "1", "--steps-per-epoch", "2", "--no-progress",
        "--threads", "1"]
# what a command must not need to run here: data or hardware this machine does not have
NOT_HERE = ("imagenet", "alexnet", "digits", "yolov4", "/data/", "torchrun", "draw",
            "make-detection-set", "--import my_models.py", "runs/my", "lenet5_spine", "mlp.yaml",
            # language models: run in tiny form by tests/test_oneshot_api.py
            "oneshot", "runs/gpt")


def readme_commands() -> list[str]:
    """The `admmprune ...` lines of the README's code blocks (continuations joined), the
    synopsis lines expanded into runnable variants."""
    commands, inside, pending = [], False, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        text = pending + " " + line.strip() if pending else line.strip()
        if text.endswith("\\"):
            pending = text[:-1].strip()
            continue
        pending = ""
        if text.startswith(("admmprune ", "torchrun ")):
            commands.extend(_variants(text.split("#", 1)[0].strip()))
    return commands


def _variants(command: str) -> list[str]:
    command = re.sub(r"\[--key value \.\.\.\]", "", command)
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)  # optional parts: present
    words = []
    for word in command.split():
        if "|" in word:  # compressed|dense|onnx or RECIPE|MODEL: every choice
            words.append(word.split("|"))
        else:
            words.append([word])
    if " | " in command:  # `models | datasets | keys`
        head, *rest = command.split(" | ")
        first = head.split()
        return [head] + [" ".join(first[:-1] + [r]) for r in rest]
    return [" ".join(choice) for choice in itertools.product(*words)]


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "torchrun":  # torchrun ... -m admmprune ARGS
        argv = argv[argv.index("admmprune") + 1:]
    else:
        argv = argv[1:]
    return [PLACEHOLDERS.get(a, a) for a in argv]


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) > 30
    assert any(c.startswith("admmprune compare") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command):
    try:
        build_parser().parse_args(_argv(command))
    except SystemExit as exit:
        pytest.fail(f"the README's `{command}` does not parse (exit {exit.code})")


def runnable() -> list[str]:
    return [c for c in COMMANDS if not any(word in c for word in NOT_HERE)]


def test_the_readme_commands_that_need_only_mnist_run(tmp_path, monkeypatch, mnist_dir, capsys):
    for name in ("recipes", "examples"):
        shutil.copytree(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(mnist_dir.parent))
    # the run directory the README's RUN_DIR and runs/a stand for, made by its first command
    assert main(["prune", "recipes/lenet5.yaml", "--run-dir", "runs/a", *TINY]) == 0
    # shrink needs whole filters removed (the README says so): its RUN_DIR is such a run
    assert main(["prune", "recipes/lenet5.yaml", "--run-dir", "runs/f", "--structure", "filter",
                 "--all-percent", "50", *TINY]) == 0
    ran = []
    for command in runnable():
        argv = _argv(command)
        if argv[0] in ("prune", "train", "compare"):
            if "--resume" in argv or "retrain" in argv:
                pass  # continues runs/a: its recipe's sizes hold
            elif "--run-dir" in argv and argv[argv.index("--run-dir") + 1] == "runs/a":
                argv[argv.index("--run-dir") + 1] = f"runs/fresh{len(ran)}"
                argv += TINY
            else:
                argv += TINY
            if argv[0] == "compare":
                argv += ["--out", f"runs/compare{len(ran)}"]
        if argv[0] == "prune" and "--stage" in argv and "retrain" in argv:
            continue  # needs a run stopped after --stage admm: covered by test_cli
        if argv[0] == "prune" and "--resume" in argv:
            continue  # runs/a is finished; resume is covered by the resume tests
        if argv[0] == "shrink":
            argv = ["shrink", "runs/f", *argv[2:]]
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, f"the README's `{command}` failed: {out.err[-2000:]}"
        ran.append(command)
    commands = {c.split()[1] for c in ran}
    assert {"prune", "eval", "report", "export", "inspect", "models", "keys",
            "tradeoff"} <= commands, commands
