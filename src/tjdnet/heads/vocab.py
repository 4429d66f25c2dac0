"""Draft vocabularies: the subset of tokens a head drafts from at inference (frequency-ranked, as in FR-Spec).

Each of a head's R x H components ends in a product with the V x D output embedding, which on a CPU costs about
as much per component as the backbone's own next-token head, and every tree depth works on (prefixes, V)
tables. Drafting from the S most frequent tokens of the head's training data cuts both by V / S; the verifier
still reads the whole vocabulary, so greedy outputs stay exact and sampled ones keep their distribution (the
draft distribution is simply zero outside the subset). A token outside the subset is never proposed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DraftVocab:
    """Token ids ``ids`` (S,), sorted, and ``index`` (V,): each token's position in ``ids``, -1 when absent."""

    ids: torch.Tensor
    index: torch.Tensor

    @classmethod
    def of(cls, ids: torch.Tensor | Sequence[int], vocab_size: int) -> DraftVocab:
        ids = torch.as_tensor(ids, dtype=torch.long).unique()  # sorted, distinct
        if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= vocab_size:
            raise ValueError(f"a draft vocabulary needs 1..{vocab_size} token ids in 0..{vocab_size - 1}")
        index = torch.full((vocab_size,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        return cls(ids, index)

    @property
    def size(self) -> int:
        return self.ids.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.index.shape[0]

    def to(self, device: torch.device) -> DraftVocab:
        return self if self.ids.device == device else DraftVocab(self.ids.to(device), self.index.to(device))

    def local(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positions of token ids (any shape) in the subset, -1 for tokens outside it."""
        return self.index[tokens]

    def expand(self, log_q: torch.Tensor) -> torch.Tensor:
        """(..., S) log-probabilities over the subset as (..., V), -inf outside it."""
        full = log_q.new_full((*log_q.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.ids, log_q)


def check_draft_vocab_size(size: object, vocab_size: int, name: str = "draft vocabulary size") -> None:
    """A one-line error unless ``size`` is an integer in 1..``vocab_size`` (``name`` says which argument)."""
    if not isinstance(size, int) or not 1 <= size <= vocab_size:
        raise ValueError(f"{name}={size!r} is not allowed; use an integer in 1..{vocab_size}")


def frequent_tokens(
    sequences: Iterable[Sequence[int]], size: int, vocab_size: int, keep: Iterable[int] = ()
) -> list[int]:
    """The ``size`` token ids to draft from: ``keep`` (e.g. EOS), then the most frequent tokens of ``sequences``
    (ties: lower id first), topped up with the lowest ids not yet taken. Sorted."""
    check_draft_vocab_size(size, vocab_size)
    chosen = list(dict.fromkeys(int(t) for t in keep))[:size]
    counts = Counter(t for seq in sequences for t in seq)
    taken = set(chosen)
    for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(chosen) == size:
            break
        if token not in taken:
            chosen.append(token)
            taken.add(token)
    filler = (t for t in range(vocab_size) if t not in taken)
    chosen.extend(next(filler) for _ in range(size - len(chosen)))
    return sorted(chosen)
