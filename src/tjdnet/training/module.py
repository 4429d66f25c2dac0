"""The Lightning adapter over TJDModel: what to compute (losses, optimiser); no data, no CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import lightning as L
import torch

from tjdnet.checkpoints import BASE_KEY, STATE_PREFIX, restore_trained_weights
from tjdnet.checks import check_choice
from tjdnet.config import TJDConfig
from tjdnet.data import answer_tokens
from tjdnet.heads.vocab import check_draft_vocab_size, frequent_tokens
from tjdnet.loading import DTYPES, load_causal_lm
from tjdnet.model import TJDModel


@dataclass
class FitSettings(TJDConfig):
    """The ``--model.*`` settings of ``tjdnet fit``: the model's (:class:`~tjdnet.config.TJDConfig`) and the
    optimiser's.

    Attributes:
        lr: peak learning rate (AdamW), reached after ``warmup_steps``, then cosine decay to 10%.
        warmup_steps: linear warm-up steps.
        dtype: weights of the base model: ``float32`` or ``bfloat16`` (``float16``).
        max_new_tokens: length of the sample printed after each validation.
    """

    lr: float = 1e-3
    warmup_steps: int = 0
    dtype: str = "float32"
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} is not allowed; use a value > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} is not allowed; use an integer >= 0")
        check_choice("dtype", self.dtype, DTYPES)


class TJDLitModule(L.LightningModule):
    """Fine-tunes a joint head (and optionally LoRA adapters / the backbone) on a causal LM.

    Args:
        **settings: the fields of :class:`FitSettings` (the ``--model.*`` flags).
    """

    def __init__(self, **settings) -> None:
        super().__init__()
        self.settings = FitSettings(**settings)  # validated before the (slow) model load
        self.save_hyperparameters(asdict(self.settings))
        lm, self.tokenizer = load_causal_lm(self.settings.model, dtype=self.settings.dtype)
        self.model = TJDModel(lm, TJDConfig.from_settings(asdict(self.settings)))
        if self.settings.draft_vocab_size is not None:
            check_draft_vocab_size(self.settings.draft_vocab_size, self.model.vocab_size, "draft_vocab_size")
        self.model.train()
        # Checkpoints hold only what training changes; the frozen backbone comes from `model`.
        self.strict_loading = False

    @property
    def horizon(self) -> int:
        return self.model.horizon

    def setup(self, stage: str) -> None:
        """Choose the draft vocabulary from the training rows (the datamodule is set up before this hook)."""
        size = self.settings.draft_vocab_size
        datamodule = getattr(self.trainer, "datamodule", None)
        if size is None or self.model.head.draft_vocab is not None or not getattr(datamodule, "train_rows", None):
            return
        answers = [answer_tokens(row) for row in datamodule.train_rows]
        ids = frequent_tokens(answers, size, self.model.vocab_size, keep=[self.tokenizer.eos_token_id])
        self.model.head.set_draft_vocab(ids)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        size = batch["input_ids"].shape[0]
        self.log("train_loss", out.loss, prog_bar=True, batch_size=size)
        self.log("train_head_nll", out.head_nll, batch_size=size)
        if out.lm_nll is not None:
            self.log("train_lm_nll", out.lm_nll, batch_size=size)
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        size = batch["input_ids"].shape[0]
        self.log("val_loss", out.loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val_head_nll", out.head_nll, batch_size=size, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.settings.lr, weight_decay=0.0)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = partial(lr_factor, warmup=self.settings.warmup_steps, total=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {STATE_PREFIX + k for k in self.model.trained_keys()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        vocab = self.model.head.draft_vocab
        checkpoint["draft_vocab"] = None if vocab is None else vocab.ids.tolist()
        checkpoint[BASE_KEY] = self.model.base_fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_trained_weights(self.model, checkpoint)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
