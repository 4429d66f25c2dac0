"""TJDModel: any Hugging Face causal LM plus one joint head over the next H tokens.

The backbone is reached generically (``get_decoder()`` for the hidden states,
``get_output_embeddings()`` for the vocabulary projection), so GPT-2, Llama/SmolLM2, Qwen, ... all work
without a per-model table. The output embedding is shared by the head's components and always frozen.
The CPU kernel choices of :func:`tjdnet.kernels.cpu_kernels` apply only inside ``forward`` and ``generate``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from tjdnet.config import TJDConfig
from tjdnet.decoding import generate
from tjdnet.files import atomic_directory, read_json
from tjdnet.fingerprint import base_fingerprint, check_base
from tjdnet.heads import HeadConfig, JointHead, make_head
from tjdnet.heads.window import sequence_windows
from tjdnet.kernels import cpu_kernels
from tjdnet.loading import load_causal_lm
from tjdnet.tensorops.logspace import IGNORE_INDEX

logger = logging.getLogger(__name__)

CONFIG_FILE = "tjdnet_config.json"
HEAD_WEIGHTS = "head.safetensors"
BACKBONE_WEIGHTS = "backbone.safetensors"
DRAFT_VOCAB_FILE = "draft_vocab.json"
BASE_FILE = "base_model.json"  # the fingerprint of the base model the head was trained on


@dataclass
class TJDOutput:
    """Training losses. ``loss`` is what is optimised; the NLLs are per target token."""

    loss: torch.Tensor
    head_nll: torch.Tensor
    lm_nll: torch.Tensor | None
    head_tokens: int


def block_targets(labels: torch.Tensor, horizon: int) -> torch.Tensor:
    """The next H labels at every position.

    Args:
        labels: (B, T) token ids, -100 where no loss is wanted.
    Returns:
        (B, T, H) with ``out[:, t, k] = labels[:, t + k + 1]`` and -100 past the end.
    """
    batch, length = labels.shape
    padded = torch.cat([labels, labels.new_full((batch, horizon), IGNORE_INDEX)], dim=1)
    return padded.unfold(1, horizon, 1)[:, 1 : length + 1]


def next_tokens(input_ids: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """(B, T) the input token after each position (``fill`` at the last): the first token of each block."""
    return torch.cat([input_ids[:, 1:], input_ids.new_full((input_ids.shape[0], 1), fill)], dim=1)


def answer_positions(targets: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real-token positions with a label among their next H tokens (``targets`` (B, T, H))."""
    return (targets != IGNORE_INDEX).any(-1) & (attention_mask == 1)


def lora_target_modules(module: nn.Module, last_layers: int | None = None) -> list[str]:
    """Names of the linear projections (nn.Linear and GPT-2's Conv1D) of a backbone that LoRA adapts.

    With ``last_layers``, only the projections inside the last N transformer blocks (the backbone's longest
    ModuleList): the frozen blocks below then need no backward pass at all, which roughly halves training cost.
    """
    linear = {name for name, m in module.named_modules() if isinstance(m, nn.Linear | Conv1D)}
    if last_layers is None:
        return sorted({name.rsplit(".", 1)[-1] for name in linear})
    blocks_name, blocks = max(
        ((name, m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList)), key=lambda x: len(x[1])
    )
    if not 1 <= last_layers <= len(blocks):
        raise ValueError(f"lora_layers={last_layers} is not allowed; this model has 1..{len(blocks)} layers")
    prefixes = tuple(f"{blocks_name}.{i}." for i in range(len(blocks) - last_layers, len(blocks)))
    return sorted(name for name in linear if name.startswith(prefixes))


def check_feature_layers(layers: list[int], num_layers: int) -> None:
    """One-line ValueError unless every layer is an intermediate one of a backbone with ``num_layers`` layers."""
    for layer in layers:
        if not 1 <= layer < num_layers:
            raise ValueError(
                f"feature_layers={layers} is not allowed; this model's intermediate layers are 1..{num_layers - 1}"
            )


def uses_conv1d(module: nn.Module) -> bool:
    """GPT-2 style (in, out) weight layout, which LoRA must know about."""
    return any(isinstance(m, Conv1D) for m in module.modules())


class TJDModel(nn.Module):
    """A causal LM (``lm``) with a joint head reading its last hidden state.

    Args:
        lm: a transformers ``PreTrainedModel`` with a causal-LM head.
        config: the TJD configuration; ``config.model`` is what ``from_pretrained`` reloads.
    """

    def __init__(self, lm: nn.Module, config: TJDConfig) -> None:
        super().__init__()
        self.config = config
        self.lm = lm
        unembedding = lm.get_output_embeddings()
        vocab_size, hidden_size = unembedding.weight.shape
        self.head_config = HeadConfig(
            name=config.model_head,
            hidden_size=hidden_size,
            vocab_size=vocab_size,
            horizon=config.horizon,
            rank=config.rank,
            hidden_dim=config.hidden_dim,
            token_conditioned=config.token_conditioned,
            extra_features=len(config.feature_layers),
            context_window=config.context_window,
        )
        check_feature_layers(config.feature_layers, lm.config.num_hidden_layers)
        head = make_head(self.head_config, unembedding, lm.get_input_embeddings())
        self.head: JointHead = head.to(unembedding.weight.dtype)
        self.next_token = make_head(HeadConfig("stp", hidden_size, vocab_size), unembedding)
        self.base_fingerprint = base_fingerprint(lm, config.model)  # before any adapter or training changes lm
        # Measured verifying-pass costs of tree_size="auto" decoding, per batch size, width, dtype and device.
        self.pass_costs: dict = {}
        self._configure_training(config)

    # ----- construction -------------------------------------------------------------------------------

    @classmethod
    def from_base(cls, model: str, dtype: str | torch.dtype = "float32", device: str = "cpu", **settings):
        """Load a causal LM by alias, hub id or path and put a fresh head on it. Returns (model, tokenizer).

        ``settings`` are :class:`~tjdnet.config.TJDConfig` fields (``model_head``, ``horizon``, ``rank``, ...).
        """
        config = TJDConfig(model=model, **settings)
        lm, tokenizer = load_causal_lm(model, dtype=dtype, device=device)
        return cls(lm, config).to(device), tokenizer

    def _configure_training(self, config: TJDConfig) -> None:
        self.lm.requires_grad_(False)
        if config.train_mode == "lora":
            if not config.lora_target_modules:
                config.lora_target_modules = lora_target_modules(self.backbone, config.lora_layers)
            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
                fan_in_fan_out=uses_conv1d(self.backbone),
            )
            inject_adapter_in_model(lora, self.backbone)
        elif config.train_mode == "full":
            self.backbone.requires_grad_(True)
        # The output embedding (often tied to the input one) is the heads' shared, frozen vocabulary map.
        self.lm.get_output_embeddings().requires_grad_(False)
        self.lm.get_input_embeddings().requires_grad_(config.train_mode == "full" and not self._tied_embeddings)

    @property
    def _tied_embeddings(self) -> bool:
        return self.lm.get_input_embeddings().weight is self.lm.get_output_embeddings().weight

    @property
    def backbone(self) -> nn.Module:
        """The transformer body: input ids -> last (normalised) hidden states."""
        return self.lm.get_decoder()

    @property
    def horizon(self) -> int:
        return self.head.horizon

    @property
    def vocab_size(self) -> int:
        return self.head_config.vocab_size

    # ----- forward passes ------------------------------------------------------------------------------

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """(B, T, D) last hidden states; ``cache`` (a transformers Cache) is updated in place."""
        return self.features(input_ids, attention_mask, position_ids, cache)[0]

    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states (B, T, D), the head's input (B, T, (1 + n) D)): the head reads the last hidden state
        followed by the outputs of ``config.feature_layers`` (n of them; the same tensor when n = 0)."""
        layers = self.config.feature_layers
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            output_hidden_states=bool(layers),
        )
        last = out.last_hidden_state
        if not layers:
            return last, last
        return last, torch.cat([last, *(out.hidden_states[i] for i in layers)], dim=-1)

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., V) float32 logits of the model's own next-token head."""
        return self.lm.get_output_embeddings()(hidden).float()

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= self.vocab_size)][0]
            raise ValueError(f"token id {int(bad)} is out of range; allowed ids are 0..{self.vocab_size - 1}")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TJDOutput:
        """Training loss on a batch.

        Args:
            input_ids: (B, T); attention_mask: (B, T) 1 for real tokens; labels: (B, T) with -100 where
                no loss is wanted (defaults to input_ids with padding masked).
        """
        with cpu_kernels(self):
            return self._loss(input_ids, attention_mask, labels)

    def _loss(self, input_ids, attention_mask, labels) -> TJDOutput:
        self.check_input_ids(input_ids)
        horizon = self.horizon
        if input_ids.shape[1] < horizon + 1:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} is too short for horizon={horizon}; "
                f"sequences need at least horizon + 1 = {horizon + 1} tokens"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is None:
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        backbone_frozen = self.config.train_mode == "head"
        with torch.no_grad() if backbone_frozen else contextlib.nullcontext():
            hidden, head_input = self.features(input_ids, attention_mask)  # (B, T, D), (B, T, (1 + n) D)
        targets = block_targets(labels, horizon)  # (B, T, H)
        keep = answer_positions(targets, attention_mask)
        answers = keep.clone()
        if self.config.use_memory_efficient_loss and horizon > 1:
            phase = int(torch.randint(horizon, (1,)))
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            keep &= (positions % horizon == phase)[None]
        next_ids = next_tokens(input_ids)
        h, y, first = head_input[keep], targets[keep], next_ids[keep]  # (N, (1 + n) D), (N, H), (N,)
        n_tokens = int((y != IGNORE_INDEX).sum())
        # A head that drafts from a subset of the vocabulary learns the distribution it will draft from, at S/V of
        # the cost; `full` mode keeps the loss over the whole vocabulary.
        in_draft_vocab = self.head.draft_vocab is not None and self.config.train_mode != "full"
        window = {}
        if self.head.window_size:  # the earlier answer positions, as decoding will give them
            rows, positions = keep.nonzero(as_tuple=True)
            window["window"] = sequence_windows(head_input, next_ids, answers, self.head.window_size, rows, positions)
        head_nll = -self.head.log_prob(h, y, first, draft=in_draft_vocab, **window).sum() / max(n_tokens, 1)
        loss, lm_nll = head_nll, None
        if self.config.loss_mode == "joint":
            first = targets[..., :1]  # every position with a next-token label, not only the kept ones
            mask = (first[..., 0] != IGNORE_INDEX) & (attention_mask == 1)
            lm_lp = self.next_token.token_log_probs(hidden[mask], first[mask])
            lm_nll = -lm_lp.sum() / max(int(mask.sum()), 1)
            loss = head_nll + self.config.joint_loss_lambda * lm_nll
        return TJDOutput(loss=loss, head_nll=head_nll, lm_nll=lm_nll, head_tokens=n_tokens)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """KV-cached generation; see :func:`tjdnet.decoding.generate` for the arguments."""
        return generate(self, input_ids, attention_mask, **kwargs)

    # ----- LoRA at inference --------------------------------------------------------------------------

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]

    @property
    def has_lora(self) -> bool:
        return self.config.train_mode == "lora"

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the original backbone (LoRA adapters off) inside the block."""
        layers = self._lora_layers()
        if any(layer.merged for layer in layers):
            raise ValueError("LoRA adapters are merged; the original model is not available any more")
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    def merge_adapters(self) -> None:
        """Fold LoRA weights into the backbone for faster inference (idempotent)."""
        for layer in self._lora_layers():
            if not layer.merged:
                layer.merge()

    # ----- parameters and persistence ------------------------------------------------------------------

    def trained_keys(self) -> set[str]:
        """State-dict keys of everything training changes (the head; LoRA or the backbone): what a checkpoint
        holds. The frozen rest comes from the base model."""
        return {f"head.{k}" for k in self.head.state_dict()} | {f"lm.{k}" for k in self.trainable_state_dict()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights that training may change (LoRA adapters, or the whole body in ``full``)."""
        if self.config.train_mode == "head":
            return {}
        if self.config.train_mode == "lora":
            return {k: v for k, v in self.lm.state_dict().items() if "lora_" in k}
        frozen = {id(self.lm.get_output_embeddings().weight)}
        return {k: v for k, v in self.lm.named_parameters() if id(v) not in frozen}

    def parameter_report(self) -> dict[str, float]:
        """Head and backbone parameter counts and the head's fraction of the backbone."""
        backbone = sum(p.numel() for p in self.lm.parameters())
        head = self.head.num_parameters()
        lora = sum(v.numel() for k, v in self.lm.state_dict().items() if "lora_" in k)
        return {"head": head, "lora": lora, "backbone": backbone, "head_fraction": head / backbone}

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> None:
        """Write config JSON + safetensors (head and trainable backbone weights) atomically, and ``tokenizer``
        beside them when given (so ``AutoTokenizer.from_pretrained(directory)`` loads it)."""
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2))
            (tmp / BASE_FILE).write_text(json.dumps(self.base_fingerprint, indent=2))
            save_file(_contiguous(self.head.state_dict()), tmp / HEAD_WEIGHTS)
            backbone = self.trainable_state_dict()
            if backbone:
                save_file(_contiguous(backbone), tmp / BACKBONE_WEIGHTS)
            if self.head.draft_vocab is not None:
                (tmp / DRAFT_VOCAB_FILE).write_text(json.dumps({"ids": self.head.draft_vocab.ids.tolist()}))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

    def push_to_hub(self, repo_id: str, tokenizer=None, private: bool = False, token: str | None = None) -> str:
        """Upload what :meth:`save_pretrained` writes to the Hugging Face Hub repository ``repo_id`` (created if
        needed); returns the commit URL. The base model is not uploaded: the config names it."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "head"
            self.save_pretrained(folder, tokenizer)
            api.create_repo(repo_id, private=private, exist_ok=True)
            return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload tjdnet head"))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: str | torch.dtype = "float32",
        device: str = "cpu",
        base: nn.Module | None = None,
    ) -> TJDModel:
        """Rebuild a saved TJDModel: its base model (named in the config) with the saved weights on top.

        Args:
            name_or_path: a directory written by :meth:`save_pretrained`, or a Hub repository id holding one
                (downloaded when online or found in the HF cache).
            base: an already loaded base model to put the head on (shared, not copied; ``dtype`` and ``device``
                are then its own), e.g. to compare several heads on one backbone. Only a head trained in
                ``head`` mode can share one: LoRA or fully fine-tuned weights would change it.
        Returns:
            the model, in eval mode. Its tokenizer: ``AutoTokenizer.from_pretrained(directory)`` when it was
            saved with the head, else that of the base model (:func:`tjdnet.loading.load_tokenizer`).
        """
        directory = head_directory(name_or_path)
        config = TJDConfig.from_json(read_json(directory / CONFIG_FILE))
        if base is not None and config.train_mode != "head":
            raise ValueError(f"{directory} was trained with train_mode={config.train_mode}; it cannot share a backbone")
        lm = base if base is not None else load_causal_lm(config.model, dtype=dtype, device=device)[0]
        device = next(lm.parameters()).device
        model = cls(lm, config).to(device)
        base_file = directory / BASE_FILE
        check_base(read_json(base_file) if base_file.is_file() else None, model.base_fingerprint, str(directory))
        model.load_weights(directory)
        return model.eval()

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load head and backbone weights written by :meth:`save_pretrained` (strict), and its draft vocabulary."""
        directory = Path(directory)
        self.head.load_state_dict(_load(directory / HEAD_WEIGHTS))
        vocab_file = directory / DRAFT_VOCAB_FILE
        self.head.set_draft_vocab(read_json(vocab_file)["ids"] if vocab_file.is_file() else None)
        expected = self.trainable_state_dict()
        if expected:
            weights = _load(directory / BACKBONE_WEIGHTS)
            if set(weights) != set(expected):
                raise ValueError(f"{directory / BACKBONE_WEIGHTS} does not match train_mode={self.config.train_mode}")
            self.lm.load_state_dict(weights, strict=False)


def head_directory(name_or_path: str | os.PathLike) -> Path:
    """The local directory of a saved head: ``name_or_path`` itself, or a Hub repository's snapshot."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved TJDModel: {CONFIG_FILE} is missing")
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(f"{name} is not a saved TJDModel: no such directory (nor a Hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(name)
    except Exception as error:  # offline, unknown repository, no access: many types
        raise FileNotFoundError(
            f"head {name!r} is neither a local directory nor a reachable Hub repository ({type(error).__name__})"
        ) from None
    return head_directory(snapshot)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for truncated files
        raise ValueError(f"cannot read weights file {path}: {error}") from None
