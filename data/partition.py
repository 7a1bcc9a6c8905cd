"""Split MNIST's training set among clients with flwr-datasets partitioners.

flwr-datasets (with `datasets` and its plotting stack) takes seconds to import, so it is
imported inside the functions that partition, and the IID scheme (the default) is cut
without it: a simulated client or a SuperNode with its own data never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from data.cache import locked_cache
from data.mnist import MappedMNIST, TensorDataset

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS = ("iid", "dirichlet", "shards")


@dataclass(frozen=True)
class PartitionSpec:
    """How to carve a labelled dataset into `num_partitions` client datasets; the
    Dirichlet α and the shards per client are given for the schemes that use them."""

    scheme: str  # one of PARTITIONERS
    num_partitions: int
    seed: int
    dirichlet_alpha: float | None = None
    shards_per_client: int | None = None

    def __post_init__(self) -> None:
        needed = {"dirichlet": "dirichlet_alpha", "shards": "shards_per_client"}.get(self.scheme)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"partitioner '{self.scheme}' needs {needed}")


def _make_partitioner(spec: PartitionSpec) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    if spec.scheme == "iid":
        return IidPartitioner(num_partitions=spec.num_partitions)
    by_label: dict[str, tuple[Callable[..., Partitioner], dict[str, Any]]] = {
        "dirichlet": (DirichletPartitioner, {"alpha": spec.dirichlet_alpha}),
        "shards": (ShardPartitioner, {"num_shards_per_partition": spec.shards_per_client}),
    }
    if spec.scheme in by_label:
        cls, own = by_label[spec.scheme]
        return cls(num_partitions=spec.num_partitions, partition_by="label", seed=spec.seed, **own)
    raise ValueError(f"unknown partitioner '{spec.scheme}'; allowed: {', '.join(PARTITIONERS)}")


@locked_cache(maxsize=8)
def _partitioner(spec: PartitionSpec, label_bytes: bytes) -> Partitioner:
    """A partitioner over a table of (index, label); IID rows are shuffled by seed first
    (flwr-datasets' IID partitioner cuts contiguous blocks)."""
    from datasets import Dataset

    labels = np.frombuffer(label_bytes, dtype=np.int64)
    index = np.arange(len(labels))
    if spec.scheme == "iid":
        index = np.random.default_rng(spec.seed).permutation(index)
    table = Dataset.from_dict({"index": index, "label": labels[index]})
    partitioner = _make_partitioner(spec)
    partitioner.dataset = table
    return partitioner


def partitioner(labels: torch.Tensor, spec: PartitionSpec) -> Partitioner:
    """The flwr-datasets partitioner of `labels` under `spec` (a table with a `label`
    column), e.g. for flwr-datasets' plots."""
    return _partitioner(spec, labels.numpy().astype(np.int64).tobytes())


def partition_indices(labels: torch.Tensor, spec: PartitionSpec, partition_id: int) -> np.ndarray:
    """Indices into `labels` of partition `partition_id` under `spec`."""
    if not 0 <= partition_id < spec.num_partitions:
        raise ValueError(
            f"partition-id {partition_id} outside [0, {spec.num_partitions - 1}]"
        )
    if spec.scheme == "iid":
        return iid_indices(len(labels), spec, partition_id)
    partitioner = _partitioner(spec, labels.numpy().astype(np.int64).tobytes())
    return np.asarray(partitioner.load_partition(partition_id)["index"], dtype=np.int64)


def iid_indices(num_samples: int, spec: PartitionSpec, partition_id: int) -> np.ndarray:
    """Partition `partition_id` of the IID scheme exactly as `_partitioner`'s flwr-datasets
    IidPartitioner cuts it from the seeded shuffle (contiguous blocks, the first
    `num_samples % num_partitions` one longer), without importing flwr-datasets."""
    size, longer = divmod(num_samples, spec.num_partitions)
    start = size * partition_id + min(partition_id, longer)
    end = start + size + (1 if partition_id < longer else 0)
    return np.random.default_rng(spec.seed).permutation(num_samples)[start:end].astype(np.int64)


def client_split(
    data: TensorDataset | MappedMNIST,
    indices: np.ndarray,
    *,
    seed: int,
    max_samples: int,
    validation_fraction: float,
) -> tuple[TensorDataset, TensorDataset]:
    """Shuffle a partition (seeded), cap it at `max_samples` (0: no cap) and split it
    into local train and validation sets."""
    order = np.random.default_rng(seed).permutation(indices)
    if max_samples:
        order = order[:max_samples]
    num_val = int(round(len(order) * validation_fraction))
    val, trn = order[:num_val], order[num_val:]
    if len(trn) == 0:
        raise ValueError(f"{len(order)} samples with validation-fraction = {validation_fraction} "
                         "leave none to train on")
    return data.subset(torch.from_numpy(trn)), data.subset(torch.from_numpy(val))
