"""A site's own training data in MNIST format, for SuperNodes started with node-config
`data-dir=...`: `<data-dir>/MNIST/raw/train-images-idx3-ubyte` (N x 28 x 28 bytes) and
`train-labels-idx1-ubyte` (N labels 0-9), the IDX layout of the MNIST distribution.
The whole dataset is the site's; it is not partitioned.

    python -m data.site_data --mnist-dir ../shared/data --out sites/site-0 \
        --partition-id 0 --num-partitions 3

writes a partition of MNIST in that layout, to try a deployment with demo sites.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from data.mnist import MNIST_MEAN, MNIST_STD, DataUnavailableError, TensorDataset

SITE_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_UBYTE = 0x08
NUM_CLASSES = 10


class SiteDataError(DataUnavailableError):
    """A site's data-dir is missing or does not hold usable MNIST-format data."""


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file as an array of its declared shape."""
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


def site_files(data_dir: str | Path) -> tuple[Path, Path]:
    """Paths of the site's image and label files."""
    raw = Path(data_dir).expanduser().resolve() / "MNIST" / "raw"
    return raw / SITE_FILES[0], raw / SITE_FILES[1]


def load_site_data(data_dir: str | Path) -> TensorDataset:
    """The site's whole training set, normalised like MNIST.

    Raises `SiteDataError` naming the directory and what is wrong with it.
    """
    images_path, labels_path = site_files(data_dir)
    expected = f"expected {images_path.parent}/{{{', '.join(SITE_FILES)}}} in MNIST IDX format"
    missing = [p.name for p in (images_path, labels_path) if not p.is_file()]
    if missing:
        raise SiteDataError(f"No usable data in data-dir '{data_dir}': {expected}; "
                            f"missing {', '.join(missing)}")
    try:
        images, labels = read_idx(images_path), read_idx(labels_path)
    except ValueError as err:
        raise SiteDataError(f"No usable data in data-dir '{data_dir}': {err} ({expected})") from None
    problem = None
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        problem = f"images have shape {images.shape}, not (N, 28, 28)"
    elif labels.ndim != 1 or len(labels) != len(images):
        problem = f"{len(images)} images but labels of shape {labels.shape}"
    elif len(labels) < 2:
        problem = f"{len(labels)} samples (at least 2 are needed)"
    elif labels.max() >= NUM_CLASSES:
        problem = f"label {int(labels.max())} found (allowed: 0 to {NUM_CLASSES - 1})"
    if problem:
        raise SiteDataError(f"No usable data in data-dir '{data_dir}': {problem}")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)
    tensor.sub_(MNIST_MEAN).div_(MNIST_STD)
    return TensorDataset(tensor.contiguous(), torch.from_numpy(labels.astype(np.int64)))


def write_site_data(data_dir: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 images (N, 28, 28) and labels (N,) as a site's data-dir."""
    images_path, labels_path = site_files(data_dir)
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    return images_path.parent.parent.parent


def write_mnist_partition(
    mnist_dir: str | Path, out_dir: str | Path, partition_id: int, num_partitions: int,
    *, partitioner: str = "iid", seed: int = 42, max_samples: int = 0,
) -> int:
    """Write partition `partition_id` of `num_partitions` of MNIST's training set (from
    `<mnist_dir>/MNIST/raw`) as a site data-dir; return its number of samples."""
    from data.partition import PartitionSpec, partition_indices

    images, labels = site_files(mnist_dir)
    all_images, all_labels = read_idx(images), read_idx(labels)
    spec = PartitionSpec(scheme=partitioner, num_partitions=num_partitions, seed=seed)
    indices = partition_indices(torch.from_numpy(all_labels.astype(np.int64)), spec, partition_id)
    if max_samples:
        indices = indices[:max_samples]
    write_site_data(out_dir, all_images[indices], all_labels[indices])
    return len(indices)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.site_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", required=True, help="directory holding MNIST/raw")
    parser.add_argument("--out", required=True, help="the site's data-dir to write")
    parser.add_argument("--partition-id", type=int, required=True)
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--partitioner", default="iid", choices=("iid", "dirichlet", "shards"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-samples", type=int, default=0, help="cap (0: the whole partition)")
    args = parser.parse_args(argv)
    count = write_mnist_partition(
        args.mnist_dir, args.out, args.partition_id, args.num_partitions,
        partitioner=args.partitioner, seed=args.seed, max_samples=args.max_samples,
    )
    print(f"wrote {count} samples to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
