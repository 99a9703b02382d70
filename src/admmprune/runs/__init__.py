"""The job runner: recipes, run directories, checkpoints and the dense -> ADMM -> hard prune
-> retraining pipeline, plus the multi-run jobs built on it (compare, tradeoff records) and
the reports read from run directories. Commands (``admmprune.cli``) drive it; the library
(``admmprune``'s root) never imports it."""
