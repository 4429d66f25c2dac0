"""``tjdnet bench-heads`` on a tiny vocabulary: every field, the rank-1 rule, chunking bounds memory."""

import json
from dataclasses import replace

import pytest

from tjdnet.commands.bench_heads import HeadCase, measure_head, measure_in_child, run_bench_heads

CONFIG_FIELDS = (
    "head",
    "rank",
    "horizon",
    "vocab",
    "positions",
    "parameters",
    "fraction_of_backbone",
    "peak_loss_memory_mib",
    "time_s",
    "memory_method",
)


def test_bench_heads_returns_every_field(tmp_path):
    out = tmp_path / "heads.json"
    payload = run_bench_heads(
        heads="multihead,cp,mps", ranks="1,2", horizons="2,3", vocab=64, hidden=16, hidden_dim=8, batch=2,
        seq_len=8, iters=2, chunking="cp:2:2", backbone_params=1000, num_threads=1, out=out, isolate=False,
    )  # fmt: skip
    assert json.loads(out.read_text())["configs"] == payload["configs"]
    configs = payload["configs"]
    # multihead only at rank 1: 2 horizons x (1 multihead + 2 cp ranks + 2 mps ranks).
    assert sorted((c["head"], c["rank"], c["horizon"]) for c in configs) == sorted(
        [("multihead", 1, h) for h in (2, 3)] + [(n, r, h) for n in ("cp", "mps") for r in (1, 2) for h in (2, 3)]
    )
    for config in configs:
        assert all(field in config for field in CONFIG_FIELDS)
        assert config["positions"] == 16 and config["peak_loss_memory_mib"] >= 0
        assert config["fraction_of_backbone"] == config["parameters"] / 1000
        assert 0 < config["time_s"]["min"] <= config["time_s"]["median"] <= config["time_s"]["max"]
    cp = {(c["rank"], c["horizon"]): c["parameters"] for c in configs if c["head"] == "cp"}
    assert cp[(2, 3)] > cp[(2, 2)] > cp[(1, 2)]  # R x H adapters
    (row,) = payload["chunking"]
    assert (row["head"], row["rank"], row["horizon"]) == ("cp", 2, 2)
    assert row["logits_mib_if_materialised"] == 16 * 4 * 64 * 4 / 2**20


def test_child_process_measures_the_same_head():
    case = HeadCase("mps", rank=2, horizon=2, vocab=64, hidden=16, hidden_dim=8, positions=16, iters=1, num_threads=1)
    child, here = measure_in_child(case), measure_head(case)
    assert child["parameters"] == here["parameters"]
    assert child["memory_method"] == "VmHWM - VmRSS after clear_refs"


def test_chunking_bounds_the_loss_memory():
    # 256 positions x 16 components x 4096 words = 64 MiB of float32 logits if materialised at once.
    case = HeadCase("cp", 4, 4, vocab=4096, hidden=16, hidden_dim=8, positions=256, iters=1, num_threads=1)
    chunked = measure_in_child(replace(case, loss_chunk_elements=2**20))
    unchunked = measure_in_child(replace(case, loss_chunk_elements=2**40))
    assert unchunked["peak_loss_memory_mib"] > 64
    assert chunked["peak_loss_memory_mib"] < unchunked["peak_loss_memory_mib"] / 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ranks": "0,2"}, "--ranks"),
        ({"horizons": "a"}, "--horizons"),
        ({"heads": "cp,tt"}, "unknown head 'tt'"),
        ({"vocab": 0}, "--vocab=0"),
        ({"chunking": "cp:2"}, "head:rank:horizon"),
    ],
)
def test_bad_input_is_a_one_line_value_error(tmp_path, overrides, message):
    kwargs = {"vocab": 64, "hidden": 16, "batch": 1, "seq_len": 4, "out": tmp_path / "h.json", "isolate": False}
    with pytest.raises(ValueError, match=message) as error:
        run_bench_heads(**{**kwargs, **overrides})
    assert "\n" not in str(error.value)
