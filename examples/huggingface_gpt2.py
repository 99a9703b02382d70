"""A GPT-2 built from a config (no download) pruned by ADMM through the Hugging Face
``Trainer`` and the ``ADMMCallback`` (admmprune[transformers]).

    python examples/huggingface_gpt2.py            # a small GPT-2 on a toy language, ~1 min
    python examples/huggingface_gpt2.py --tiny     # a few seconds

The toy language repeats a short random phrase, so the loss falls fast. GPT-2's Conv1D
projections are pruned (their N:M groups would run along the input dimension); the tied
token embedding / LM head and the position embedding stay dense (the selection printed
at the start says why). Phases follow the trainer's epochs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from admmprune.integrations.transformers import ADMMCallback


class ToyLanguage(Dataset):
    """Sequences that repeat a random phrase of 4 tokens: a pattern GPT-2 learns quickly."""

    def __init__(self, count: int, length: int = 16, vocab: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        phrases = torch.randint(0, vocab, (count, 4), generator=generator)
        self.ids = phrases.repeat(1, length // 4)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(tiny: bool = False, all_percent: float = 80.0, output_dir: str | None = None
         ) -> dict:
    torch.manual_seed(0)
    width, layers = (32, 2) if tiny else (64, 4)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=2, vocab_size=64,
                        n_positions=32)
    model = GPT2LMHeadModel(config)
    schedule = dict(dense_epochs=1, k_step=2, epochs=1, retraining_epochs=1) if tiny else \
        dict(dense_epochs=2, k_step=4, epochs=1, retraining_epochs=3)
    callback = ADMMCallback(all_percent=all_percent, rho=1e-2, **schedule)
    epochs = callback.schedule.total
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=output_dir or scratch, num_train_epochs=epochs,
                                 per_device_train_batch_size=16, learning_rate=3e-3,
                                 report_to="none", use_cpu=True, save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, seed=0)
        data = ToyLanguage(64 if tiny else 512)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train()
    model.eval()
    with torch.no_grad():
        loss = float(model(data.ids[:64], labels=data.ids[:64]).loss)
    kept = sum(r.kept for r in callback.report)
    total = sum(r.total for r in callback.report)
    print(f"kept {kept} of {total} Conv1D weights ({100 * (1 - kept / total):.2f}% removed); "
          f"training loss {loss:.3f}")
    return {"kept": kept, "total": total, "loss": loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds")
    parser.add_argument("--all-percent", type=float, default=80.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(tiny=args.tiny, all_percent=args.all_percent)
