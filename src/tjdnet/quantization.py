"""int8 weights for drafting: the head's matrix products read 8-bit copies of its weights.

A drafting step is a handful of few-row products (M = the tree's nodes at one depth) whose cost on a CPU is reading
the weights: an EAGLE-style drafter with an 8,192-token draft vocabulary reads ~16 MB of bfloat16 weights per
depth. With each weight row stored as int8 and one scale (symmetric, per output row), an int8 product reads half
the bytes of bfloat16. torch has two CPU kernels for it, and each layer uses the one that is faster for its shape
on this machine (:func:`int8_kernel_times`, measured once per process and shape; ``dynamic`` only where clearly so):

- ``weight_only`` (``aten._weight_int8pack_mm``): the input stays in its dtype, the weights are widened on the fly;
  fast for small layers, slower as rows are added.
- ``dynamic`` (fbgemm's ``quantized::linear_dynamic``): the input is quantised too (per tensor, 7-bit), the
  product runs on 8-bit integers; several times faster for the draft-vocabulary product.

Measured on the 2-core AMD EPYC of our CI (2 threads, M = 4, bfloat16): the (576 -> 8,192) draft-vocabulary product
540 us in bfloat16, 340 weight-only, 123 dynamic; the (576 -> 576) product 68, 36 and 53 us. Both kernels are fast
only where torch vectorised them (the weight-only kernel: bfloat16 on AVX-512 CPUs; float32 and float16 are 4-10x
slower than their own products there), so ``auto`` compares the int8 products with the head's own once per process
(:func:`int8_pays_off`) and drafts in int8 only where it wins.

Verification never reads these weights: in ``speculative`` decoding the quantised head changes which tokens are
proposed (rarely: the rounding is ~0.4% of a row's largest weight, ~1% of the input's range), never the output, and
sampled outputs keep their distribution (acceptance uses the drafted distribution the int8 products gave). In
``draft`` modes the head's tokens are the output, so there the head keeps its own weights unless int8 is asked for.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from tjdnet.checks import check_choice
from tjdnet.kernels import use_onednn_linears, weight_state

DRAFT_WEIGHTS = ("auto", "int8", "model")
LOSSLESS_MODES = ("speculative",)
_INT8_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALIGNMENT = 64  # bytes; a fresh CPU tensor is aligned so
# torch 2.13's bfloat16 int8 kernel gives wrong sums or crashes unless the inner dimension is a multiple of 16
# (float32 and float16 were right for every size we tried); other sizes take the expanded copy
_FUSED_K_MULTIPLE = 16
_CACHE = "_tjdnet_int8"  # the layer's _Int8Copy


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation of ``weight`` (N, K): (q (N, K) int8, scales (N,) float32) with
    ``weight ~= q * scales[:, None]``, each element off by at most half its row's scale (an all-zero row gets
    scale 1 and zeros)."""
    w = weight.detach().float()
    largest = w.abs().amax(dim=-1)
    scales = torch.where(largest > 0, largest / 127, torch.ones_like(largest))
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def check_draft_weights(draft_weights: object) -> None:
    check_choice("draft_weights", draft_weights, DRAFT_WEIGHTS)


def resolve_draft_weights(draft_weights: str, gen_mode: str, head: nn.Module) -> bool:
    """Whether ``head`` drafts with int8 weights in ``gen_mode``: ``int8`` always, ``model`` never, ``auto`` in the
    lossless modes (where it can change the speed only) when :func:`int8_pays_off` for the head's largest layer;
    never in ``ar``, which does not draft."""
    check_draft_weights(draft_weights)
    if gen_mode == "ar" or draft_weights == "model":
        return False
    if draft_weights == "int8":
        return True
    if gen_mode not in LOSSLESS_MODES:
        return False
    layers = int8_layers(head)
    if not layers:
        return False
    largest = max(layers, key=lambda layer: layer.weight.numel()).weight
    if largest.device.type != "cpu":
        return False
    return int8_pays_off(largest.dtype, *largest.shape, torch.get_num_threads())


INT8_KERNELS = ("weight_only", "dynamic")
TIMED_ROWS = 4  # rows of the products the kernels are timed with: a depth of the shipped head's trees
_DYNAMIC_ENGINES = ("x86", "fbgemm")  # torch's quantised engines with a per-row int8 dynamic product


def available_int8_kernels(dtype: torch.dtype, inputs: int, device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Those of ``INT8_KERNELS`` that can compute a product of ``dtype`` inputs of size ``inputs`` on ``device``
    (none: the expanded copy of the weight is used instead)."""
    if torch.device(device).type != "cpu" or dtype not in _INT8_DTYPES:
        return ()
    kernels = []
    if inputs % _FUSED_K_MULTIPLE == 0:
        kernels.append("weight_only")
    if torch.backends.quantized.engine in _DYNAMIC_ENGINES and hasattr(torch.ops.quantized, "linear_dynamic"):
        kernels.append("dynamic")
    return tuple(kernels)


def int8_kernel_times(
    dtype: torch.dtype, outputs: int, inputs: int, threads: int, rows: int = TIMED_ROWS
) -> dict[str, float]:
    """Best seconds of a (rows, inputs) x (inputs, outputs) product on this CPU with ``threads`` threads: ``model``
    (in ``dtype``, through oneDNN as generate computes the head's float products: tjdnet.kernels) and each of
    :func:`available_int8_kernels` (measured once per process and shape: ~0.3 s in all for the shipped head's six
    shapes, most of it the 8,192 x 576 draft-vocabulary product's random weight and int8 copies; measured again
    under another quantised engine, ``torch.backends.quantized.engine``, which decides the dynamic kernel)."""
    return _kernel_times(dtype, outputs, inputs, threads, rows, torch.backends.quantized.engine)


@functools.lru_cache
def _kernel_times(dtype: torch.dtype, outputs: int, inputs: int, threads: int, rows: int, engine: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    plain = nn.Linear(inputs, outputs, bias=False, dtype=dtype)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(outputs, inputs, generator=generator))
    use_onednn_linears(plain)
    x = torch.randn(rows, inputs, generator=generator).to(dtype)
    products = {"model": plain}
    for kernel in available_int8_kernels(dtype, inputs):  # the kernels share the layer's one int8 copy
        products[kernel] = functools.partial(_int8_product, plain, kernel)
    times = {name: [] for name in products}
    with torch.inference_mode():
        for round_ in range(6):
            for name, product in products.items():
                start = time.perf_counter()
                product(x)
                if round_ > 0:  # the first round warms up (and makes the int8 copies)
                    times[name].append(time.perf_counter() - start)
    return {name: min(spent) for name, spent in times.items()}


def fastest_int8_kernel(dtype: torch.dtype, outputs: int, inputs: int, threads: int) -> str | None:
    """The faster of :func:`available_int8_kernels` on CPU for this product shape (None where there is none);
    ``dynamic`` only where it takes under :data:`DYNAMIC_MARGIN` of ``weight_only``'s time."""
    return _fastest_kernel(dtype, outputs, inputs, threads, torch.backends.quantized.engine)


# ``dynamic`` also rounds the input, so it is taken only where it is clearly faster than ``weight_only``: on a near
# tie (the shipped head's 1728 x 576 product: 1.00-1.07x) a per-run timing would pick either, and the drafts (not
# the output) would differ from run to run
DYNAMIC_MARGIN = 0.8
_TIME_WEIGHTS = {"dynamic": 1 / DYNAMIC_MARGIN}  # what each kernel's measured time counts for in the choice


@functools.lru_cache  # asked on every int8 product: one look-up
def _fastest_kernel(dtype: torch.dtype, outputs: int, inputs: int, threads: int, engine: str) -> str | None:
    if not available_int8_kernels(dtype, inputs):
        return None
    times = _kernel_times(dtype, outputs, inputs, threads, TIMED_ROWS, engine)
    kernels = [k for k in times if k != "model"]
    return min(kernels, key=lambda k: times[k] * _TIME_WEIGHTS.get(k, 1.0)) if kernels else None


def int8_pays_off(dtype: torch.dtype, outputs: int, inputs: int, threads: int) -> bool:
    """Whether, on this CPU with ``threads`` threads, a 4-row product of this shape is at least 10% faster through
    its fastest int8 kernel than in ``dtype`` (:func:`int8_kernel_times`). On an AVX-512-bf16 AMD EPYC bfloat16's
    draft-vocabulary product takes a quarter of oneDNN's time (dynamic); float32 and float16 vary by shape."""
    kernel = fastest_int8_kernel(dtype, outputs, inputs, threads)
    if kernel is None:
        return False
    times = int8_kernel_times(dtype, outputs, inputs, threads)
    return times[kernel] < 0.9 * times["model"]


def _int8_product(layer: nn.Linear, kernel: str, flat: torch.Tensor) -> torch.Tensor:
    """(M, N) product of ``layer``'s int8 copy with rows ``flat`` (M, K) through a fused ``kernel``, no bias."""
    copy_ = _int8_copy(layer)
    if kernel == "dynamic":
        if copy_.packed is None:
            copy_.packed = torch.ops.quantized.linear_prepack(copy_.per_channel(), None)
        return torch.ops.quantized.linear_dynamic(flat.float(), copy_.packed, True).to(flat.dtype)
    flat = flat.contiguous()
    if flat.data_ptr() % _ALIGNMENT:  # the kernel's vector loads crash on an input a view left unaligned
        flat = flat.clone()
    return torch.ops.aten._weight_int8pack_mm(flat, copy_.q, copy_.scales_as(flat.dtype))


class _Int8Copy:
    """A layer's int8 copy: q (N, K) int8, scales (N,) float32, made from the weight as ``source`` says
    (:func:`tjdnet.kernels.weight_state`), with what the kernels derive from it made on first use."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.source = weight_state(weight)
        self.q, self.scales = int8_rows(weight)
        self.packed = None  # fbgemm's packed form, for the dynamic kernel
        self._scales: dict[torch.dtype, torch.Tensor] = {}
        self._expanded: dict[torch.dtype, torch.Tensor] = {}

    def scales_as(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._scales:
            self._scales[dtype] = self.scales.to(dtype)
        return self._scales[dtype]

    def expanded_as(self, dtype: torch.dtype) -> torch.Tensor:
        """(N, K) the rounded weight q * scales in ``dtype``, for products no fused kernel computes."""
        if dtype not in self._expanded:
            self._expanded[dtype] = (self.q.to(torch.float32) * self.scales[:, None]).to(dtype)
        return self._expanded[dtype]

    def per_channel(self) -> torch.Tensor:
        """q as a per-row quantised tensor, with the scales the weight-only kernel would read (float32)."""
        zeros = torch.zeros(len(self.scales), dtype=torch.long)
        with warnings.catch_warnings():  # torch deprecates quantised tensors; 2.13 (pinned) still needs one here
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            return torch._make_per_channel_quantized_tensor(self.q, self.scales.double(), zeros, 0)


def _int8_copy(layer: nn.Linear) -> _Int8Copy:
    cached = getattr(layer, _CACHE, None)
    if cached is None or cached.source != weight_state(layer.weight):
        cached = _Int8Copy(layer.weight)
        object.__setattr__(layer, _CACHE, cached)  # not a buffer: stays out of the state dict
    return cached


class Int8Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose products without autograd read an int8 copy of the
    weight, made on first use and again when the weight changes (values, dtype or device).

    On CPU the product runs through the faster fused int8 kernel for the layer's shape (:func:`fastest_int8_kernel`);
    where there is none (another device, another dtype) the copy is expanded to the input's dtype (the same numbers
    as ``weight_only``, without the speed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _INT8_DTYPES or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        flat = x.reshape(-1, x.shape[-1])
        kernel = None
        if flat.shape[0] > 0 and x.device.type == "cpu":
            kernel = fastest_int8_kernel(x.dtype, *self.weight.shape, torch.get_num_threads())
        if kernel is not None:
            out = _int8_product(self, kernel, flat)
        else:
            out = nn.functional.linear(flat, _int8_copy(self).expanded_as(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def int8_layers(head: nn.Module) -> list[nn.Linear]:
    """The row-wise product layers a head drafts with: its own ``nn.Linear`` layers (and subclasses) and its
    draft-vocabulary projection, never the backbone's embeddings it shares (those also verify)."""
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if getattr(head, "draft_vocab", None) is not None:
        layers.append(head.draft_unembedding())
    return layers


@contextlib.contextmanager
def int8_drafting(head: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block the head's product layers (:func:`int8_layers`) compute as :class:`Int8Linear`; they get
    their own classes back afterwards. Does nothing unless ``enabled``."""
    layers = int8_layers(head) if enabled else []
    classes = [type(layer) for layer in layers]
    for layer in layers:
        layer.__class__ = Int8Linear
    try:
        yield
    finally:
        for layer, cls in zip(layers, classes, strict=True):
            layer.__class__ = cls
