"""Model loading: aliases, local directories, errors; the embedded SmolLM2 offline (slow)."""

import time

import pytest
import torch

from tjdnet.loading import gpt2_tokenizer, load_causal_lm, parse_dtype


def test_parse_dtype():
    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'; allowed: float32, bfloat16, float16"):
        parse_dtype("float8")


def test_unknown_model_gives_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_causal_lm(str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert "no-such-model" in message and "smollm2-135m" in message and "\n" not in message


def test_local_directory_loads_in_requested_dtype(tiny_lm_dir):
    model, tokenizer = load_causal_lm(tiny_lm_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype is torch.bfloat16
    assert not model.training
    assert tokenizer.pad_token is not None


def test_gpt2_tokenizer_is_real_gpt2():
    tokenizer = gpt2_tokenizer()
    assert len(tokenizer) == 50257
    ids = tokenizer("hello world")["input_ids"]
    assert ids == [31373, 995]
    assert tokenizer.decode(ids) == "hello world"


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_and_next_token_head_matches():
    from tjdnet.model import TJDConfig, TJDModel

    model, tokenizer = load_causal_lm("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.chat_template
    start = time.perf_counter()
    load_causal_lm("smollm2-135m")
    assert time.perf_counter() - start < 10  # the safetensors cache is reused, no second conversion
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    tjd = TJDModel(model, TJDConfig(base_model="smollm2-135m", head="cp", horizon=2, rank=2))
    with torch.no_grad():
        expected = model(ids).logits
        got = tjd.next_token_logits(tjd.hidden_states(ids))
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected)
    assert tokenizer.decode(expected[0, -1].argmax()).strip() == "Paris"
