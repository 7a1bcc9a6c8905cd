"""A client's tensors as arrays: the `.npy` bytes of Flower's `Parameters`, read strictly
and without copying.

Flower's `parameters_to_ndarrays` hands each tensor to `np.load`, which also opens a
`.npz` archive (returning an `NpzFile`, which is not an array: a screen that then asks
for its shape raises, and one client's reply would stop the round) and copies every
array out of its bytes. `read_arrays` accepts exactly one `.npy` array (format 1.0 or
2.0, no object dtype, no bytes missing or left over) per tensor and maps it onto the
bytes it came in: read-only, and without a second copy of the round's updates.
"""

import io
import math
import tokenize

import numpy as np
from flwr.common import Parameters
from numpy.lib import format as npy

HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


def read_array(blob: bytes) -> np.ndarray:
    """The array that the `.npy` bytes `blob` hold (read-only, sharing `blob`'s memory);
    ValueError for anything else."""
    stream = io.BytesIO(blob)
    version = npy.read_magic(stream)
    if version not in HEADER_READERS:
        raise ValueError(f".npy format {version[0]}.{version[1]} is not accepted (1.0 or 2.0)")
    try:
        shape, fortran_order, dtype = HEADER_READERS[version](stream)
    except tokenize.TokenError as err:  # numpy's header parser lets its tokenizer's errors through
        raise ValueError(f"unreadable .npy header ({err.args[0]})") from None
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    if dtype.itemsize == 0:  # any count of values would match no data bytes
        raise ValueError(f"values of {dtype} hold no bytes")
    count = math.prod(shape)  # exact: a header's dims can be any integers
    offset = stream.tell()
    if len(blob) - offset != count * dtype.itemsize:
        raise ValueError(f"{len(blob) - offset} data bytes for {count} values of {dtype}")
    array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def read_arrays(parameters: Parameters) -> list[np.ndarray]:
    """Every tensor of `parameters` as an array (`read_array`)."""
    return [read_array(tensor) for tensor in parameters.tensors]
