"""The forward-pass gradient of log softmax(z W^T + b)[y] equals autograd's, for a head and on its own."""

import pytest
import torch
from torch import nn

from tjdnet.heads import HeadConfig, make_head
from tjdnet.tensorops.vocab_log_prob import target_log_probs


@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_autograd(chunk_rows, with_bias):
    torch.manual_seed(0)
    weight, bias = torch.randn(13, 6), torch.randn(13) if with_bias else None
    z = torch.randn(7, 6, requires_grad=True)
    y = torch.randint(0, 13, (7,))
    upstream = torch.randn(7)
    expected = torch.log_softmax(nn.functional.linear(z, weight, bias), -1).gather(-1, y[:, None]).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), z)
    got = target_log_probs(z, y, weight, bias, chunk_rows)
    (got_grad,) = torch.autograd.grad((got * upstream).sum(), z)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)


def test_trainable_embedding_is_refused():
    with pytest.raises(ValueError, match="frozen output embedding"):
        target_log_probs(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), torch.randn(4, 3, requires_grad=True))


@pytest.mark.parametrize("token_conditioned", [False, True])
@pytest.mark.parametrize("name", ["cp", "mps", "multihead"])
def test_head_loss_same_with_frozen_embedding(name, token_conditioned):
    """Frozen embedding (fused path) and trainable one (checkpointed path): same loss, same gradients."""
    torch.manual_seed(0)
    unembedding = nn.Linear(8, 11, bias=False)
    rank = 1 if name == "multihead" else 2
    config = HeadConfig(
        name=name, hidden_size=8, vocab_size=11, horizon=3, rank=rank, token_conditioned=token_conditioned
    )
    head = make_head(config, unembedding, nn.Embedding(11, 8))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    h = torch.randn(5, 8, requires_grad=True)
    y = torch.randint(0, 11, (5, 3))
    y[0, 2] = -100

    def loss_and_grads():
        loss = head.log_prob(h, y).sum()
        params = [h] + [p for p in head.parameters() if p.requires_grad and p is not unembedding.weight]
        return loss, torch.autograd.grad(loss, params)

    unembedding.weight.requires_grad_(True)
    reference, reference_grads = loss_and_grads()
    unembedding.weight.requires_grad_(False)
    fused, fused_grads = loss_and_grads()
    torch.testing.assert_close(fused, reference)
    for a, b in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b)
