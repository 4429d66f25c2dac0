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
    no_default_eos(model)
    return model.eval()


def no_default_eos(model):
    """Drop the EOS that a model built from a config carries in its generation config (generate would stop at
    it): the tests choose their EOS, or none, explicitly."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


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


def head_only_config(head: str = "cp", **settings):
    """A TJDConfig for a tiny model: a small head (hidden_dim 8) over a frozen backbone, trained on its NLL alone."""
    from tjdnet.config import TJDConfig

    return TJDConfig(
        **{
            "model": "unused",
            "model_head": head,
            "hidden_dim": 8,
            "train_mode": "head",
            "loss_mode": "draft",
            **settings,
        }
    )


def wide_model(kind: str, head: str = "cp", **config):
    """A random bfloat16 model with 64-wide attention heads over a 300-token context, where the fused kernels give a
    token other bits in a k-token pass than in a single-token one (checked on this CPU: 4 in 5 positions differ),
    and a 3072-wide MLP, whose down projection oneDNN multiplies in another order for one row than for
    several on some CPUs (an AVX-512-bf16 EPYC)."""
    torch.manual_seed(0)
    if kind == "gpt2":
        lm = GPT2LMHeadModel(tiny_config("gpt2", n_positions=512, n_embd=256, n_head=4, n_inner=3072))
    else:
        lm = LlamaForCausalLM(
            tiny_config(
                "llama", hidden_size=256, intermediate_size=3072, num_hidden_layers=4, max_position_embeddings=512
            )
        )
    from tjdnet.model import TJDModel

    settings = head_only_config(head, **{"horizon": 4, "rank": 2, **config})
    return TJDModel(no_default_eos(lm).eval(), settings).to(torch.bfloat16).eval()


def perturb_lora_b(module, std: float = 1.0, generator=None) -> None:
    """Give every LoRA B matrix inside ``module`` normal values: adapters that change the model, as trained ones do
    (peft starts B at zero, which leaves the backbone as it was)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(std=std, generator=generator)
