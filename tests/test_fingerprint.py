"""Every trained head records the base model it was trained on and refuses another one."""

import shutil

import pytest
import torch
from tiny_models import head_only_config, make_tiny_lm

from tjdnet.fingerprint import base_fingerprint, check_base
from tjdnet.loading import load_causal_lm
from tjdnet.model import TJDModel


def test_the_same_weights_match_in_any_dtype_and_changed_ones_do_not():
    lm = make_tiny_lm("llama")
    fp = base_fingerprint(lm, "m")
    assert base_fingerprint(make_tiny_lm("llama").to(torch.bfloat16), "m") == fp
    check_base(fp, base_fingerprint(make_tiny_lm("llama"), "m"), "head")
    check_base(None, fp, "an old head")  # files written before fingerprints are not checked
    with torch.no_grad():
        lm.get_input_embeddings().weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="head was trained on 'm', whose weights have changed"):
        check_base(fp, base_fingerprint(lm, "m"), "head")
    with pytest.raises(ValueError, match=r"head was trained on 'm' \(hidden size \d+, vocabulary \d+\), not on"):
        check_base(fp, base_fingerprint(make_tiny_lm("gpt2"), "m"), "head")


def test_a_saved_head_refuses_a_base_model_whose_weights_changed(tiny_lm_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_lm_dir, base)
    lm, _ = load_causal_lm(str(base))
    TJDModel(lm, head_only_config(model=str(base), horizon=2)).save_pretrained(tmp_path / "head")
    assert TJDModel.from_pretrained(tmp_path / "head").base_fingerprint["model"] == str(base)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(1.5)
    lm.save_pretrained(base)  # the same path now holds other weights
    with pytest.raises(ValueError, match="whose weights have changed since") as error:
        TJDModel.from_pretrained(tmp_path / "head")
    assert "\n" not in str(error.value)
