"""Greedy speculative decoding (chain and tree) gives ar's tokens in bfloat16 for every head, every train mode,
batch 1 and 4, on models wide enough that the CPU's fused kernels round a k-token pass differently."""

import pytest
import torch
from decoding.test_generate import EOS, ragged_prompts
from tiny_models import wide_model
from torch import nn

CASES = [  # (head, train mode, LoRA merged)
    ("cp", "head", False),
    ("cp", "lora", False),
    ("cp", "lora", True),
    ("cp", "full", False),
    ("multihead", "lora", True),
    ("mps", "lora", True),
]


def model_for(kind: str, head: str, train_mode: str, merged: bool):
    model = wide_model(kind, head, train_mode=train_mode, rank=1 if head == "multihead" else 2)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:  # trained-looking adapters: zero ones would leave the backbone as it was
                nn.init.normal_(param, std=0.02)
    if merged:
        model.merge_adapters()
    return model


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = ragged_prompts(4, seed=7)
    prefix = torch.randint(3, 64, (4, 120), generator=torch.Generator().manual_seed(2))
    return torch.cat([prefix, ids], 1), torch.cat([torch.ones_like(prefix), mask], 1)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("head, train_mode, merged", CASES)
def test_speculative_chain_and_tree_equal_ar_in_bfloat16(kind, head, train_mode, merged):
    model = model_for(kind, head, train_mode, merged)
    ids, mask = prompts()
    kwargs = dict(max_new_tokens=40, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs).new_tokens
    assert model.generate(ids, mask, gen_mode="speculative", **kwargs).new_tokens == ar
    assert model.generate(ids, mask, gen_mode="speculative", tree_nodes=8, **kwargs).new_tokens == ar
    first = ids[:1, mask[0].bool()]  # batch 1: the first prompt alone, without padding
    assert model.generate(first, gen_mode="ar", **kwargs).new_tokens == ar[:1]
    assert model.generate(first, gen_mode="speculative", tree_nodes=8, **kwargs).new_tokens == ar[:1]
