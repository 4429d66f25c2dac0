"""Shared fixtures: tiny random GPT-2 and Llama causal LMs saved as local model directories."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from tiny_models import make_tiny_lm  # noqa: E402


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_lm_dir(request, tmp_path_factory):
    """A local directory holding a tiny random causal LM of each architecture."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    make_tiny_lm(request.param).save_pretrained(path)
    return str(path)
