"""What a client may send beside its model, checked before anything aggregates it.

A reply is usable only if its tensors deserialise, its example count is a whole number
above zero and every metric it reports under a known name is a finite number. Names
outside `FIT_METRICS` / `EVALUATE_METRICS` are dropped, so a client can never set a
server field (`round`, `num_fit_clients`, ...) in history.jsonl or the summary.
"""

import math
from collections.abc import Mapping
from typing import Any, TypeGuard, TypeVar

from strategies.wire import (
    ACCURACY,
    CLIENT_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_ROUNDS,
    DP_SAMPLE_RATE,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
)

LOCAL_DP_METRICS = (CLIENT_EPSILON, DP_NOISE_MULTIPLIER, DP_SAMPLE_RATE, DP_ROUNDS)  # local DP's privacy report
FIT_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, *LOCAL_DP_METRICS)
EVALUATE_METRICS = (ACCURACY,)

V = TypeVar("V")


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """An int or float (not a bool) with a finite value."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def example_count_problem(num_examples: Any) -> str | None:
    """Why `num_examples` cannot weight an update (not a whole number > 0), or None."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        return f"num_examples is a {type(num_examples).__name__}, expected a whole number"
    if num_examples <= 0:
        return f"num_examples = {num_examples}"
    return None


def metrics_problem(metrics: Mapping[str, Any], known: tuple[str, ...]) -> str | None:
    """Why `metrics` is unusable (a known name with a value that is not a finite
    number), or None."""
    for name in known:
        if name in metrics and not is_finite_number(metrics[name]):
            value = metrics[name]
            shown = repr(value)[:40] if isinstance(value, str | bytes) else type(value).__name__
            return f"metric {name} is {shown}, expected a finite number"
    return None


def known_metrics(metrics: Mapping[str, V], known: tuple[str, ...]) -> dict[str, V]:
    """The metrics under `known` names (already checked by `metrics_problem`)."""
    return {name: metrics[name] for name in known if name in metrics}
