"""An eagle drafter attending over a window of the latest positions: the window's bookkeeping, its exact joint,
the same windows in training (stored features, whole sequences) and in decoding, and lossless decoding."""

import pytest
import torch
from test_heads import D, V, all_blocks
from tiny_models import head_only_config, make_tiny_lm
from torch import nn

from tjdnet.heads import HeadConfig, make_head
from tjdnet.heads.window import Window, sequence_windows
from tjdnet.model import TJDModel, answer_positions, block_targets, next_tokens
from tjdnet.training.fit_heads import parse_head_specs
from tjdnet.training.head_features import collect_features, evaluate_head, fit_head, head_nll

W = 3


def windowed_head(horizon: int = 3, window: int = W):
    torch.manual_seed(0)
    config = HeadConfig("eagle", D, V, horizon=horizon, hidden_dim=4, context_window=window)
    head = make_head(config, nn.Linear(D, V, bias=False), nn.Embedding(V, D))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    return head


def some_window(batch: int, seed: int = 1) -> Window:
    g = torch.Generator().manual_seed(seed)
    valid = torch.tensor([[False, True, True], [True, True, True], [False, False, True]])[:batch]
    return Window(torch.randn(batch, W, D, generator=g), torch.randint(V, (batch, W), generator=g), valid)


def test_push_keeps_each_rows_latest_positions_right_aligned():
    window = Window.empty(2, 3, torch.zeros(2, 1))
    features = torch.arange(1.0, 5.0)[None, :, None].expand(2, -1, -1)  # positions 1..4, their feature = number
    tokens = torch.tensor([[11, 12, 13, 14], [21, 22, 23, 24]])
    window = window.push(features, tokens, torch.tensor([[True, True, False, False], [True, True, True, True]]))
    assert window.valid.tolist() == [[False, True, True], [True, True, True]]
    assert window.tokens[0, 1:].tolist() == [11, 12] and window.tokens[1].tolist() == [22, 23, 24]
    window = window.push(features[:, :1] * 10, torch.tensor([[15], [25]]), torch.tensor([[True], [False]]))
    assert window.tokens.tolist() == [[11, 12, 15], [22, 23, 24]]
    assert window.features[0, :, 0].tolist() == [1.0, 2.0, 10.0] and window[1:].features[0, :, 0].tolist() == [2, 3, 4]


def test_sequence_windows_hold_earlier_positions_of_the_same_answer_only():
    features = torch.arange(8.0)[None, :, None]
    ids = torch.arange(10, 18)[None]
    answer = torch.tensor([[False, True, True, False, True, True, True, True]])  # two answers: 1-2 and 4-7
    window = sequence_windows(features, next_tokens(ids), answer, W, torch.tensor([0, 0, 0]), torch.tensor([2, 4, 7]))
    assert window.valid.tolist() == [[False, False, True], [False, False, False], [True, True, True]]
    assert window.features[2, :, 0].tolist() == [4.0, 5.0, 6.0] and window.tokens[2].tolist() == [15, 16, 17]


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_windowed_eagle_is_a_normalised_joint_that_reads_the_window(horizon):
    head = windowed_head(horizon)
    h, window = torch.randn(3, D), some_window(3)
    block = head(h, window=window)
    joint = torch.stack([block.log_prob(y.expand(3, -1)) for y in all_blocks(horizon)], -1).exp()
    torch.testing.assert_close(joint.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    y = all_blocks(horizon)[7 % len(all_blocks(horizon))].expand(3, -1)
    torch.testing.assert_close(head.log_prob(h, y, window=window).exp(), block.log_prob(y).exp())
    if horizon > 1:
        assert not torch.allclose(head.log_prob(h, y, window=window), head.log_prob(h, y))
        empty = Window(window.features, window.tokens, torch.zeros_like(window.valid))
        torch.testing.assert_close(head.log_prob(h, y, window=empty), head.log_prob(h, y))


def test_what_an_empty_slot_holds_changes_nothing():
    head = windowed_head()
    h, window = torch.randn(3, D), some_window(3)
    y = all_blocks(3)[5].expand(3, -1)
    empty = ~window.valid
    features, tokens = window.features.masked_fill(empty[..., None], 7.0), window.tokens.masked_fill(empty, 1)
    other = Window(features, tokens, window.valid)
    torch.testing.assert_close(head.log_prob(h, y, window=other), head.log_prob(h, y, window=window))
    full = Window(window.features, window.tokens, torch.ones_like(window.valid))  # no slot masked
    assert not torch.allclose(head.log_prob(h, y, window=full)[[0, 2]], head.log_prob(h, y, window=window)[[0, 2]])
    torch.testing.assert_close(head.log_prob(h, y, window=full)[1], head.log_prob(h, y, window=window)[1])


def test_windowed_drafting_over_many_nodes_equals_one_node_at_a_time():
    head = windowed_head()
    h, window = torch.randn(2, D), some_window(2)
    block = head(h, window=window)
    nodes = torch.tensor([[0, 3, 4], [2, 2, 1]])  # (B, 3) tokens observed by 3 nodes of each row
    many = block.observe(block.start()[:, None].expand(-1, 3, -1), 0, nodes)
    for n in range(3):
        one = block.observe(block.start(), 0, nodes[:, n])
        torch.testing.assert_close(many[:, n], one)
        torch.testing.assert_close(block.conditional(many, 1)[:, n], block.conditional(one, 1))


def tiny_model(window: int = W, horizon: int = 3) -> TJDModel:
    torch.manual_seed(0)
    model = TJDModel(make_tiny_lm("llama"), head_only_config("eagle", horizon=horizon, rank=1, context_window=window))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def rows_of(n: int, length: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(3, vocab, (length - i,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:], "attention_mask": [1] * len(ids)})
    return rows


def test_stored_features_give_the_windows_of_the_whole_sequence_and_the_same_loss():
    model = tiny_model()
    rows = rows_of(3, 12, model.vocab_size)
    features = collect_features(model, rows, horizon=3, pad_token_id=2, batch_size=2)
    for r, row in enumerate(rows):
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        with torch.no_grad():
            _, head_input = model.features(ids)
            expected_nll = model(ids, labels=labels).head_nll
        answer = answer_positions(block_targets(labels, 3), torch.ones_like(ids))
        _, positions = answer.nonzero(as_tuple=True)
        expected = sequence_windows(head_input, next_tokens(ids), answer, W, torch.zeros_like(positions), positions)
        index = (features.rows == r).nonzero().squeeze(1)
        stored = features.behind(index, W)
        assert torch.equal(stored.valid, expected.valid) and stored.valid[:, 0].any()
        assert torch.equal(stored.tokens[stored.valid], expected.tokens[expected.valid])
        torch.testing.assert_close(stored.features[stored.valid], expected.features[expected.valid])
        assert evaluate_head(model, features[index]) != pytest.approx(0.0)
        with torch.no_grad():
            assert float(head_nll(model, features, index)) == pytest.approx(float(expected_nll), rel=1e-5)


def test_a_windowed_drafter_trains_on_stored_features():
    model = tiny_model()
    features = collect_features(model, rows_of(6, 16, model.vocab_size), horizon=3, pad_token_id=2)
    losses = fit_head(model, features, steps=30, batch_positions=16, lr=1e-2, log_every=0, feature_loss=1.0)
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("mode", ["chain", "tree", "draft"])
def test_decoding_gives_the_drafter_the_windows_of_the_generated_positions(mode, monkeypatch):
    model = tiny_model(horizon=4)
    seen, forward = [], type(model.head).forward

    def recording(self, h, *args, **kwargs):
        seen.append((h, kwargs.get("window")))
        return forward(self, h, *args, **kwargs)

    monkeypatch.setattr(type(model.head), "forward", recording)
    prompt = torch.tensor([[5, 17, 33, 8, 21]])
    kwargs = {"tree_nodes": 5, "tree_topk": 2} if mode == "tree" else {}
    out = model.generate(prompt, gen_mode="draft" if mode == "draft" else "speculative", max_new_tokens=20, **kwargs)
    sequence = out.sequences[:, : prompt.shape[1] + len(out.new_tokens[0])]
    with torch.no_grad():
        _, full = model.features(sequence)  # (1, T, F)
    assert len(seen) > 3
    for h, window in seen:
        t = int((full[0] - h[0]).abs().sum(-1).argmin())  # the position the block starts after
        for slot in range(W):
            position = t - W + slot
            assert bool(window.valid[0, slot]) == (position >= prompt.shape[1] - 1)
            if window.valid[0, slot]:
                assert int(window.tokens[0, slot]) == int(sequence[0, position + 1])
                torch.testing.assert_close(window.features[0, slot], full[0, position], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tree_nodes", [0, 6])
def test_windowed_eagle_speculative_equals_ar(tree_nodes):
    model = tiny_model(horizon=4)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 60, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=24, eos_token_id=1)
    spec = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=24, eos_token_id=1, tree_nodes=tree_nodes)
    assert spec.new_tokens == ar.new_tokens


def test_the_window_is_a_head_spec_option_and_only_eagle_takes_it():
    (spec,) = parse_head_specs("eagle:1:5:f1/2:c16", hidden_dim=8, lr=1e-3)
    assert spec.context_window == 16 and spec.name == "eagle_r1_h5_f1-2_c16"
    with pytest.raises(ValueError, match="context_window=4 is for the eagle head"):
        parse_head_specs("mps:2:4:c4", hidden_dim=8, lr=1e-3)
    with pytest.raises(ValueError, match="is not head:rank:horizon"):
        parse_head_specs("eagle:1:4:cx", hidden_dim=8, lr=1e-3)


def test_a_windowed_head_saves_and_loads(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "head")
    loaded = TJDModel.from_pretrained(tmp_path / "head", base=make_tiny_lm("llama"))
    assert loaded.config.context_window == W
    torch.testing.assert_close(loaded.head.window_position, model.head.window_position)
