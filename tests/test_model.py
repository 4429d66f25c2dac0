"""TJDModel on tiny random GPT-2 and Llama models: losses, training modes, persistence, errors."""

import pytest
import torch
from tiny_models import TINY_VOCAB, head_only_config, make_tiny_lm, perturb_lora_b

from tjdnet.model import TJDConfig, TJDModel, block_targets
from tjdnet.tensorops.logspace import IGNORE_INDEX


def build(kind="llama", **kwargs) -> TJDModel:
    lm = make_tiny_lm(kind)
    config = head_only_config(**{"horizon": 3, "rank": 2, **kwargs})
    return TJDModel(lm, config)


def test_block_targets_shift_and_pad():
    labels = torch.tensor([[5, 6, 7, 8], [9, IGNORE_INDEX, 3, 4]])
    out = block_targets(labels, 2)
    assert out.shape == (2, 4, 2)
    assert out[0].tolist() == [[6, 7], [7, 8], [8, -100], [-100, -100]]
    assert out[1, 0].tolist() == [-100, 3]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "head,train_mode,loss_mode",
    [("cp", "head", "draft"), ("mps", "lora", "joint"), ("multihead", "full", "draft"), ("stp", "lora", "draft")],
)
def test_loss_decreases_on_fixed_batch(kind, head, train_mode, loss_mode):
    horizon, rank = (1, 1) if head == "stp" else (3, 1 if head == "multihead" else 2)
    model = build(kind, model_head=head, horizon=horizon, rank=rank, train_mode=train_mode, loss_mode=loss_mode)
    torch.manual_seed(1)
    ids = torch.randint(3, TINY_VOCAB, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    params = [p for p in model.parameters() if p.requires_grad]
    assert params
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(15):
        out = model(ids, attention_mask=mask)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0] * 0.9


def test_head_mode_leaves_backbone_untouched():
    model = build("gpt2", train_mode="head")
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, TINY_VOCAB, (2, 10))
    for _ in range(3):
        optimizer.zero_grad()
        model(ids).loss.backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.lm.state_dict().items())
    assert all(not p.requires_grad for p in model.lm.parameters())


def test_output_embedding_frozen_in_every_mode():
    for mode in ("head", "lora", "full"):
        model = build("gpt2", train_mode=mode)
        assert not model.lm.get_output_embeddings().weight.requires_grad


def test_labels_mask_the_loss():
    model = build("llama", horizon=2)
    ids = torch.randint(3, TINY_VOCAB, (1, 8))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    out = model(ids, labels=labels)
    assert out.head_tokens == 1 + 2 + 2 + 1  # positions 3..6 each score their labelled targets (5..7)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % TINY_VOCAB  # a labelled token: the loss must move
    assert model(changed, labels=labels.where(labels == IGNORE_INDEX, changed)).loss != out.loss


def test_memory_efficient_loss_runs_and_is_finite():
    model = build("llama", horizon=3, use_memory_efficient_loss=True)
    out = model(torch.randint(0, TINY_VOCAB, (2, 13)))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "train_mode,token_conditioned", [("head", False), ("head", True), ("lora", False), ("full", False)]
)
def test_save_load_round_trip(tiny_lm_dir, tmp_path, train_mode, token_conditioned):
    from tjdnet.loading import load_causal_lm

    lm, _ = load_causal_lm(tiny_lm_dir)
    config = TJDConfig(
        model=tiny_lm_dir,
        model_head="mps",
        horizon=2,
        rank=3,
        hidden_dim=8,
        train_mode=train_mode,
        token_conditioned=token_conditioned,
        loss_mode="draft",
    )
    model = TJDModel(lm, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "ckpt")  # overwriting an existing checkpoint works
    loaded = TJDModel.from_pretrained(tmp_path / "ckpt")
    ids = torch.randint(0, TINY_VOCAB, (2, 9))
    y = torch.randint(0, TINY_VOCAB, (2, 2))
    with torch.no_grad():
        h1, h2 = model.hidden_states(ids)[:, -1], loaded.hidden_states(ids)[:, -1]
        torch.testing.assert_close(h1, h2, rtol=0, atol=0)
        torch.testing.assert_close(model.head.log_prob(h1, y), loaded.head.log_prob(h2, y), rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        ["tjdnet_config.json", "base_model.json", "head.safetensors"]
        + ([] if train_mode == "head" else ["backbone.safetensors"])
    )


def test_truncated_checkpoint_gives_clear_error(tiny_lm_dir, tmp_path):
    from tjdnet.loading import load_causal_lm

    lm, _ = load_causal_lm(tiny_lm_dir)
    TJDModel(
        lm, TJDConfig(model=tiny_lm_dir, horizon=2, hidden_dim=4, train_mode="head", loss_mode="draft")
    ).save_pretrained(tmp_path / "c")
    weights = tmp_path / "c" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot read weights file"):
        TJDModel.from_pretrained(tmp_path / "c")


def test_corrupt_saved_config_gives_clear_error(tiny_lm_dir, tmp_path):
    from tjdnet.loading import load_causal_lm

    lm, _ = load_causal_lm(tiny_lm_dir)
    TJDModel(lm, head_only_config(model=tiny_lm_dir, horizon=2)).save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "tjdnet_config.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="tjdnet_config.json is not valid JSON"):
        TJDModel.from_pretrained(tmp_path / "c")


def test_next_token_head_matches_plain_model():
    model = build("gpt2")
    ids = torch.randint(0, TINY_VOCAB, (2, 7))
    with torch.no_grad():
        expected = model.lm(ids).logits
        got = model.next_token_logits(model.hidden_states(ids))
    torch.testing.assert_close(got, expected)


def test_lora_adapters_can_be_disabled_and_merged():
    model = build("llama", train_mode="lora")
    perturb_lora_b(model.lm)
    ids = torch.randint(0, TINY_VOCAB, (1, 6))
    plain = make_tiny_lm("llama")
    with torch.no_grad():
        tuned = model.hidden_states(ids)
        with model.adapters_disabled():
            torch.testing.assert_close(model.hidden_states(ids), plain.model(ids).last_hidden_state)
        model.merge_adapters()
        torch.testing.assert_close(model.hidden_states(ids), tuned, atol=1e-5, rtol=1e-4)


def test_parameter_report():
    report = build("llama", horizon=4, rank=2, hidden_dim=8).parameter_report()
    assert report["head"] == 2 * 4 * 2 * 32 * 8 + 32 * 2 + 2
    assert 0 < report["head_fraction"] < 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"model_head": "tucker"}, "unknown head 'tucker'"),
        ({"horizon": 0}, "horizon=0"),
        ({"rank": 0}, "rank=0"),
        ({"train_mode": "adapters"}, "unknown train_mode 'adapters'"),
        ({"loss_mode": "both"}, "unknown loss_mode 'both'"),
        ({"horizon": 1, "token_conditioned": True}, "token_conditioned is not allowed for cp with horizon=1"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build("gpt2", **kwargs)


def test_bad_batches():
    model = build("gpt2", horizon=3)
    with pytest.raises(ValueError, match="sequence length 3 is too short for horizon=3"):
        model(torch.randint(0, TINY_VOCAB, (1, 3)))
    with pytest.raises(ValueError, match=f"token id {TINY_VOCAB} is out of range"):
        model(torch.full((1, 6), TINY_VOCAB))


def test_lora_on_last_layers_only():
    model = build("llama", train_mode="lora", lora_layers=1)
    names = [n for n, p in model.lm.named_parameters() if p.requires_grad and "lora_" in n]
    assert names and all(".layers.1." in n for n in names)
    with pytest.raises(ValueError, match="lora_layers=5 is not allowed; this model has 1..2 layers"):
        build("gpt2", train_mode="lora", lora_layers=5)
