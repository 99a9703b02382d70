"""Trainer integrations: ADMM pruning as a callback of someone else's training loop.

- ``admmprune.integrations.lightning.ADMMPruning``: a Lightning ``Callback``
  (``pip install admmprune[lightning]``);
- ``admmprune.integrations.transformers.ADMMCallback``: a Hugging Face ``TrainerCallback``
  (``pip install admmprune[transformers]``).

Both drive dense → ADMM → hard prune → masked retraining from the trainer's epochs (or
steps), add the penalty as its gradient before each optimizer step (the user's loss is
unchanged), keep pruned weights and their optimizer state at exactly 0, and save the
pruner's state with the trainer's checkpoints. This package imports neither trainer; each
module imports its own.
"""
