"""Lookup drafts: the n-gram index proposes what followed the text's suffix before, chains graft onto draft trees,
and decoding with them stays lossless."""

import pytest
import torch
from test_generate import EOS, build, ragged_prompts
from tiny_models import TINY_VOCAB

from tjdnet.decoding.lookup import NgramIndex, graft_chains
from tjdnet.decoding.tree import DraftTree


def brute_force_proposal(tokens: list[int], length: int) -> list[int]:
    """The continuation of the latest earlier occurrence of the longest suffix of 4, 3 or 2 tokens."""
    for n in (4, 3, 2):
        if len(tokens) <= n:
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + length]
    return []


def test_index_proposes_what_followed_the_longest_suffix_last_time():
    index = NgramIndex([5, 6, 7, 8, 5, 6, 9, 1, 2, 5, 6])
    assert index.propose(3) == [9, 1, 2]  # (5, 6) last occurred before 9, not before 7
    index.extend([9])
    assert index.propose(2) == [1, 2]  # (5, 6, 9) beats (6, 9), both before 1
    index.extend([3])
    assert index.propose(4) == []  # (9, 3) never occurred: single tokens do not count
    assert NgramIndex([4, 4]).propose(3) == []  # the suffix itself is not an earlier occurrence
    assert NgramIndex([4, 4, 4]).propose(3) == [4]  # (4, 4) at 0 was followed by the last 4
    assert NgramIndex([1, 2, 1, 2]).propose(0) == []


def test_growing_index_agrees_with_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (300,), generator=g).tolist()  # a small alphabet: many repeats
    index = NgramIndex(tokens[:5])
    for end in range(5, len(tokens)):
        assert index.propose(6) == brute_force_proposal(tokens[:end], 6), end
        index.extend(tokens[end : end + 1])


def hand_tree() -> DraftTree:
    """Root -> 10 (node 1) -> 11 (node 2); root -> 20 (node 3); two rows alike."""
    row = ([10, 11, 20], [0, 1, 0], [1, 2, 1])
    tokens, parents, depths = (torch.tensor([r, r]) for r in row)
    return DraftTree(tokens, parents, depths, torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 2)))


def test_chains_follow_the_tree_then_grow_below_it():
    tree = graft_chains(hand_tree(), [[10, 11, 12, 13], [20, 21]])
    assert tree.tokens[:, :3].tolist() == [[10, 11, 20]] * 2  # the head's nodes first, unchanged
    assert tree.tokens[0, 3:].tolist() == [12, 13]
    assert tree.parents[0, 3:].tolist() == [2, 4]
    assert tree.depths[0, 3:].tolist() == [3, 4]
    # the second row adds one node below 20 and repeats it: a twin that acceptance never takes
    assert tree.tokens[1, 3:].tolist() == [21, 21]
    assert tree.parents[1, 3:].tolist() == [3, 3]
    assert tree.depths[1, 3:].tolist() == [2, 2]
    assert torch.isinf(tree.log_q[:, 3:]).all() and torch.isfinite(tree.log_q[:, :3]).all()
    assert graft_chains(hand_tree(), [[10, 11], []]).size == 3  # nothing new: the same tree


def test_a_chain_that_leaves_the_tree_at_the_root_starts_a_new_branch():
    tree = graft_chains(hand_tree(), [[30, 31], [10, 40]])
    assert tree.parents[0, 3:].tolist() == [0, 4] and tree.tokens[0, 3:].tolist() == [30, 31]
    assert tree.parents[1, 3:].tolist() == [1, 1] and tree.tokens[1, 3:].tolist() == [40, 40]
    ancestors = tree.ancestors()
    assert ancestors[0, 5].nonzero().squeeze(1).tolist() == [0, 4, 5]  # root, 30, 31


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("head,window", [("eagle", 0), ("eagle", 3), ("mps", 0), ("medusa", 0)])
@pytest.mark.parametrize("batch", [1, 4])
def test_lookup_trees_are_lossless(kind, head, window, batch):
    model = build(kind, head, 4, perturb=0.1, context_window=window)
    ids, mask = ragged_prompts(batch, seed=2)
    kwargs = dict(max_new_tokens=40, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs)
    for extra in (dict(tree_lookup=8), dict(tree_lookup=5, tree_size="auto"), dict(tree_lookup=1)):
        looked = model.generate(ids, mask, gen_mode="speculative", tree_nodes=6, **extra, **kwargs)
        assert torch.equal(looked.sequences, ar.sequences), extra


def test_lookup_takes_long_runs_where_the_text_repeats():
    model = build("llama", "eagle", 4, perturb=0.1)  # its greedy continuations fall into loops
    ids, mask = ragged_prompts(4, seed=2)
    kwargs = dict(gen_mode="speculative", tree_nodes=6, max_new_tokens=40, eos_token_id=EOS)
    plain = model.generate(ids, mask, **kwargs)
    looked = model.generate(ids, mask, tree_lookup=8, **kwargs)
    assert torch.equal(looked.sequences, plain.sequences)
    assert looked.stats.tau > plain.stats.tau + 0.3
    assert sum(r.lookup_accepted for r in looked.stats.rows) > 0
    assert sum(r.lookup_accepted for r in plain.stats.rows) == 0 and plain.stats.lookup_share == 0.0
    assert 0.0 < looked.stats.lookup_share < 1.0
    histogram = looked.stats.accepted_length_histogram
    assert len(histogram) > 4 and sum(histogram[4:]) > 0  # runs longer than the head's horizon
    assert sum(histogram) == sum(len(r.accepted_lengths) for r in looked.stats.rows)


def test_lookup_chains_stop_at_the_token_budget():
    model = build("llama", "eagle", 4, perturb=0.1)
    ids, mask = ragged_prompts(4, seed=2)
    for budget in (1, 2, 7, 23):
        ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=budget)
        looked = model.generate(ids, mask, gen_mode="speculative", tree_nodes=3, tree_lookup=16, max_new_tokens=budget)
        assert torch.equal(looked.sequences, ar.sequences), budget


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gen_mode="speculative", tree_nodes=4, tree_lookup=-1), "tree_lookup=-1 is not allowed"),
        (dict(gen_mode="speculative", tree_nodes=4, tree_lookup=2.5), "tree_lookup=2.5 is not allowed"),
        (dict(gen_mode="speculative", tree_lookup=8), "tree_lookup=8 grafts onto a draft tree"),
    ],
)
def test_bad_lookup_arguments(kwargs, match):
    model = build("llama")
    with pytest.raises(ValueError, match=match):
        model.generate(torch.randint(3, TINY_VOCAB, (1, 4)), max_new_tokens=4, **kwargs)
