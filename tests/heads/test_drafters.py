"""The same-model baselines: Medusa-1-style heads and the EAGLE-1-style drafter, against brute force."""

import pytest
import torch
from scipy.stats import chisquare
from test_heads import D, V, all_blocks, build
from torch import nn

from tjdnet.heads import HeadConfig, make_head
from tjdnet.sampling import SamplingConfig


def eagle_joint(head, h: torch.Tensor) -> torch.Tensor:
    """(B, V^H) probabilities of every block under the drafter, from its chain of conditionals."""
    block = head(h)
    return torch.stack([block.log_prob(y.expand(len(h), -1)) for y in all_blocks(head.horizon)], -1).exp()


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_eagle_is_a_normalised_joint_and_its_loss_is_that_joint(horizon):
    head = build("eagle", horizon, 1)
    h = torch.randn(3, D)
    joint = eagle_joint(head, h)
    torch.testing.assert_close(joint.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    blocks = all_blocks(horizon)
    for i in range(0, len(blocks), 5):
        y = blocks[i].expand(3, -1)
        torch.testing.assert_close(head.log_prob(h, y).exp(), joint[:, i], atol=1e-6, rtol=1e-4)


def test_eagle_first_position_is_the_backbone_distribution_and_later_ones_read_the_drafted_tokens():
    head = build("eagle", 3, 1)
    h = torch.randn(2, D)
    block = head(h)
    base = torch.log_softmax(head.unembedding(h), -1)
    torch.testing.assert_close(block.conditional(block.start(), 0), base)
    after_a = block.observe(block.start(), 0, torch.tensor([0, 0]))
    after_b = block.observe(block.start(), 0, torch.tensor([3, 3]))
    assert not torch.allclose(block.conditional(after_a, 1), block.conditional(after_b, 1))


def test_eagle_starts_as_the_base_distribution_at_every_position():
    torch.manual_seed(0)
    unembedding, embedding = nn.Linear(D, V, bias=False), nn.Embedding(V, D)
    head = make_head(HeadConfig("eagle", D, V, horizon=3), unembedding, embedding)
    h = torch.randn(2, D)
    base = torch.log_softmax(unembedding(h), -1)
    block = head(h)
    message = block.start()
    for k in range(3):
        torch.testing.assert_close(block.conditional(message, k), base)
        message = block.observe(message, k, torch.tensor([1, 4]))


def test_eagle_samples_follow_its_joint():
    head = build("eagle", 2, 1)
    h = torch.randn(1, D)
    joint = eagle_joint(head, h)[0].detach().double()
    n = 20000
    tokens, _ = head(h.expand(n, -1)).draft(SamplingConfig(do_sample=True), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens[:, 0] * V + tokens[:, 1], minlength=V**2).double()
    keep = joint > 1e-3
    expected = joint[keep] * counts[keep].sum() / joint[keep].sum()
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3


def test_eagle_draft_vocabulary_loss_and_drafts_stay_in_it():
    head = build("eagle", 3, 1)
    head.set_draft_vocab([0, 2, 3])
    h = torch.randn(4, D)
    tokens, log_q = head(h).draft(SamplingConfig(do_sample=True), generator=torch.Generator().manual_seed(1))
    assert set(tokens.flatten().tolist()) <= {0, 2, 3}
    assert torch.isinf(log_q[..., [1, 4]]).all()
    y = torch.tensor([[0, 2, 3]] * 4)
    assert torch.isfinite(head.log_prob(h, y, draft=True)).all()
    torch.testing.assert_close(head.log_prob(h, y, draft=True), head(h).log_prob(y))


def test_medusa_first_position_is_the_backbone_distribution_and_heads_start_there():
    torch.manual_seed(0)
    unembedding = nn.Linear(D, V, bias=False)
    head = make_head(HeadConfig("medusa", D, V, horizon=4), unembedding)
    h = torch.randn(2, D)
    base = torch.log_softmax(unembedding(h), -1)
    for k in range(4):
        torch.testing.assert_close(head(h).log_emit[:, 0, k], base)
    assert head.num_parameters() == 3 * (D * D + D)


@pytest.mark.parametrize(
    "name,match", [("eagle", "token_conditioned is not allowed for eagle"), ("medusa", "not allowed for medusa")]
)
def test_baselines_refuse_token_conditioning(name, match):
    with pytest.raises(ValueError, match=match):
        make_head(HeadConfig(name, D, V, horizon=3, token_conditioned=True), nn.Linear(D, V), nn.Embedding(V, D))


def test_eagle_needs_the_input_embedding():
    with pytest.raises(ValueError, match="input embedding"):
        make_head(HeadConfig("eagle", D, V, horizon=3), nn.Linear(D, V))
