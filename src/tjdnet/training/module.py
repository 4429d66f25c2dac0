"""The Lightning adapter over TJDModel: what to compute (losses, optimiser); no data, no CLI."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import torch

from tjdnet.data import answer_tokens
from tjdnet.heads.vocab import check_draft_vocab_size, frequent_tokens
from tjdnet.loading import load_causal_lm
from tjdnet.model import TJDConfig, TJDModel

DEFAULT_MODEL = "smollm2-135m"


def default_rank(head: str) -> int:
    return 1 if head in ("stp", "multihead") else 2


def default_horizon(head: str) -> int:
    return 1 if head == "stp" else 4


# TJDLitModule argument -> the TJDConfig field it sets (lora_alpha is always 2 x lora_rank).
CONFIG_ARGUMENTS = {
    "model": "base_model",
    "model_head": "head",
    "horizon": "horizon",
    "rank": "rank",
    "hidden_dim": "hidden_dim",
    "train_mode": "train_mode",
    "lora_rank": "lora_rank",
    "lora_layers": "lora_layers",
    "loss_mode": "loss_mode",
    "joint_loss_lambda": "joint_loss_lambda",
    "use_memory_efficient_loss": "use_memory_efficient_loss",
    "token_conditioned": "token_conditioned",
}


class TJDLitModule(L.LightningModule):
    """Fine-tunes a joint head (and optionally LoRA adapters / the backbone) on a causal LM.

    Args:
        model: alias (``smollm2-135m``), hub id or local directory of the base causal LM.
        model_head: ``stp``, ``multihead``, ``cp`` or ``mps``.
        horizon: tokens per block (default 4; 1 for stp).
        rank: CP rank / MPS bond dimension (default 2; 1 for stp and multihead).
        hidden_dim: width of each component's residual adapter.
        train_mode: ``head``, ``lora`` or ``full``.
        lora_rank: LoRA rank (``lora_alpha`` = 2 x rank).
        lora_layers: put LoRA on the last N transformer blocks only (None: all); cheaper backward.
        loss_mode: ``draft`` (head NLL) or ``joint`` (head NLL + joint_loss_lambda x next-token CE).
        use_memory_efficient_loss: score the head at every H-th position only.
        token_conditioned: the head's positions 2..H also read the block's first token (in speculative
            decoding, the verifier's own token).
        lr: peak learning rate (AdamW), reached after ``warmup_steps``, then cosine decay to 10%.
        dtype: weights of the base model: ``float32`` or ``bfloat16``.
        max_new_tokens: length of the sample printed after each validation.
        draft_vocab_size: draft from the S most frequent answer tokens of the training data (and EOS) only
            (:mod:`tjdnet.heads.vocab`); the head's loss is then taken over those S tokens, at ~S/V of its cost
            (over the whole vocabulary in ``full`` mode). None: the whole vocabulary. Saved in the checkpoint.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        model_head: str = "cp",
        horizon: int | None = None,
        rank: int | None = None,
        hidden_dim: int = 64,
        train_mode: str = "lora",
        lora_rank: int = 16,
        lora_layers: int | None = None,
        loss_mode: str = "joint",
        joint_loss_lambda: float = 1.0,
        use_memory_efficient_loss: bool = False,
        token_conditioned: bool = False,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        dtype: str = "float32",
        max_new_tokens: int = 128,
        draft_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        horizon = default_horizon(model_head) if horizon is None else horizon
        rank = default_rank(model_head) if rank is None else rank
        self.save_hyperparameters()
        if lr <= 0:
            raise ValueError(f"lr={lr} is not allowed; use a value > 0")
        config = TJDConfig(
            **{field: self.hparams[arg] for arg, field in CONFIG_ARGUMENTS.items()}, lora_alpha=2 * lora_rank
        )
        config.validate()  # before the (slow) model load
        lm, self.tokenizer = load_causal_lm(model, dtype=dtype)
        self.model = TJDModel(lm, config)
        if draft_vocab_size is not None:
            check_draft_vocab_size(draft_vocab_size, self.model.vocab_size, "draft_vocab_size")
        self.model.train()
        # Checkpoints hold only what training changes; the frozen backbone comes from `model`.
        self.strict_loading = False

    @property
    def horizon(self) -> int:
        return self.model.horizon

    def setup(self, stage: str) -> None:
        """Choose the draft vocabulary from the training rows (the datamodule is set up before this hook)."""
        size = self.hparams.draft_vocab_size
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
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = partial(lr_factor, warmup=self.hparams.warmup_steps, total=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_keys(self) -> set[str]:
        head = {f"model.head.{k}" for k in self.model.head.state_dict()}
        return head | {f"model.lm.{k}" for k in self.model.trainable_state_dict()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        vocab = self.model.head.draft_vocab
        checkpoint["draft_vocab"] = None if vocab is None else vocab.ids.tolist()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trained weights, e.g. {sorted(missing)[0]}")
        self.model.head.set_draft_vocab(checkpoint.get("draft_vocab"))


def config_hparams(config: TJDConfig) -> dict:
    """The :class:`TJDLitModule` arguments (the CLI's ``--model.*`` names) that rebuild ``config``."""
    return {arg: getattr(config, field) for arg, field in CONFIG_ARGUMENTS.items()}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
