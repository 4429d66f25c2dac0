"""Head-only training on cached features equals what the model's own loss computes, and it learns."""

import pytest
import torch
from tiny_models import head_only_config, make_tiny_lm

from tjdnet.model import TJDModel
from tjdnet.training.head_features import Features, collect_features, evaluate_head, fit_head


def _rows(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(3, vocab, (length - i % 3,), generator=g).tolist()
        labels = [-100] * 4 + ids[4:]
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return rows


def _model(head: str = "cp", horizon: int = 3, rank: int = 2, token_conditioned: bool = False) -> TJDModel:
    lm = make_tiny_lm("llama")
    torch.manual_seed(0)
    config = head_only_config(head, horizon=horizon, rank=rank, token_conditioned=token_conditioned)
    return TJDModel(lm, config)


@pytest.mark.parametrize("token_conditioned", [False, True])
def test_features_match_the_model_loss(token_conditioned):
    model = _model(token_conditioned=token_conditioned)
    if token_conditioned:
        torch.nn.init.normal_(model.head.condition.weight, std=0.5)
    rows = _rows(4, 12, model.vocab_size)
    features = collect_features(model, rows, horizon=3, pad_token_id=2, batch_size=3)
    assert features.hidden.shape == (sum(len(r["input_ids"]) - 2 for r in rows), 32)
    assert features.targets.shape[1] == 3
    ids = torch.tensor([r["input_ids"] for r in rows[:1]])
    labels = torch.tensor([r["labels"] for r in rows[:1]])
    first_row = features[features.rows == 0]
    with torch.no_grad():
        expected = model(ids, labels=labels).head_nll
    assert evaluate_head(model, first_row) == pytest.approx(float(expected), rel=1e-5)


def test_fit_head_lowers_the_loss_and_is_deterministic():
    features = collect_features(_model(), _rows(6, 16, 64), horizon=2, pad_token_id=2)
    train, held_out = features.split(8)
    assert len(held_out) >= 8 and len(train) == len(features) - len(held_out)
    assert not set(held_out.rows.tolist()) & set(train.rows.tolist())  # whole rows: no shared answer
    results = []
    for _ in range(2):
        model = _model(horizon=2)
        losses = fit_head(model, train, steps=30, batch_positions=16, lr=1e-2, log_every=0)
        results.append((losses, evaluate_head(model, train)))
    assert results[0] == results[1]
    losses, _ = results[0]
    assert sum(losses[-5:]) < sum(losses[:5])
    with pytest.raises(ValueError, match="steps=0"):
        fit_head(_model(), train, steps=0, batch_positions=4, lr=1e-3)


@pytest.mark.parametrize("head", ["cp", "eagle"])
def test_bfloat16_compute_trains_like_float32_and_keeps_float32_weights(head):
    features = collect_features(_model(head, rank=1), _rows(6, 16, 64), horizon=3, pad_token_id=2)
    losses = {}
    for compute_dtype in ("float32", "bfloat16"):
        model = _model(head, rank=1)
        losses[compute_dtype] = fit_head(
            model, features, steps=30, batch_positions=16, lr=1e-2, log_every=0, compute_dtype=compute_dtype
        )
        assert all(p.dtype == torch.float32 for p in model.head.parameters())
    fp32, bf16 = losses["float32"], losses["bfloat16"]
    assert bf16 != fp32  # the products did run in bfloat16
    assert sum(bf16[-5:]) < sum(bf16[:5])
    assert sum(bf16[-5:]) == pytest.approx(sum(fp32[-5:]), rel=0.05)
    with pytest.raises(ValueError, match="compute_dtype='float16' is not allowed; use one of float32, bfloat16"):
        fit_head(_model(), features, steps=1, batch_positions=4, lr=1e-3, compute_dtype="float16")


def test_rows_batched_by_length_get_the_features_they_get_alone():
    model = _model()
    rows = _rows(7, 16, model.vocab_size)  # lengths 16, 15, 14, 16, ...: batches of 3 mix them unless sorted
    batched = collect_features(model, rows, horizon=3, pad_token_id=2, batch_size=3)
    stored = batched.rows.tolist()
    assert stored == sorted(stored, key=lambda r: (len(rows[r]["input_ids"]), r))  # shortest rows first, together
    for r, row in enumerate(rows):
        alone = collect_features(model, [row], horizon=3, pad_token_id=2, batch_size=1)
        mine = batched[batched.rows == r]
        assert torch.equal(mine.positions, alone.positions) and torch.equal(mine.targets, alone.targets)
        torch.testing.assert_close(mine.hidden, alone.hidden)


def test_features_of_several_sources_number_their_rows_one_after_another():
    model = _model()
    first, second = _rows(3, 10, 64), _rows(2, 12, 64, seed=1)
    parts = [collect_features(model, rows, horizon=2, pad_token_id=2) for rows in (first, second)]
    together = Features.concatenate(parts, [3, 2])
    assert sorted(set(together.rows.tolist())) == [0, 1, 2, 3, 4] and together.inputs is None
    alone = collect_features(model, first + second, horizon=2, pad_token_id=2)
    for r in range(5):
        torch.testing.assert_close(together[together.rows == r].hidden, alone[alone.rows == r].hidden)


def test_split_holds_out_whole_rows_and_refuses_to_take_them_all():
    features = collect_features(_model(), _rows(5, 10, 64), horizon=2, pad_token_id=2, batch_size=2)
    assert sorted(set(features.rows.tolist())) == [0, 1, 2, 3, 4]
    train, held_out = features.split(1, seed=3)
    assert len(set(held_out.rows.tolist())) == 1 and len(train) + len(held_out) == len(features)
    assert len(features.split(0)[1]) == 0
    with pytest.raises(ValueError, match="n_held_out=1000 is not allowed"):
        features.split(1000)


def test_model_targets_are_the_backbones_greedy_tokens_and_the_text_becomes_the_inputs():
    model = _model(head="eagle", horizon=3, rank=1)
    torch.nn.init.normal_(model.head.out.weight, std=0.5)  # zero at first: the drafted tokens would not matter
    rows = _rows(3, 12, model.vocab_size)
    data = collect_features(model, rows, horizon=3, pad_token_id=2, batch_size=2)
    own = collect_features(model, rows, horizon=3, pad_token_id=2, batch_size=2, targets="model")
    assert data.inputs is None and torch.equal(own.inputs, data.targets) and torch.equal(own.hidden, data.hidden)
    ids = torch.tensor(rows[0]["input_ids"])
    with torch.no_grad():
        greedy = model.next_token_logits(model.features(ids[None])[0])[0].argmax(-1)  # (T,) prediction of t + 1
    first_row = own.targets[own.rows == 0]
    for i, t in enumerate(range(1, len(ids) - 1)):  # row 0's positions with a label (t >= 4) among the next 3
        for k in range(3):
            expected = int(greedy[t + k]) if 4 <= t + k + 1 < len(ids) else -100
            assert int(first_row[i, k]) == expected
    assert (own.targets != data.targets).any()  # a random backbone disagrees with random text
    # the drafter is fed the text, scored on the backbone's tokens
    with torch.no_grad():
        fed_text = evaluate_head(model, own)
        own.inputs = None
        fed_targets = evaluate_head(model, own)
    assert fed_text != pytest.approx(fed_targets)
    with pytest.raises(ValueError, match="targets='teacher' is not allowed"):
        collect_features(model, rows, horizon=3, pad_token_id=2, targets="teacher")


def test_ahead_finds_the_backbone_features_of_later_positions_of_the_same_row():
    model = _model(head="eagle", horizon=3, rank=1)
    features = collect_features(model, _rows(3, 10, model.vocab_size), horizon=3, pad_token_id=2, batch_size=2)
    index = torch.arange(len(features))
    later, found = features.ahead(index, 2, 32)
    for i in range(len(features)):
        for k in range(2):
            j = i + k + 1
            same = j < len(features) and features.rows[j] == features.rows[i]
            assert bool(found[i, k]) == bool(same)
            if same:
                assert features.positions[j] == features.positions[i] + k + 1
                assert torch.equal(later[i, k], features.hidden[j, :32])


def _auxiliary_loss(model: TJDModel, features: Features, loss: str) -> float:
    """The eagle head's ``loss`` (feature_loss or teacher_loss) over all the features."""
    backbone, found = features.ahead(torch.arange(len(features)), 2, 32)
    with torch.no_grad():
        _, drafted, log_q = model.head.scored(
            features.hidden, features.targets, features.first, inputs=features.inputs, distributions=True
        )
    if loss == "feature_loss":
        return float(model.head.feature_loss(drafted, backbone, found))
    return float(model.head.teacher_loss(log_q[:, 1:], backbone, found))  # y_1's is the backbone's own


@pytest.mark.parametrize("loss", ["feature_loss", "teacher_loss"])
def test_an_auxiliary_loss_pulls_the_drafter_towards_the_backbone(loss):
    """feature_loss: the drafted features towards the backbone's; teacher_loss: the drafted conditionals."""
    rows = _rows(6, 16, 64)
    features = collect_features(_model(head="eagle", horizon=3, rank=1), rows, 3, pad_token_id=2, targets="model")
    measured = {}
    for weight in (0.0, 3.0):
        model = _model(head="eagle", horizon=3, rank=1)
        fit_head(model, features, steps=40, batch_positions=32, lr=1e-2, log_every=0, **{loss: weight})
        measured[weight] = _auxiliary_loss(model, features, loss)
    assert measured[3.0] < measured[0.0]
    with pytest.raises(ValueError, match=f"{loss}=0.5 is for eagle heads"):
        fit_head(_model(), features, steps=1, batch_positions=4, lr=1e-3, **{loss: 0.5})
    with pytest.raises(ValueError, match=f"{loss}=-1 is not allowed"):
        fit_head(_model(head="eagle", horizon=3, rank=1), features, steps=1, batch_positions=4, lr=1e-3, **{loss: -1})


@pytest.mark.parametrize("subset", [None, [3, 5, 8, 13, 21, 34, 55]])
def test_teacher_loss_is_the_kl_from_the_backbones_next_token_distribution(subset):
    model = _model(head="eagle", horizon=3, rank=1)
    model.head.set_draft_vocab(subset)
    backbone = torch.randn(4, 2, 32)
    found = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    logits = model.head.emission_logits(backbone, draft=subset is not None)
    assert logits.shape[-1] == (64 if subset is None else len(subset))
    with torch.no_grad():
        own = model.head.teacher_loss(logits.log_softmax(-1), backbone, found, draft=subset is not None)
        other = torch.randn_like(logits).log_softmax(-1)
        kl = model.head.teacher_loss(other, backbone, found, draft=subset is not None)
    p = logits.softmax(-1)
    expected = (p * (p.log() - other)).sum(-1)[found].mean()
    assert float(own) == pytest.approx(0.0, abs=1e-6)
    assert float(kl) == pytest.approx(float(expected), rel=1e-5)
