"""Clients' tensors are read as exactly one .npy array each, without a copy."""

import io

import numpy as np
import pytest
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from strategies.tensors import read_array, read_arrays


def npy(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.array(7, dtype=np.int64),
    np.zeros((0, 3), dtype=np.float32),
    np.array([True, False]),
    np.arange(5, dtype=">f4"),
]


def test_what_flower_writes_reads_back_as_flowers_own_reader_reads_it():
    parameters = ndarrays_to_parameters(ARRAYS)
    ours, flowers = read_arrays(parameters), parameters_to_ndarrays(parameters)
    for got, want in zip(ours, flowers, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert not ours[0].flags.writeable  # a view of the reply's bytes, not a copy
    assert np.shares_memory(ours[0], np.frombuffer(parameters.tensors[0], dtype=np.uint8))


def npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    return buffer.getvalue()


@pytest.mark.parametrize("blob, message", [
    (npz(), "magic"),  # np.load would open the archive and return an NpzFile
    (npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), "object arrays"),
    (npy(np.zeros(4, np.float32))[:-1], "15 data bytes for 4 values of float32"),
    (npy(np.zeros(4, np.float32)) + b"\0", "17 data bytes for 4 values of float32"),
    (b"\x93NUMPY\x03\x00" + npy(np.zeros(2))[8:], "format 3.0 is not accepted"),
    (b"not an array at all", "magic"),
    (b"", "EOF: reading magic string"),
])
def test_anything_but_one_npy_array_is_refused(blob, message):
    with pytest.raises(ValueError, match=message):
        read_array(blob)
    with pytest.raises(ValueError):
        read_arrays(Parameters(tensors=[npy(np.zeros(2)), blob], tensor_type="numpy.ndarray"))
