"""Hugging Face conventions: from_pretrained returns the model, the tokenizer is saved beside the head, heads
go to and come from the Hub, and generate reads a GenerationConfig and the model's own generation defaults."""

import pytest
import torch
from tiny_models import TINY_VOCAB, head_only_config, make_tiny_lm
from transformers import AutoTokenizer, GenerationConfig

from tjdnet.checkpoints import load_trained
from tjdnet.loading import load_causal_lm
from tjdnet.model import TJDModel


def test_from_pretrained_returns_the_model_and_the_tokenizer_is_saved_beside_it(tiny_lm_dir, tmp_path):
    lm, tokenizer = load_causal_lm(tiny_lm_dir)
    TJDModel(lm, head_only_config(model=tiny_lm_dir, horizon=2)).save_pretrained(tmp_path / "head", tokenizer)
    model = TJDModel.from_pretrained(tmp_path / "head")
    assert isinstance(model, TJDModel) and not model.training
    saved = AutoTokenizer.from_pretrained(tmp_path / "head")
    assert saved("a b c")["input_ids"] == tokenizer("a b c")["input_ids"]
    assert load_trained(tmp_path / "head").tokenizer.padding_side == "left"


def test_a_head_from_an_unreachable_hub_id_is_a_one_line_error():
    with pytest.raises(FileNotFoundError, match="'someone/no-such-head' is neither a local directory nor") as error:
        TJDModel.from_pretrained("someone/no-such-head")  # HF_HUB_OFFLINE=1 in the tests
    assert "\n" not in str(error.value)


def test_push_to_hub_uploads_what_save_pretrained_writes(tiny_lm_dir, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in folder_path.iterdir())
            return "https://huggingface.co/me/head/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    lm, tokenizer = load_causal_lm(tiny_lm_dir)
    model = TJDModel(lm, head_only_config(model=tiny_lm_dir, horizon=2))
    assert model.push_to_hub("me/head", tokenizer, token="t") == "https://huggingface.co/me/head/commit/1"
    assert calls["repo"] == ("me/head", False, True) and calls["token"] == "t"
    assert {"tjdnet_config.json", "base_model.json", "head.safetensors", "tokenizer_config.json"} <= set(calls["files"])


def tiny_model() -> TJDModel:
    torch.manual_seed(0)
    model = TJDModel(make_tiny_lm("llama"), head_only_config(horizon=3, rank=2))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("gen_mode", ["ar", "speculative"])
@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9}])
def test_a_generation_config_gives_what_the_same_keyword_arguments_give(gen_mode, sampling):
    model = tiny_model()
    ids = torch.randint(3, TINY_VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    settings = {"max_new_tokens": 12, "eos_token_id": 5, **sampling}
    by_kwargs = model.generate(ids, gen_mode=gen_mode, generator=torch.Generator().manual_seed(0), **settings)
    by_config = model.generate(
        ids,
        gen_mode=gen_mode,
        generator=torch.Generator().manual_seed(0),
        generation_config=GenerationConfig(**settings),
    )
    assert by_config.new_tokens == by_kwargs.new_tokens


def test_the_models_own_generation_config_gives_eos_and_max_new_tokens():
    model = tiny_model()
    ids = torch.randint(3, TINY_VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    free = model.generate(ids, max_new_tokens=30, eos_token_id=[]).new_tokens[0]  # [] : no EOS at all
    model.lm.generation_config.max_new_tokens = 7
    assert model.generate(ids).new_tokens[0] == free[:7]
    model.lm.generation_config.eos_token_id = free[3]
    stopped = model.generate(ids, max_new_tokens=30).new_tokens[0]
    assert stopped == free[: free.index(free[3]) + 1]
    model.lm.generation_config.do_sample = True  # only eos / pad / max_new_tokens are taken from the model
    assert model.generate(ids, max_new_tokens=30).new_tokens[0] == stopped
