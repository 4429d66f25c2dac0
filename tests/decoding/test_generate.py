"""Decoding on tiny random models: exactness against plain decoding and transformers, batching,
pass counting, the KV cache after rejections, and input errors."""

import time

import pytest
import torch
from tiny_models import TINY_VOCAB, head_only_config, make_tiny_lm, perturb_lora_b
from transformers import DynamicCache

from tjdnet.decoding.generate import _Rows
from tjdnet.heads import FIXED_RANK_ONE
from tjdnet.model import TJDConfig, TJDModel
from tjdnet.sampling import SamplingConfig

EOS = 1


def build(
    kind="llama", head="cp", horizon=4, rank=2, perturb=1.0, seed=0, token_conditioned=False, context_window=0, **kwargs
) -> TJDModel:
    lm = make_tiny_lm(kind, **kwargs)
    rank = 1 if head in FIXED_RANK_ONE else rank
    config = head_only_config(
        head, horizon=horizon, rank=rank, token_conditioned=token_conditioned, context_window=context_window
    )
    model = TJDModel(lm, config)
    torch.manual_seed(seed)
    with torch.no_grad():  # a deliberately bad (random) head: low acceptance
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * perturb)
    return model.eval()


def ragged_prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of different lengths (pad id 2)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 9, 3, 7, 6, 4, 8, 2][:batch]
    width = max(lengths)
    ids = torch.full((batch, width), 2)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = torch.randint(3, TINY_VOCAB, (n,), generator=g)
        mask[b, width - n :] = 1
    return ids, mask


def fit_on_own_continuations(model: TJDModel, ids, mask, new_tokens: int, steps: int) -> None:
    """Train the head for ``steps`` Adam steps on the model's own greedy continuations of the prompts."""
    target = model.generate(ids, mask, gen_mode="ar", max_new_tokens=new_tokens).sequences
    labels = target.clone()
    labels[:, : ids.shape[1]] = -100
    full_mask = torch.cat([mask, torch.ones(ids.shape[0], new_tokens, dtype=torch.long)], dim=1)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=3e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(target, attention_mask=full_mask, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


def hf_new_tokens(lm, ids, mask, max_new_tokens) -> list[list[int]]:
    out = lm.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=2,
    )
    rows = []
    for seq in out[:, ids.shape[1] :].tolist():
        row = []
        for t in seq:
            row.append(t)
            if t == EOS:
                break
        rows.append(row)
    return rows


HEADS = [("stp", 1), ("multihead", 2), ("multihead", 4), ("cp", 2), ("cp", 4), ("mps", 2), ("mps", 4)]
HEADS += [("medusa", 4), ("eagle", 2), ("eagle", 4)]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("head,horizon", HEADS)
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_speculative_equals_ar_equals_transformers(kind, head, horizon, batch):
    model = build(kind, head, horizon)
    ids, mask = ragged_prompts(batch)
    kwargs = dict(max_new_tokens=24, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs)
    spec = model.generate(ids, mask, gen_mode="speculative", **kwargs)
    assert spec.new_tokens == ar.new_tokens
    assert ar.new_tokens == hf_new_tokens(model.lm, ids, mask, 24)
    assert torch.equal(spec.sequences, ar.sequences)
    assert ar.stats.tau == 1.0
    if horizon > 1:
        assert spec.stats.tau >= 1.0
        assert sum(spec.stats.accepted_length_histogram) > 0


@pytest.mark.parametrize("head", ["multihead", "cp", "mps"])
@pytest.mark.parametrize("batch", [1, 4])
def test_token_conditioned_speculative_equals_ar(head, batch):
    model = build("llama", head, 4, token_conditioned=True)
    ids, mask = ragged_prompts(batch, seed=1)
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=24, eos_token_id=EOS)
    spec = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=24, eos_token_id=EOS)
    assert spec.new_tokens == ar.new_tokens


def test_token_conditioned_draft_reads_its_own_first_token():
    model = build("llama", "cp", 3, token_conditioned=True)
    ids = torch.randint(3, TINY_VOCAB, (1, 6))
    out = model.generate(ids, gen_mode="draft", max_new_tokens=3)
    with torch.no_grad():
        h = model.hidden_states(ids)[:, -1]
        first, _ = model.head(h, horizon=1).draft(SamplingConfig())
        rest, _ = model.head(h, first=first[:, 0]).draft(SamplingConfig(), prefix=first)
    assert out.new_tokens[0] == first[0].tolist() + rest[0].tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_rows_equal_rows_alone(kind):
    model = build(kind, "mps", 3)
    ids, mask = ragged_prompts(4, seed=3)
    together = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=20, eos_token_id=EOS)
    for b in range(4):
        real = mask[b].bool()
        alone = model.generate(ids[b : b + 1, real], gen_mode="speculative", max_new_tokens=20, eos_token_id=EOS)
        assert alone.new_tokens[0] == together.new_tokens[b]


def right_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same prompts padded on the right (a tokenizer's default padding side)."""
    order = torch.sort(1 - mask, dim=1, stable=True).indices  # real tokens first, in order
    return ids.gather(1, order), mask.gather(1, order)


@pytest.mark.parametrize("gen_mode", ["ar", "speculative", "draft"])
def test_right_padded_rows_equal_rows_alone(gen_mode):
    model = build("llama", "cp", 3)
    ids, mask = right_padded(*ragged_prompts(4, seed=5))
    assert mask[:, -1].tolist() != [1, 1, 1, 1]  # really padded on the right
    together = model.generate(ids, mask, gen_mode=gen_mode, max_new_tokens=12, eos_token_id=EOS)
    for b in range(4):
        alone = model.generate(ids[b : b + 1, mask[b].bool()], gen_mode=gen_mode, max_new_tokens=12, eos_token_id=EOS)
        assert alone.new_tokens[0] == together.new_tokens[b]


def test_padded_batch_without_a_mask_is_refused():
    model = build("gpt2")
    ids, _ = ragged_prompts(3)
    with pytest.raises(ValueError, match="row 0 starts or ends with a pad token but no attention_mask"):
        model.generate(ids, pad_token_id=2)
    with pytest.raises(ValueError, match="no attention_mask"):
        model.generate(ids, eos_token_id=2)  # padded with EOS, as tokenizers without a pad token are


@pytest.mark.parametrize(
    "ids,mask,match",
    [
        (torch.rand(1, 4), None, "input_ids have dtype torch.float32; pass integer token ids"),
        (torch.full((2, 4), 5), torch.ones(2, 3, dtype=torch.long), r"attention_mask of shape \(2, 3\) does not match"),
        (torch.full((1, 4), 5), torch.tensor([[0, 2, 1, 1]]), "values other than 0 and 1"),
    ],
)
def test_malformed_prompt_tensors_are_one_line_errors(ids, mask, match):
    with pytest.raises(ValueError, match=match):
        build("gpt2").generate(ids, mask)


@pytest.mark.parametrize("gen_mode,tree_nodes", [("ar", 0), ("speculative", 0), ("speculative", 4), ("draft", 0)])
def test_draft_time_is_the_time_spent_in_the_head(gen_mode, tree_nodes, monkeypatch):
    model = build("gpt2", "cp", 3)
    forward, calls = model.head.forward, []

    def slow_head(*args, **kwargs):  # a head that takes at least 5 ms per block
        calls.append(1)
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.head, "forward", slow_head)
    ids, mask = ragged_prompts(2)
    stats = model.generate(ids, mask, gen_mode=gen_mode, max_new_tokens=12, tree_nodes=tree_nodes).stats
    assert len(calls) > 0 or gen_mode == "ar"
    assert 0.005 * len(calls) <= stats.draft_time_s < stats.decode_time_s
    assert stats.draft_blocks == len(calls)  # one head call per block here (the head reads no token first)
    if gen_mode == "draft":  # a last block that no pass follows
        assert stats.draft_blocks == stats.decode_steps + 1


@pytest.mark.parametrize("token_conditioned", [False, True])
def test_high_acceptance_head_gives_tau_above_one_and_exact_output(token_conditioned):
    # Fit a cp head on the model's own greedy continuations for a few steps: acceptance rises.
    model = build("llama", "cp", 3, rank=2, perturb=0.0, token_conditioned=token_conditioned)
    ids, mask = ragged_prompts(4, seed=5)
    fit_on_own_continuations(model, ids, mask, 24, steps=60)
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=24)
    spec = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=24)
    assert spec.new_tokens == ar.new_tokens
    assert spec.stats.tau > 1.5
    assert spec.stats.forward_passes < ar.stats.forward_passes


@pytest.mark.parametrize("gen_mode", ["ar", "speculative", "draft"])
def test_forward_passes_are_counted_exactly(gen_mode):
    model = build("gpt2", "cp", 3)
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    ids, mask = ragged_prompts(2)
    out = model.generate(ids, mask, gen_mode=gen_mode, max_new_tokens=17)
    assert out.stats.forward_passes == len(calls) == out.stats.decode_steps + 1
    assert all(len(t) == 17 for t in out.new_tokens)
    if gen_mode == "draft":
        assert out.stats.decode_steps == 5  # 17 tokens in blocks of 3: 6 blocks, 5 passes after the prefill
        assert out.stats.tau == 17 / 6


@pytest.mark.parametrize("token_conditioned", [False, True])
def test_anchored_draft_starts_every_block_with_the_models_own_token(token_conditioned):
    model = build("llama", "cp", 3, token_conditioned=token_conditioned)
    prompt = torch.randint(3, TINY_VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, gen_mode="draft_anchored", max_new_tokens=8)
    tokens = out.new_tokens[0]
    # prefill; blocks of 3 (the model's token + 2 drafted), then 1 + 1 as the budget of 8 runs out
    assert len(tokens) == 8 and out.stats.forward_passes == 4
    with torch.no_grad():
        for start in (0, 3, 6, 7):  # each block's first token is greedy ar's given what came before
            context = torch.cat([prompt, torch.tensor([tokens[:start]], dtype=torch.long)], dim=1)
            expected = model.next_token_logits(model.hidden_states(context))[0, -1].argmax()
            assert tokens[start] == int(expected)
    batched = model.generate(prompt.expand(2, -1), gen_mode="draft_anchored", max_new_tokens=8)
    assert batched.new_tokens == [tokens, tokens]


def test_draft_mode_takes_sequential_argmax_blocks():
    model = build("llama", "mps", 3)
    ids = torch.randint(3, TINY_VOCAB, (1, 6))
    out = model.generate(ids, gen_mode="draft", max_new_tokens=6)
    with torch.no_grad():
        h = model.hidden_states(ids)[:, -1]
        first, _ = model.head(h).draft(SamplingConfig())
        h2 = model.hidden_states(torch.cat([ids, first], 1))[:, -1]
        second, _ = model.head(h2).draft(SamplingConfig())
    assert out.new_tokens[0] == first[0].tolist() + second[0].tolist()


def test_eos_ends_rows_and_max_new_tokens_is_exact():
    model = build("llama", "cp", 4)
    ids, mask = ragged_prompts(4)
    free = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=30)
    eos = free.new_tokens[0][7]  # pretend this token is EOS
    out = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=30, eos_token_id=eos)
    for row_free, row in zip(free.new_tokens, out.new_tokens, strict=True):
        expected = row_free[: row_free.index(eos) + 1] if eos in row_free else row_free
        assert row == expected
    assert len(out.new_tokens[0]) <= 8
    for n in (0, 1, 2, 5):
        assert all(len(t) == n for t in model.generate(ids, mask, gen_mode="speculative", max_new_tokens=n).new_tokens)


def test_kv_cache_after_rejection_equals_cache_without_rejected_tokens():
    model = build("llama")
    prompt = torch.randint(3, TINY_VOCAB, (1, 6))
    fed = torch.randint(3, TINY_VOCAB, (1, 4))
    with torch.no_grad():
        rows = _Rows([DynamicCache(config=model.lm.config)], torch.ones_like(prompt), torch.tensor([6]))
        model.hidden_states(prompt, cache=rows.caches[0])
        mask, positions = rows.feed_inputs(4)
        model.hidden_states(fed, mask, positions, rows.caches[0])
        rows.keep_first(4, torch.tensor([2]))  # two tokens accepted, two rejected
        reference = DynamicCache(config=model.lm.config)
        model.hidden_states(torch.cat([prompt, fed[:, :2]], 1), cache=reference)
    assert rows.caches[0].get_seq_length() == reference.get_seq_length() == 8
    for got, want in zip(rows.caches[0].layers, reference.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-5)
    assert rows.next_pos.tolist() == [8]


def test_ragged_rejections_are_masked_per_row():
    """Row 0 keeps 1 of 3 fed tokens, row 1 keeps 3: the next step matches each row run alone."""
    model = build("gpt2")
    prompt = torch.randint(3, TINY_VOCAB, (2, 5))
    fed = torch.randint(3, TINY_VOCAB, (2, 3))
    nxt = torch.randint(3, TINY_VOCAB, (2, 1))
    with torch.no_grad():
        rows = _Rows([DynamicCache(config=model.lm.config)], torch.ones_like(prompt), torch.tensor([5, 5]))
        model.hidden_states(prompt, cache=rows.caches[0])
        mask, positions = rows.feed_inputs(3)
        model.hidden_states(fed, mask, positions, rows.caches[0])
        rows.keep_first(3, torch.tensor([1, 3]))
        mask, positions = rows.feed_inputs(1)
        got = model.hidden_states(nxt, mask, positions, rows.caches[0])[:, -1]
        for b, kept in enumerate([1, 3]):
            alone = model.hidden_states(torch.cat([prompt[b], fed[b, :kept], nxt[b]])[None])[:, -1]
            torch.testing.assert_close(got[b], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tree_nodes", [0, 5])
def test_lora_verify_with_base_reproduces_the_original_model(tree_nodes):
    lm = make_tiny_lm("llama")
    model = TJDModel(
        lm,
        TJDConfig(
            model="unused", model_head="cp", horizon=3, rank=2, hidden_dim=8, train_mode="lora", loss_mode="draft"
        ),
    )
    perturb_lora_b(model.lm, std=0.5)
    ids, mask = ragged_prompts(2)
    base = build("llama", "stp", 1).generate(ids, mask, gen_mode="ar", max_new_tokens=16)
    out = model.generate(
        ids, mask, gen_mode="speculative", max_new_tokens=16, verify_with_base=True, tree_nodes=tree_nodes
    )
    tuned = model.generate(ids, mask, gen_mode="ar", max_new_tokens=16)
    assert out.new_tokens == base.new_tokens
    assert tuned.new_tokens != base.new_tokens
    assert out.stats.forward_passes == 2 * (out.stats.decode_steps + 1)


def test_streamer_receives_tokens_as_accepted():
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.tolist())

        def end(self):
            self.ended = True

    model = build("llama")
    ids = torch.randint(3, TINY_VOCAB, (1, 5))
    streamer = Collect()
    out = model.generate(ids, gen_mode="speculative", max_new_tokens=12, streamer=streamer)
    assert streamer.chunks[0] == ids[0].tolist() and streamer.ended
    assert sum(streamer.chunks[1:], []) == out.new_tokens[0]


def test_transformers_text_streamer_works(capsys):
    from transformers import TextStreamer

    from tjdnet.loading import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    model = build("gpt2")
    ids = torch.randint(3, TINY_VOCAB, (1, 5))
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    out = model.generate(ids, gen_mode="speculative", max_new_tokens=8, streamer=streamer)
    assert capsys.readouterr().out.strip() == tokenizer.decode(out.new_tokens[0]).strip()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gen_mode": "beam"}, "unknown gen_mode 'beam'"),
        ({"max_new_tokens": -1}, "max_new_tokens=-1"),
        ({"do_sample": True, "temperature": 0.0}, "temperature=0.0"),
        ({"horizon": 5}, "horizon=5 is not allowed; this head supports 1..4"),
        ({"max_new_tokens": 1000}, "exceeds the model's context of 256"),
        ({"top_k": 0, "do_sample": True}, "top_k=0"),
    ],
)
def test_bad_generation_arguments(kwargs, match):
    model = build("gpt2")
    with pytest.raises(ValueError, match=match):
        model.generate(torch.randint(3, TINY_VOCAB, (1, 4)), **kwargs)


def test_bad_prompts():
    model = build("gpt2")
    with pytest.raises(ValueError, match="is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="all padding"):
        model.generate(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="token id 64 is out of range"):
        model.generate(torch.full((1, 3), TINY_VOCAB))
