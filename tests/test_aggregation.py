import numpy as np
import pytest

from strategies.aggregation import update_problem, weighted_average, weighted_metric_means


def test_weighted_average_matches_hand_computation_with_unequal_counts():
    w1 = [np.array([1.0, 2.0], dtype=np.float32), np.array([[10.0]], dtype=np.float32)]
    w2 = [np.array([3.0, 6.0], dtype=np.float32), np.array([[20.0]], dtype=np.float32)]
    w3 = [np.array([-1.0, 0.0], dtype=np.float32), np.array([[40.0]], dtype=np.float32)]
    # n = 100 + 300 + 600 = 1000 -> coefficients 0.1, 0.3, 0.6
    avg = weighted_average([w1, w2, w3], [100, 300, 600])
    np.testing.assert_allclose(avg[0], [0.1 * 1 + 0.3 * 3 - 0.6, 0.1 * 2 + 0.3 * 6], rtol=1e-7)
    np.testing.assert_allclose(avg[1], [[1.0 + 6.0 + 24.0]], rtol=1e-7)
    assert avg[0].dtype == np.float32 and avg[1].shape == (1, 1)


def test_weighted_average_of_one_update_is_that_update():
    w = [np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)]
    np.testing.assert_array_equal(weighted_average([w], [17])[0], w[0])


@pytest.mark.parametrize("weights", [[1, -1], [0, 0], [1, float("nan")]])
def test_weighted_average_refuses_bad_weights(weights):
    w = [np.zeros(2)]
    with pytest.raises(ValueError, match="weights"):
        weighted_average([w, w], weights)


SHAPES = [(2, 3), (4,)]
DTYPES = [np.dtype(np.float64), np.dtype(np.float64)]


def test_update_problem_accepts_well_formed_update():
    assert update_problem([np.zeros((2, 3)), np.ones(4)], SHAPES, DTYPES) is None


@pytest.mark.parametrize(
    "update, reason",
    [
        ([np.zeros((2, 3))], "1 tensors, expected 2"),
        ([np.zeros((3, 2)), np.ones(4)], "tensor 0 has shape (3, 2), expected (2, 3)"),
        ([np.zeros((2, 3)), np.array([1.0, np.nan, 0.0, 0.0])], "tensor 1 has non-finite values"),
        ([np.full((2, 3), np.inf), np.ones(4)], "tensor 0 has non-finite values"),
        ([np.zeros((2, 3), np.int32), np.ones(4)], "tensor 0 has dtype int32, expected float64"),
        ([np.zeros((2, 3)), np.ones(4, np.complex64)], "tensor 1 has dtype complex64, expected float64"),
        ([np.zeros((2, 3)), np.ones(4, np.float32)], "tensor 1 has dtype float32, expected float64"),
    ],
)
def test_update_problem_names_the_defect(update, reason):
    assert update_problem(update, SHAPES, DTYPES) == reason


def test_update_problem_without_expected_dtypes_accepts_any_float_only():
    assert update_problem([np.zeros((2, 3), np.float32), np.ones(4)], SHAPES, None) is None
    assert update_problem([np.zeros((2, 3), np.int64), np.ones(4)], SHAPES, None) == (
        "tensor 0 has dtype int64, expected a float dtype")


def test_metric_means_are_example_weighted_and_skip_non_numeric():
    means = weighted_metric_means(
        [(10, {"acc": 0.5, "loss": 1.0, "name": "a"}), (30, {"acc": 0.9}), (60, {"loss": 2.0})]
    )
    assert means["acc"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert means["loss"] == pytest.approx((10 * 1.0 + 60 * 2.0) / 70)
    assert "name" not in means


def test_weighted_average_reads_a_generator_once_each_and_gives_the_same_bits():
    rng = np.random.default_rng(3)
    updates = [[rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
               for _ in range(9)]
    counts = [int(c) for c in rng.integers(1, 600, size=9)]
    read = []

    def one_at_a_time():
        for i, update in enumerate(updates):
            read.append(i)
            yield [a.copy() for a in update]

    streamed = weighted_average(one_at_a_time(), counts)
    assert read == list(range(9))
    expected = [sum((np.float64(n) / sum(counts)) * u[i].astype(np.float64)
                    for u, n in zip(updates, counts, strict=True))
                for i in range(2)]
    for got, want, listed in zip(streamed, expected, weighted_average(updates, counts), strict=True):
        assert got.dtype == np.float32 and np.array_equal(got, listed)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="8 updates but 9 weights"):
        weighted_average(iter(updates[:8]), counts)
    with pytest.raises(ValueError, match="more updates than the 8 weights"):
        weighted_average(iter(updates), counts[:8])
