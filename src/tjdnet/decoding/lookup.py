"""Lookup drafts: the tokens that followed the text's last few tokens where they occurred before.

Text often repeats itself: an answer restates the question's numbers and names, a list repeats its pattern, a
small model at greedy decoding loops over a sentence. Prompt lookup decoding (Saxena 2023; REST and LLMA are
relatives) drafts the continuation of the latest earlier occurrence of the last n tokens (prompt and generated
text alike) at no model cost. Here that chain is grafted onto the head's draft tree, so one verifying pass checks
both, and a step takes whichever the verifier agrees with further: the head's guesses where the text is new,
long copied runs where it repeats. Verification is unchanged, so the output is too.
"""

from __future__ import annotations

import torch

from tjdnet.checks import check_int
from tjdnet.decoding.tree import DraftTree

DEFAULT_TREE_LOOKUP = 8  # the named tree modes' chain length: benchmarks/README.md, "Lookup drafts"
NGRAM_SIZES = (4, 3, 2)  # the longest suffix that occurred before wins; a single token's match is a weak guess


def check_tree_lookup(tokens: object) -> None:
    check_int("tree_lookup", tokens, 0)


class NgramIndex:
    """Where each n-gram (n in ``NGRAM_SIZES``) of one row's text last occurred, for O(1) lookups as it grows."""

    def __init__(self, tokens: list[int] | None = None) -> None:
        self.tokens: list[int] = []
        self._follower: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest occurrence
        self.extend(tokens or [])

    def extend(self, tokens: list[int]) -> None:
        """Append ``tokens`` to the text."""
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before ``token`` now have a follower
            for n in NGRAM_SIZES:
                if end >= n:
                    self._follower[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def propose(self, length: int) -> list[int]:
        """Up to ``length`` tokens that followed the latest earlier occurrence of the text's longest suffix found
        (sizes ``NGRAM_SIZES``); [] when none occurred before."""
        if length <= 0:
            return []
        end = len(self.tokens)
        for n in NGRAM_SIZES:
            start = self._follower.get(tuple(self.tokens[end - n :])) if end > n else None
            if start is not None:
                return self.tokens[start : start + length]
        return []


def graft_chains(tree: DraftTree, chains: list[list[int]]) -> DraftTree:
    """``tree`` with each row's chain (tokens after the root) merged in: the chain follows the tree's nodes while
    they carry its tokens and continues with new nodes below the last one. New nodes come after the tree's (its
    first ``tree.size`` nodes are unchanged), with ``log_q`` -inf (the head did not score them); rows with fewer
    new nodes repeat their last node, a twin that verification never takes (it takes the first matching child).

    Args:
        tree: (A, N) nodes, parents before children.
        chains: A lists of tokens.
    Returns:
        (A, N + M) tree, M the most new nodes of any row.
    """
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    for row, chain in enumerate(chains):
        child = {(p, t): i + 1 for i, (p, t) in enumerate(zip(parents[row], tokens[row], strict=True))}
        node, depth = 0, 0
        for token in chain:
            depth += 1
            if (node, token) not in child:
                tokens[row].append(token)
                parents[row].append(node)
                depths[row].append(depth)
                child[(node, token)] = len(tokens[row])
            node = child[(node, token)]
    width = max(len(t) for t in tokens)
    if width == tree.size:
        return tree
    for row in range(len(tokens)):
        for column in (tokens, parents, depths):
            column[row] += [column[row][-1]] * (width - len(column[row]))
    log_q = None
    if tree.log_q is not None:
        log_q = torch.cat([tree.log_q, tree.log_q.new_full((len(tokens), width - tree.size), float("-inf"))], dim=1)
    return DraftTree(
        tree.tokens.new_tensor(tokens), tree.parents.new_tensor(parents), tree.depths.new_tensor(depths), log_q
    )
