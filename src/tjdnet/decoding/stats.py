"""What a generate call reports: tokens, forward passes, tau, acceptance, timing — per call and per row."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RowStats:
    """Counters of one batch row.

    ``forward_passes`` counts the backbone passes this row took part in (prefill included), so
    ``tau = new_tokens / forward_passes`` is 1.0 for plain decoding and counts the bonus token.
    ``lookup_accepted`` counts the accepted drafted tokens that only a lookup chain proposed (``tree_lookup``).
    """

    new_tokens: int = 0
    forward_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    lookup_accepted: int = 0
    accepted_lengths: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return self.new_tokens / self.forward_passes if self.forward_passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class GenerationStats:
    """Counters and timings of one ``generate`` call.

    Attributes:
        forward_passes: backbone calls of the whole batch (the prefill and the verification-only
            passes of ``verify_with_base`` included).
        decode_steps: steps after the prefill (one backbone pass each, two with ``verify_with_base``).
        draft_time_s: the part of the decoding time spent drafting: the head's block distribution and the chain
            or tree drawn from it (0 for ``ar``).
        draft_blocks: blocks the head drafted: one per speculative step; in ``draft`` mode one per step and the
            last block, which no backbone pass follows.
        reached / accepted_at: per draft position i, how many drafted tokens were examined (every
            earlier one accepted) and how many of those were accepted.
    """

    gen_mode: str
    rows: list[RowStats]
    horizon: int = 1
    forward_passes: int = 0
    decode_steps: int = 0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    draft_time_s: float = 0.0
    draft_blocks: int = 0
    reached: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(r.new_tokens for r in self.rows)

    @property
    def tau(self) -> float:
        """Tokens per forward pass, per row (bonus token counted; plain decoding gives 1.0)."""
        passes = sum(r.forward_passes for r in self.rows)
        return self.new_tokens / passes if passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(r.drafted for r in self.rows)
        return sum(r.accepted for r in self.rows) / drafted if drafted else 0.0

    @property
    def lookup_share(self) -> float:
        """The share of accepted draft tokens that only a lookup chain proposed (0.0 when none was accepted)."""
        accepted = sum(r.accepted for r in self.rows)
        return sum(r.lookup_accepted for r in self.rows) / accepted if accepted else 0.0

    @property
    def per_position_acceptance(self) -> list[float | None]:
        """alpha_i = P(draft token i accepted | tokens before it accepted); None where position i was never
        reached (nothing drafted there, e.g. in ``ar`` mode)."""
        return acceptance_by_position(self.accepted_at, self.reached)

    @property
    def accepted_length_histogram(self) -> list[int]:
        """How many verification steps accepted 0, 1, ..., H-1 drafted tokens (more with lookup chains)."""
        longest = max((n for row in self.rows for n in row.accepted_lengths), default=0)
        hist = [0] * max(self.horizon, longest + 1)
        for row in self.rows:
            for n in row.accepted_lengths:
                hist[n] += 1
        return hist

    @property
    def total_time_s(self) -> float:
        return self.prefill_time_s + self.decode_time_s

    @property
    def tokens_per_s(self) -> float:
        """End-to-end new tokens per second (prefill included)."""
        return self.new_tokens / self.total_time_s if self.total_time_s else 0.0


def acceptance_by_position(accepted_at: list[int], reached: list[int]) -> list[float | None]:
    """alpha_i = accepted_at[i] / reached[i]; None where position i was never reached."""
    return [a / n if n else None for a, n in zip(accepted_at, reached, strict=True)]
