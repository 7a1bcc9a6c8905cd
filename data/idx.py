"""The IDX file format of MNIST's distribution: unsigned-byte arrays with a big-endian
shape header, read and written with NumPy alone."""

from pathlib import Path

import numpy as np

IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file as a (read-only) array of its declared shape."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise ValueError(f"{path.name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path.name} declares shape {shape} but holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())
