"""Training callbacks: a generated sample after each validation."""

from __future__ import annotations

import lightning as L
import torch

from tjdnet.data import Example, encode_prompt


class PrintSampleCallback(L.Callback):
    """After each validation, greedily answer one fixed validation question (speculative mode) and print it."""

    def __init__(self, question: str | None = None, max_new_tokens: int = 64) -> None:
        self.question = question
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        question = self.question or _first_question(datamodule)
        if question is None:
            return
        tokenizer = pl_module.tokenizer
        ids = torch.tensor([encode_prompt(tokenizer, Example(question, None))], device=pl_module.device)
        model = pl_module.model
        was_training = model.training
        model.eval()
        out = model.generate(
            ids, gen_mode="speculative", max_new_tokens=self.max_new_tokens, eos_token_id=tokenizer.eos_token_id
        )
        model.train(was_training)
        text = tokenizer.decode(out.new_tokens[0], skip_special_tokens=True)
        pl_module.print(f"\n[sample @ step {trainer.global_step}, tau={out.stats.tau:.2f}] {question!r} -> {text!r}")


def _first_question(datamodule) -> str | None:
    if datamodule is None or not hasattr(datamodule, "records"):
        return None
    records = datamodule.records("eval", 1)
    first = records[0] if records else None
    return getattr(first, "question", None)
