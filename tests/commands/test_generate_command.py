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


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "--prompt", "hi", "--max_new_tokens", "abc"], "--max_new_tokens: expected int, got 'abc'"),
        (["test", "--ckpt_path", "x", "--batch_size", "1.5"], "--batch_size: expected int, got '1.5'"),
        (["bench", "--model", "m", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_malformed_options_are_one_line_errors(args, message, capsys):
    from tjdnet.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tjdnet: error: {message}"
