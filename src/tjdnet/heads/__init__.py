"""Joint heads over the next H tokens, behind one interface (:class:`JointHead`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tjdnet.checks import check_int
from tjdnet.heads.base import HeadConfig, JointHead
from tjdnet.heads.block import BlockDistribution
from tjdnet.heads.cp import CPHead
from tjdnet.heads.eagle import EagleHead
from tjdnet.heads.medusa import MedusaHead
from tjdnet.heads.mps import MPSHead
from tjdnet.heads.multihead import MultiHead
from tjdnet.heads.stp import STPHead

HEADS: dict[str, type[JointHead]] = {
    "stp": STPHead,
    "multihead": MultiHead,
    "cp": CPHead,
    "mps": MPSHead,
    "medusa": MedusaHead,
    "eagle": EagleHead,
}
FIXED_RANK_ONE = ("stp", "multihead", "medusa", "eagle")
TOKEN_CONDITIONABLE = ("multihead", "cp", "mps")  # eagle reads every drafted token by construction


def validate_head_config(config: HeadConfig) -> None:
    """Raise a one-line ValueError naming the first bad field of a head configuration."""
    check_head_settings(config.name, config.horizon, config.rank, config.hidden_dim, config.token_conditioned)
    for field in ("hidden_size", "vocab_size", "loss_chunk_elements"):
        check_int(field, getattr(config, field))


def check_head_settings(
    name: str,
    horizon: int,
    rank: int,
    hidden_dim: int,
    token_conditioned: bool,
    feature_layers: Sequence[int] = (),
    context_window: int = 0,
) -> None:
    """Raise a one-line ValueError naming the first bad head setting (those a user chooses). Whether the feature
    layers exist in the backbone is checked when the head is put on it (:func:`tjdnet.model.check_feature_layers`)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; allowed heads: {', '.join(HEADS)}")
    for field, value in (("horizon", horizon), ("rank", rank), ("hidden_dim", hidden_dim)):
        check_int(field, value)
    if name == "stp" and horizon != 1:
        raise ValueError(f"horizon={horizon} is not allowed for the stp head; stp has horizon 1")
    if name in FIXED_RANK_ONE and rank != 1:
        raise ValueError(f"rank={rank} is not allowed for the {name} head; it has rank 1")
    if token_conditioned and (name not in TOKEN_CONDITIONABLE or horizon < 2):
        raise ValueError(
            f"token_conditioned is not allowed for {name} with horizon={horizon}; "
            "it needs a multihead, cp or mps head with horizon >= 2"
        )
    for layer in feature_layers:
        check_int("feature_layers", layer)
    if len(set(feature_layers)) != len(feature_layers):
        raise ValueError(f"feature_layers={list(feature_layers)} names a layer twice")
    check_int("context_window", context_window, 0)
    if context_window and name != "eagle":
        raise ValueError(f"context_window={context_window} is for the eagle head, which attends; {name} does not")


def make_head(config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> JointHead:
    """Build the head named by ``config.name`` on top of a (frozen, shared) output embedding.

    ``embedding`` (the backbone's input embedding) is read by token-conditioned heads only.
    """
    validate_head_config(config)
    return HEADS[config.name](config, unembedding, embedding)


__all__ = [
    "FIXED_RANK_ONE",
    "HEADS",
    "BlockDistribution",
    "HeadConfig",
    "JointHead",
    "check_head_settings",
    "make_head",
    "validate_head_config",
]
