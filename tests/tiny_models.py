"""Tiny random causal LMs for fast tests."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

TINY_VOCAB = 64


def tiny_config(kind: str, **overrides):
    """A tiny GPT-2 or Llama configuration; ``overrides`` replace any of its fields."""
    if kind == "gpt2":
        fields = dict(
            vocab_size=TINY_VOCAB, n_positions=256, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1
        )
        return GPT2Config(**{**fields, **overrides})
    fields = dict(
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
    return LlamaConfig(**{**fields, **overrides})


def make_tiny_lm(kind: str, seed: int = 0, sharpen: float = 8.0):
    torch.manual_seed(seed)
    cls = GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM
    model = cls(tiny_config(kind))
    with torch.no_grad():  # sharper distributions than the default init, so greedy decoding has no near-ties
        model.get_output_embeddings().weight.mul_(sharpen)
    return model.eval()


def train_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained offline on stemp text, with EOS/pad tokens and no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tjdnet.data.stemp import load_stemp

    corpus = [e.question + e.answer for e in load_stemp("train", num_samples=300)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def save_tiny_model_dir(kind: str, path) -> str:
    """A local model directory (weights + tokenizer) of a tiny random causal LM that the CLI can load."""
    tokenizer = train_tiny_tokenizer()
    config = tiny_config(kind)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    cls = GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM
    model = cls(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
