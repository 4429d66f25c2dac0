"""Row-invariant products: inside row_invariant_products a row gets the same bits however many rows came with it."""

import threading

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from tiny_models import perturb_lora_b
from torch import nn
from transformers.pytorch_utils import Conv1D

from tjdnet import row_invariance
from tjdnet.kernels import use_onednn_linears
from tjdnet.row_invariance import INVARIANT_ROWS, in_row_blocks, row_invariant_products

ROWS = [1, 2, 5, INVARIANT_ROWS[1], INVARIANT_ROWS[1] + 1, 48, 70]


def layer_of(kind: str, k: int, n: int) -> nn.Module:
    torch.manual_seed(k + n)
    if kind == "conv1d":  # GPT-2's transposed linear layer
        layer = Conv1D(n, k)
        nn.init.normal_(layer.weight, std=k**-0.5)
        return layer.to(torch.bfloat16)
    layer = nn.Linear(k, n).to(torch.bfloat16)
    if kind == "onednn":
        use_onednn_linears(layer)
    return layer


@pytest.mark.parametrize("kind", ["linear", "onednn", "conv1d"])
@pytest.mark.parametrize("k, n", [(576, 1536), (1536, 576), (2048, 1024)])
def test_each_bfloat16_row_gets_the_bits_of_its_own_product(kind, k, n):
    """K = 1536 and 2048 are where a one-row oneDNN product sums in another order on an AVX-512-bf16 EPYC (a few
    outputs in 10^4 differ there without row_invariant_products), and 33+ rows where an AMX Xeon switches kernels."""
    layer = layer_of(kind, k, n)
    x = torch.randn(max(ROWS), k, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), row_invariant_products(layer):
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        for rows in ROWS:
            assert torch.equal(layer(x[:rows]), alone[:rows]), f"{rows} rows"
        assert torch.equal(layer(x[:10].view(2, 5, k)), alone[:10].view(2, 5, n))  # leading dimensions flattened


def test_products_only_ever_see_an_allowed_number_of_rows():
    weight = torch.randn(8, 3, dtype=torch.float64)
    for count in [0, 1, 2, 3, 7, 8, 9, 17, 25]:
        seen: list[int] = []

        def product(rows: torch.Tensor, seen=seen) -> torch.Tensor:
            seen.append(len(rows))
            return rows @ weight.T

        x = torch.randn(count, 3, dtype=torch.float64)
        out = in_row_blocks(product, x, (2, 8))
        assert torch.equal(out, x @ weight.T) and out.shape == (count, 8)
        assert all(2 <= rows <= 8 for rows in seen) or count == 0


def test_inputs_that_need_a_gradient_keep_the_whole_product():
    seen = []

    class Recording(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return super().forward(x)

    layer = Recording(4, 3).to(torch.bfloat16)
    with row_invariant_products(layer):
        layer(torch.randn(40, 4, dtype=torch.bfloat16, requires_grad=True))
        with torch.no_grad():
            layer(torch.randn(40, 4, dtype=torch.bfloat16))
    assert seen == [40, 32, 8]


@pytest.mark.parametrize("k, n", [(576, 576), (1536, 576)])
def test_each_float32_row_gets_the_bits_of_its_own_oneDNN_product(k, n):
    """float32 (exact decoding asked for): oneDNN multiplies one row alone in another order than 2-40 rows."""
    layer = layer_of("onednn", k, n).float()
    x = torch.randn(40, k, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), row_invariant_products(layer):
        alone = torch.cat([layer(x[i : i + 1]) for i in range(40)])
        assert all(torch.equal(layer(x[:rows]), alone[:rows]) for rows in [2, 5, 32, 40])


def test_wrapping_is_scoped_nested_and_restores_a_layer_own_forward():
    layer = nn.Linear(4, 3).to(torch.bfloat16)
    own = layer.forward
    layer.forward = lambda x: own(x) * 0  # an instance-level forward of the user's (a hook library, say)
    mine = layer.__dict__["forward"]
    with row_invariant_products(layer):
        with row_invariant_products(nn.Sequential(layer)):
            pass
        assert layer.__dict__["forward"] is not mine  # still wrapped after the inner block
        assert layer(torch.randn(1, 4, dtype=torch.bfloat16)).eq(0).all()  # ... around the user's forward
    assert layer.__dict__["forward"] is mine
    assert set(layer.__dict__) - {"forward"} == set(nn.Linear(4, 3).__dict__)


def test_other_threads_keep_their_products():
    seen = []
    with row_invariant_products(nn.Linear(2, 2)):
        other = threading.Thread(target=lambda: seen.append(row_invariance._active.depth))
        other.start()
        other.join()
        assert row_invariance._active.depth == 1
    assert seen == [0] and row_invariance._active.depth == 0


@pytest.mark.parametrize("merged", [False, True])
def test_lora_layers_are_row_invariant_merged_or_not(merged):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(2048, 576))
    model = inject_adapter_in_model(LoraConfig(r=8, target_modules=["proj"]), model)
    perturb_lora_b(model, std=0.05)
    model = model.to(torch.bfloat16)
    if merged:
        model.proj.merge()
    wrapped = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(wrapped) == 3  # the base layer and both adapter matrices
    x = torch.randn(40, 2048, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), row_invariant_products(model):
        alone = torch.cat([model(x[i : i + 1]) for i in range(40)])
        assert torch.equal(model(x), alone) and torch.equal(model(x[:3]), alone[:3])
