"""int8 drafting weights (tjdnet.quantization): the quantisation, the layer, and what generate does with it."""

import pytest
import torch
from test_generate import build
from tiny_models import TINY_VOCAB
from torch import nn

from tjdnet import quantization
from tjdnet.commands.options import DecodingOptions
from tjdnet.decoding import TREE_MODE, mode_arguments
from tjdnet.kernels import OneDNNLinear
from tjdnet.quantization import (
    Int8Linear,
    available_int8_kernels,
    fastest_int8_kernel,
    int8_drafting,
    int8_kernel_times,
    int8_layers,
    int8_pays_off,
    int8_rows,
    resolve_draft_weights,
)

KERNELS = ["weight_only", "dynamic", None]  # None: the expanded copy


def use_kernel(monkeypatch, kernel: str | None) -> None:
    """Make every Int8Linear use ``kernel`` where it can compute the product (else the expanded copy)."""

    def chosen(dtype, outputs, inputs, threads):
        return kernel if kernel in available_int8_kernels(dtype, inputs) else None

    monkeypatch.setattr(quantization, "fastest_int8_kernel", chosen)


def test_int8_rows_is_within_half_a_step_of_each_weight():
    torch.manual_seed(0)
    weight = torch.randn(40, 70) * torch.logspace(-3, 2, 40)[:, None]  # rows of very different sizes
    weight[3] = 0
    q, scales = int8_rows(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scales.shape == (40,)
    assert q.abs().max() <= 127 and (q.abs().amax(1)[torch.arange(40) != 3] == 127).all()  # each row's range used
    error = (q.float() * scales[:, None] - weight).abs()
    assert (error <= scales[:, None] / 2 * (1 + 1e-5)).all()
    assert (q[3] == 0).all() and scales[3] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [(1,), (5,), (2, 3)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("inputs", [48, 40])  # the weight-only kernel needs a multiple of 16
@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_is_the_product_with_the_rounded_weight(monkeypatch, dtype, rows, bias, inputs, kernel):
    use_kernel(monkeypatch, kernel)
    torch.manual_seed(1)
    layer = nn.Linear(inputs, 24, bias=bias).to(dtype)
    shape = (*rows, inputs)
    x = torch.randn(shape).to(dtype)
    q, scales = int8_rows(layer.weight)
    rounded = q.double() * scales.double()[:, None]
    expected = x.double() @ rounded.T
    if bias:
        expected = expected + layer.bias.double()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    bound = tolerance * expected.abs().max().item()
    if kernel == "dynamic" and kernel in available_int8_kernels(dtype, inputs):
        # the input is quantised as well, per tensor to 7 bits: each element off by at most half a step
        step = (x.double().max().clamp_min(0) - x.double().min().clamp_max(0)).item() / 127
        bound += step / 2 * rounded.abs().sum(1).max().item()
    layer.__class__ = Int8Linear
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (*shape[:-1], 24) and out.dtype == dtype
    assert (out.double() - expected).abs().max() <= bound
    # and it is not the product with the float weight, which the int8 copy only approximates
    assert not torch.equal(out, nn.functional.linear(x, layer.weight, layer.bias))


def test_the_fastest_kernel_is_measured_among_those_that_apply():
    threads = torch.get_num_threads()
    assert available_int8_kernels(torch.float64, 64) == ()
    assert fastest_int8_kernel(torch.float64, 64, 64, threads) is None
    assert available_int8_kernels(torch.bfloat16, 64, "meta") == ()
    assert "weight_only" not in available_int8_kernels(torch.bfloat16, 40)  # 40 inputs: not a multiple of 16
    kernels = available_int8_kernels(torch.bfloat16, 64)
    times = int8_kernel_times(torch.bfloat16, 256, 64, threads)
    assert set(times) == {"model", *kernels} and all(t > 0 for t in times.values())
    fastest = fastest_int8_kernel(torch.bfloat16, 256, 64, threads)
    assert fastest in kernels if kernels else fastest is None


@pytest.mark.parametrize(
    ("times", "chosen"),
    [
        ({"weight_only": 1.0, "dynamic": 0.9}, "weight_only"),  # a near tie keeps the input as it is
        ({"weight_only": 1.0, "dynamic": 0.7}, "dynamic"),
        ({"weight_only": 1.0, "dynamic": 1.5}, "weight_only"),
        ({"dynamic": 2.0}, "dynamic"),  # the only one that applies
        ({"weight_only": 2.0}, "weight_only"),
    ],
)
def test_the_dynamic_kernel_must_be_clearly_faster(monkeypatch, times, chosen):
    monkeypatch.setattr(quantization, "available_int8_kernels", lambda dtype, inputs: tuple(times))
    monkeypatch.setattr(quantization, "_kernel_times", lambda *args: {"model": 3.0, **times})
    quantization._fastest_kernel.cache_clear()
    try:
        assert fastest_int8_kernel(torch.bfloat16, 32, 16, 1) == chosen
    finally:
        quantization._fastest_kernel.cache_clear()


@pytest.mark.skipif("qnnpack" not in torch.backends.quantized.supported_engines, reason="needs torch's qnnpack")
def test_another_quantised_engine_is_measured_again():
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    before = int8_kernel_times(torch.bfloat16, 256, 64, threads)
    try:
        torch.backends.quantized.engine = "qnnpack"  # no dynamic product of ours under it
        assert set(int8_kernel_times(torch.bfloat16, 256, 64, threads)) == {"model", "weight_only"}
        assert fastest_int8_kernel(torch.bfloat16, 256, 64, threads) == "weight_only"
    finally:
        torch.backends.quantized.engine = engine
    assert int8_kernel_times(torch.bfloat16, 256, 64, threads) == before  # the first engine's timings, cached


def test_int8_linear_trains_with_its_float_weight_and_requantises_after_a_change():
    torch.manual_seed(2)
    layer = nn.Linear(16, 8, bias=False)
    layer.__class__ = Int8Linear
    x = torch.randn(3, 16)
    out = layer(x)  # autograd on: the float weight, with its gradient
    assert torch.equal(out, x @ layer.weight.T)
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2)  # an in-place update (an optimiser step) makes a new int8 copy
        after = layer(x)
    assert torch.allclose(after, 2 * before, rtol=1e-5, atol=1e-5)
    assert set(layer.state_dict()) == {"weight"}  # the copy is not state


def test_int8_drafting_swaps_the_heads_layers_only_and_gives_them_back():
    model = build("llama", "eagle", 3)
    model.head.set_draft_vocab(list(range(0, TINY_VOCAB, 2)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = int8_layers(model.head)
    assert len(layers) == 7  # fuse, qkv, attn_out, mlp_in, mlp_out, out and the draft-vocabulary projection
    assert all(layer is not model.lm.get_output_embeddings() for layer in layers)
    classes = [type(layer) for layer in layers]
    with int8_drafting(model.head):
        assert all(type(layer) is Int8Linear for layer in layers)
        assert type(model.lm.get_output_embeddings()) in (nn.Linear, OneDNNLinear)  # it verifies: never swapped
    assert [type(layer) for layer in layers] == classes
    with int8_drafting(model.head, enabled=False):
        assert [type(layer) for layer in layers] == classes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("pays_off", [True, False])
def test_draft_weights_choice(monkeypatch, pays_off):
    monkeypatch.setattr(quantization, "int8_pays_off", lambda *args: pays_off)
    head = build("llama", "eagle", 3).head
    assert resolve_draft_weights("auto", "speculative", head) == pays_off
    assert resolve_draft_weights("int8", "draft", head) and resolve_draft_weights("int8", "speculative", head)
    for mode in ("draft", "draft_anchored", "ar"):
        assert not resolve_draft_weights("auto", mode, head)
    assert not resolve_draft_weights("model", "speculative", head) and not resolve_draft_weights("int8", "ar", head)
    bad_choices = (
        lambda: resolve_draft_weights("int4", "speculative", head),
        lambda: DecodingOptions(draft_weights="fp8"),
    )
    for bad in bad_choices:
        with pytest.raises(ValueError, match=r"draft_weights='(int4|fp8)'.*auto, int8, model"):
            bad()
    assert mode_arguments(TREE_MODE, draft_weights="model")["draft_weights"] == "model"
    with pytest.raises(ValueError, match="draft_weights"):
        build("llama", "eagle", 3).generate(
            torch.tensor([[5, 6, 7]]), gen_mode="speculative", max_new_tokens=2, draft_weights="int4"
        )


def test_int8_pays_off_is_a_measurement_only_where_a_kernel_applies():
    assert not int8_pays_off(torch.float64, 64, 64, torch.get_num_threads())  # no int8 kernel for float64
    assert isinstance(int8_pays_off(torch.bfloat16, 256, 64, torch.get_num_threads()), bool)


def counting_int8_products(monkeypatch) -> list[int]:
    calls = []
    forward = Int8Linear.forward

    def counted(self, x):
        calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(Int8Linear, "forward", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tree_nodes", [0, 6])
@pytest.mark.parametrize("kernel", KERNELS)
def test_speculative_decoding_drafts_with_int8_weights_and_stays_lossless(monkeypatch, dtype, tree_nodes, kernel):
    monkeypatch.setattr(quantization, "int8_pays_off", lambda *args: True)  # auto: as on a CPU where int8 wins
    use_kernel(monkeypatch, kernel)
    model = build("llama", "eagle", 4, perturb=0.05).to(dtype)
    model.head.set_draft_vocab(list(range(0, TINY_VOCAB, 2)))
    prompts = torch.tensor([[5, 17, 33, 8], [9, 4, 21, 30]])
    calls = counting_int8_products(monkeypatch)
    ar = model.generate(prompts, gen_mode="ar", max_new_tokens=24).sequences
    assert not calls
    runs = {}
    for weights in ("auto", "int8", "model"):
        calls.clear()
        out = model.generate(
            prompts, gen_mode="speculative", max_new_tokens=24, tree_nodes=tree_nodes, draft_weights=weights
        )
        assert torch.equal(out.sequences, ar)
        assert bool(calls) == (weights != "model")
        runs[weights] = [(r.drafted, r.accepted) for r in out.stats.rows]
    assert runs["auto"] == runs["int8"]


def test_draft_mode_keeps_the_heads_weights_unless_int8_is_asked_for(monkeypatch):
    model = build("llama", "eagle", 3)
    calls = counting_int8_products(monkeypatch)
    prompt = torch.tensor([[5, 17, 33, 8]])
    model.generate(prompt, gen_mode="draft", max_new_tokens=6)
    assert not calls
    model.generate(prompt, gen_mode="draft", max_new_tokens=6, draft_weights="int8")
    assert calls


@pytest.mark.parametrize("offset", [1, 2, 8])
@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_reads_inputs_that_a_view_left_unaligned(monkeypatch, offset, kernel):
    # torch's bfloat16 weight-only int8 kernel crashes on an input starting a few elements into its storage
    use_kernel(monkeypatch, kernel)
    torch.manual_seed(3)
    layer = nn.Linear(32, 32, bias=False).to(torch.bfloat16)
    x = torch.randn(4 * 32 + offset).to(torch.bfloat16)[offset:].view(4, 32)
    layer.__class__ = Int8Linear
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x.clone()))
