"""The recent past a drafter attends over: the backbone's features of the last W positions, each with the token
that followed it (EAGLE's (feature, shifted token) pairs), right-aligned: slot W - 1 is the latest position.

Only generated positions enter a window (the answer positions in training, the decoded ones at inference), so a
drafter sees the same kind of past in both. Decoding pushes the positions each step kept (:meth:`Window.push`);
training gathers them from stored features (:meth:`tjdnet.training.head_features.Features.behind`) or from a
sequence (:func:`sequence_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Window:
    """``features`` (B, W, F) the head's inputs at the W latest positions, ``tokens`` (B, W) the token after each,
    ``valid`` (B, W) bool: which slots hold a position (a row's first steps have fewer than W)."""

    features: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def empty(cls, batch: int, size: int, like: torch.Tensor) -> Window:
        """A window of ``size`` slots per row holding nothing; features shaped and typed like ``like`` (B, F)."""
        features = like.new_zeros(batch, size, like.shape[-1])
        tokens = torch.zeros(batch, size, dtype=torch.long, device=like.device)
        return cls(features, tokens, torch.zeros(batch, size, dtype=torch.bool, device=like.device))

    @property
    def size(self) -> int:
        return self.valid.shape[1]

    def __getitem__(self, rows: torch.Tensor | slice) -> Window:
        return Window(self.features[rows], self.tokens[rows], self.valid[rows])

    def push(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> Window:
        """The window after positions ``features`` (B, n, F) with their next ``tokens`` (B, n), oldest first, of
        which those ``valid`` (B, n) happened: each row keeps its W latest positions, right-aligned (what a slot
        without a position holds is unspecified)."""
        all_valid = torch.cat([self.valid, valid], dim=1)  # (B, W + n)
        order = torch.arange(all_valid.shape[1], device=all_valid.device)
        latest = torch.where(all_valid, order, -1).sort(dim=1).values[:, -self.size :]  # (B, W); -1: none
        source = latest.clamp_min(0)
        features = torch.cat([self.features, features.to(self.features.dtype)], dim=1)
        features = features.gather(1, source[..., None].expand(-1, -1, features.shape[-1]))
        return Window(features, torch.cat([self.tokens, tokens], dim=1).gather(1, source), latest >= 0)


def sequence_windows(
    features: torch.Tensor, next_ids: torch.Tensor, answer: torch.Tensor, size: int, rows: torch.Tensor,
    positions: torch.Tensor,
) -> Window:  # fmt: skip
    """The windows of the answer positions (``rows``, ``positions``) (N,) of sequences: ``features`` (B, T, F),
    ``next_ids`` (B, T) the token after each position, ``answer`` (B, T) bool: the positions of the answers. A
    window holds the earlier positions of the same answer only (as in decoding, where it holds the decoded ones)."""
    t = torch.arange(answer.shape[1], device=answer.device)
    run_start = torch.where(answer, -1, t).cummax(dim=1).values + 1  # (B, T) where each position's answer began
    offsets = torch.arange(size, 0, -1, device=positions.device)
    earlier = positions[:, None] - offsets  # (N, W), oldest first
    valid = earlier >= run_start[rows, positions][:, None]
    safe = earlier.clamp_min(0)
    return Window(features[rows[:, None], safe], next_ids[rows[:, None], safe], valid)
