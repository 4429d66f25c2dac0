"""``tjdnet generate``: bad arguments are one-line errors before any model loads."""

import pytest

from tjdnet.commands.generate import run_generate


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ckpt_path": "a.ckpt", "model": "gpt2"}, "not both"),
        ({"prompt": "caf\udce9"}, "not valid UTF-8"),
        ({"num_threads": -1}, "num_threads=-1 is not allowed"),
        ({"gen_mode": "beam"}, "unknown gen_mode 'beam'"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 is not allowed"),
    ],
)
def test_bad_generate_arguments(kwargs, match, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("tjdnet.commands.generate.load_for_decoding", never)
    with pytest.raises(ValueError, match=match):
        run_generate(**{"prompt": "hi", **kwargs})
