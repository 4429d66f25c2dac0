"""Tree drafting: the tree is the joint's most probable prefixes, its verification is lossless, and the KV
cache keeps exactly the accepted path."""

import itertools
import math

import pytest
import torch
from test_generate import EOS, build, fit_on_own_continuations, ragged_prompts
from tiny_models import TINY_VOCAB
from transformers import DynamicCache

from tjdnet.decoding import tree as tree_module
from tjdnet.decoding.acceptance import greedy_accept_tree
from tjdnet.decoding.generate import _Rows
from tjdnet.decoding.tree import DraftTree, build_draft_tree
from tjdnet.tensorops.logspace import IGNORE_INDEX


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("head", ["multihead", "cp", "mps", "medusa", "eagle"])
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_tree_speculative_equals_ar(kind, head, batch):
    model = build(kind, head, 4, perturb=0.1)
    ids, mask = ragged_prompts(batch, seed=2)
    kwargs = dict(max_new_tokens=24, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs)
    tree = model.generate(ids, mask, gen_mode="speculative", tree_nodes=6, tree_topk=3, **kwargs)
    assert tree.new_tokens == ar.new_tokens
    assert torch.equal(tree.sequences, ar.sequences)
    assert tree.stats.tau >= 1.0
    for temperature in (0.5, 2.0):  # only which nodes are drafted changes
        tempered = model.generate(
            ids, mask, gen_mode="speculative", tree_nodes=6, tree_temperature=temperature, **kwargs
        )
        assert tempered.new_tokens == ar.new_tokens


@pytest.mark.parametrize("head", ["cp", "mps"])
def test_token_conditioned_tree_speculative_equals_ar(head):
    model = build("llama", head, 4, perturb=0.1, token_conditioned=True)
    ids, mask = ragged_prompts(4, seed=3)
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=24, eos_token_id=EOS)
    tree = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=24, eos_token_id=EOS, tree_nodes=5)
    assert tree.new_tokens == ar.new_tokens


def test_trained_head_accepts_more_per_pass_with_a_tree():
    model = build("llama", "mps", 4, rank=2, perturb=0.0)
    ids, mask = ragged_prompts(4, seed=5)
    fit_on_own_continuations(model, ids, mask, 32, steps=25)  # partly trained: top choice often wrong, top few right
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=32)
    chain = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=32)
    tree = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=32, tree_nodes=12, tree_topk=4)
    assert tree.new_tokens == chain.new_tokens == ar.new_tokens
    assert tree.stats.tau > chain.stats.tau > 1.0
    assert tree.stats.forward_passes < chain.stats.forward_passes
    assert tree.stats.rows[0].drafted == 12 * len(tree.stats.rows[0].accepted_lengths)


def brute_force_prefix_scores(block, root: int, depth: int) -> dict[tuple[int, ...], float]:
    """log q(prefix | y_1 = root) of every continuation prefix of length 1..depth, by marginalising."""
    horizon = block.horizon

    def log_p(tokens: tuple[int, ...]) -> float:
        y = torch.full((1, horizon), IGNORE_INDEX)
        y[0, : len(tokens)] = torch.tensor(tokens)
        return float(block.log_prob(y)[0])

    base = log_p((root,))
    scores = {}
    for length in range(1, depth + 1):
        for prefix in itertools.product(range(TINY_VOCAB), repeat=length):
            scores[prefix] = log_p((root, *prefix)) - base
    return scores


def paths(tree: DraftTree, row: int = 0) -> list[tuple[int, ...]]:
    """Each node's token path from the root, in node order."""
    out: list[tuple[int, ...]] = [()]
    for token, parent in zip(tree.tokens[row].tolist(), tree.parents[row].tolist(), strict=True):
        out.append((*out[parent], token))
    return out[1:]


@pytest.mark.parametrize("head", ["multihead", "cp", "mps", "medusa", "eagle"])
def test_draft_tree_holds_the_most_probable_prefixes(head):
    model = build("llama", head, 3, rank=3, perturb=0.5)
    h = torch.randn(1, model.head.config.hidden_size)
    with torch.no_grad():
        block = model.head(h)
        root = torch.tensor([7])
        tree = build_draft_tree(block, root, depth=2, nodes=10, topk=10)  # beam as wide as the tree: exact
        scores = brute_force_prefix_scores(block, 7, 2)
    best = sorted(scores, key=scores.get, reverse=True)[:10]
    assert paths(tree) == best  # best first, parents before children
    assert tree.depths[0].tolist() == [len(p) for p in best]
    assert all(p < i + 1 for i, p in enumerate(tree.parents[0].tolist()))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_tempered_tree_holds_the_most_probable_prefixes_under_the_softened_conditionals(temperature):
    model = build("llama", "mps", 3, rank=3, perturb=0.5)
    h = torch.randn(1, model.head.config.hidden_size)
    with torch.no_grad():
        block = model.head(h)
        tree = build_draft_tree(block, torch.tensor([7]), depth=2, nodes=10, topk=10, temperature=temperature)
        scores = brute_force_prefix_scores(block, 7, 2)
    # q_T(y_2) q_T(y_3 | y_2), each conditional softened to q^(1/T) and renormalised
    firsts = torch.tensor([scores[(a,)] for a in range(TINY_VOCAB)])
    tempered_first = (firsts / temperature).log_softmax(0)
    tempered = {(a,): float(tempered_first[a]) for a in range(TINY_VOCAB)}
    for a in range(TINY_VOCAB):
        seconds = torch.tensor([scores[(a, b)] - scores[(a,)] for b in range(TINY_VOCAB)])
        for b, v in enumerate((seconds / temperature).log_softmax(0).tolist()):
            tempered[(a, b)] = tempered[(a,)] + v
    best = sorted(tempered, key=tempered.get, reverse=True)[:10]
    assert paths(tree) == best
    torch.testing.assert_close(tree.log_q[0], torch.tensor([tempered[p] for p in best]), atol=1e-4, rtol=0)


class CountingBlock:
    """A block that counts the drafter steps (``observe``) a tree costs."""

    def __init__(self, block) -> None:
        self.block, self.observed = block, 0

    def observe(self, message, k, tokens):
        self.observed += 1
        return self.block.observe(message, k, tokens)

    def __getattr__(self, name):
        return getattr(self.block, name)


@pytest.mark.parametrize(
    "head,temperature,stops",
    [("mps", 3.0, True), ("mps", 1.0, True), ("mps", 0.3, False), ("eagle", 1.0, False), ("eagle", 3.0, False)],
)  # flat conditionals leave deep prefixes no room sooner
def test_tree_drafting_stops_early_with_the_same_tree(monkeypatch, head, temperature, stops):
    model = build("llama", head, 5, rank=2, perturb=1.0)
    h = torch.randn(24, model.head.config.hidden_size)
    root = torch.randint(0, TINY_VOCAB, (24,))
    args = dict(depth=4, nodes=6, topk=3, temperature=temperature)

    def trees() -> tuple[list[DraftTree], list[int]]:
        blocks = [CountingBlock(model.head(h[i : i + 1], first=root[i : i + 1])) for i in range(len(h))]
        return [build_draft_tree(b, root[i : i + 1], **args) for i, b in enumerate(blocks)], [
            b.observed for b in blocks
        ]

    with torch.no_grad():
        early, steps = trees()
        monkeypatch.setattr(tree_module, "_nth_best", lambda scores, n: torch.full_like(scores[0][:, 0], -torch.inf))
        full, full_steps = trees()
    for a, b in zip(early, full, strict=True):
        assert paths(a) == paths(b) and torch.equal(a.log_q, b.log_q)
    assert set(full_steps) == {4}  # the root and depths 1-3
    assert (min(steps) < 4) == stops


def test_a_flat_head_drafts_one_depth_only():
    class Flat:
        """Every token equally likely at every position: the tree is the first ``nodes`` tokens at depth 1."""

        def start(self):
            return torch.zeros(1, 1)

        def observe(self, message, k, tokens):
            self.observed = getattr(self, "observed", 0) + 1
            return message.expand(*tokens.shape, 1) if tokens.dim() > 1 else message

        def conditional(self, message, k):
            return torch.full((*message.shape[:-1], 10), -math.log(10))

        def token_ids(self, index):
            return index

    block = Flat()
    tree = build_draft_tree(block, torch.tensor([3]), depth=4, nodes=6, topk=2)
    assert tree.depths.tolist() == [[1] * 6] and block.observed == 1  # the root only: depth 2 could add nothing


def test_narrow_beam_tree_is_closed_under_parents_with_distinct_children():
    model = build("llama", "mps", 4, rank=2, perturb=1.0)
    h = torch.randn(3, 32)
    with torch.no_grad():
        tree = build_draft_tree(model.head(h), torch.tensor([4, 5, 6]), depth=3, nodes=9, topk=2)
    assert tree.tokens.shape == (3, 9)
    for row in range(3):
        parents = tree.parents[row].tolist()
        depths = [0, *tree.depths[row].tolist()]
        for i, p in enumerate(parents, start=1):
            assert p < i and depths[i] == depths[p] + 1
        siblings = [(p, t) for p, t in zip(parents, tree.tokens[row].tolist(), strict=True)]
        assert len(set(siblings)) == len(siblings)


def test_ancestors_of_a_hand_built_tree():
    # root 0 -> 1 -> 3, root 0 -> 2 -> 4 -> 5
    tree = DraftTree(
        tokens=torch.tensor([[10, 11, 12, 13, 14]]),
        parents=torch.tensor([[0, 0, 1, 2, 4]]),
        depths=torch.tensor([[1, 1, 2, 2, 3]]),
    )
    expected = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 2, 4}, 5: {0, 2, 4, 5}}
    got = tree.ancestors()[0]
    for i, ancestors in expected.items():
        assert set(got[i].nonzero().flatten().tolist()) == ancestors


def test_tree_acceptance_follows_the_verifier_argmax():
    tree_tokens = torch.tensor([[10, 11, 12, 13, 14]])
    parents = torch.tensor([[0, 0, 1, 2, 4]])
    log_p = torch.full((1, 6, 20), -10.0)
    for node, choice in enumerate([11, 3, 13, 3, 14, 9]):  # root -> 2 (11) -> 4 (13) -> 5 (14), then 9
        log_p[0, node, choice] = 0.0
    path, n, nxt = greedy_accept_tree(tree_tokens, parents, log_p, depth=3)
    assert path[0].tolist() == [0, 2, 4, 5] and n.tolist() == [3] and nxt.tolist() == [9]
    log_p[0, 4, 13], log_p[0, 4, 5] = -10.0, 0.0  # node 4 now wants 5: no child carries it
    path, n, nxt = greedy_accept_tree(tree_tokens, parents, log_p, depth=3)
    assert path[0, :3].tolist() == [0, 2, 4] and n.tolist() == [2] and nxt.tolist() == [5]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "path,kept",
    [
        ([[0, 2, 4, 5], [0, 1, 1, 1]], [4, 2]),  # row 0 keeps root, 2, 4, 5; row 1 keeps root, 1
        ([[0, 1, 3, 3], [0, 1, 2, 2]], [3, 3]),  # slots move from depth 2 on (row 0's node 3)
        ([[0, 1, 1, 1], [0, 1, 2, 2]], [2, 3]),  # every kept node already sits at its depth: nothing moves
    ],
)
@pytest.mark.parametrize("batch", [2, 1])  # one row moves its slots another way (an index_select)
def test_kv_cache_after_a_tree_step_holds_only_the_accepted_path(kind, path, kept, batch):
    model = build(kind)
    prompt = torch.randint(3, TINY_VOCAB, (batch, 6))
    tree = DraftTree(
        tokens=torch.randint(3, TINY_VOCAB, (batch, 5)),
        parents=torch.tensor([[0, 0, 1, 2, 4], [0, 1, 1, 3, 3]])[:batch],
        depths=torch.tensor([[1, 1, 2, 2, 3], [1, 2, 2, 3, 3]])[:batch],
    )
    root = torch.randint(3, TINY_VOCAB, (batch, 1))
    path, kept = torch.tensor(path)[:batch], torch.tensor(kept)[:batch]
    nxt = torch.randint(3, TINY_VOCAB, (batch, 1))
    with torch.no_grad():
        rows = _Rows([DynamicCache(config=model.lm.config)], torch.ones_like(prompt), torch.full((batch,), 6))
        model.hidden_states(prompt, cache=rows.caches[0])
        mask, positions = rows.tree_inputs(tree, torch.float32)
        model.hidden_states(torch.cat([root, tree.tokens], 1), mask, positions, rows.caches[0])
        rows.keep_path(6, path, kept)
        assert rows.next_pos.tolist() == (6 + kept).tolist()
        mask, positions = rows.feed_inputs(1)
        got = model.hidden_states(nxt, mask, positions, rows.caches[0])[:, -1]
        for b in range(batch):
            accepted = [tree.tokens[b, i - 1] for i in path[b, 1 : kept[b]].tolist()]
            sequence = torch.cat([prompt[b], root[b], torch.stack(accepted) if accepted else root[b, :0], nxt[b]])
            alone = model.hidden_states(sequence[None])[:, -1]
            torch.testing.assert_close(got[b], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gen_mode="speculative", tree_nodes=-1), "tree_nodes=-1"),
        (dict(gen_mode="speculative", tree_nodes=4, tree_topk=0), "tree_topk=0"),
        (dict(gen_mode="speculative", tree_nodes=4, tree_temperature=0.0), "tree_temperature=0.0 is not allowed"),
        (dict(gen_mode="speculative", tree_nodes=4, tree_temperature=float("nan")), "tree_temperature=nan"),
        (dict(gen_mode="speculative", tree_nodes=4, tree_temperature="hot"), "use a number > 0"),
        (dict(gen_mode="ar", tree_nodes=4), "gen_mode='speculative' only"),
        (dict(gen_mode="speculative", tree_nodes=4, do_sample=True), "verifies greedily"),
    ],
)
def test_bad_tree_arguments(kwargs, match):
    model = build("llama")
    with pytest.raises(ValueError, match=match):
        model.generate(torch.randint(3, TINY_VOCAB, (1, 4)), max_new_tokens=4, **kwargs)
