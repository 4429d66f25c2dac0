"""Greedy speculative decoding (chain and tree) gives ar's tokens in bfloat16 for every head, every train mode,
batch 1 and 4, on models wide enough that the CPU's fused kernels round a k-token pass differently."""

from pathlib import Path

import pytest
import torch
from decoding.test_generate import EOS, ragged_prompts
from tiny_models import perturb_lora_b, wide_model

from tjdnet.data import collate, encode_prompt
from tjdnet.data.sources import load_mt_bench, read_qa_jsonl
from tjdnet.model import TJDModel

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
    perturb_lora_b(model.lm, std=0.02)
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


SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_prompts(tokenizer) -> list[list[int]]:
    """16 GSM8K train questions and one MT-Bench first turn of each of its 8 categories, as generation prompts."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    questions = read_qa_jsonl(SHARED_DATA / "gsm8k" / "train.jsonl")[:16]
    chat = load_mt_bench("test", SHARED_DATA / "mt_bench")[::10]  # its 80 questions come in blocks of 10
    return [encode_prompt(tokenizer, example) for example in questions + chat]


@pytest.mark.slow
def test_main_job_configuration_is_lossless_in_bfloat16_on_real_prompts():
    """The `make main` model (cp, R = 2, H = 4, LoRA r = 16 on the last 8 blocks, merged) on the embedded SmolLM2 in
    bfloat16: 128 new tokens of chain and tree (batch 4) equal one-prompt-at-a-time ar on 24 real prompts."""
    model, tokenizer = TJDModel.from_base(
        "smollm2-135m", dtype="bfloat16", model_head="cp", horizon=4, rank=2, hidden_dim=64, train_mode="lora",
        lora_rank=16, lora_layers=8, loss_mode="joint",
    )  # fmt: skip
    perturb_lora_b(model.lm, std=0.01, generator=torch.Generator().manual_seed(0))
    model.merge_adapters()
    model.eval()
    prompts = real_prompts(tokenizer)
    assert len(prompts) == 24
    kwargs = dict(max_new_tokens=128, eos_token_id=tokenizer.eos_token_id)
    ar = [model.generate(torch.tensor([p]), gen_mode="ar", **kwargs).new_tokens[0] for p in prompts]
    assert sum(len(tokens) for tokens in ar) > 16 * 100  # long answers, not early EOS
    for start in range(0, len(prompts), 4):
        batch = collate([{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts[start : start + 4]],
                        tokenizer.pad_token_id, padding_side="left")  # fmt: skip
        ids, mask = batch["input_ids"], batch["attention_mask"]
        chain = model.generate(ids, mask, gen_mode="speculative", **kwargs).new_tokens
        tree = model.generate(ids, mask, gen_mode="speculative", tree_nodes=8, **kwargs).new_tokens
        for row, expected in enumerate(ar[start : start + 4]):
            assert chain[row] == expected, f"chain differs from ar on prompt {start + row}"
            assert tree[row] == expected, f"tree differs from ar on prompt {start + row}"
