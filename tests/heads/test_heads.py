"""Heads against brute-force joints built by enumerating every block of a tiny vocabulary."""

import itertools

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from tjdnet.heads import HeadConfig, make_head
from tjdnet.sampling import SamplingConfig

D, V = 8, 5


def build(
    name: str, horizon: int, rank: int, vocab: int = V, hidden: int = D, seed: int = 0, token_conditioned: bool = False
):
    torch.manual_seed(seed)
    unembedding = nn.Linear(hidden, vocab, bias=False)
    embedding = nn.Embedding(vocab, hidden)
    config = HeadConfig(
        name=name,
        hidden_size=hidden,
        vocab_size=vocab,
        horizon=horizon,
        rank=rank,
        hidden_dim=4,
        token_conditioned=token_conditioned,
    )
    head = make_head(config, unembedding, embedding)
    # Move away from the "every component equals the base distribution" initialisation.
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    return head


CASES = [("stp", 1, 1), ("multihead", 3, 1), ("cp", 1, 3), ("cp", 3, 4), ("mps", 2, 3), ("mps", 4, 2), ("medusa", 3, 1)]


def all_blocks(horizon: int, vocab: int = V) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=horizon)))


def brute_force_joint(head, h: torch.Tensor) -> torch.Tensor:
    """(B, V^H) probabilities of every block, from the product of unnormalised cores."""
    dist = head(h)
    emit = dist.log_emit.exp()  # (B, R, H, V)
    init = dist.log_init.exp()
    trans = None if dist.log_trans is None else dist.log_trans.exp()
    blocks = all_blocks(head.horizon)
    out = torch.zeros(h.shape[0], len(blocks))
    for i, y in enumerate(blocks):
        if trans is None:
            out[:, i] = (init * torch.stack([emit[:, :, k, y[k]] for k in range(head.horizon)], -1).prod(-1)).sum(-1)
        else:
            vec = init * emit[:, :, 0, y[0]]
            for k in range(1, head.horizon):
                vec = torch.einsum("br,brs->bs", vec, trans[:, k - 1]) * emit[:, :, k, y[k]]
            out[:, i] = vec.sum(-1)
    return out


@pytest.mark.parametrize("name,horizon,rank", CASES)
def test_log_prob_equals_brute_force_and_sums_to_one(name, horizon, rank):
    head = build(name, horizon, rank)
    h = torch.randn(3, D)
    joint = brute_force_joint(head, h)
    torch.testing.assert_close(joint.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    blocks = all_blocks(horizon)
    for i in range(0, len(blocks), max(1, len(blocks) // 17)):
        y = blocks[i].expand(3, -1)
        torch.testing.assert_close(head.log_prob(h, y).exp(), joint[:, i], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(head(h).log_prob(y).exp(), joint[:, i], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,horizon,rank", [c for c in CASES if c[1] > 1])
def test_conditionals_and_marginals_match_brute_force(name, horizon, rank):
    head = build(name, horizon, rank)
    h = torch.randn(2, D)
    joint = brute_force_joint(head, h).view(2, *([V] * horizon))
    dist = head(h)
    prefix = torch.tensor([[1, 3, 0], [4, 2, 2]])[:, : horizon - 1]
    message = dist.start()
    for k in range(horizon):
        expected = joint[(torch.arange(2)[:, None], *[prefix[:, j : j + 1] for j in range(k)])]
        expected = expected.reshape(2, V, -1).sum(-1)
        expected = expected / expected.sum(-1, keepdim=True)
        torch.testing.assert_close(dist.conditional(message, k).exp(), expected, atol=1e-6, rtol=1e-4)
        if k < horizon - 1:
            message = dist.observe(message, k, prefix[:, k])
    # Marginal of the last position alone: -100 marginalises the others.
    y = torch.full((2, horizon), -100)
    y[:, -1] = 2
    marginal = joint.reshape(2, -1, V)[:, :, 2].sum(-1)
    torch.testing.assert_close(head.log_prob(h, y).exp(), marginal, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,horizon,rank", [("cp", 2, 3), ("mps", 2, 2), ("multihead", 2, 1), ("medusa", 2, 1)])
def test_sampling_frequencies_match_joint(name, horizon, rank):
    head = build(name, horizon, rank)
    h = torch.randn(1, D)
    joint = brute_force_joint(head, h)[0].detach()
    n = 20000
    dist = head(h.expand(n, -1))
    generator = torch.Generator().manual_seed(0)
    tokens, _ = dist.draft(SamplingConfig(do_sample=True), generator=generator)
    index = tokens[:, 0] * V + tokens[:, 1]
    counts = torch.bincount(index, minlength=V**horizon).double()
    keep = joint > 1e-3
    expected = joint.double()[keep] * n
    observed = counts[keep]
    expected = expected * observed.sum() / expected.sum()
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name,horizon,rank", CASES)
def test_greedy_is_sequential_conditional_argmax(name, horizon, rank):
    head = build(name, horizon, rank)
    h = torch.randn(4, D)
    dist = head(h)
    tokens, _ = dist.draft(SamplingConfig())
    message = dist.start()
    for k in range(horizon):
        assert torch.equal(tokens[:, k], dist.conditional(message, k).argmax(-1))
        message = dist.observe(message, k, tokens[:, k])


@pytest.mark.parametrize("name,horizon,rank", CASES)
def test_gradients_finite(name, horizon, rank):
    head = build(name, horizon, rank)
    h = torch.randn(4, D, requires_grad=True)
    y = torch.randint(0, V, (4, horizon))
    y[0, -1] = -100
    head.log_prob(h, y).sum().backward()
    grads = [h.grad] + [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_chunked_loss_equals_unchunked():
    head = build("mps", 3, 2, vocab=11)
    h = torch.randn(7, D)
    y = torch.randint(0, 11, (7, 3))
    full = head.log_prob(h, y)
    head.config.loss_chunk_elements = 11  # one component row at a time
    torch.testing.assert_close(head.log_prob(h, y), full)


def test_initial_components_equal_base_distribution():
    torch.manual_seed(0)
    unembedding = nn.Linear(D, V, bias=False)
    head = make_head(HeadConfig(name="cp", hidden_size=D, vocab_size=V, horizon=3, rank=2), unembedding)
    h = torch.randn(2, D)
    base = torch.log_softmax(unembedding(h), -1)
    log_emit = head(h).log_emit
    for r in range(2):
        for k in range(3):
            torch.testing.assert_close(log_emit[:, r, k], base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["cp", "mps", "multihead"])
def test_stable_at_large_horizon_rank_and_vocab(name, dtype):
    vocab, hidden, horizon = 50_000, 32, 8
    rank = 1 if name == "multihead" else 64
    torch.manual_seed(0)
    unembedding = nn.Linear(hidden, vocab, bias=False).to(dtype)
    with torch.no_grad():
        unembedding.weight.mul_(30)  # very peaked distributions: tiny probabilities everywhere else
    config = HeadConfig(name=name, hidden_size=hidden, vocab_size=vocab, horizon=horizon, rank=rank, hidden_dim=8)
    head = make_head(config, unembedding).to(dtype)
    h = torch.cat([torch.randn(2, hidden) * 100, torch.randn(2, hidden) * 1e-3]).to(dtype)
    y = torch.randint(0, vocab, (4, horizon))
    log_p = head.log_prob(h, y)
    assert torch.isfinite(log_p).all() and (log_p <= 1e-4).all()
    dist = head(h)
    tokens, _ = dist.draft(SamplingConfig())
    assert torch.isfinite(dist.log_prob(tokens)).all()


def test_cp_rank_one_equals_multihead():
    torch.manual_seed(0)
    unembedding = nn.Linear(D, V, bias=False)
    cp = make_head(HeadConfig(name="cp", hidden_size=D, vocab_size=V, horizon=3, rank=1), unembedding)
    mh = make_head(HeadConfig(name="multihead", hidden_size=D, vocab_size=V, horizon=3, rank=1), unembedding)
    mh.adapters.load_state_dict(cp.adapters.state_dict())
    with torch.no_grad():
        cp.adapters.w_out.normal_()
        mh.adapters.w_out.copy_(cp.adapters.w_out)
        cp.mixture.bias.normal_()
    h = torch.randn(5, D)
    y = torch.randint(0, V, (5, 3))
    torch.testing.assert_close(cp.log_prob(h, y), mh.log_prob(h, y))


TOKEN_CONDITIONED = [("multihead", 3, 1), ("cp", 3, 2), ("mps", 3, 2)]


def conditioned_joint(head, h: torch.Tensor) -> torch.Tensor:
    """(B, V^H) block probabilities of a token-conditioned head, block by block from its chain of products."""
    blocks = all_blocks(head.horizon)
    return torch.stack([head(h, first=y[:1].expand(len(h))).log_prob(y.expand(len(h), -1)) for y in blocks], -1).exp()


@pytest.mark.parametrize("name,horizon,rank", TOKEN_CONDITIONED)
def test_token_conditioned_head_is_a_normalised_joint(name, horizon, rank):
    head = build(name, horizon, rank, token_conditioned=True)
    h = torch.randn(3, D)
    joint = conditioned_joint(head, h)
    torch.testing.assert_close(joint.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    blocks = all_blocks(horizon)
    for i in range(0, len(blocks), 7):
        y = blocks[i].expand(3, -1)
        torch.testing.assert_close(head.log_prob(h, y).exp(), joint[:, i], atol=1e-6, rtol=1e-4)
    # The first token really is read: a different y_1 changes the distribution of the later positions.
    a, b = head(h, first=torch.zeros(3, dtype=torch.long)), head(h, first=torch.ones(3, dtype=torch.long))
    assert torch.equal(a.log_emit[:, :, 0], b.log_emit[:, :, 0])
    assert not torch.allclose(a.log_emit[:, :, 1:], b.log_emit[:, :, 1:])
    # Drafting after the given first token takes the conditionals of that joint.
    first = torch.tensor([2, 0, 4])
    tokens, _ = head(h, first=first).draft(SamplingConfig(), prefix=first[:, None])
    rows = joint.view(3, V, -1)[torch.arange(3), first]  # (3, V^(H-1)) given y_1
    expected = rows.view(3, V, -1).sum(-1).argmax(-1)
    assert torch.equal(tokens[:, 0], expected)


def test_token_conditioned_head_needs_the_first_token():
    head = build("cp", 3, 2, token_conditioned=True)
    h = torch.randn(2, D)
    head(h, horizon=1)  # the first position alone does not depend on it
    with pytest.raises(ValueError, match="pass the block's first token"):
        head(h)
    with pytest.raises(ValueError, match="needs first="):
        head.log_prob(h, torch.tensor([[-100, 1, 2], [0, 1, 2]]))
    y = torch.tensor([[-100, 1, 2], [0, 1, 2]])
    assert torch.isfinite(head.log_prob(h, y, first=torch.tensor([3, 0]))).all()
    with pytest.raises(ValueError, match="input embedding"):
        make_head(head.config, nn.Linear(D, V))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "stp", "token_conditioned": True}, "token_conditioned is not allowed for stp"),
        ({"name": "cp", "horizon": 1, "token_conditioned": True}, "horizon >= 2"),
        ({"name": "tucker"}, "unknown head 'tucker'"),
        ({"name": "cp", "horizon": 0}, "horizon=0"),
        ({"name": "cp", "rank": 0}, "rank=0"),
        ({"name": "stp", "horizon": 2}, "horizon=2"),
        ({"name": "multihead", "rank": 3}, "rank=3"),
    ],
)
def test_bad_config_errors(kwargs, match):
    config = HeadConfig(**{"hidden_size": D, "vocab_size": V, **kwargs})
    with pytest.raises(ValueError, match=match):
        make_head(config, nn.Linear(D, V), nn.Embedding(V, D))


def test_bad_inputs_errors():
    head = build("cp", 2, 2)
    with pytest.raises(ValueError, match="hidden size 3"):
        head.log_prob(torch.randn(2, 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 5 is out of range"):
        head.log_prob(torch.randn(2, D), torch.tensor([[0, 5], [1, 1]]))
    with pytest.raises(ValueError, match="token id -3"):
        head.log_prob(torch.randn(2, D), torch.tensor([[0, -3], [1, 1]]))
