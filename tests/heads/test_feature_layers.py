"""Heads that also read intermediate-layer features (``feature_layers``, EAGLE-3's fused features): exact joints,
a zero start, lossless decoding, saving, training on cached features and the one-line errors."""

import pytest
import torch
from test_heads import D, V, all_blocks
from tiny_models import TINY_VOCAB, head_only_config, make_tiny_lm, tiny_config
from torch import nn
from transformers import LlamaForCausalLM

from tjdnet.config import TJDConfig
from tjdnet.heads import HeadConfig, make_head
from tjdnet.model import TJDModel
from tjdnet.training.fit_heads import parse_head_specs
from tjdnet.training.head_features import collect_features, evaluate_head

EXTRA = 2
HEADS = [("eagle", 1), ("mps", 2), ("cp", 2), ("medusa", 1), ("multihead", 1)]


def build_head(name: str, rank: int, horizon: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = HeadConfig(name, D, V, horizon=horizon, rank=rank, hidden_dim=4, extra_features=EXTRA)
    head = make_head(config, nn.Linear(D, V, bias=False), nn.Embedding(V, D))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    return head


@pytest.mark.parametrize("name,rank", HEADS)
def test_a_head_reading_extra_features_is_a_normalised_joint_that_depends_on_them(name, rank):
    head = build_head(name, rank)
    h = torch.randn(2, (1 + EXTRA) * D)
    blocks = all_blocks(3)
    log_p = torch.stack([head.log_prob(h, y.expand(2, -1), first=y[:1].expand(2)) for y in blocks], -1)
    if name != "eagle":  # token-free heads: one joint over all blocks; eagle's is the chain of its conditionals
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    block = head(h)
    drafted = torch.stack([block.log_prob(y.expand(2, -1)) for y in blocks], -1)
    torch.testing.assert_close(drafted.exp().sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(drafted, log_p, atol=1e-5, rtol=1e-4)
    other = h.clone()
    other[:, D:] = torch.randn(2, EXTRA * D)
    y = blocks[7].expand(2, -1)
    assert not torch.allclose(head.log_prob(other, y), head.log_prob(h, y))


@pytest.mark.parametrize("name,rank", HEADS)
def test_a_fresh_fuse_ignores_the_extra_features(name, rank):
    head = build_head(name, rank)
    nn.init.zeros_(head.feature_fuse.weight)
    h = torch.randn(2, (1 + EXTRA) * D)
    other = torch.cat([h[:, :D], torch.randn(2, EXTRA * D)], dim=1)
    y = all_blocks(3)[11].expand(2, -1)
    torch.testing.assert_close(head.log_prob(h, y), head.log_prob(other, y))


def test_an_input_of_the_wrong_width_is_a_one_line_error():
    head = build_head("eagle", 1)
    with pytest.raises(ValueError, match=r"hidden size 8 does not match the head's input size 24 \(hidden_size=8 x"):
        head(torch.randn(2, D))


def model_with_layers(head: str, layers: list[int], kind: str = "llama") -> TJDModel:
    lm = LlamaForCausalLM(tiny_config("llama", num_hidden_layers=4)).eval() if kind == "llama" else make_tiny_lm(kind)
    rank = 2 if head in ("cp", "mps") else 1
    model = TJDModel(lm, head_only_config(head, horizon=4, rank=rank, feature_layers=layers))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("head", ["eagle", "mps", "medusa"])
@pytest.mark.parametrize("kind,layers", [("llama", [1, 3]), ("gpt2", [1])])
def test_greedy_speculative_with_feature_layers_equals_ar(head, kind, layers):
    model = model_with_layers(head, layers, kind)
    ids = torch.randint(3, TINY_VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    ar = model.generate(ids, mask, gen_mode="ar", max_new_tokens=20)
    for kwargs in ({}, {"tree_nodes": 6, "tree_topk": 2}):
        spec = model.generate(ids, mask, gen_mode="speculative", max_new_tokens=20, **kwargs)
        assert spec.new_tokens == ar.new_tokens, kwargs


def test_features_are_the_last_hidden_state_then_the_layers_outputs():
    model = model_with_layers("eagle", [3, 1])
    ids = torch.randint(3, TINY_VOCAB, (2, 5))
    last, head_input = model.features(ids)
    states = model.backbone(input_ids=ids, output_hidden_states=True).hidden_states
    assert head_input.shape == (2, 5, 3 * 32)
    torch.testing.assert_close(head_input, torch.cat([last, states[3], states[1]], dim=-1))
    torch.testing.assert_close(last, model.hidden_states(ids))


def test_feature_layers_survive_save_and_load(tmp_path):
    model = model_with_layers("eagle", [2])
    model.save_pretrained(tmp_path / "head")
    loaded = TJDModel.from_pretrained(tmp_path / "head", base=model.lm)
    assert loaded.config.feature_layers == [2] and loaded.head.feature_fuse is not None
    h = model.features(torch.randint(3, TINY_VOCAB, (2, 5)))[1][:, -1]
    y = torch.randint(0, TINY_VOCAB, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(model.head.log_prob(h, y), loaded.head.log_prob(h, y), rtol=0, atol=0)


def test_cached_features_with_layers_match_the_model_loss():
    model = model_with_layers("mps", [1, 2])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINY_VOCAB, (12,), generator=g).tolist()
    rows = [{"input_ids": ids, "labels": [-100] * 4 + ids[4:], "attention_mask": [1] * 12}]
    features = collect_features(model, rows, horizon=4, pad_token_id=2)
    assert features.hidden.shape == (11, 3 * 32)
    with torch.no_grad():
        expected = model(torch.tensor([ids]), labels=torch.tensor([rows[0]["labels"]])).head_nll
    assert evaluate_head(model, features) == pytest.approx(float(expected), rel=1e-5)
    only_two = features.with_layers([1, 2], [2])
    torch.testing.assert_close(only_two.hidden, torch.cat([features.hidden[:, :32], features.hidden[:, 64:]], 1))
    assert features.with_layers([1, 2], [1, 2]) is features


def test_head_specs_name_their_feature_layers():
    spec = parse_head_specs("eagle:1:5:w32:f10/20", 64, 1e-3)[0]
    assert spec.feature_layers == (10, 20) and spec.name == "eagle_r1_h5_f10-20"
    for bad in ("eagle:1:5:f", "eagle:1:5:f10/x", "eagle:1:4:tcx"):
        with pytest.raises(ValueError, match="is not head:rank:horizon"):
            parse_head_specs(bad, 64, 1e-3)
    with pytest.raises(ValueError, match="feature_layers=0 is not allowed"):
        parse_head_specs("eagle:1:5:f0", 64, 1e-3)


@pytest.mark.parametrize(
    "layers,match",
    [
        ([0], "feature_layers=0 is not allowed"),
        ([2, 2], r"feature_layers=\[2, 2\] names a layer twice"),
        ([4], r"feature_layers=\[4\] is not allowed; this model's intermediate layers are 1..3"),
    ],
)
def test_bad_feature_layers_are_one_line_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        model_with_layers("eagle", layers)
    assert TJDConfig(feature_layers=[3, 1]).feature_layers == [3, 1]
