"""The Hugging Face callback on a tiny GPT-2: exact K, zeros in weights and AdamW state,
resume from a mid-ADMM checkpoint, phases by epochs or by steps."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from admmprune.integrations.transformers import STATE_FILE, ADMMCallback
from admmprune.pruner import PrunerError
from admmprune.runs.config import ConfigError

SCHEDULE = {"dense_epochs": 1, "k_step": 2, "epochs": 1, "retraining_epochs": 1}


class Tokens(Dataset):
    """16 random sequences of 8 tokens (language modelling: the labels are the inputs)."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, callback, *, epochs=4, resume=None, seed=0, callbacks=(), **overrides):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = GPT2LMHeadModel(config)
    settings = {"save_strategy": "epoch", **overrides}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             num_train_epochs=epochs, learning_rate=3e-3, report_to="none",
                             use_cpu=True, logging_strategy="no", disable_tqdm=True, seed=seed,
                             **settings)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(),
                      callbacks=[callback, *callbacks])
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def check_pruned(callback, trainer):
    pruner = callback.pruner
    assert pruner.pruned and pruner.iteration == 2
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    assert pruner.keep == pruner.total - round(0.7 * pruner.total)
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert not bool(p.detach()[~m].any())
        state = trainer.optimizer.state[p]
        assert not bool(state["exp_avg"][~m].any()) and not bool(state["exp_avg_sq"][~m].any())
        assert bool(state["exp_avg_sq"][m].any())
    assert sum(r.kept for r in callback.report) == pruner.keep


def test_epoch_phases_exact_k_and_zero_optimizer_state(tmp_path):
    callback = ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE)
    model, trainer = train(tmp_path, callback)
    check_pruned(callback, trainer)
    assert callback.pruner.names[0] == "transformer.h.0.attn.c_attn.weight"
    assert int(model.transformer.wte.weight.count_nonzero()) == 64 * 32  # dense
    assert (tmp_path / "checkpoint-8" / STATE_FILE).is_file()


def test_resume_from_a_mid_admm_checkpoint_ends_with_the_same_masks(tmp_path):
    whole = ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE)
    train(tmp_path, whole)
    # checkpoint-8: two epochs of four steps, dense + the first ADMM iteration
    saved = torch.load(tmp_path / "checkpoint-8" / STATE_FILE, weights_only=True)
    assert saved["pruner"]["iteration"] == 1 and saved["pruner"]["masks"] is None
    resumed = ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE)
    _, trainer = train(tmp_path, resumed, resume=str(tmp_path / "checkpoint-8"))
    check_pruned(resumed, trainer)
    for a, b in zip(whole.pruner.masks, resumed.pruner.masks, strict=True):
        assert torch.equal(a, b)


def test_resume_without_the_pruning_state_is_refused(tmp_path):
    train(tmp_path, ADMMCallback(all_percent=70.0, **SCHEDULE))
    (tmp_path / "checkpoint-8" / STATE_FILE).unlink()
    with pytest.raises(PrunerError, match="resume_from"):
        train(tmp_path, ADMMCallback(all_percent=70.0, **SCHEDULE),
              resume=str(tmp_path / "checkpoint-8"))


def test_step_phases(tmp_path):
    callback = ADMMCallback(all_percent=70.0, k_step=2, steps_per_admm=3, dense_steps=2,
                            rho=1e-2)
    _, trainer = train(tmp_path, callback, epochs=3, save_strategy="no")
    check_pruned(callback, trainer)  # hard prune after step 2 + 2 x 3 = 8 of 12
    assert trainer.state.global_step == 12


def test_settings_and_schedule_length_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="not both or neither"):
        ADMMCallback(all_percent=70.0)
    with pytest.raises(ConfigError, match="k_step"):
        ADMMCallback(all_percent=70.0, k_step=0, epochs=1)
    with pytest.raises(ConfigError, match="needs 4 epochs.*num_train_epochs"):
        train(tmp_path, ADMMCallback(all_percent=70.0, **SCHEDULE), epochs=3)


def test_resume_reads_the_pruner_state_of_the_checkpoint_the_weights_come_from(tmp_path):
    whole = ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE)
    train(tmp_path / "a", whole)
    # run B (other rho, other seed) has its own checkpoint-8 in the output_dir used below
    train(tmp_path / "b", ADMMCallback(all_percent=70.0, rho=1.0, **SCHEDULE), seed=1)
    resumed = ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE)
    _, trainer = train(tmp_path / "b", resumed, resume=str(tmp_path / "a" / "checkpoint-8"))
    check_pruned(resumed, trainer)
    assert resumed.pruner.rho == whole.pruner.rho
    for a, b in zip(whole.pruner.masks, resumed.pruner.masks, strict=True):
        assert torch.equal(a, b)


def test_a_pruning_state_of_another_checkpoint_is_refused(tmp_path):
    train(tmp_path / "a", ADMMCallback(all_percent=70.0, rho=1e-2, **SCHEDULE))
    train(tmp_path / "b", ADMMCallback(all_percent=70.0, rho=1.0, **SCHEDULE), seed=1)
    # the checkpoint moved out of its run: its output_dir's checkpoint-8 is run B's
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "a" / "checkpoint-8", moved)
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(PrunerError, match="another checkpoint.*resume_from"):
        train(tmp_path / "b", ADMMCallback(all_percent=70.0, **SCHEDULE), resume=str(moved))
    resumed = ADMMCallback(all_percent=70.0, rho=1e-2, resume_from=moved, **SCHEDULE)
    train(tmp_path / "b", resumed, resume=str(moved))
    assert resumed.pruner.pruned
    # a state file copied over from another run's checkpoint is no state of these weights
    shutil.copy(tmp_path / "b" / "checkpoint-8" / STATE_FILE, moved / STATE_FILE)
    with pytest.raises(PrunerError, match="another checkpoint"):
        train(tmp_path / "c", ADMMCallback(all_percent=70.0, resume_from=moved, **SCHEDULE),
              resume=str(moved))


def test_a_step_limit_shorter_than_the_epoch_schedule_is_refused(tmp_path):
    # 4 steps per epoch: the hard prune is due after 2 epochs = 8 steps
    schedule = {"dense_epochs": 1, "k_step": 1, "epochs": 1, "retraining_epochs": 0}
    with pytest.raises(ConfigError, match=r"needs 2 epochs.*runs 1.25.*max_steps >= 8"):
        train(tmp_path, ADMMCallback(all_percent=70.0, **schedule), max_steps=5)
    with pytest.raises(ConfigError, match=r"needs 2 epochs.*runs 1.5.*num_train_epochs >= 2"):
        train(tmp_path, ADMMCallback(all_percent=70.0, **schedule), epochs=1.5)


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps (as early stopping would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_training_that_ends_before_the_hard_prune_warns(tmp_path, caplog):
    callback = ADMMCallback(all_percent=70.0, **SCHEDULE)
    with caplog.at_level(logging.INFO, logger="admmprune.integrations"), \
            pytest.warns(UserWarning, match="NOT pruned.*after 1 of the 3 epochs"):
        train(tmp_path, callback, callbacks=[StopAt(5)], save_strategy="no")
    assert not callback.pruner.pruned
    assert "NOT pruned" in caplog.text and "kept weights per layer" not in caplog.text
