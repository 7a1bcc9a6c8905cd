"""Aggregation math on plain numpy arrays, independent of Flower.

An *update* is one client's model as a list of arrays in a fixed order.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Update = Sequence[np.ndarray]
Metric = bool | bytes | float | int | str  # a client metric, as Flower's `Scalar`


def update_problem(
    update: Update, expected_shapes: Sequence[tuple[int, ...]], expected_dtypes: Sequence[np.dtype] | None
) -> str | None:
    """Why `update` cannot be aggregated (wrong tensor count, shape or dtype — the global
    model's, so no client can change the model's type; with `expected_dtypes` None any
    float dtype — or non-finite values), or None when it can."""
    if len(update) != len(expected_shapes):
        return f"{len(update)} tensors, expected {len(expected_shapes)}"
    for i, (array, shape) in enumerate(zip(update, expected_shapes, strict=True)):
        if tuple(array.shape) != tuple(shape):
            return f"tensor {i} has shape {tuple(array.shape)}, expected {tuple(shape)}"
        if expected_dtypes is None and not np.issubdtype(array.dtype, np.floating):
            return f"tensor {i} has dtype {array.dtype}, expected a float dtype"
        if expected_dtypes is not None and array.dtype != expected_dtypes[i]:
            return f"tensor {i} has dtype {array.dtype}, expected {np.dtype(expected_dtypes[i])}"
        if not np.all(np.isfinite(array)):
            return f"tensor {i} has non-finite values"
    return None


def weighted_average(updates: Iterable[Update], weights: Sequence[float]) -> list[np.ndarray]:
    """FedAvg (McMahan et al. 2017): w = Σ_k (n_k / n) w_k with n = Σ_k n_k.

    Args:
        updates: the clients' models w_k, read once each in order: a generator that
            deserialises one update at a time keeps one in memory, not the round's.
        weights: their example counts n_k (finite, ≥ 0, with a positive sum).

    Returns:
        The average, accumulated in float64 (each element's terms added in the order of
        `updates`), in the dtype of the first update.
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isfinite(w).all() or (len(w) and w.sum() <= 0):
        raise ValueError(f"weights must be finite, non-negative, with a positive sum: {weights}")
    coefficients = w / w.sum() if len(w) else w
    totals: list[np.ndarray] = []
    terms: list[np.ndarray] = []  # one reused float64 array per layer for (n_k / n) w_k
    dtypes: list[np.dtype] = []
    count = 0
    for count, update in enumerate(updates, start=1):
        if count > len(coefficients):
            raise ValueError(f"more updates than the {len(coefficients)} weights")
        if not totals:
            totals = [np.zeros(np.shape(layer), dtype=np.float64) for layer in update]
            terms = [np.empty_like(total) for total in totals]
            dtypes = [np.asarray(layer).dtype for layer in update]
        for total, term, layer in zip(totals, terms, update, strict=True):
            np.multiply(layer, coefficients[count - 1], out=term)
            total += term
    if count == 0:
        raise ValueError("no updates to average")
    if count != len(coefficients):
        raise ValueError(f"{count} updates but {len(coefficients)} weights")
    return [total.astype(dtype, copy=False) for total, dtype in zip(totals, dtypes, strict=True)]


def server_step(weights: Update, update: Update, learning_rate: float) -> list[np.ndarray]:
    """w + η·u, computed in float64 and returned in the dtypes of w."""
    return [(w.astype(np.float64) + learning_rate * u).astype(w.dtype) for w, u in zip(weights, update, strict=True)]


def weighted_metric_means(
    metrics: Sequence[tuple[int, Mapping[str, Metric]]],
) -> dict[str, Metric]:
    """Example-weighted mean of every numeric metric, over the clients reporting it."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for num_examples, client_metrics in metrics:
        for name, value in client_metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            sums[name] = sums.get(name, 0.0) + num_examples * float(value)
            counts[name] = counts.get(name, 0) + num_examples
    return {name: sums[name] / counts[name] for name in sums if counts[name] > 0}
