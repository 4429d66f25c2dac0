"""Speculative sampling preserves the verifier's distribution exactly.

On a tiny vocabulary the exact distribution of the first three generated tokens is computable by
enumeration. 20,000 speculative samples (one batched call) must match it: chi-square p-value > 1e-3
on the joint of the first two tokens and on the marginal of the third (cells with expected count < 5
are pooled), and the total variation of the 64-cell marginals of tokens 1 and 3 must be < 0.035.
"""

import pytest
import torch
from scipy.stats import chisquare
from test_generate import build
from tiny_models import TINY_VOCAB

from tjdnet.sampling import SamplingConfig, process_log_probs

N = 20_000


def exact_first_tokens(model, prompt: torch.Tensor, config: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """p(x1, x2) (V, V) and p(x3) (V,) under plain sampling with ``config``."""
    v = TINY_VOCAB
    with torch.no_grad():

        def step(ids):
            return process_log_probs(model.next_token_logits(model.hidden_states(ids)[:, -1]), config).exp()

        p1 = step(prompt)[0]  # (V,)
        x1 = torch.arange(v)[:, None]
        p2 = step(torch.cat([prompt.expand(v, -1), x1], 1))  # (V, V)
        pair = p1[:, None] * p2
        x12 = torch.cartesian_prod(torch.arange(v), torch.arange(v))
        p3 = step(torch.cat([prompt.expand(v * v, -1), x12], 1))  # (V*V, V)
        third = (pair.flatten()[:, None] * p3).sum(0)
    return pair.double(), third.double()


def pooled_chisquare(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.flatten() * counts.sum()
    counts = counts.flatten().double()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


@pytest.mark.parametrize(
    "temperature,top_k,top_p,token_conditioned,draft_vocab",
    [
        (1.0, None, None, False, None),
        (0.7, 10, None, False, None),
        (1.3, None, 0.8, False, None),
        (1.0, None, None, True, None),
        (1.0, None, None, False, range(0, TINY_VOCAB, 3)),  # drafts never propose two tokens in three
    ],
)
def test_speculative_sampling_matches_plain_sampling(temperature, top_k, top_p, token_conditioned, draft_vocab):
    model = build("llama", "cp", 3, rank=2, perturb=0.5, sharpen=3.0, token_conditioned=token_conditioned)
    model.head.set_draft_vocab(None if draft_vocab is None else list(draft_vocab))
    check_speculative_sampling(model, temperature, top_k, top_p)


@pytest.mark.parametrize(
    "head,draft_vocab,window,draft_weights",
    [
        ("medusa", None, 0, "auto"),
        ("eagle", None, 0, "auto"),
        ("eagle", range(0, TINY_VOCAB, 2), 0, "int8"),  # drafted with int8 weights (tjdnet.quantization)
        ("eagle", range(0, TINY_VOCAB, 2), 0, "model"),
        ("eagle", None, 2, "auto"),
    ],
)
def test_baseline_drafters_sample_exactly(head, draft_vocab, window, draft_weights):
    model = build("llama", head, 3, perturb=0.3, sharpen=3.0, context_window=window)
    model.head.set_draft_vocab(None if draft_vocab is None else list(draft_vocab))
    check_speculative_sampling(model, 0.9, None, None, draft_weights=draft_weights)


def check_speculative_sampling(model, temperature, top_k, top_p, draft_weights: str = "auto") -> None:
    """20,000 speculative samples of three tokens against the exact distribution of plain sampling."""
    prompt = torch.tensor([[5, 17, 33, 8]])
    config = SamplingConfig(True, temperature, top_k, top_p)
    pair, third = exact_first_tokens(model, prompt, config)
    out = model.generate(
        prompt.expand(N, -1),
        gen_mode="speculative",
        max_new_tokens=3,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=torch.Generator().manual_seed(0),
        draft_weights=draft_weights,
    )
    tokens = torch.tensor(out.new_tokens)  # (N, 3)
    # The draft path is really exercised: some drafted tokens are accepted and some rejected.
    assert 0 < out.stats.acceptance_rate < 1
    pair_counts = torch.bincount(tokens[:, 0] * TINY_VOCAB + tokens[:, 1], minlength=TINY_VOCAB**2)
    third_counts = torch.bincount(tokens[:, 2], minlength=TINY_VOCAB)
    assert pooled_chisquare(pair_counts, pair) > 1e-3
    assert pooled_chisquare(third_counts, third) > 1e-3
    # Total variation on 64-cell marginals: sampling noise alone is ~0.02 at N = 20,000.
    for counts, probs in ((pair_counts.view(TINY_VOCAB, TINY_VOCAB).sum(1), pair.sum(1)), (third_counts, third)):
        assert 0.5 * (counts.double() / N - probs).abs().sum() < 0.035
