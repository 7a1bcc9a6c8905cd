"""A site's own data as MNIST IDX files, class folders of images or a .npz: reading,
the checks and their one-line errors, and `python -m data.site_data convert`."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.site_data import (
    SiteDataError,
    convert_site_data,
    load_site_data,
    main,
    read_idx,
    read_site_arrays,
    write_image_folders,
    write_npz,
    write_site_data,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 50


@pytest.fixture(scope="session")
def mnist50(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first 50 images (uint8) and labels of MNIST's training set."""
    raw = Path(mnist_dir) / "MNIST" / "raw"
    return (read_idx(raw / "train-images-idx3-ubyte")[:SAMPLES],
            read_idx(raw / "train-labels-idx1-ubyte")[:SAMPLES])


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_idx_to_images_to_npz_to_idx_keeps_every_label_and_pixel(tmp_path, mnist50):
    images, labels = mnist50
    write_site_data(tmp_path / "idx", images, labels)
    assert convert_site_data(tmp_path / "idx", tmp_path / "images", "images") == (
        f"converted 50 samples from {tmp_path / 'idx'} (idx) to {tmp_path.resolve() / 'images'} (images)")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [str(k) for k in range(10)]
    assert (tmp_path / "images" / str(labels[0]) / "00000.png").is_file()
    convert_site_data(tmp_path / "images", tmp_path / "site.npz", "npz")
    convert_site_data(tmp_path / "site.npz", tmp_path / "back", "idx")

    order = np.argsort(labels, kind="stable")  # class folders are read in order of label
    for path, kind in [(tmp_path / "images", "images"), (tmp_path / "site.npz", "npz"),
                       (tmp_path / "back", "idx")]:
        data = read_site_arrays(path)
        assert data.format == kind
        assert data.images.dtype == np.uint8 and np.array_equal(data.images, images[order])
        assert data.labels.dtype == np.int64 and np.array_equal(data.labels, labels[order])


def test_every_format_loads_as_the_same_normalised_dataset(tmp_path, mnist50):
    images, labels = mnist50
    write_site_data(tmp_path / "idx", images, labels)
    write_npz(tmp_path / "site.npz", images, labels)
    reference = load_site_data(tmp_path / "idx")
    assert reference.images.shape == (50, 1, 28, 28) and reference.labels.dtype == torch.int64
    from_npz = load_site_data(tmp_path / "site.npz")
    assert from_npz.images.equal(reference.images) and from_npz.labels.equal(reference.labels)

    write_image_folders(tmp_path / "images", images, labels)
    from_images = load_site_data(tmp_path / "images")
    order = np.argsort(labels, kind="stable")
    assert from_images.images.equal(reference.images[order])
    assert from_images.labels.equal(reference.labels[order])


def test_npz_takes_floats_in_0_1_a_channel_axis_and_a_directory_holding_it(tmp_path, mnist50):
    images, labels = mnist50
    floats = (images / 255.0).astype(np.float32)[:, None]
    np.savez(tmp_path / "float.npz", x=floats, y=labels.astype(np.int64))
    data = read_site_arrays(tmp_path / "float.npz")
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    (tmp_path / "site").mkdir()
    (tmp_path / "float.npz").rename(tmp_path / "site" / "train.npz")
    assert np.array_equal(read_site_arrays(tmp_path / "site").images, images)


def test_colour_and_other_sizes_are_converted_with_one_warning_line_each(tmp_path, mnist50, caplog):
    images, labels = mnist50
    site = tmp_path / "site"
    write_image_folders(site, images[:46], labels[:46])
    save_png(site / "7" / "rgb.png", np.repeat(images[46][..., None], 3, axis=2))
    save_png(site / "7" / "rgb-big.png", np.zeros((32, 32, 3), np.uint8))
    for i in (47, 48):
        save_png(site / "7" / f"big-{i}.png", images[i].repeat(2, axis=0).repeat(2, axis=1))
    save_png(site / "7" / ".hidden" / "ignored.png", images[49])

    with caplog.at_level(logging.WARNING, logger="data.site_data"):
        data = read_site_arrays(site)
    assert [r.getMessage() for r in caplog.records] == [
        f"data-dir '{site}': 2 of 50 images converted to 8-bit grayscale from RGB",
        f"data-dir '{site}': 3 of 50 images resized to 28x28 (aspect ratio not kept) from 56x56, 32x32",
    ]
    assert data.images.shape == (50, 28, 28) and (data.labels == 7).sum() == (labels[:46] == 7).sum() + 4
    sevens = data.images[data.labels == 7][-4:]  # big-47, big-48, rgb-big, rgb (in order of name)
    assert np.array_equal(sevens[3], images[46])  # gray stored as RGB comes back exactly
    assert np.abs(sevens[0].astype(int) - images[47]).mean() < 10  # a 2x upscale, resized back


def idx_missing_labels(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_site_data(site, images, labels)
    (site / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    return (f"expected {site.resolve()}/MNIST/raw/{{train-images-idx3-ubyte, train-labels-idx1-ubyte}} "
            "in MNIST IDX format; missing train-labels-idx1-ubyte")


def nothing(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    site.mkdir()
    (site / "notes").mkdir()  # a folder without images or a label name is not a class folder
    return (f"expected MNIST IDX files {site.resolve()}/MNIST/raw/{{train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte}, class folders 0 to 9 of .png/.jpg/.jpeg/.bmp images, or a .npz "
            "file with arrays x and y; found none (missing train-images-idx3-ubyte, train-labels-idx1-ubyte)")


def folder_not_a_label(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_image_folders(site, images, labels)
    save_png(site / "cat" / "a.png", images[0])
    return "folder 'cat' is not a label: class folders are named 0 to 9"


def empty_label_folders(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    for label in range(10):
        (site / str(label)).mkdir(parents=True)
    return "0 samples (at least 2 are needed)"


def unreadable_image(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_image_folders(site, images, labels)
    (site / "3" / "bad.png").write_bytes(b"not a png")
    return "3/bad.png is not a readable image (unknown or damaged format)"


def not_an_image_file(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_image_folders(site, images, labels)
    (site / "3" / "notes.txt").write_text("x")
    return "3/notes.txt is not an image file (allowed: .png, .jpg, .jpeg, .bmp)"


def sixteen_bit_image(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_image_folders(site, images, labels)
    save_png(site / "3" / "deep.png", images[0].astype(np.uint16) * 257)
    return "3/deep.png has mode I;16 (16- or 32-bit pixels); save it as 8-bit grayscale"


def idx_and_class_folders(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_site_data(site, images, labels)
    save_png(site / "3" / "a.png", images[0])
    return "it holds MNIST IDX files (MNIST/raw) and class folders (3); keep one format per data-dir"


def idx_and_npz(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_site_data(site, images, labels)
    write_npz(site / "extra.npz", images, labels)
    return "it holds MNIST IDX files (MNIST/raw) and a .npz file (extra.npz); keep one format per data-dir"


def two_npz(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    write_npz(site / "a.npz", images, labels)
    write_npz(site / "b.npz", images, labels)
    return "it holds 2 .npz files (a.npz, b.npz); keep one, or give the file as data-dir"


def a_file_of_another_kind(site: Path, images: np.ndarray, labels: np.ndarray) -> str:
    site.parent.mkdir(parents=True, exist_ok=True)
    site.write_text("x")
    return "it is a file, not a directory or a .npz file"


@pytest.mark.parametrize("build", [
    idx_missing_labels, nothing, folder_not_a_label, empty_label_folders, unreadable_image,
    not_an_image_file, sixteen_bit_image, idx_and_class_folders, idx_and_npz, two_npz,
    a_file_of_another_kind,
])
def test_an_unusable_data_dir_is_refused_in_one_line(tmp_path, mnist50, build):
    site = tmp_path / "site"
    message = build(site, *mnist50)
    with pytest.raises(SiteDataError) as err:
        load_site_data(site)
    assert str(err.value) == f"No usable data in data-dir '{site}': {message}"


X, Y = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3], np.uint8)


@pytest.mark.parametrize("arrays, message", [
    ({"x": X, "y": Y[:3]}, "4 images but labels of shape (3,)"),
    ({"x": X, "y": np.array([0, 1, 2, 10])}, "label 10 found (allowed: 0 to 9)"),
    ({"x": X, "y": np.array([0, -1, 2, 3])}, "label -1 found (allowed: 0 to 9)"),
    ({"x": X[:1], "y": Y[:1]}, "1 samples (at least 2 are needed)"),
    ({"x": np.zeros((4, 28, 27), np.uint8), "y": Y},
     "x has shape (4, 28, 27), not (N, 28, 28) or (N, 1, 28, 28)"),
    ({"x": X.astype(np.int64), "y": Y}, "x has dtype int64; allowed: uint8 (0-255) or float (0-1)"),
    ({"x": X.astype(np.float32) + 255, "y": Y},
     "x holds float values from 255 to 255; float images must lie in [0, 1] (or be uint8 0-255)"),
    ({"x": X, "y": Y.astype(np.float64)}, "y has dtype float64; labels must be integers 0-9"),
    ({"x": X}, "site.npz has arrays x; expected x (images) and y (labels)"),
])
def test_an_unusable_npz_is_refused_in_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "site.npz", **arrays)
    with pytest.raises(SiteDataError) as err:
        load_site_data(tmp_path / "site.npz")
    assert str(err.value) == f"No usable data in data-dir '{tmp_path / 'site.npz'}': {message}"


def test_a_missing_or_unreadable_npz_is_named(tmp_path):
    with pytest.raises(SiteDataError) as err:
        load_site_data(tmp_path / "site.npz")
    assert str(err.value) == f"No usable data in data-dir '{tmp_path / 'site.npz'}': site.npz does not exist"
    (tmp_path / "site.npz").write_bytes(b"not a zip")
    with pytest.raises(SiteDataError) as err:
        load_site_data(tmp_path / "site.npz")
    assert str(err.value) == (f"No usable data in data-dir '{tmp_path / 'site.npz'}': site.npz is not "
                              "a readable .npz file (write it with numpy.savez)")


@pytest.mark.parametrize("args, message", [
    (["idx", "out"], "give --to idx or --to images to write directory '{t}/out' (or a DST ending in .npz)"),
    (["idx", "out", "--to", "npz"], "--to npz needs a DST ending in .npz, not '{t}/out'"),
    (["idx", "out.npz", "--to", "images"],
     "DST '{t}/out.npz' ends in .npz, which is written as npz; drop --to images or give a directory"),
    (["idx", "idx", "--to", "images"],
     "DST '{t}/idx' already exists and is not empty; give a new path (nothing is overwritten)"),
    (["missing", "out.npz"], "No usable data in data-dir '{t}/missing': expected MNIST IDX files "
     "{t}/missing/MNIST/raw/{{train-images-idx3-ubyte, train-labels-idx1-ubyte}}, class folders 0 to 9 "
     "of .png/.jpg/.jpeg/.bmp images, or a .npz file with arrays x and y; found none "
     "(missing train-images-idx3-ubyte, train-labels-idx1-ubyte)"),
])
def test_convert_refuses_bad_input_in_one_line_with_exit_code_2(tmp_path, mnist50, capsys, args, message):
    write_site_data(tmp_path / "idx", *mnist50)
    with pytest.raises(SystemExit) as exit_:
        main(["convert", *(str(tmp_path / a) if i < 2 else a for i, a in enumerate(args))])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(t=tmp_path)}\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.npz").exists()


def test_convert_and_the_demo_site_writer_run_as_a_module(tmp_path, mnist_dir):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "data.site_data", *args], capture_output=True,
                              text=True, cwd=REPO, timeout=120)

    made = run("--mnist-dir", mnist_dir, "--out", str(tmp_path / "idx"), "--partition-id", "0",
               "--num-partitions", "100", "--max-samples", "20")
    assert made.returncode == 0 and made.stdout == f"wrote 20 samples to {tmp_path / 'idx'}\n"
    (tmp_path / "images").mkdir()  # an empty directory is a valid DST
    done = run("convert", str(tmp_path / "idx"), str(tmp_path / "images"), "--to", "images")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"converted 20 samples from {tmp_path / 'idx'} (idx) "
                           f"to {tmp_path / 'images'} (images)\n")
    refused = run("convert", str(tmp_path / "images"), str(tmp_path / "idx"), "--to", "idx")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith(f"error: DST '{tmp_path / 'idx'}'")


def test_the_supernode_preflight_accepts_each_format(tmp_path, mnist50):
    from fl_app.deploy.supernode import check_data

    write_npz(tmp_path / "site.npz", *mnist50)
    write_image_folders(tmp_path / "images", *mnist50)
    assert check_data(tmp_path / "site.npz", None, None) == f"own data: 50 samples in {tmp_path / 'site.npz'}"
    assert check_data(tmp_path / "images", None, None) == f"own data: 50 samples in {tmp_path / 'images'}"
