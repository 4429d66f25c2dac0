"""Exact attention: the right values, the same bits for a token however its pass was made up, and lossless
speculative decoding in bfloat16."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from decoding.test_generate import EOS, ragged_prompts
from tiny_models import make_tiny_lm, wide_model
from transformers import DynamicCache

from tjdnet.attention import EXACT, exact_attention, exact_attention_in, resolve_attention
from tjdnet.kernels import cpu_kernels
from tjdnet.model import TJDModel


def reference(query, key, value, allowed):
    """float64 softmax attention with the key/value heads repeated for grouped queries: (B, q, Hq, d)."""
    group = query.shape[1] // key.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (key, value))
    out = F.scaled_dot_product_attention(query.double(), k, v, attn_mask=allowed)
    return out.transpose(1, 2)


@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_exact_attention_matches_float64_reference(q_len, mask_kind):
    g = torch.Generator().manual_seed(q_len)
    query, key, value = (torch.randn(2, 6, n, 16, generator=g) for n in (q_len, 11, 11))
    key, value = key[:, :2], value[:, :2]  # 3 query heads per key/value head
    causal = torch.ones(q_len, 11, dtype=torch.bool).tril(11 - q_len)[None, None].expand(2, 1, -1, -1)
    allowed = causal & (torch.rand(2, 1, q_len, 11, generator=g) > 0.3)
    allowed[..., 0] = True  # every query attends somewhere
    mask = {"none": None, "bool": allowed, "additive": torch.where(allowed, 0.0, torch.finfo(torch.float32).min)}
    out, _ = exact_attention(None, query, key, value, mask[mask_kind])
    expected = reference(query, key, value, causal if mask_kind == "none" else allowed)
    assert out.dtype == torch.float32 and out.shape == (2, q_len, 6, 16)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


def test_exact_attention_keeps_fully_masked_rows_finite():
    query, key, value = torch.randn(1, 2, 2, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    allowed = torch.tensor([[False] * 4, [True] * 4])[None, None]
    out, _ = exact_attention(None, query, key, value, allowed)
    assert torch.isfinite(out).all()


def test_bad_attention_choice_and_dropout_are_one_line_errors():
    with pytest.raises(ValueError, match="attention='fast' is not allowed; use one of auto, exact, model"):
        resolve_attention("fast", torch.float32)
    with pytest.raises(ValueError, match="dropout=0.1 is not allowed"):
        exact_attention(
            None, torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), None, dropout=0.1
        )
    assert resolve_attention("auto", torch.bfloat16) and resolve_attention("auto", torch.float16)
    assert not resolve_attention("auto", torch.float32) and resolve_attention("exact", torch.float32)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_models_run_exact_attention_like_their_own(kind):
    lm = make_tiny_lm(kind)
    ids = torch.randint(3, 64, (2, 12))
    with torch.no_grad():
        own = lm(ids).logits
        with exact_attention_in(lm):
            assert lm.config._attn_implementation == EXACT
            exact = lm(ids).logits
    assert lm.config._attn_implementation != EXACT  # restored
    torch.testing.assert_close(exact, own, rtol=1e-4, atol=1e-4)


def hidden_after(model, prefix, tokens, positions, mask=None) -> torch.Tensor:
    cache = DynamicCache(config=model.lm.config)
    model.hidden_states(prefix, cache=cache)
    return model.hidden_states(tokens, mask, positions, cache)


@pytest.mark.parametrize(
    "kind, dtype",
    [("gpt2", torch.bfloat16), ("llama", torch.bfloat16), ("llama", torch.float32)],  # GPT-2's float32 products: MKL
)
def test_exact_pass_over_k_tokens_has_the_bits_of_k_single_token_passes(kind, dtype):
    model = wide_model(kind).to(dtype)
    ids = torch.randint(3, 64, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), cpu_kernels(model), exact_attention_in(model.lm):  # the kernels generate uses
        block = hidden_after(model, ids[:, :260], ids[:, 260:], torch.arange(260, 300)[None])
        cache = DynamicCache(config=model.lm.config)
        model.hidden_states(ids[:, :260], cache=cache)
        single = torch.cat([model.hidden_states(ids[:, i : i + 1], cache=cache) for i in range(260, 300)], dim=1)
    assert torch.equal(block, single)


def test_bfloat16_tree_node_has_the_bits_of_its_path_fed_alone():
    """A node verified under a tree mask, with a sibling's slot between it and its parent, gets the bits of its
    path fed as a chain."""
    model = wide_model("llama")
    n = 280
    ids = torch.randint(3, 64, (1, n + 3), generator=torch.Generator().manual_seed(1))
    prefix, root, sibling, child = ids[:, :n], ids[:, n], ids[:, n + 1], ids[:, n + 2]
    allowed = torch.ones(3, n + 3, dtype=torch.bool)
    allowed[0, n + 1 :] = allowed[1, n + 2] = allowed[2, n + 1] = False  # root; sibling after root; child after root
    tree_mask = torch.where(allowed, 0.0, torch.finfo(torch.bfloat16).min).to(torch.bfloat16)[None, None]
    tree_tokens, tree_positions = torch.stack([root, sibling, child], 1), torch.tensor([[n, n + 1, n + 1]])
    with torch.inference_mode(), exact_attention_in(model.lm):
        tree = hidden_after(model, prefix, tree_tokens, tree_positions, tree_mask)
        chain = hidden_after(model, prefix, torch.stack([root, child], 1), torch.tensor([[n, n + 1]]))
    assert torch.equal(tree[:, [0, 2]], chain)


@pytest.mark.parametrize("head", ["cp", "mps"])
def test_bfloat16_speculative_chain_and_tree_equal_ar(head):
    model = wide_model("llama", head)
    ids, mask = ragged_prompts(4, seed=7)
    prefix = torch.randint(3, 64, (4, 120), generator=torch.Generator().manual_seed(2))
    ids, mask = torch.cat([prefix, ids], 1), torch.cat([torch.ones_like(prefix), mask], 1)
    kwargs = dict(max_new_tokens=48, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs)
    chain = model.generate(ids, mask, gen_mode="speculative", **kwargs)
    tree = model.generate(ids, mask, gen_mode="speculative", tree_nodes=8, **kwargs)
    assert chain.new_tokens == ar.new_tokens
    assert tree.new_tokens == ar.new_tokens


@pytest.mark.slow
def test_embedded_smollm2_bfloat16_speculative_equals_ar():
    from tjdnet.data import Example, encode_prompt

    model, tokenizer = TJDModel.from_base(
        "smollm2-135m", dtype="bfloat16", model_head="cp", horizon=4, rank=2, train_mode="head", loss_mode="draft"
    )
    model.eval()
    questions = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
                 "Write a short poem about the sea."]  # fmt: skip
    for question in questions:
        ids = torch.tensor([encode_prompt(tokenizer, Example(question, None))])
        kwargs = dict(max_new_tokens=48, eos_token_id=tokenizer.eos_token_id)
        ar = model.generate(ids, gen_mode="ar", **kwargs)
        chain = model.generate(ids, gen_mode="speculative", **kwargs)
        tree = model.generate(ids, gen_mode="speculative", tree_nodes=8, **kwargs)
        wide_tree = model.generate(ids, gen_mode="speculative", tree_nodes=40, **kwargs)  # 41 rows per product
        assert chain.new_tokens == ar.new_tokens and tree.new_tokens == ar.new_tokens
        assert wide_tree.new_tokens == ar.new_tokens


def test_generate_says_when_exact_attention_is_not_in_effect(monkeypatch):
    """A model whose attention ignores transformers' AttentionInterface cannot be made exact: generate says so."""
    model = wide_model("llama")
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(ids, gen_mode="speculative", max_new_tokens=4)
        model.generate(ids, gen_mode="ar", attention="model", max_new_tokens=2)
    monkeypatch.setattr(model.lm, "set_attn_implementation", lambda name: None)
    with pytest.warns(UserWarning, match="LlamaForCausalLM does not compute attention through transformers' "):
        model.generate(ids, gen_mode="speculative", max_new_tokens=4)
