"""TJDConfig: the one definition of a TJDModel's settings, their defaults and their validation.

Field names are the ``--model.*`` flags of ``tjdnet fit``; the Lightning module and the CLI derive from this
class (``tjdnet.training.module.FitSettings`` adds the optimiser's settings), so nothing restates it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tjdnet.checks import check_int
from tjdnet.heads import FIXED_RANK_ONE, HEADS, check_head_settings

DEFAULT_MODEL = "smollm2-135m"
TRAIN_MODES = ("head", "lora", "full")
LOSS_MODES = ("draft", "joint")
# Keys of tjdnet_config.json files written before the fields took the CLI's names.
RENAMED_KEYS = {"base_model": "model", "head": "model_head"}


def default_horizon(head: str) -> int:
    return 1 if head == "stp" else 4


def default_rank(head: str) -> int:
    return 1 if head in FIXED_RANK_ONE else 2


@dataclass
class TJDConfig:
    """Everything needed to rebuild a TJDModel from its base model; checked when it is made.

    Attributes:
        model: alias (``smollm2-135m``), hub id or local directory of the base causal LM.
        model_head: ``stp``, ``multihead``, ``cp``, ``mps``, ``medusa`` (Medusa-1-style heads) or ``eagle``
            (an EAGLE-1-style drafter).
        horizon: tokens per block (default 4; 1 for stp).
        rank: CP rank / MPS bond dimension (default 2; 1 for stp and multihead).
        hidden_dim: width of each head component's residual adapter.
        train_mode: ``head`` (backbone frozen), ``lora`` (peft adapters) or ``full``.
        lora_rank: LoRA rank.
        lora_alpha: LoRA scaling numerator (default 2 x lora_rank).
        lora_dropout: dropout on the LoRA input.
        lora_layers: put LoRA on the last N transformer blocks only (None: all); cheaper backward.
        lora_target_modules: names of the projections LoRA adapts (empty: every linear projection chosen by
            ``lora_layers``).
        loss_mode: ``draft`` (head NLL) or ``joint`` (head NLL + joint_loss_lambda x next-token CE).
        joint_loss_lambda: weight of the next-token cross-entropy in ``joint`` mode.
        use_memory_efficient_loss: score the head at every H-th position only (random phase).
        token_conditioned: the head's positions 2..H also read the block's first token (in speculative
            decoding, the verifier's own token).
        draft_vocab_size: draft from the S most frequent answer tokens of the training data (and EOS) only
            (:mod:`tjdnet.heads.vocab`); the head's loss is then taken over those S tokens. None: the whole
            vocabulary.
        feature_layers: the head also reads the hidden states after these decoder layers (1 .. layers - 1;
            EAGLE-3's fused low/mid-level features), fused into its input; empty: the last hidden state only.
        context_window: ``eagle`` only: the drafter also attends over the backbone's features of the W latest
            generated positions and the tokens after them, as EAGLE's drafter reads the prefix (0: over the
            drafted block only).
    """

    model: str = DEFAULT_MODEL
    model_head: str = "cp"
    horizon: int | None = None
    rank: int | None = None
    hidden_dim: int = 64
    train_mode: str = "lora"
    lora_rank: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.0
    lora_layers: int | None = None
    lora_target_modules: list[str] = field(default_factory=list)
    loss_mode: str = "joint"
    joint_loss_lambda: float = 1.0
    use_memory_efficient_loss: bool = False
    token_conditioned: bool = False
    draft_vocab_size: int | None = None
    feature_layers: list[int] = field(default_factory=list)
    context_window: int = 0

    def __post_init__(self) -> None:
        if self.model_head not in HEADS:
            raise ValueError(f"unknown head {self.model_head!r}; allowed: {', '.join(HEADS)}")
        if self.horizon is None:
            self.horizon = default_horizon(self.model_head)
        if self.rank is None:
            self.rank = default_rank(self.model_head)
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank
        self.lora_target_modules = list(self.lora_target_modules)
        self.feature_layers = list(self.feature_layers)
        check_head_settings(
            self.model_head,
            self.horizon,
            self.rank,
            self.hidden_dim,
            self.token_conditioned,
            self.feature_layers,
            self.context_window,
        )
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"unknown train_mode {self.train_mode!r}; allowed: {', '.join(TRAIN_MODES)}")
        if self.loss_mode not in LOSS_MODES:
            raise ValueError(f"unknown loss_mode {self.loss_mode!r}; allowed: {', '.join(LOSS_MODES)}")
        for name, allowed in (("lora_rank", None), ("lora_layers", None), ("draft_vocab_size", "in 1..vocab size")):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), allowed=allowed)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout} is not allowed; use a value in [0, 1)")
        if self.joint_loss_lambda < 0:
            raise ValueError(f"joint_loss_lambda={self.joint_loss_lambda} is not allowed; use a value >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TJDConfig:
        """A config from a saved ``tjdnet_config.json`` (older files' key names included)."""
        values = {RENAMED_KEYS.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown TJDConfig settings {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TJDConfig:
        """The config part of a larger settings mapping (a checkpoint's hyper-parameters)."""
        return cls(**{k: v for k, v in settings.items() if k in cls.__dataclass_fields__})
