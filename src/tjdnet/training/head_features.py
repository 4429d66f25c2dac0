"""Head-only training on cached backbone features.

In ``head`` mode the backbone is frozen, so its last hidden states over a dataset are the same at every step
and for every head: computing them once and training any number of heads on them is the same optimisation
as ``tjdnet fit --model.train_mode head`` (same loss, same optimiser and schedule), without a backbone pass
per step. Comparisons of heads on equal data use this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch

from tjdnet.checks import check_choice
from tjdnet.data import collate
from tjdnet.files import atomic_file
from tjdnet.heads.window import Window
from tjdnet.model import TJDModel, answer_positions, block_targets, next_tokens
from tjdnet.tensorops.logspace import IGNORE_INDEX
from tjdnet.training.module import lr_factor

logger = logging.getLogger(__name__)


@dataclass
class Features:
    """Backbone features of every answer position.

    Attributes:
        hidden: (N, (1 + n) D) the heads' input at positions with a label among the next H tokens: the last hidden
            state, then the n feature layers' (in the backbone's dtype; heads convert it).
        targets: (N, H) the next H labels at those positions, -100 past the end of the answer.
        first: (N,) the input token after each position (what a token-conditioned head reads).
        rows: (N,) the data row each position comes from (each row's positions are stored together).
        positions: (N,) each position's index in its row's tokens.
        inputs: (N, H) the next H input tokens when they differ from ``targets`` (``TARGETS`` "model": an
            autoregressive head is fed the text and scored on the backbone's predictions), else None.
    """

    hidden: torch.Tensor
    targets: torch.Tensor
    first: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    inputs: torch.Tensor | None = None

    def __getitem__(self, index: torch.Tensor | slice) -> Features:
        inputs = None if self.inputs is None else self.inputs[index]
        return Features(
            self.hidden[index], self.targets[index], self.first[index], self.rows[index], self.positions[index], inputs
        )

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @classmethod
    def concatenate(cls, parts: Sequence[Features], row_counts: Sequence[int]) -> Features:
        """The features of several data sets in one, the rows of part i numbered after those of the parts before
        it (``row_counts``: each part's number of data rows)."""
        offsets = torch.tensor([0, *row_counts[:-1]]).cumsum(0).tolist()
        values = {}
        for field in fields(cls):
            tensors = [getattr(part, field.name) for part in parts]
            if field.name == "rows":
                tensors = [rows + offset for rows, offset in zip(tensors, offsets, strict=True)]
            values[field.name] = None if tensors[0] is None else torch.cat(tensors)
        return cls(**values)

    def split(self, n_held_out: int, seed: int = 0) -> tuple[Features, Features]:
        """(train, held out): whole rows, taken in a random order until at least ``n_held_out`` positions are held
        out. Neighbouring positions of one answer share most of their targets, so a split by position would
        score a head on targets it was trained on."""
        row_ids, sizes = self.rows.unique(return_counts=True)
        order = torch.randperm(len(row_ids), generator=torch.Generator().manual_seed(seed))
        taken = int(torch.searchsorted(sizes[order].cumsum(0), n_held_out)) + 1 if n_held_out > 0 else 0
        if not 0 <= n_held_out or taken >= len(row_ids):
            raise ValueError(
                f"n_held_out={n_held_out} is not allowed: it must be >= 0 and leave a row of the {len(row_ids)} rows "
                f"({len(self)} positions) for training"
            )
        held = torch.isin(self.rows, row_ids[order[:taken]])
        return self[~held], self[held]

    def with_layers(self, collected: Sequence[int], layers: Sequence[int]) -> Features:
        """The features a head reading ``layers`` sees, from features collected with the layers ``collected``."""
        if list(layers) == list(collected):
            return self
        d = self.hidden.shape[1] // (1 + len(collected))
        blocks = [0] + [1 + list(collected).index(layer) for layer in layers]
        columns = torch.cat([torch.arange(b * d, (b + 1) * d) for b in blocks])
        return Features(self.hidden[:, columns], self.targets, self.first, self.rows, self.positions, self.inputs)

    def ahead(self, index: torch.Tensor, steps: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states (the first ``width`` columns) 1..``steps`` tokens after each position of
        ``index`` (B,) in the same row, (B, steps, width), and (B, steps) bool: where that position is here."""
        safe, found = self._same_row(index, torch.arange(1, steps + 1))
        return self.hidden[safe, :width], found

    def behind(self, index: torch.Tensor, size: int) -> Window:
        """The context windows (:mod:`tjdnet.heads.window`) of the positions ``index`` (B,): the ``size`` positions
        before each in the same row (stored ones: answer positions), with the tokens after them."""
        safe, valid = self._same_row(index, torch.arange(-size, 0))  # oldest first
        return Window(self.hidden[safe], self.first[safe], valid)

    def _same_row(self, index: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) storage indices of the positions ``offsets`` (K,) tokens from each position of ``index`` (B,),
        clamped into range, and (B, K) bool: where that position is stored in the same row (a row's positions are
        stored together and in order, so it is ``offsets`` entries away)."""
        other = index[:, None] + offsets
        safe = other.clamp(0, len(self) - 1)
        found = (other >= 0) & (other < len(self)) & (self.rows[safe] == self.rows[index, None])
        return safe, found & (self.positions[safe] == self.positions[index, None] + offsets)


TARGETS = ("data", "model")


def check_targets(targets: object) -> None:
    """A one-line error unless ``targets`` is one of :data:`TARGETS`."""
    check_choice("targets", targets, TARGETS)


def model_labels(model: TJDModel, labels: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """(B, T) the backbone's greedy prediction of every labelled token: ``labels`` (B, T) with each label (not
    -100) at t > 0 replaced by the argmax of the model's next-token logits at t - 1, from its last hidden states
    ``last`` (B, T, D) (the vocabulary product only where a label follows)."""
    predicted = labels.clone()
    wanted = labels[:, 1:] != IGNORE_INDEX
    predicted[:, 1:][wanted] = model.next_token_logits(last[:, :-1][wanted]).argmax(-1)
    return predicted


@torch.no_grad()
def collect_features(
    model: TJDModel, rows: Sequence[dict], horizon: int, pad_token_id: int, batch_size: int = 8, targets: str = "data"
) -> Features:
    """Run the backbone once over encoded rows (``encode_example`` output) and keep the answer positions.

    ``horizon`` is the longest horizon the features will train; a head with a shorter one uses the first
    columns of ``targets``. The features are ``model.features``: with the layers of ``model.config.feature_layers``.
    Rows run in batches of alike length (shortest first), and their positions are stored in that order, row by row.
    ``targets``: ``data``, the answers' own tokens, or ``model``, what the backbone itself would say next at each
    answer position given the text before it (the text then becomes the inputs): self-distillation from one
    pass over any text, where generating the answers (``tjdnet distill``) takes one pass per token.
    """
    check_targets(targets)
    hidden, blocks, inputs, first, row_ids, positions = [], [], [], [], [], []
    started = time.perf_counter()
    by_length = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # batches of alike rows: less padding
    for start in range(0, len(rows), batch_size):
        if start and start % (64 * batch_size) == 0:
            logger.info("features: %d / %d rows (%.0f s)", start, len(rows), time.perf_counter() - started)
        chosen = by_length[start : start + batch_size]
        batch = collate([rows[i] for i in chosen], pad_token_id, padding_side="right")
        last, h = model.features(batch["input_ids"], batch["attention_mask"])  # (B, T, (1 + n) D)
        y = block_targets(batch["labels"], horizon)  # (B, T, H)
        keep = answer_positions(y, batch["attention_mask"])
        if targets == "model":
            labels = model_labels(model, batch["labels"], last)
            inputs.append(y[keep])
            y = block_targets(labels, horizon)
        hidden.append(h[keep])
        blocks.append(y[keep])
        first.append(next_tokens(batch["input_ids"], pad_token_id)[keep])
        row_ids.append(torch.tensor(chosen, device=keep.device)[:, None].expand_as(keep)[keep])
        positions.append(torch.arange(keep.shape[1], device=keep.device).expand_as(keep)[keep])
    fed = torch.cat(inputs) if inputs else None
    return Features(
        torch.cat(hidden), torch.cat(blocks), torch.cat(first), torch.cat(row_ids), torch.cat(positions), fed
    )


def features_key(rows: Sequence[dict], settings: dict) -> str:
    """A hash of the encoded rows (their tokens and labels) and every setting the features depend on."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()[:20]


def cached_features(
    cache_dir: str | Path | None, rows: Sequence[dict], settings: dict, compute: Callable[[], Features]
) -> Features:
    """``compute()``, or the Features it returned before for these encoded ``rows`` and ``settings`` when
    ``cache_dir`` holds them (``features-<key>.pt``, :func:`features_key`, written atomically). Training many heads
    on one data set then pays one backbone pass."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir).expanduser() / f"features-{features_key(rows, settings)}.pt"
    if path.is_file():
        logger.info("features from %s", path)
        return Features(**torch.load(path, weights_only=True))
    features = compute()
    with atomic_file(path, "wb") as f:
        torch.save({field.name: getattr(features, field.name) for field in fields(Features)}, f)
    logger.info("features saved to %s", path)
    return features


def head_nll(model: TJDModel, features: Features, index: torch.Tensor, draft: bool = False) -> torch.Tensor:
    """Mean negative log-likelihood per target token of ``model.head`` on the positions ``index`` of the features
    (with grad).

    ``draft``: of the head's draft distribution, targets outside its draft vocabulary ignored
    (:meth:`~tjdnet.heads.base.JointHead.log_prob`); the mean is still over all target tokens.
    """
    return _head_loss(model, features, index, draft)[0]


def _head_loss(
    model: TJDModel, features: Features, index: torch.Tensor, draft: bool, feature_loss: float = 0.0,
    teacher_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """(:func:`head_nll`, the eagle head's auxiliary losses weighted by ``feature_loss`` and ``teacher_loss``
    (:meth:`~tjdnet.heads.eagle.EagleHead.feature_loss`, :meth:`~tjdnet.heads.eagle.EagleHead.teacher_loss`),
    both against the backbone's last hidden states ahead (:meth:`Features.ahead`), or None without them)."""
    chunk = features[index]
    y = chunk.targets[:, : model.horizon]
    h = chunk.hidden.to(model.head.unembedding.weight.dtype)
    n_tokens = max(int((y != IGNORE_INDEX).sum()), 1)
    inputs = None if chunk.inputs is None else chunk.inputs[:, : model.horizon]
    extra = {"inputs": inputs}
    if model.head.window_size:
        extra["window"] = features.behind(index, model.head.window_size)
    if not (feature_loss or teacher_loss):
        return -model.head.log_prob(h, y, chunk.first, draft=draft, **extra).sum() / n_tokens, None
    log_q, drafted, conditionals = model.head.scored(
        h, y, chunk.first, draft=draft, distributions=bool(teacher_loss), **extra
    )
    backbone, found = features.ahead(index, model.horizon - 1, model.head.config.hidden_size)
    auxiliary = log_q.new_zeros(())
    if feature_loss:
        auxiliary = auxiliary + feature_loss * model.head.feature_loss(drafted, backbone, found)
    if teacher_loss:  # q(y_1 | h) is the backbone's own: the drafted conditionals start at y_2
        auxiliary = auxiliary + teacher_loss * model.head.teacher_loss(conditionals[:, 1:], backbone, found, draft)
    return -log_q.sum() / n_tokens, auxiliary


@torch.no_grad()
def evaluate_head(model: TJDModel, features: Features, batch_positions: int = 256, draft: bool = False) -> float:
    """Held-out NLL per target token (averaged over positions in chunks; ``draft``: as :func:`head_nll`)."""
    total, count = 0.0, 0
    for start in range(0, len(features), batch_positions):
        index = torch.arange(start, min(start + batch_positions, len(features)))
        n = int((features.targets[index, : model.horizon] != IGNORE_INDEX).sum())
        total += head_nll(model, features, index, draft).item() * n
        count += n
    return total / max(count, 1)


def check_loss_weight(name: str, weight: object, head: str) -> None:
    """A one-line error unless ``weight`` (of the loss ``name``) is a number >= 0, and 0 for a head other than
    eagle (the auxiliary losses read the features and conditionals an autoregressive drafter drafts)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        raise ValueError(f"{name}={weight!r} is not allowed; use a number >= 0")
    if weight and head != "eagle":
        raise ValueError(f"{name}={weight} is for eagle heads, which draft features step by step; {head} does not")


COMPUTE_DTYPES = ("float32", "bfloat16")


def autocast(compute_dtype: str, device: torch.device) -> torch.autocast:
    """The context the training steps run in: mixed precision for bfloat16, a no-op for float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16")


def fit_head(
    model: TJDModel,
    features: Features,
    steps: int,
    batch_positions: int,
    lr: float,
    warmup_steps: int = 3,
    seed: int = 0,
    log_every: int = 5,
    draft: bool = False,
    feature_loss: float = 0.0,
    teacher_loss: float = 0.0,
    compute_dtype: str = "float32",
) -> list[float]:
    """Train ``model.head`` (only) on the features with AdamW and the ``fit`` schedule; returns step losses.

    The positions of each step come from ``seed`` alone (an epoch-wise shuffle), so heads trained with the
    same seed, steps and batch size see exactly the same data in the same order. ``draft``: train the
    distribution drafted from the head's draft vocabulary (:func:`head_nll`). ``feature_loss`` w > 0 (eagle
    only): minimise NLL + w x the distance of the drafted features to the backbone's own at the same positions
    (EAGLE-1's regression loss); ``teacher_loss`` w' > 0 (eagle only) adds w' x the KL divergence of the drafted
    conditionals from the backbone's own next-token distributions there (soft targets). ``compute_dtype``
    bfloat16: the steps' matrix products run in bfloat16 (autocast; weights, optimiser state and losses stay
    float32): about twice as fast on CPUs with bfloat16 instructions. The losses returned are the NLLs.
    """
    if steps < 1 or batch_positions < 1:
        raise ValueError(f"steps={steps} and batch_positions={batch_positions} must both be >= 1")
    check_loss_weight("feature_loss", feature_loss, model.config.model_head)
    check_loss_weight("teacher_loss", teacher_loss, model.config.model_head)
    check_choice("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    params = [p for p in model.head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup_steps, total=steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(features), generator=generator)
    cursor, losses, start = 0, [], time.perf_counter()
    model.head.train()
    for step in range(steps):
        if cursor + batch_positions > len(order):
            order, cursor = torch.randperm(len(features), generator=generator), 0
        index = order[cursor : cursor + batch_positions]
        cursor += batch_positions
        with autocast(compute_dtype, params[0].device):
            loss, auxiliary = _head_loss(model, features, index, draft, feature_loss, teacher_loss)
        optimizer.zero_grad(set_to_none=True)
        (loss if auxiliary is None else loss + auxiliary).backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - start
            logger.info("step %d/%d  loss %.4f  (%.1f s/step)", step + 1, steps, losses[-1], elapsed / (step + 1))
    model.head.eval()
    return losses
