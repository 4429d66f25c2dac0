"""How many drafted nodes to verify in a step: the tree size that maximises expected tokens per second.

A wider verifying pass costs more (little while a pass is memory-bound, a lot once it is compute-bound: on a
laptop CPU feeding 17 tokens to SmolLM2-135M costs ~1.4 passes of one token, 33 tokens ~2.5), and each extra
node adds only the probability that the verifier walks through it. With the nodes of a tree ordered best first
(:func:`~tjdnet.decoding.tree.build_draft_tree`; every prefix of that order is itself a tree), keeping the first
n nodes of row a is expected to accept

    E_a(n) = sum_{i <= n} q_a(node i)

drafted tokens, where q_a(node) is the joint head's probability of the node's whole prefix: greedy verification
passes through a node exactly when the verifier's own choices spell it, and a calibrated head gives that event
its probability (EAGLE-2 chooses its dynamic trees on the same estimate). A step emits E(n) + 1 tokens per row
(the root is the verifier's own token), so the step keeps

    n* = argmax_n  sum_a (1 + E_a(n)) / (cost(n + 1) + draft_cost)

with cost(t) the measured time of a verifying pass of t tokens per row and draft_cost the time spent drafting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tjdnet.decoding.tree import DraftTree

TREE_SIZES = ("fixed", "auto")
MEASURED_WIDTHS = (1, 2, 3, 5, 9, 13, 17, 25, 33, 49, 65)


@dataclass(frozen=True)
class PassCost:
    """Seconds of a verifying pass as a function of the tokens fed per row, linear between measured widths.

    Attributes:
        widths: increasing token counts, the first 1.
        seconds: the pass time at each width.
    """

    widths: tuple[int, ...]
    seconds: tuple[float, ...]

    def at(self, tokens: torch.Tensor) -> torch.Tensor:
        """(...) float64 seconds of passes feeding ``tokens`` (...) tokens per row (held flat past the widest)."""
        widths = torch.tensor(self.widths, dtype=torch.float64)
        seconds = torch.tensor(self.seconds, dtype=torch.float64)
        t = tokens.double().clamp(widths[0], widths[-1])
        upper = torch.searchsorted(widths, t).clamp(1, len(widths) - 1) if len(widths) > 1 else None
        if upper is None:
            return seconds[0].expand_as(t).clone()
        lower = upper - 1
        span = widths[upper] - widths[lower]
        weight = (t - widths[lower]) / span
        return seconds[lower] + weight * (seconds[upper] - seconds[lower])


def measure_pass_cost(run_pass: Callable[[int], None], max_tokens: int, repeats: int = 2) -> PassCost:
    """Time ``run_pass(t)`` (a verifying pass of t tokens per row that leaves the model's state as it found it)
    at the widths of :data:`MEASURED_WIDTHS` up to ``max_tokens`` (and at ``max_tokens``); the fastest of
    ``repeats`` runs, after one warm-up of the widest."""
    widths = sorted({w for w in MEASURED_WIDTHS if w < max_tokens} | {max_tokens})
    run_pass(widths[-1])
    seconds = []
    for width in widths:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run_pass(width)
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
    # A wider pass never costs less: timing noise must not make a bigger tree look free.
    seconds = [max(seconds[: i + 1]) for i in range(len(seconds))]
    return PassCost(tuple(widths), tuple(seconds))


def best_tree_size(node_log_q: torch.Tensor, cost: PassCost, draft_seconds: float = 0.0) -> int:
    """n* in 1..N (see the module docstring) for node scores ``node_log_q`` (A, N): log q of each node's prefix,
    nodes ordered best first in every row."""
    n_nodes = node_log_q.shape[1]
    expected = node_log_q.double().exp().sum(0).cumsum(0)  # (N,) sum over rows of E_a(n), n = 1..N
    tokens = node_log_q.shape[0] + expected
    n = torch.arange(1, n_nodes + 1)
    rate = tokens / (cost.at(n + 1) + draft_seconds)
    return int(rate.argmax()) + 1


def check_tree_size(tree_size: str) -> None:
    if tree_size not in TREE_SIZES:
        raise ValueError(f"tree_size={tree_size!r} is not allowed; use one of {', '.join(TREE_SIZES)}")


def cost_key(batch: int, max_tokens: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """What a measured :class:`PassCost` depends on besides the model."""
    return (batch, max_tokens, str(dtype), str(device), torch.get_num_threads())


class TreeSizer:
    """Cuts each step's draft tree to :func:`best_tree_size` nodes under a measured pass cost; the drafting time
    it weighs against is a running mean of the steps' own."""

    def __init__(self, cost: PassCost, smoothing: float = 0.8) -> None:
        self.cost, self.smoothing = cost, smoothing
        self.draft_seconds: float | None = None

    def choose(self, tree: DraftTree, draft_seconds: float) -> DraftTree:
        """The first n* nodes of ``tree`` (built to its largest size, nodes best first, ``log_q`` set), drafting it
        having taken ``draft_seconds``."""
        if self.draft_seconds is None:
            self.draft_seconds = draft_seconds
        self.draft_seconds = self.smoothing * self.draft_seconds + (1 - self.smoothing) * draft_seconds
        return tree.first(best_tree_size(tree.log_q, self.cost, self.draft_seconds))
