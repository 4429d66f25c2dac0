"""How many drafted nodes to verify in a step: the tree size that maximises expected tokens per second.

A wider verifying pass costs more (little while a pass is memory-bound, a lot once it is compute-bound: on a
laptop CPU feeding 17 tokens to SmolLM2-135M costs ~1.4 passes of one token, 33 tokens ~2.5), and each extra
node adds only the probability that the verifier walks through it. With the nodes of a tree ordered best first
(:func:`~tjdnet.decoding.tree.build_draft_tree`; every prefix of that order is itself a tree), keeping the first
n nodes of row a is expected to accept

    E_a(n) = s * sum_{i <= n} q_a(node i)

drafted tokens, where q_a(node) is the joint head's probability of the node's whole prefix: greedy verification
passes through a node exactly when the verifier's own choices spell it, and a calibrated head (s = 1) gives that
event its probability (EAGLE-2 chooses its dynamic trees on the same estimate). A step emits E_a(n) + 1 tokens per
row (the root is the verifier's own token), so the step keeps

    n* = argmax_n  sum_a (1 + E_a(n)) / (cost(n + 1) + draft_cost)

with cost(t) the time of a verifying pass of t tokens per row and draft_cost the time spent drafting. cost is
measured before the first step and then follows the passes actually run; s is the running ratio of accepted to
expected tokens, which corrects a head that is over- or under-confident.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from tjdnet.checks import check_choice
from tjdnet.decoding.tree import DraftTree

TREE_SIZES = ("fixed", "auto")
MEASURED_WIDTHS = (1, 2, 3, 5, 9, 13, 17, 25, 33, 49, 65)


class PassCost:
    """Seconds of a verifying pass feeding 1..``len(seconds)`` tokens per row.

    Args:
        seconds: the pass time at each width 1, 2, ...
    """

    def __init__(self, seconds: list[float]) -> None:
        if not seconds:
            raise ValueError("a pass cost needs the time of at least one width")
        self.seconds = torch.tensor(seconds, dtype=torch.float64)

    @property
    def max_tokens(self) -> int:
        return len(self.seconds)

    @classmethod
    def interpolated(cls, widths: list[int], seconds: list[float]) -> PassCost:
        """The cost at every width 1..widths[-1], linear between the measured ``widths`` (increasing, from 1)."""
        if widths[0] != 1 or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
            raise ValueError(f"widths {widths} must increase from 1")
        if len(widths) == 1:
            return cls(list(seconds))
        every = torch.arange(1, widths[-1] + 1, dtype=torch.float64)
        known, values = torch.tensor(widths, dtype=torch.float64), torch.tensor(seconds, dtype=torch.float64)
        upper = torch.searchsorted(known, every).clamp(1, len(widths) - 1)
        lower = upper - 1
        weight = (every - known[lower]) / (known[upper] - known[lower])
        return cls((values[lower] + weight * (values[upper] - values[lower])).tolist())

    def at(self, tokens: torch.Tensor) -> torch.Tensor:
        """(...) float64 seconds of passes feeding ``tokens`` (...) tokens per row, 1..max_tokens, read off the
        non-decreasing fit of the timings (:func:`monotone_fit`): timing noise must not make a bigger tree look
        free, nor one slow timing make every narrower pass look as dear as it."""
        return monotone_fit(self.seconds)[tokens.long() - 1]

    def observe(self, tokens: int, seconds: float, smoothing: float = 0.9) -> None:
        """Move the cost of ``tokens``-wide passes towards a pass just timed (a running mean); passes wider than
        ``max_tokens`` (a tree with lookup chains grafted on) are not learned from."""
        index = tokens - 1
        if index >= self.max_tokens:
            return
        self.seconds[index] = smoothing * self.seconds[index] + (1 - smoothing) * seconds


def monotone_fit(values: torch.Tensor) -> torch.Tensor:
    """The non-decreasing sequence closest to ``values`` (n,) in squared error (pool adjacent violators): each run
    that decreases is replaced by its mean. Unlike a running maximum, one high outlier is averaged with its
    neighbours instead of lifting everything after it."""
    means: list[float] = []
    counts: list[int] = []
    for value in values.tolist():
        mean, count = value, 1
        while means and means[-1] > mean:
            previous, weight = means.pop(), counts.pop()
            mean, count = (previous * weight + mean * count) / (weight + count), weight + count
        means.append(mean)
        counts.append(count)
    return torch.tensor([m for m, c in zip(means, counts, strict=True) for _ in range(c)], dtype=values.dtype)


def measure_pass_cost(run_pass: Callable[[int], None], max_tokens: int, repeats: int = 2) -> PassCost:
    """Time ``run_pass(t)`` (a verifying pass of t tokens per row that leaves the model's state as it found it)
    at the widths of :data:`MEASURED_WIDTHS` up to ``max_tokens`` (and at ``max_tokens``); the fastest of
    ``repeats`` runs, after one warm-up of the widest; linear in between."""
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
    return PassCost.interpolated(widths, seconds)


def best_tree_size(
    node_log_q: torch.Tensor, cost: PassCost, draft_seconds: float = 0.0, calibration: float = 1.0
) -> int:
    """n* in 1..N (see the module docstring, s = ``calibration``) for node scores ``node_log_q`` (A, N): log q of
    each node's prefix, nodes ordered best first in every row; N + 1 <= ``cost.max_tokens``."""
    n_nodes = node_log_q.shape[1]
    expected = calibration * node_log_q.double().exp().sum(0).cumsum(0)  # (N,) sum over rows of E_a(n), n = 1..N
    n = torch.arange(1, n_nodes + 1)
    rate = (node_log_q.shape[0] + expected) / (cost.at(n + 1) + draft_seconds)
    return int(rate.argmax()) + 1


def check_tree_size(tree_size: str) -> None:
    check_choice("tree_size", tree_size, TREE_SIZES)


COST_KEY_FIELDS = ("batch", "max_tokens", "dtype", "device", "threads")


def cost_key(batch: int, max_tokens: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """What a measured :class:`PassCost` depends on besides the model (:data:`COST_KEY_FIELDS`)."""
    return (batch, max_tokens, str(dtype), str(device), torch.get_num_threads())


def describe_pass_costs(store: dict) -> list[dict]:
    """The pass costs a model holds (``model.pass_costs``) as JSON-ready records, milliseconds per width 1, 2, ..."""
    return [
        {**dict(zip(COST_KEY_FIELDS, key, strict=True)), "ms": [round(1000 * t, 2) for t in cost.seconds.tolist()]}
        for key, cost in store.items()
    ]


class TreeSizer:
    """Cuts each step's draft tree to :func:`best_tree_size` nodes and learns from the step: the pass cost of the
    width it ran, the drafting time and the ratio of accepted to expected tokens (running means).

    Args:
        cost: the measured pass cost (updated in place as passes are timed).
        smoothing: weight of the past in every running mean.
    """

    def __init__(self, cost: PassCost, smoothing: float = 0.9) -> None:
        self.cost, self.smoothing = cost, smoothing
        self.draft_seconds: float | None = None
        self.expected, self.accepted = 1.0, 1.0  # a calibrated head until steps say otherwise

    @property
    def calibration(self) -> float:
        return self.accepted / self.expected

    def choose(self, tree: DraftTree, draft_seconds: float) -> DraftTree:
        """The first n* nodes of ``tree`` (nodes best first, ``log_q`` set), drafting it having taken
        ``draft_seconds``."""
        self.draft_seconds = (
            draft_seconds if self.draft_seconds is None else self._mean(self.draft_seconds, draft_seconds)
        )
        return tree.first(best_tree_size(tree.log_q, self.cost, self.draft_seconds, self.calibration))

    def observe(self, tree: DraftTree, verify_seconds: float, n_accepted: torch.Tensor) -> None:
        """Learn from a verified step: ``tree`` (the nodes verified), the pass's time and the accepted counts (A,)."""
        self.cost.observe(tree.size + 1, verify_seconds, self.smoothing)
        self.expected = self._mean(self.expected, float(tree.log_q.double().exp().sum()))
        self.accepted = self._mean(self.accepted, float(n_accepted.sum()))

    def _mean(self, past: float, new: float) -> float:
        return self.smoothing * past + (1 - self.smoothing) * new
