import numpy as np
import pytest
import torch

from data.mnist import MNIST_FILES, DataUnavailableError, ensure_mnist, load_mnist
from data.partition import PartitionSpec, client_split, partition_indices, partitioner


@pytest.fixture(scope="module")
def train(mnist_dir):
    return load_mnist(mnist_dir, train=True)


def test_loads_normalised_tensors_once(mnist_dir, train):
    test = load_mnist(mnist_dir, train=False)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.float32
    assert test.images.shape == (10_000, 1, 28, 28) and test.labels.dtype == torch.int64
    assert abs(float(train.images.mean())) < 0.01 and abs(float(train.images.std()) - 1) < 0.01
    assert torch.equal(torch.bincount(test.labels),
                       torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]))
    assert load_mnist(mnist_dir, train=True) is train  # cached per process


@pytest.mark.parametrize("is_train", [True, False])
def test_mnist_is_read_as_torchvision_reads_it(mnist_dir, is_train):
    from torchvision.datasets import MNIST

    raw = MNIST(mnist_dir, train=is_train, download=False)
    data = load_mnist(mnist_dir, train=is_train)
    assert torch.equal(data.images, raw.data.unsqueeze(1).float().div(255).sub(0.1307).div(0.3081))
    assert torch.equal(data.labels, raw.targets.to(torch.int64))


def test_missing_files_give_one_message_naming_directory_and_files(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        ensure_mnist(tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path.resolve()) in message
    assert all(name in message for name in MNIST_FILES)


def test_existing_files_are_used_without_download(mnist_dir):
    assert str(ensure_mnist(mnist_dir, download=False)) == mnist_dir


def all_partitions(labels, scheme, n=10, seed=42, **kw):
    spec = PartitionSpec(scheme=scheme, num_partitions=n, seed=seed, **kw)
    return [partition_indices(labels, spec, i) for i in range(n)]


def label_histograms(labels, parts):
    return np.stack([np.bincount(labels[p].numpy(), minlength=10) for p in parts])


def test_iid_gives_ten_disjoint_partitions_of_6000(train):
    parts = all_partitions(train.labels, "iid")
    assert [len(p) for p in parts] == [6000] * 10
    assert len(np.unique(np.concatenate(parts))) == 60_000
    shares = label_histograms(train.labels, parts) / 6000
    overall = np.bincount(train.labels.numpy()) / 60_000
    assert np.abs(shares - overall).max() < 0.03  # every client sees the global label mix


@pytest.mark.parametrize("num_partitions", [1, 7, 10, 1000])
def test_iid_partitions_are_flwr_datasets_iid_partitions(train, num_partitions):
    spec = PartitionSpec("iid", num_partitions, seed=3)
    reference = partitioner(train.labels, spec)
    for pid in sorted({0, num_partitions // 2, num_partitions - 1}):
        expected = np.asarray(reference.load_partition(pid)["index"], dtype=np.int64)
        assert np.array_equal(partition_indices(train.labels, spec, pid), expected)


def test_dirichlet_skews_labels(train):
    parts = all_partitions(train.labels, "dirichlet", dirichlet_alpha=0.1)
    hist = label_histograms(train.labels, parts)
    assert hist.sum() == 60_000 and len(np.unique(np.concatenate(parts))) == 60_000
    top_share = hist.max(axis=1) / hist.sum(axis=1)
    assert np.median(top_share) > 0.5  # IID would be about 0.11


def test_shards_give_each_client_about_two_labels(train):
    parts = all_partitions(train.labels, "shards", shards_per_client=2)
    hist = label_histograms(train.labels, parts)
    assert [len(p) for p in parts] == [6000] * 10
    top_two = np.sort(hist, axis=1)[:, -2:].sum(axis=1) / hist.sum(axis=1)
    assert ((hist > 0).sum(axis=1) <= 4).all()  # a shard may straddle two labels
    assert (top_two >= 0.8).all() and top_two.mean() >= 0.9


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_deterministic_given_seed(train, scheme):
    kw = {"dirichlet_alpha": 0.5, "shards_per_client": 2}
    a = all_partitions(train.labels, scheme, seed=1, **kw)
    b = all_partitions(train.labels, scheme, seed=1, **kw)
    c = all_partitions(train.labels, scheme, seed=2, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_client_split_caps_and_splits_deterministically(train):
    indices = np.arange(1000)
    trn, val = client_split(train, indices, seed=3, max_samples=500, validation_fraction=0.2)
    assert (len(trn), len(val)) == (400, 100)
    again, _ = client_split(train, indices, seed=3, max_samples=500, validation_fraction=0.2)
    assert torch.equal(trn.labels, again.labels) and torch.equal(trn.images, again.images)
    whole, none = client_split(train, indices, seed=3, max_samples=0, validation_fraction=0.0)
    assert (len(whole), len(none)) == (1000, 0)


def test_a_scheme_without_its_parameter_is_refused():
    with pytest.raises(ValueError, match="partitioner 'dirichlet' needs dirichlet_alpha"):
        PartitionSpec("dirichlet", 10, 0)


def test_partition_id_out_of_range_is_refused(train):
    with pytest.raises(ValueError, match="partition-id 10 outside"):
        partition_indices(train.labels, PartitionSpec("iid", 10, 0), 10)


def test_concurrent_first_calls_of_a_cached_loader_compute_once():
    """32 threads asking for their client at once loaded MNIST 32 times (4.4 GiB peak)."""
    import threading
    import time

    from data.cache import locked_cache

    calls = []

    @locked_cache(maxsize=2)
    def load(key: str) -> list[int]:
        calls.append(key)
        time.sleep(0.05)
        return [len(calls)]

    results = []
    threads = [threading.Thread(target=lambda: results.append(load("mnist"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["mnist"]
    assert len(results) == 16 and all(r is results[0] for r in results)


def test_a_split_that_leaves_nothing_to_train_on_is_refused_with_its_numbers(train):
    with pytest.raises(ValueError, match=r"2 samples with validation-fraction = 0.9 leave none to train on"):
        client_split(train, np.arange(2), seed=0, max_samples=0, validation_fraction=0.9)


def test_make_data_fetches_mnist_once_from_a_mirror(mnist_dir, tmp_path, capsys):
    """`python -m data.mnist DIR --mirror URL` (what `make data MNIST_MIRROR=URL` runs)
    downloads into an empty folder, served here from the local copy on loopback, checks
    each file's MD5, and then finds it there; a mirror serving a wrong file is refused."""
    import gzip
    import http.server
    import threading
    from pathlib import Path

    from data.mnist import main

    served = tmp_path / "mirror"
    served.mkdir()
    for name in MNIST_FILES:
        (served / f"{name}.gz").write_bytes(gzip.compress((Path(mnist_dir) / "MNIST" / "raw" / name).read_bytes()))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args):
            super().__init__(*args, directory=str(served))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert main([str(tmp_path / "cache"), "--mirror", mirror]) == 0
        assert main([str(tmp_path / "cache")]) == 0  # already there: no download
        (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
        assert main([str(tmp_path / "other"), "--mirror", mirror]) == 2
    finally:
        server.shutdown()
    for name in MNIST_FILES:
        cached, original = tmp_path / "cache" / "MNIST" / "raw" / name, Path(mnist_dir) / "MNIST" / "raw" / name
        assert cached.read_bytes() == original.read_bytes()
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"MNIST is in {tmp_path / 'cache' / 'MNIST' / 'raw'}"] * 2
    assert out.err.count("\n") == 1 and "t10k-labels-idx1-ubyte.gz: wrong MD5" in out.err
    assert not (tmp_path / "other" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


def test_make_data_without_a_reachable_mirror_says_so_in_one_line(tmp_path, capsys):
    from data.mnist import main

    assert main([str(tmp_path / "cache"), "--mirror", "http://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: MNIST not found in data-dir '{tmp_path / 'cache'}'")
    assert "download failed" in err


def test_mapped_mnist_gives_the_loaded_samples_bitwise(mnist_dir, train):
    from data.mnist import map_mnist

    mapped = map_mnist(mnist_dir, train=True)
    assert len(mapped) == len(train) == 60_000
    assert torch.equal(mapped.labels, train.labels)
    rows = torch.tensor([0, 59_999, 12_345, 7])
    part = mapped.subset(rows)
    assert part.images.dtype == torch.float32 and part.images.shape == (4, 1, 28, 28)
    assert torch.equal(part.images, train.subset(rows).images) and torch.equal(part.labels, train.labels[rows])
