"""Draft vocabularies: which tokens, the head's distribution over them, lossless decoding and persistence."""

import pytest
import torch
from decoding.test_generate import EOS, build, ragged_prompts
from tiny_models import TINY_VOCAB

from tjdnet.decoding.tree import build_draft_tree
from tjdnet.heads.vocab import DraftVocab, frequent_tokens
from tjdnet.sampling import SamplingConfig
from tjdnet.tensorops.logspace import IGNORE_INDEX

SUBSET = list(range(0, TINY_VOCAB, 2)) + [EOS]


def test_frequent_tokens_keeps_given_then_most_frequent_then_lowest_ids():
    sequences = [[7, 7, 7, 5, 5, 9], [9, 3]]  # 7 x3, then 5 and 9 x2 (tie: lower id first), then 3
    assert frequent_tokens(sequences, 3, 10) == [5, 7, 9]
    assert frequent_tokens(sequences, 3, 10, keep=[1]) == [1, 5, 7]
    assert frequent_tokens(sequences, 6, 10) == [0, 1, 3, 5, 7, 9]  # topped up with ids 0 and 1
    with pytest.raises(ValueError, match="draft vocabulary size=0 is not allowed; use an integer in 1..10"):
        frequent_tokens(sequences, 0, 10)


def test_draft_vocab_maps_tokens_both_ways():
    vocab = DraftVocab.of([9, 2, 5, 2], 12)
    assert vocab.ids.tolist() == [2, 5, 9] and vocab.size == 3 and vocab.vocab_size == 12
    assert vocab.local(torch.tensor([[5, 3], [9, 2]])).tolist() == [[1, -1], [2, 0]]
    full = vocab.expand(torch.tensor([[-1.0, -2.0, -3.0]]))
    assert full.shape == (1, 12) and full[0, 5] == -2.0 and torch.isinf(full[0, 3])
    with pytest.raises(ValueError, match="needs 1..12 token ids in 0..11"):
        DraftVocab.of([3, 12], 12)


@pytest.mark.parametrize("head", ["multihead", "cp", "mps"])
def test_head_restricted_to_a_draft_vocab_renormalises_each_component_over_it(head):
    model = build("llama", head, 3, rank=2)
    h = torch.randn(2, 32)
    with torch.no_grad():
        full = model.head(h)
        model.head.set_draft_vocab(SUBSET)
        sub = model.head(h)
    ids = torch.tensor(sorted(set(SUBSET)))
    torch.testing.assert_close(sub.log_emit, full.log_emit[..., ids].log_softmax(-1))
    y = torch.tensor([[4, 6, IGNORE_INDEX], [4, 7, 8]])  # 7 is outside the subset
    log_p = sub.log_prob(y)
    assert torch.isfinite(log_p[0]) and log_p[1] == float("-inf")
    tokens, dists = sub.draft(SamplingConfig(True), generator=torch.Generator().manual_seed(0))
    assert all(t in SUBSET for t in tokens.flatten().tolist())
    assert dists.shape == (2, 3, TINY_VOCAB) and torch.allclose(dists.exp().sum(-1), torch.ones(2, 3))
    assert torch.isinf(dists[..., 3]).all()  # token 3 is outside the subset
    tree = build_draft_tree(sub, torch.tensor([4, 7]), 2, 6, 3)  # the root 7 is outside: observed as no evidence
    assert all(t in SUBSET for t in tree.tokens.flatten().tolist())


@pytest.mark.parametrize("tree_nodes", [0, 6])
def test_greedy_speculative_with_a_draft_vocab_equals_ar(tree_nodes):
    model = build("llama", "mps", 4, perturb=0.1)
    ids, mask = ragged_prompts(4, seed=4)
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=24, eos_token_id=EOS)
    model.head.set_draft_vocab(SUBSET)
    spec = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=24, eos_token_id=EOS, tree_nodes=tree_nodes)
    assert spec.new_tokens == ar.new_tokens


def test_draft_vocab_is_saved_and_loaded_with_the_head(tmp_path):
    model = build("llama", "cp", 3)
    model.head.set_draft_vocab(SUBSET)
    model.save_pretrained(tmp_path / "head")
    fresh = build("llama", "cp", 3, seed=1)
    fresh.load_weights(tmp_path / "head")
    assert fresh.head.draft_vocab.ids.tolist() == sorted(set(SUBSET))
    model.head.set_draft_vocab(None)
    model.save_pretrained(tmp_path / "head")  # overwritten without one: loading clears it
    fresh.load_weights(tmp_path / "head")
    assert fresh.head.draft_vocab is None


def test_draft_rows_follow_changes_of_the_output_embedding():
    model = build("llama", "cp", 3)
    model.head.set_draft_vocab(SUBSET)
    h = torch.randn(1, 32)
    with torch.no_grad():
        before = model.head(h).log_emit
        model.lm.get_output_embeddings().weight.mul_(2.0)  # e.g. an optimizer step in `full` train mode
        after = model.head(h).log_emit
        model.head.set_draft_vocab(None)
        full = model.head(h).log_emit
    ids = torch.tensor(sorted(set(SUBSET)))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, full[..., ids].log_softmax(-1))


def test_marginalised_positions_stay_finite_when_token_zero_is_outside_the_draft_vocab():
    model = build("llama", "mps", 3, rank=2)
    model.head.set_draft_vocab([t for t in SUBSET if t != 0])
    with torch.no_grad():
        block = model.head(torch.randn(1, 32))
    log_p = block.log_prob(torch.tensor([[4, IGNORE_INDEX, IGNORE_INDEX]]))
    assert torch.isfinite(log_p).all()


@pytest.mark.parametrize(("head", "token_conditioned"), [("cp", False), ("mps", True)])
@pytest.mark.parametrize("chunk_elements", [2**24, 40])  # one product, or chunks of one component
def test_loss_in_the_draft_vocab_is_the_drafted_distribution_with_outside_targets_marginalised(
    head, token_conditioned, chunk_elements
):
    model = build("llama", head, 3, rank=2, token_conditioned=token_conditioned)
    model.head.config.loss_chunk_elements = chunk_elements
    model.head.set_draft_vocab(SUBSET)
    h = torch.randn(3, 32, requires_grad=True)  # with grad: the fused (or checkpointed) training path
    y = torch.tensor([[4, 6, 8], [4, 7, 8], [4, IGNORE_INDEX, 3]])  # 7 and 3 are outside the subset
    first = y[:, 0]
    loss = model.head.log_prob(h, y, first, draft=True)
    with torch.no_grad():
        block = model.head(h, first=first)
        evaluated = model.head.log_prob(h, y, first, draft=True)  # no grad: the chunked path
    inside = torch.where(torch.isin(y, torch.tensor(SUBSET)), y, IGNORE_INDEX)
    torch.testing.assert_close(loss.detach(), block.log_prob(inside))
    torch.testing.assert_close(evaluated, block.log_prob(inside))
    loss.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_loss_in_the_draft_vocab_needs_a_frozen_output_embedding():
    model = build("llama", "cp", 3)
    model.head.set_draft_vocab(SUBSET)
    model.lm.get_output_embeddings().weight.requires_grad_(True)
    y = torch.tensor([[4, 6, 8]])
    with pytest.raises(ValueError, match="needs a frozen output embedding"):
        model.head.log_prob(torch.randn(1, 32), y, draft=True)
    model.head.set_draft_vocab(None)  # without a draft vocabulary `draft` changes nothing
    assert torch.isfinite(model.head.log_prob(torch.randn(1, 32), y, draft=True)).all()


def test_the_training_loss_of_a_head_with_a_draft_vocab_is_taken_in_it():
    model = build("llama", "cp", 3)
    ids = torch.randint(3, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).head_nll
        model.head.set_draft_vocab(list(range(TINY_VOCAB)))  # the whole vocabulary: the same loss
        torch.testing.assert_close(model(ids).head_nll, full)
        model.head.set_draft_vocab(SUBSET)  # renormalised over fewer tokens, outside targets dropped: lower
        assert model(ids).head_nll < full - 0.1
        model.config.train_mode = "full"  # full fine-tuning keeps the loss over the whole vocabulary
        torch.testing.assert_close(model(ids).head_nll, full)
