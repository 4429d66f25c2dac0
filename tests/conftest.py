"""Shared fixtures: tiny random GPT-2 and Llama causal LMs saved as local model directories."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from tiny_models import save_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_lm_dir(request, tmp_path_factory):
    """A local directory holding a tiny random causal LM (and its tokenizer) of each architecture."""
    return save_tiny_model_dir(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, with the reason, where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
