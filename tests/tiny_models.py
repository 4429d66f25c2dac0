"""Tiny random causal LMs for fast tests."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

TINY_VOCAB = 64



def tiny_config(kind: str):
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=TINY_VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1
        )
    return LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def make_tiny_lm(kind: str, seed: int = 0, sharpen: float = 8.0):
    torch.manual_seed(seed)
    cls = GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM
    model = cls(tiny_config(kind))
    with torch.no_grad():  # sharper distributions than the default init, so greedy decoding has no near-ties
        model.get_output_embeddings().weight.mul_(sharpen)
    return model.eval()
