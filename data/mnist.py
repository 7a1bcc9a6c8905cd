"""Load MNIST once per process into normalised float tensors, or map its training
images for clients that each need a few of them."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.cache import locked_cache
from data.idx import read_idx

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_TRAIN_SIZE = 60_000  # images in the training split
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class DataUnavailableError(RuntimeError):
    """MNIST is neither on disk nor downloadable."""


@dataclass(frozen=True)
class TensorDataset:
    """Images (N, 1, 28, 28) float32, normalised, and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "TensorDataset":
        """The samples at `indices`, copied into contiguous tensors."""
        return TensorDataset(self.images[indices], self.labels[indices])


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 1, 28, 28) as normalised float32 (the same result row by row
    whether the whole split or a few rows are normalised)."""
    images = pixels.to(torch.float32).div_(255.0)
    return images.sub_(MNIST_MEAN).div_(MNIST_STD)


@dataclass(frozen=True)
class MappedMNIST:
    """An MNIST split whose images stay in their IDX file, memory-mapped: the page cache
    holds one copy for every process, and `subset` normalises only the rows asked for."""

    pixels: np.ndarray  # (N, 28, 28) uint8, memory-mapped
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> TensorDataset:
        """The samples at `indices`, normalised, as `TensorDataset.subset` gives them."""
        rows = torch.from_numpy(np.ascontiguousarray(self.pixels[indices.numpy()]))
        return TensorDataset(normalise(rows.unsqueeze(1)).contiguous(), self.labels[indices])


@locked_cache(maxsize=4)
def map_mnist(data_dir: str, train: bool) -> MappedMNIST:
    """The MNIST train or test split from `data_dir`, images memory-mapped, cached."""
    root = Path(data_dir).expanduser().resolve()
    if missing_files(root):
        raise DataUnavailableError(
            f"MNIST not found in data-dir '{root}': missing {', '.join(missing_files(root))}"
        )
    prefix = root / "MNIST" / "raw" / ("train" if train else "t10k")
    labels = torch.from_numpy(np.array(read_idx(Path(f"{prefix}-labels-idx1-ubyte")), dtype=np.int64))
    return MappedMNIST(read_idx(Path(f"{prefix}-images-idx3-ubyte")), labels)


def missing_files(data_dir: str | Path) -> list[str]:
    """The MNIST files absent from `<data_dir>/MNIST/raw`."""
    raw = Path(data_dir).expanduser() / "MNIST" / "raw"
    return [name for name in MNIST_FILES if not (raw / name).is_file()]


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {  # of the uncompressed files, so any mirror's gzip of them will do
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def download_mnist(raw: Path, mirrors: Sequence[str] = MNIST_MIRRORS) -> None:
    """Fetch each missing `<mirror><name>.gz` into `raw`, trying the mirrors in order;
    a file is kept only if its uncompressed MD5 is MNIST's. Raises OSError naming
    what failed."""
    import gzip
    import hashlib
    import urllib.request

    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        if (raw / name).is_file():
            continue
        errors = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = gzip.decompress(response.read())
            except (OSError, EOFError) as err:
                errors.append(f"{url}: {err}")
                continue
            if hashlib.md5(data).hexdigest() != MNIST_MD5[name]:
                errors.append(f"{url}: wrong MD5")
                continue
            partial = raw / f".{name}.part"
            partial.write_bytes(data)
            partial.replace(raw / name)
            break
        else:
            raise OSError("; ".join(errors))


def ensure_mnist(data_dir: str | Path, download: bool, mirrors: Sequence[str] = MNIST_MIRRORS) -> Path:
    """Return the resolved `data_dir`, downloading MNIST into it (from `mirrors`) if
    asked and needed.

    Raises `DataUnavailableError` naming the directory and the expected files when
    they are missing and cannot be downloaded.
    """
    root = Path(data_dir).expanduser().resolve()
    if not missing_files(root):
        return root
    problem = "download disabled (data-download = false)"
    if download:
        try:
            download_mnist(root / "MNIST" / "raw", mirrors)
        except OSError as err:  # network, disk or mirror failure: all mean "no data"
            problem = "download failed: " + " ".join(str(err).split())
        if not missing_files(root):
            return root
    raise DataUnavailableError(
        f"MNIST not found in data-dir '{root}': expected {root / 'MNIST' / 'raw'}/"
        f"{{{', '.join(MNIST_FILES)}}} ({problem})"
    )


@locked_cache(maxsize=4)
def load_mnist(data_dir: str, train: bool) -> TensorDataset:
    """The MNIST train or test split from `data_dir` (torchvision layout), read whole
    into memory, cached."""
    mapped = map_mnist(data_dir, train)
    return mapped.subset(torch.arange(len(mapped)))


def main(argv: list[str] | None = None) -> int:
    """`python -m data.mnist DATA_DIR [--mirror URL]`: make sure MNIST is in DATA_DIR
    (downloading it once, MD5-checked, if missing); one line either way."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=(main.__doc__ or "").split(";")[0])
    parser.add_argument("data_dir", help="folder to hold MNIST/raw/*-ubyte")
    parser.add_argument("--mirror", action="append", help="URL of a folder serving the four *-ubyte.gz files "
                        "(repeatable; default: torchvision's MNIST mirrors)")
    args = parser.parse_args(argv)
    try:
        root = ensure_mnist(args.data_dir, download=True, mirrors=args.mirror or MNIST_MIRRORS)
    except DataUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MNIST is in {root / 'MNIST' / 'raw'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
