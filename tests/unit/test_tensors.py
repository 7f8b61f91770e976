"""Tensors between stages: lossless packing (bfloat16 included), padding of variable-length rows."""

import numpy as np
import pytest
import torch

from latentmill.models import tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_pack_round_trips_bit_exact(dtype):
    value = (torch.randn(3, 5) * 100).to(dtype)
    back = tensors.to_torch(tensors.unpack(tensors.pack(tensors.to_numpy(value))))
    assert back.dtype == dtype and back.shape == value.shape
    assert torch.equal(back, value)


def test_a_missing_value_packs_to_nothing():
    assert tensors.pack(None) == b"" and tensors.unpack(b"") is None


def test_bfloat16_costs_half_of_float32_on_the_wire():
    value = torch.randn(77, 64)
    assert len(tensors.pack(tensors.to_numpy(value.bfloat16()))) < 0.55 * len(tensors.pack(tensors.to_numpy(value)))
    widened = tensors.as_float32(tensors.to_numpy(value.bfloat16()))
    assert widened.dtype == np.float32 and np.array_equal(widened, value.bfloat16().float().numpy())
    mask = np.ones(4, dtype=np.int64)
    assert tensors.as_float32(mask) is mask  # masks and ids keep their type


def test_rows_of_different_lengths_are_zero_padded_at_the_end():
    short, long = np.ones((2, 3), dtype=np.float32), np.full((4, 3), 2, dtype=np.float32)
    batch = tensors.stack_rows([short, long])
    assert batch.shape == (2, 4, 3)
    assert torch.equal(batch[0, :2], torch.ones(2, 3)) and torch.equal(batch[0, 2:], torch.zeros(2, 3))
    masks = tensors.stack_rows([np.ones(2, dtype=np.int64), np.ones(4, dtype=np.int64)])
    assert masks.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_rows_of_a_batch_tensor_or_a_list():
    assert [row.shape for row in tensors.rows_of(torch.zeros(2, 5, 3), 2)] == [(5, 3), (5, 3)]
    assert [row.shape for row in tensors.rows_of([torch.zeros(4, 3), torch.zeros(6, 3)], 2)] == [(4, 3), (6, 3)]
    assert tensors.rows_of(None, 3) == [None, None, None]
