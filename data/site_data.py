"""A site's own training data, for SuperNodes started with node-config `data-dir=...`.
The whole dataset is the site's (it is not partitioned), in one of three formats:

- MNIST IDX: `<data-dir>/MNIST/raw/train-images-idx3-ubyte` (N x 28 x 28 bytes) and
  `train-labels-idx1-ubyte` (N labels 0-9), the layout of the MNIST distribution;
- class folders (torchvision's ImageFolder layout): `<data-dir>/<label>/*.png` (or .jpg,
  .jpeg, .bmp; sub-folders are searched), folders named 0 to 9, 8-bit grayscale 28 x 28
  images; colour images are converted and other sizes resized, with a warning. They are
  read in order of label, then path;
- NumPy: a `.npz` file with arrays `x` (N, 28, 28) or (N, 1, 28, 28), uint8 0-255 or
  float 0-1, and `y` (N,) integers 0-9; data-dir is the file, or a directory holding
  exactly one.

    python -m data.site_data convert SRC DST [--to idx|images]

converts a site's data between them: a DST ending in .npz is written as npz, any other
(a new or empty directory) in the format --to names.

    python -m data.site_data --mnist-dir ../shared/data --out sites/site-0 \
        --partition-id 0 --num-partitions 3

writes a partition of MNIST in the IDX layout, to try a deployment with demo sites.
"""

import argparse
import logging
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import torch

from data.idx import read_idx, write_idx
from data.mnist import MNIST_MEAN, MNIST_STD, DataUnavailableError, TensorDataset

SITE_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
NUM_CLASSES = 10
IMAGE_SIDE = 28
LABEL_FOLDERS = tuple(str(label) for label in range(NUM_CLASSES))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow's 16-bit and 32-bit images
FORMATS = ("idx", "images", "npz")

logger = logging.getLogger(__name__)


class SiteDataError(DataUnavailableError):
    """A site's data-dir is missing or does not hold usable data."""


class Unusable(Exception):
    """What is wrong with a site's data; `read_site_arrays` adds the data-dir."""


class SiteArrays(NamedTuple):
    """A site's data as stored: uint8 images (N, 28, 28), int64 labels (N,), its format."""

    images: np.ndarray
    labels: np.ndarray
    format: str


def site_files(data_dir: str | Path) -> tuple[Path, Path]:
    """Paths of the site's IDX image and label files."""
    raw = Path(data_dir).expanduser().resolve() / "MNIST" / "raw"
    return raw / SITE_FILES[0], raw / SITE_FILES[1]


def is_hidden(path: Path, root: Path) -> bool:
    """Whether a part of `path` below `root` starts with a dot (.DS_Store, .git, ...)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def class_folders(data_dir: Path) -> list[Path]:
    """Sub-directories of `data_dir` (MNIST/ aside) named as a label or holding images."""
    if not data_dir.is_dir():
        return []
    return sorted(
        folder for folder in data_dir.iterdir()
        if folder.is_dir() and not is_hidden(folder, data_dir) and folder.name != "MNIST"
        and (folder.name in LABEL_FOLDERS
             or any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.rglob("*")))
    )


def find_site_data(path: Path) -> tuple[str, Path]:
    """The format of the site's data at `path`, and the file or directory holding it."""
    if path.suffix == ".npz" and not path.is_dir():
        if not path.is_file():
            raise Unusable(f"{path.name} does not exist")
        return "npz", path
    if path.is_file():
        raise Unusable("it is a file, not a directory or a .npz file")
    images_path, labels_path = site_files(path)
    found = {}
    if images_path.exists() or labels_path.exists():
        found["idx"] = "MNIST IDX files (MNIST/raw)"
    if folders := class_folders(path):
        found["images"] = f"class folders ({', '.join(f.name for f in folders)})"
    npz_files = sorted(path.glob("*.npz")) if path.is_dir() else []
    if npz_files:
        names = ", ".join(f.name for f in npz_files)
        found["npz"] = f"{'.npz files' if len(npz_files) > 1 else 'a .npz file'} ({names})"
    if len(found) > 1:
        raise Unusable(f"it holds {' and '.join(found.values())}; keep one format per data-dir")
    if len(npz_files) > 1:
        raise Unusable(f"it holds {len(npz_files)} .npz files ({names}); keep one, or give the "
                       "file as data-dir")
    if not found:
        raise Unusable(
            f"expected MNIST IDX files {images_path.parent}/{{{', '.join(SITE_FILES)}}}, class "
            f"folders 0 to 9 of {'/'.join(IMAGE_SUFFIXES)} images, or a .npz file with arrays x "
            f"and y; found none (missing {', '.join(SITE_FILES)})"
        )
    kind = next(iter(found))
    return kind, npz_files[0] if kind == "npz" else path


def read_idx_site(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an IDX data-dir."""
    images_path, labels_path = site_files(data_dir)
    expected = f"expected {images_path.parent}/{{{', '.join(SITE_FILES)}}} in MNIST IDX format"
    if missing := [p.name for p in (images_path, labels_path) if not p.is_file()]:
        raise Unusable(f"{expected}; missing {', '.join(missing)}")
    try:
        return read_idx(images_path), read_idx(labels_path)
    except ValueError as err:
        raise Unusable(f"{err} ({expected})") from None


def read_image(file: Path, name: Path) -> tuple[np.ndarray, str, tuple[int, int]]:
    """An image file as uint8 (28, 28) grayscale; with its original mode and size."""
    from PIL import Image, UnidentifiedImageError

    image: Image.Image  # an ImageFile when read, a plain Image once converted or resized
    try:
        with Image.open(file) as image:
            image.load()
    except UnidentifiedImageError:
        raise Unusable(f"{name} is not a readable image (unknown or damaged format)") from None
    except OSError as err:
        raise Unusable(f"{name} is not a readable image ({err})") from None
    mode, size = image.mode, image.size
    if mode in WIDE_MODES:
        raise Unusable(f"{name} has mode {mode} (16- or 32-bit pixels); save it as 8-bit grayscale")
    if mode != "L":
        image = image.convert("L")
    if size != (IMAGE_SIDE, IMAGE_SIDE):
        image = image.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), mode, size


def read_image_folders(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a data-dir of class folders; warns once about conversions."""
    folders = class_folders(data_dir)
    if bad := [f.name for f in folders if f.name not in LABEL_FOLDERS]:
        raise Unusable(f"folder '{bad[0]}' is not a label: class folders are named 0 to 9")
    images, labels = [], []
    converted: Counter[str] = Counter()
    resized: Counter[str] = Counter()
    for folder in folders:
        for file in sorted(f for f in folder.rglob("*") if f.is_file() and not is_hidden(f, folder)):
            name = file.relative_to(data_dir)
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise Unusable(f"{name} is not an image file (allowed: {', '.join(IMAGE_SUFFIXES)})")
            image, mode, size = read_image(file, name)
            images.append(image)
            labels.append(int(folder.name))
            if mode not in ("L", "1"):
                converted[mode] += 1
            if size != (IMAGE_SIDE, IMAGE_SIDE):
                resized["x".join(map(str, size))] += 1
    for counts, what in ((converted, "converted to 8-bit grayscale from"),
                         (resized, f"resized to {IMAGE_SIDE}x{IMAGE_SIDE} (aspect ratio not kept) from")):
        if total := counts.total():
            seen = ", ".join(key for key, _ in counts.most_common())
            logger.warning("data-dir '%s': %d of %d images %s %s", data_dir, total, len(images), what, seen)
    stacked = np.stack(images) if images else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    return stacked, np.array(labels, dtype=np.int64)


def read_npz(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (as uint8) and labels of a .npz file with arrays x and y."""
    try:
        npz = np.load(file, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not a zip of arrays")
        with npz:
            names = npz.files
            x, y = (npz[key] if key in names else None for key in ("x", "y"))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise Unusable(f"{file.name} is not a readable .npz file (write it with numpy.savez)") from None
    if x is None or y is None:
        raise Unusable(f"{file.name} has arrays {', '.join(names) or 'none'}; "
                       "expected x (images) and y (labels)")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise Unusable(f"x has shape {x.shape}, not (N, 28, 28) or (N, 1, 28, 28)")
    if x.dtype.kind == "f":
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise Unusable(f"x holds float values from {x.min():g} to {x.max():g}; "
                           "float images must lie in [0, 1] (or be uint8 0-255)")
        x = np.rint(x * 255).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise Unusable(f"x has dtype {x.dtype}; allowed: uint8 (0-255) or float (0-1)")
    if y.dtype.kind not in "iu":
        raise Unusable(f"y has dtype {y.dtype}; labels must be integers 0-9")
    return x, y.astype(np.int64)


def check_arrays(images: np.ndarray, labels: np.ndarray) -> None:
    """The checks every format passes: shapes, at least 2 samples, labels 0-9."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise Unusable(f"images have shape {images.shape}, not (N, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise Unusable(f"{len(images)} images but labels of shape {labels.shape}")
    if len(labels) < 2:
        raise Unusable(f"{len(labels)} samples (at least 2 are needed)")
    if labels.max() >= NUM_CLASSES or labels.min() < 0:
        wrong = labels.max() if labels.max() >= NUM_CLASSES else labels.min()
        raise Unusable(f"label {int(wrong)} found (allowed: 0 to {NUM_CLASSES - 1})")


def read_site_arrays(data_dir: str | Path) -> SiteArrays:
    """The site's data as stored, in any of the three formats, checked.

    Raises `SiteDataError` naming the data-dir and what is wrong with it, in one line.
    """
    try:
        kind, path = find_site_data(Path(data_dir).expanduser())
        reader = {"idx": read_idx_site, "images": read_image_folders, "npz": read_npz}[kind]
        images, labels = reader(path)
        check_arrays(images, labels)
    except Unusable as err:
        raise SiteDataError(f"No usable data in data-dir '{data_dir}': {err}") from None
    return SiteArrays(images, labels.astype(np.int64), kind)


def load_site_data(data_dir: str | Path) -> TensorDataset:
    """The site's whole training set, normalised like MNIST.

    Raises `SiteDataError` naming the data-dir and what is wrong with it.
    """
    images, labels, _ = read_site_arrays(data_dir)
    tensor = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)
    tensor.sub_(MNIST_MEAN).div_(MNIST_STD)
    return TensorDataset(tensor.contiguous(), torch.from_numpy(labels))


def write_site_data(data_dir: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 images (N, 28, 28) and labels (N,) as an IDX data-dir."""
    images_path, labels_path = site_files(data_dir)
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    return images_path.parent.parent.parent


def write_image_folders(data_dir: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 images (N, 28, 28) as `<data_dir>/<label>/<index>.png`."""
    from PIL import Image

    data_dir = Path(data_dir).expanduser().resolve()
    width = max(5, len(str(len(images) - 1)))
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = data_dir / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(folder / f"{index:0{width}d}.png")
    return data_dir


def write_npz(file: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write uint8 images (N, 28, 28) and labels (N,) as a compressed .npz with x and y."""
    file = Path(file).expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(file, x=images.astype(np.uint8), y=labels.astype(np.uint8))
    return file


WRITERS = {"idx": write_site_data, "images": write_image_folders, "npz": write_npz}


def fail(message: str) -> NoReturn:
    """End the command with one line on stderr and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def target_format(dst: Path, to: str | None) -> str:
    """The format to write DST in; ends the command if DST or --to cannot be used."""
    if dst.suffix == ".npz":
        if to not in (None, "npz"):
            fail(f"DST '{dst}' ends in .npz, which is written as npz; drop --to {to} "
                             "or give a directory")
        to = "npz"
    elif to is None:
        fail(f"give --to idx or --to images to write directory '{dst}' "
                         "(or a DST ending in .npz)")
    elif to == "npz":
        fail(f"--to npz needs a DST ending in .npz, not '{dst}'")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        fail(f"DST '{dst}' already exists{' and is not empty' if dst.is_dir() else ''}; "
                         "give a new path (nothing is overwritten)")
    return to


def convert_site_data(src: str | Path, dst: str | Path, to: str) -> str:
    """Write the site data at `src` to `dst` in format `to`; return a one-line summary."""
    images, labels, kind = read_site_arrays(src)
    written = WRITERS[to](dst, images, labels)
    return f"converted {len(labels)} samples from {src} ({kind}) to {written} ({to})"


def convert_main(argv: list[str]) -> None:
    """`python -m data.site_data convert SRC DST [--to idx|images|npz]`."""
    parser = argparse.ArgumentParser(
        prog="python -m data.site_data convert",
        description="Convert a site's data between MNIST IDX, class folders and .npz.")
    parser.add_argument("src", type=Path, help="a data-dir (IDX or class folders) or a .npz file")
    parser.add_argument("dst", type=Path, help="a path ending in .npz, or a new or empty directory")
    parser.add_argument("--to", choices=FORMATS,
                        help="format to write: idx or images for a directory (npz: DST ends in .npz)")
    args = parser.parse_args(argv)
    to = target_format(args.dst.expanduser(), args.to)
    try:
        print(convert_site_data(args.src, args.dst, to))
    except (SiteDataError, OSError) as err:
        fail(str(err))


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
    """`convert SRC DST ...`, or write a partition of MNIST as a demo site."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        convert_main(argv[1:])
        return
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
