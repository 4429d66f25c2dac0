import pytest
import torch
from torch import nn

from tjdnet.kernels import LINEAR_KERNEL_ENV, OneDNNLinear, cpu_kernels, flushed_denormals, use_onednn_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 16), (5, 16), (2, 3, 16)])
def test_onednn_linear_matches_nn_linear(dtype, bias, shape):
    torch.manual_seed(0)
    reference = nn.Linear(16, 40, bias=bias).to(dtype)
    fast = nn.Linear(16, 40, bias=bias).to(dtype)
    fast.load_state_dict(reference.state_dict())
    assert use_onednn_linears(fast) == 1 and isinstance(fast, OneDNNLinear)
    x = torch.randn(*shape, dtype=dtype)
    with torch.no_grad():
        expected, got = reference(x), fast(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert got.shape == expected.shape and got.dtype == dtype
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_gradients_still_flow():
    layer = nn.Linear(8, 4)
    use_onednn_linears(layer)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_frozen_layer_with_grad_input_keeps_autograd():
    layer = nn.Linear(8, 4).requires_grad_(False)
    use_onednn_linears(layer)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None


def test_trainable_bias_alone_keeps_autograd():
    layer = nn.Linear(8, 4)
    layer.weight.requires_grad_(False)
    use_onednn_linears(layer)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.bias.grad is not None


def test_switch_counts_and_state_dict_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    keys = set(model.state_dict())
    assert use_onednn_linears(model) == 2
    assert set(model.state_dict()) == keys
    assert use_onednn_linears(model) == 0  # already switched


def test_cpu_kernels_are_scoped_to_the_block(monkeypatch):
    """Nothing of the caller's model or process stays changed after the block, nested blocks included."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    keys = set(model.state_dict())
    tiny = torch.tensor([1e-40])  # a float32 denormal
    with cpu_kernels(model):
        assert all(type(m) is OneDNNLinear for m in model if isinstance(m, nn.Linear))
        assert set(model.state_dict()) == keys
        with cpu_kernels(model), flushed_denormals():
            assert (tiny * 1).item() == 0.0
        assert (tiny * 1).item() == 0.0  # the outer block still flushes
    assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))
    assert (tiny * 1).item() != 0.0
    monkeypatch.setenv(LINEAR_KERNEL_ENV, "default")
    with cpu_kernels(model):
        assert all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))
