"""The IDX file format of MNIST's distribution: unsigned-byte arrays with a big-endian
shape header, read and written with NumPy alone."""

import math
from pathlib import Path

import numpy as np

IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file as a read-only array of its declared shape, memory-mapped:
    the page cache holds one copy for every process that maps the file."""
    with path.open("rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != IDX_UBYTE:
            raise ValueError(f"{path.name} is not an unsigned-byte IDX file")
        dims = f.read(4 * head[3])
    header = 4 + 4 * head[3]
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(head[3]))
    data_bytes = path.stat().st_size - header
    if len(dims) != 4 * head[3] or data_bytes != math.prod(shape):
        raise ValueError(f"{path.name} declares shape {shape} but holds {data_bytes} bytes of data")
    return np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())
