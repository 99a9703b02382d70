"""Knowledge distillation from the run's dense model, and label smoothing: the loss, the
frozen teacher, the pipeline (also resumed), and the values refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import admmprune.runs.pipeline as pipeline
from admmprune.distill import Distillation, combined_loss, distillation_loss, frozen_copy
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import Run, RunError, run_pipeline
from admmprune.tasks import create_task
from admmprune.train import train_epoch


def logits(seed: int, rows: int = 6, classes: int = 5) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)) * 3


def kl_reference(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """KL(softmax(teacher/t) || softmax(student/t)), mean over rows, in float64 by hand."""
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        s_exp = [torch.tensor(v / t).exp().item() for v in s_row]
        t_exp = [torch.tensor(v / t).exp().item() for v in t_row]
        q = [v / sum(s_exp) for v in s_exp]
        p = [v / sum(t_exp) for v in t_exp]
        total += sum(pi * (torch.tensor(pi / qi).log().item()) for pi, qi in zip(p, q,
                                                                                   strict=True))
    return total / len(student)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_distillation_loss_is_t_squared_times_the_kl_of_the_softened_outputs(t):
    student, teacher = logits(0), logits(1)
    got = float(distillation_loss(student, teacher, t))
    assert got == pytest.approx(t * t * kl_reference(student, teacher, t), rel=1e-5)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_the_gradient_is_t_times_the_softened_difference():
    student, teacher = logits(2).requires_grad_(True), logits(3)
    distillation_loss(student, teacher, 4.0).backward()
    s, t = student.detach().double(), teacher.double()
    expected = 4.0 * (torch.softmax(s / 4, 1) - torch.softmax(t / 4, 1)) / len(s)
    torch.testing.assert_close(student.grad.double(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("t", [20.0, 200.0])
def test_the_t_squared_factor_keeps_the_gradient_scale_as_t_grows(t):
    # Hinton et al.: for large T the gradient of T²·KL w.r.t. a student logit tends to
    # (z_i - v_i) / C per example (zero-mean logits), whatever T; without the T² factor it
    # would shrink like 1/T² (by 100x between these two temperatures).
    student, teacher = logits(2, rows=4, classes=10) / 3, logits(3, rows=4, classes=10) / 3
    student = (student - student.mean(1, keepdim=True)).requires_grad_(True)
    teacher = teacher - teacher.mean(1, keepdim=True)
    distillation_loss(student, teacher, t).backward()
    expected = (student.detach() - teacher) / 10 / 4  # batchmean over 4 rows
    torch.testing.assert_close(student.grad, expected, rtol=0.1, atol=2e-4)


def test_only_the_student_gets_gradients():
    student, teacher = logits(4).requires_grad_(True), logits(5).requires_grad_(True)
    distillation_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_weight_zero_is_exactly_the_task_loss_and_other_weights_mix():
    task_loss, soft = torch.tensor(1.2345678), torch.tensor(0.3)
    assert combined_loss(task_loss, soft, 0.0) is task_loss
    assert combined_loss(task_loss, None, 0) is task_loss
    assert float(combined_loss(task_loss, soft, 0.25)) == pytest.approx(
        0.75 * 1.2345678 + 0.25 * 0.3)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same architecture"):
        distillation_loss(logits(0, classes=5), logits(1, classes=4), 2.0)


# -- the training loop -----------------------------------------------------------------------
def dropout_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(16, 4))


def batches(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 4, generator=g), torch.randint(4, (8,), generator=g))
            for _ in range(n)]


def trained(distill: Distillation | None, model: nn.Module, seed: int = 9) -> list:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(seed)  # the dropout stream
    stats = train_epoch(model, batches(), optimizer, progress=False, distill=distill)
    return [p.detach().clone() for p in model.parameters()], stats


def test_weight_zero_trains_bit_for_bit_like_no_distillation():
    # also shows the teacher draws no random numbers: the student's dropout masks are the same
    plain, plain_stats = trained(None, dropout_model())
    student = dropout_model()
    teacher = frozen_copy(dropout_model(seed=5))
    zero, zero_stats = trained(Distillation(teacher, 0.0, 4.0), student)
    for a, b in zip(plain, zero, strict=True):
        assert torch.equal(a, b)
    assert zero_stats["loss"] == plain_stats["loss"] and "distill_loss" not in plain_stats
    assert zero_stats["distill_loss"] > 0


def test_the_teacher_stays_frozen_and_the_soft_loss_moves_the_student():
    teacher_model = dropout_model(seed=5)
    teacher = frozen_copy(teacher_model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()  # a careless caller: the loss puts it back in eval mode
    distilled, stats = trained(Distillation(teacher, 0.7, 2.0), dropout_model())
    plain, _ = trained(None, dropout_model())
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(distilled, plain, strict=True))
    assert stats["distill_loss"] > 0
    # the copy is independent of the model it was taken from
    assert teacher_model.training and all(p.requires_grad for p in teacher_model.parameters())


def test_label_smoothing_changes_the_training_loss_only():
    out, target = logits(6, rows=8, classes=4), torch.arange(8) % 4
    plain, smooth = create_task("classification"), create_task("classification",
                                                                label_smoothing=0.1)
    assert torch.equal(plain.loss(out, target), F.cross_entropy(out, target))
    assert torch.equal(smooth.loss(out, target),
                       F.cross_entropy(out, target, label_smoothing=0.1))
    assert float(smooth.loss(out, target)) != float(plain.loss(out, target))
    with pytest.raises(ValueError, match="label_smoothing"):
        create_task("classification", label_smoothing=1.0)


# -- the pipeline ------------------------------------------------------------------------------
def config(**overrides):
    base = dict(dataset="synthetic", model="lenet300", train_subset=192, test_subset=64,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=2,
                retraining_epochs=2, progress=False, seed=5, distill_weight=0.5,
                distill_temperature=3.0, label_smoothing=0.05, threads=1)
    return load_config(None, {**base, **overrides})


REAL_TRAIN_EPOCH = pipeline.train_epoch


def interrupting(monkeypatch, at_epoch: int, calls: list):
    """Ctrl-C in the middle of the ``at_epoch``-th training epoch (0-based); ``calls``
    records whether each epoch distilled."""

    def spy(model, data, optimizer, **kwargs):
        epoch = len(calls)
        calls.append(kwargs.get("distill"))

        class Cut:
            def __len__(self):
                return len(data)

            def __iter__(self):
                for i, batch in enumerate(data):
                    if epoch == at_epoch and i == 2:
                        raise KeyboardInterrupt
                    yield batch

        return REAL_TRAIN_EPOCH(model, Cut(), optimizer, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", spy)


def test_a_distilled_run_finishes_logs_the_soft_loss_and_resumes_bitwise(tmp_path,
                                                                          monkeypatch):
    calls: list = []
    interrupting(monkeypatch, -1, calls)
    summary = run_pipeline(config(), run_dir=tmp_path / "straight")
    assert summary["complete"] and (tmp_path / "straight" / "summary.json").is_file()
    # dense training learns from the labels; the W-steps and retraining also distil
    assert [c is not None for c in calls] == [False, True, True, True, True]
    teacher = calls[1].teacher
    dense = torch.load(tmp_path / "straight" / "dense.pt")
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, dense[key]), key
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    assert [("train_distill_loss" in r) for r in records if "train_loss" in r] == \
        [False, True, True, True, True]
    saved = json.loads(json.dumps(load_config(tmp_path / "straight" / "config.yaml").to_dict()))
    assert saved["distill_weight"] == 0.5 and saved["label_smoothing"] == 0.05

    # interrupted in the second ADMM iteration, resumed: the teacher comes from dense.pt
    interrupting(monkeypatch, 2, [])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), run_dir=tmp_path / "resumed")
    shutil.copytree(tmp_path / "resumed", tmp_path / "no-dense")
    interrupting(monkeypatch, -1, [])
    run_pipeline(config(), run_dir=tmp_path / "resumed", resume=True)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # distillation did change the result (so the comparison above could fail)
    plain = run_pipeline(config(distill_weight=0.0), run_dir=tmp_path / "plain")
    c = torch.load(tmp_path / "plain" / "model.pt")
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert plain["dense_accuracy"] == summary["dense_accuracy"]  # dense phase: no teacher

    # without dense.pt a resumed distilled run cannot rebuild its teacher: said plainly
    (tmp_path / "no-dense" / "dense.pt").unlink()
    with pytest.raises(RunError, match="dense model as its teacher"):
        run_pipeline(config(), run_dir=tmp_path / "no-dense", resume=True)


def test_the_resumed_teacher_equals_the_saved_dense_model(tmp_path):
    run_pipeline(config(retraining_epochs=0, k_step=1), run_dir=tmp_path / "r", stage="admm")
    run = Run(config(retraining_epochs=0, k_step=1), tmp_path / "r", resume=True)
    try:
        distill = run._distillation()
        assert distill is not None and distill.weight == 0.5 and distill.temperature == 3.0
        dense = torch.load(tmp_path / "r" / "dense.pt")
        for key, value in distill.teacher.state_dict().items():
            assert torch.equal(value, dense[key]), key
        # the student was pruned since: the teacher is not a view of it
        assert not torch.equal(run.model.fc1.weight, distill.teacher.fc1.weight)
        assert not distill.teacher.training
    finally:
        run.close()


def test_defaults_are_the_plain_run(tmp_path):
    run = Run(config(distill_weight=0.0, label_smoothing=0.0), tmp_path / "d", resume=False)
    try:
        run.progress.dense_done = True
        assert run._distillation() is None and run.task.label_smoothing == 0.0
    finally:
        run.close()
    defaults = load_config(None)
    assert defaults.distill_weight == 0.0 and defaults.label_smoothing == 0.0
    assert defaults.distill_temperature == 4.0


@pytest.mark.parametrize("key, value, message", [
    ("distill_weight", 1.0, "distill_weight must be in [0, 1), got 1.0"),
    ("distill_weight", -0.1, "distill_weight must be in [0, 1)"),
    ("distill_weight", "much", "distill_weight must be a number"),
    ("distill_temperature", 0, "distill_temperature must be > 0, got 0.0"),
    ("distill_temperature", float("nan"), "distill_temperature must be > 0"),
    ("label_smoothing", 1, "label_smoothing must be in [0, 1), got 1.0"),
])
def test_bad_values_are_refused_with_the_key_named(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["distill_weight", "label_smoothing"])
def test_tasks_without_class_logits_refuse_distillation_before_any_work(tmp_path, key):
    bad = load_config(None, {"task": "detection", "dataset": "synthetic", key: 0.3,
                             "progress": False})
    with pytest.raises(ConfigError, match="apply to classification only"):
        run_pipeline(bad, run_dir=tmp_path / "det")
    assert not (tmp_path / "det").exists()
