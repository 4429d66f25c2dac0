"""The sampling layer's argmax: the same index as torch's, however the maximum is placed or tied."""

import pytest
import torch

from tjdnet.sampling import ARGMAX_BLOCK, argmax


def _rows(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if kind == "random":
        return torch.randn(shape, generator=generator)
    if kind == "ties":  # few distinct values: the maximum recurs in many blocks and within blocks
        return torch.randint(0, 3, shape, generator=generator).float()
    if kind == "equal":
        return torch.zeros(shape)
    if kind == "last":  # the maximum at the very end, in a short last block when V is no multiple of the block
        scores = torch.randn(shape, generator=generator)
        scores[..., -1] = 10.0
        return scores
    if kind == "masked":  # -inf everywhere but a few entries, as after top-k filtering
        scores = torch.full(shape, float("-inf"))
        scores[..., -3] = 1.0
        scores[..., min(ARGMAX_BLOCK + 1, shape[-1] - 5)] = 1.0
        return scores
    scores = torch.randn(shape, generator=generator)  # "nan": torch counts NaN as the maximum
    scores[..., -1] = float("nan")
    scores.view(-1, shape[-1])[0, min(ARGMAX_BLOCK + 7, shape[-1] - 5)] = float("nan")
    return scores


@pytest.mark.parametrize("kind", ["random", "ties", "equal", "masked", "last", "nan"])
@pytest.mark.parametrize(
    "shape", [(9, 96 * ARGMAX_BLOCK), (2, 3, 4 * ARGMAX_BLOCK), (5, 2 * ARGMAX_BLOCK), (3, 1000), (2, 50257), (4, 300)]
)
def test_argmax_is_torchs_argmax(kind, shape):
    scores = _rows(kind, shape)
    assert torch.equal(argmax(scores), scores.argmax(dim=-1))
    strided = scores.transpose(0, -1).contiguous().transpose(0, -1)  # the same values in another memory layout
    assert torch.equal(argmax(strided), scores.argmax(dim=-1))


def test_argmax_of_a_slice_reads_where_the_slice_starts():
    scores = torch.randn(3, 5, 50257, generator=torch.Generator().manual_seed(1))
    for k in range(5):  # as decoding reads a pass's log-probs at one position: an offset, strided view
        assert torch.equal(argmax(scores[:, k]), scores[:, k].argmax(dim=-1))
        assert torch.equal(argmax(scores[1:, k, 3:]), scores[1:, k, 3:].argmax(dim=-1))


def test_argmax_of_no_rows():
    assert argmax(torch.zeros(0, 4 * ARGMAX_BLOCK)).shape == (0,)
