"""Draft trees: many candidate continuations of a block, verified together in one backbone pass.

A chain drafts one continuation, so the first wrong token ends the step. A tree keeps the ``nodes`` most
probable continuation prefixes under the head's exact joint q(y_2.. | y_1, h) (the dynamic trees of EAGLE-2,
scored by the joint itself instead of a draft model): a beam of ``topk`` prefixes is expanded depth by depth,
each depth offers its ``nodes`` best children, and the ``nodes`` best of all offered prefixes form the tree.
A prefix scores at most as high as its parent, so the kept set is closed under taking parents.

The verifier reads the root (the token it chose itself) and every node in one pass; each node attends to the
cached context and to its own ancestors only, at position ``depth`` after the root. Greedy verification then
follows the verifier's argmax from the root down the tree for as long as some child carries it: the accepted
path is exactly what plain greedy decoding would produce.

Node indices: 0 is the root, 1..N the drafted nodes, each after its parent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tjdnet.checks import check_positive
from tjdnet.heads.block import BlockDistribution

DEFAULT_TREE_NODES = 8
DEFAULT_TREE_TOPK = 4
DEFAULT_TREE_TEMPERATURE = 1.2  # chosen on real prompts: benchmarks/README.md, "A tree temperature"


@dataclass
class DraftTree:
    """N drafted nodes per row below a root token.

    Attributes:
        tokens: (A, N) the nodes' tokens.
        parents: (A, N) each node's parent, 0 (the root) or a node index 1..N smaller than its own.
        depths: (A, N) each node's depth below the root, 1..k.
        log_q: (A, N) the head's log-probability of each node's prefix (below the root; under the softened
            conditionals of a tree temperature), when known.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    log_q: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    def first(self, n: int) -> DraftTree:
        """The tree of the first n nodes: a tree again when nodes come best first (as built here)."""
        log_q = None if self.log_q is None else self.log_q[:, :n]
        return DraftTree(self.tokens[:, :n], self.parents[:, :n], self.depths[:, :n], log_q)

    def ancestors(self) -> torch.Tensor:
        """(A, N + 1, N + 1) bool: [a, i, j] is True when node j is node i or one of its ancestors."""
        rows, n = self.tokens.shape[0], self.size + 1
        parent = torch.zeros(rows, n, n, device=self.tokens.device)
        parent[:, 1:].scatter_(-1, self.parents[..., None], 1.0)  # root has no parent
        reach = torch.eye(n, device=self.tokens.device).expand(rows, n, n)
        result = reach.bool()
        for _ in range(int(self.depths.max()) if self.size else 0):
            reach = reach @ parent
            result = result | reach.bool()
        return result


def check_tree_temperature(temperature: object) -> None:
    check_positive("tree_temperature", temperature)


def build_draft_tree(
    block: BlockDistribution,
    root: torch.Tensor,
    depth: int,
    nodes: int,
    topk: int,
    temperature: float = 1.0,
) -> DraftTree:
    """The ``nodes`` most probable prefixes of y_2..y_{depth+1} given y_1 = ``root`` under ``block``.

    Args:
        block: the head's distribution of at least ``depth + 1`` tokens (position 0 is the root's).
        root: (A,) the block's first token.
        depth: longest drafted continuation, >= 1.
        nodes: N, the drafted nodes to keep, >= 1.
        topk: prefixes expanded per depth (beam width), >= 1.
        temperature: T > 0; prefixes are scored under the conditionals softened to q^(1/T) (renormalised): T > 1
            trusts a head that is overconfident on the prompts at hand less, keeping more alternatives near the
            root. Only which nodes are drafted changes; verification is the same.

    Drafting stops early, with the same tree, once no deeper prefix can rank among the N best: a child scores at
    most its parent, so when the N-th best prefix offered so far scores at least the best of the beam, every
    deeper one would rank after it.
    """
    message = block.observe(block.start(), 0, root)[:, None]  # (A, 1, R)
    score = torch.zeros_like(message[..., 0])  # (A, F) log q of each frontier prefix
    frontier = torch.full_like(score, -1, dtype=torch.long)  # (A, F) candidate index of each prefix; -1 = root
    tokens, parents, scores, depths = [], [], [], []
    offered = 0
    for d in range(1, depth + 1):
        log_q = block.conditional(message, d)
        if temperature != 1.0:
            log_q = torch.log_softmax(log_q / temperature, dim=-1)
        log_q = log_q.clamp_max(0)  # (A, F, V); <= 0 keeps children below parents
        vocab = log_q.shape[-1]
        best, flat = (score[..., None] + log_q).flatten(1).topk(min(nodes, log_q[0].numel()), dim=1)  # (A, C)
        parent_slot = flat // vocab
        tokens.append(block.token_ids(flat % vocab))
        parents.append(frontier.gather(1, parent_slot))
        scores.append(best)
        depths.append(torch.full_like(flat, d))
        offered += flat.shape[1]
        if d == depth:
            break
        width = min(topk, flat.shape[1])  # the beam: the topk best offered prefixes of this depth
        if offered >= nodes and bool((_nth_best(scores, nodes) >= best[:, 0]).all()):
            break
        beam_tokens, beam_slot = tokens[-1][:, :width], parent_slot[:, :width]  # vocabulary ids
        parent_message = message.gather(1, beam_slot[..., None].expand(-1, -1, message.shape[-1]))
        message = block.observe(parent_message, d, beam_tokens)
        score = best[:, :width]
        frontier = offered - flat.shape[1] + torch.arange(width, device=flat.device).expand_as(beam_tokens)
    return _keep_best(torch.cat(tokens, 1), torch.cat(parents, 1), torch.cat(scores, 1), torch.cat(depths, 1), nodes)


def _nth_best(scores: list[torch.Tensor], n: int) -> torch.Tensor:
    """(A,) the n-th highest of the scores offered so far (A, C_d) per depth d."""
    return torch.cat(scores, 1).topk(n, dim=1).values[:, -1]


def _keep_best(
    tokens: torch.Tensor, parents: torch.Tensor, scores: torch.Tensor, depths: torch.Tensor, nodes: int
) -> DraftTree:
    """Keep the ``nodes`` best-scoring offered prefixes (A, C), ordered best first, parents renumbered 0..N."""
    # Offered prefixes are listed depth by depth, so a stable sort keeps a parent before a child of equal score.
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :nodes]  # (A, N)
    node_of = torch.zeros_like(parents)  # offered index -> node index (0: not kept)
    node_of.scatter_(1, order, torch.arange(1, order.shape[1] + 1, device=order.device).expand_as(order))
    kept_parents = parents.gather(1, order)
    kept_parents = torch.where(kept_parents < 0, 0, node_of.gather(1, kept_parents.clamp_min(0)))
    return DraftTree(tokens.gather(1, order), kept_parents, depths.gather(1, order), scores.gather(1, order))


def tree_attention_mask(slot_mask: torch.Tensor, tree: DraftTree, dtype: torch.dtype) -> torch.Tensor:
    """(A, 1, N + 1, L + N + 1) additive attention mask for feeding the root and the tree after the cache.

    Args:
        slot_mask: (A, L) 1 where a cache slot belongs to the row.
    """
    n = tree.size + 1
    context = slot_mask.bool()[:, None, :].expand(-1, n, -1)
    allowed = torch.cat([context, tree.ancestors()], dim=-1)[:, None]
    zero = torch.zeros((), dtype=dtype, device=slot_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
