"""Property tests (hypothesis): clipping, the tensor and IDX readers, Poisson sampling and
the run-config parser hold their contracts for any input, not only the chosen examples."""

import io
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.common import ndarray_to_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from data.idx import read_idx
from fl_app.config import DECLARED, RULES, AppConfig, ConfigError, auto_settings, project_defaults
from strategies.privacy.mechanism import clip_update, global_l2_norm
from strategies.privacy.sampling import poisson_sample
from strategies.tensors import read_array

REPO = Path(__file__).resolve().parents[1]


def examples(n: int) -> settings:
    """`n` examples, the same on every run (no example database, no new random draws)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


FAST = examples(60)
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)

# --- clipping (strategies/privacy/mechanism.py) ---------------------------------------

updates = st.lists(
    arrays(np.float32, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
           elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=4,
)
clipping_norms = st.floats(min_value=0, max_value=1e30, exclude_min=True)


# an update of float32's largest values: the scale S/‖Δ‖₂ is below float32's normal range
HUGE_UPDATE = [np.full(10_000, np.finfo(np.float32).max, dtype=np.float32)]


@FAST
@given(updates, clipping_norms)
@example(HUGE_UPDATE, 1e-3)  # rounded to nearest, this clipped update was 0.14% longer than S
@example([np.ones(2, dtype=np.float32)], 1e-40)  # clipped values are float32 subnormals
@example([np.ones(2, dtype=np.float32)], 1.2e-44)
def test_clipping_bounds_the_norm_and_keeps_the_direction(update, s):
    before = [a.copy() for a in update]
    clipped, norm = clip_update(update, s)
    assert norm == global_l2_norm(update)
    assert global_l2_norm(clipped) <= s * (1 + 1e-6)
    assert [(c.shape, c.dtype) for c in clipped] == [(a.shape, a.dtype) for a in update]
    for c, a, b in zip(clipped, update, before, strict=True):
        assert np.array_equal(a, b)  # the input is left as it was
        exact = a.astype(np.float64) * min(1.0, s / norm) if norm else a
        np.testing.assert_allclose(c, exact, rtol=1e-6, atol=FLOAT32_TINY)


@FAST
@given(updates, clipping_norms)
@example(HUGE_UPDATE, 1e-3)
@example([np.ones(2, dtype=np.float32)], 1e-40)
def test_clipping_is_idempotent_and_in_place_clipping_agrees(update, s):
    clipped, _ = clip_update(update, s)
    again, _ = clip_update(clipped, s)
    for a, b in zip(again, clipped, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=FLOAT32_TINY)
    in_place, _ = clip_update([a.copy() for a in update], s, in_place=True)
    for a, b in zip(in_place, clipped, strict=True):
        assert np.array_equal(a, b)


@FAST
@given(updates, st.floats(min_value=1, max_value=1e6))
def test_an_update_within_the_norm_is_returned_unchanged(update, factor):
    norm = global_l2_norm(update)
    clipped, reported = clip_update(update, norm * factor if norm else factor)
    assert reported == norm
    assert all(c is a for c, a in zip(clipped, update, strict=True))


# --- the tensor reader (strategies/tensors.py) ----------------------------------------

DTYPES = [np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.dtype(">f4"), np.dtype(">i8")]
any_arrays = arrays(st.sampled_from(DTYPES), array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))


@FAST
@given(any_arrays, st.booleans())
def test_what_flower_writes_reads_back_equal(array, fortran):
    array = np.array(array, order="F" if fortran else "C")
    read = read_array(ndarray_to_bytes(array))
    assert type(read) is np.ndarray and read.dtype == array.dtype and read.shape == array.shape
    assert np.array_equal(read, array, equal_nan=array.dtype.kind == "f")
    assert not read.flags.writeable


def npy_bytes(header: str, version: int) -> bytes:
    """A `.npy` preamble: magic, `version`, header length, `header` padded to 64 bytes."""
    size_bytes = 2 if version == 1 else 4
    body = header.encode("latin1")
    pad = -(6 + 2 + size_bytes + len(body) + 1) % 64
    body += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(size_bytes, "little") + body


@st.composite
def npy_like(draw) -> bytes:
    """Bytes near the `.npy` format: valid blobs cut, extended or with a byte changed,
    and headers with any dtype, order and (negative, huge) shape, with or without the
    data they declare."""
    kind = draw(st.sampled_from(["mutated", "header"]))
    if kind == "mutated":
        blob = bytearray(ndarray_to_bytes(draw(any_arrays)))
        edit = draw(st.sampled_from(["cut", "append", "change"]))
        at = draw(st.integers(0, len(blob) - 1))
        if edit == "cut":
            return bytes(blob[:at])
        if edit == "append":
            return bytes(blob) + draw(st.binary(min_size=1, max_size=16))
        blob[at] = draw(st.integers(0, 255))
        return bytes(blob)
    descr = draw(st.sampled_from(["'<f4'", "'>f8'", "'|u1'", "'<i8'", "'|b1'", "'O'", "'|V0'", "'<U0'", "'<U2'",
                                  "[('a', '<f4'), ('b', 'O')]", "[('a', '<i2')]", "'x'", "3"]))
    dims = draw(st.lists(st.one_of(st.integers(-3, 6), st.integers(-2**80, 2**80)), max_size=4))
    shape = "(" + "".join(f"{d}, " for d in dims) + ")"
    fortran = draw(st.sampled_from(["True", "False", "0"]))
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    data = draw(st.binary(max_size=64))
    return npy_bytes(header, draw(st.sampled_from([1, 2, 3]))) + data


def npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    return buffer.getvalue()


@examples(300)
@given(st.one_of(st.binary(max_size=200), npy_like()))
@example(npz())
@example(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1180591620717411303424,), }", 1))
@example(npy_bytes("'" * 3, 1))  # numpy's header parser raised its tokenizer's TokenError
@example(npy_bytes("{'descr': '0<L', 'fortran_order': True, 'shape': (1073861944, 8588973740), }", 1))
def test_any_bytes_read_as_one_array_or_raise_value_error(blob):
    try:
        read = read_array(blob)
    except ValueError:
        return
    assert type(read) is np.ndarray and not read.dtype.hasobject
    assert read.nbytes <= len(blob)


# --- the IDX reader (data/idx.py) -----------------------------------------------------

def idx_bytes(shape: tuple[int, ...], data: bytes) -> bytes:
    """An unsigned-byte IDX file (magic 0x00000800 | ndim, big-endian 32-bit dims)."""
    magic = 0x00000800 | len(shape)
    return magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape) + data


def read_idx_bytes(content: bytes) -> np.ndarray:
    """`read_idx` of a file holding `content`, as a copy (the memory map closes here)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "images-idx3-ubyte"
        path.write_bytes(content)
        mapped = read_idx(path)
        array = np.array(mapped)
        del mapped
        return array


idx_arrays = arrays(np.uint8, array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8))


@FAST
@given(idx_arrays)
def test_an_idx_file_reads_back_equal(array):
    read = read_idx_bytes(idx_bytes(array.shape, array.tobytes()))
    assert read.dtype == np.uint8 and read.shape == array.shape and np.array_equal(read, array)


@FAST
@given(idx_arrays, st.data())
def test_a_cut_or_extended_idx_file_is_refused(array, data):
    content = idx_bytes(array.shape, array.tobytes())
    if data.draw(st.booleans()):
        content = content[:data.draw(st.integers(0, len(content) - 1))]
    else:
        content += data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(ValueError, match="^images-idx3-ubyte "):
        read_idx_bytes(content)


@FAST
@given(st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=5), st.binary(max_size=64))
@example([2**31, 2**31, 4], b"")  # the product of the dims is 2**64
def test_any_idx_header_reads_as_its_shape_or_is_refused(shape, data):
    """Dims that do not match the data are refused by the module's check, naming the file;
    others read as their shape or raise ValueError (numpy's, for shapes it cannot hold)."""
    try:
        read = read_idx_bytes(idx_bytes(tuple(shape), data))
    except ValueError as err:
        assert math.prod(shape) == len(data) or str(err).startswith("images-idx3-ubyte declares shape"), err
        return
    assert read.shape == tuple(shape) and read.tobytes() == data


# --- Poisson sampling (strategies/privacy/sampling.py) --------------------------------

DRAWS = 2000


@examples(40)
@given(st.floats(min_value=0, max_value=1, exclude_min=True), st.integers(1, 40))
@example(1.0, 40)
def test_each_member_joins_with_probability_q(q, size):
    rng = np.random.default_rng(20240601)
    population = list(range(size))
    counts = np.zeros(size)
    for _ in range(DRAWS):
        sample = poisson_sample(population, q, rng)
        assert sample == sorted(set(sample))  # distinct members, in population order
        counts[sample] += 1
    # each count is Binomial(DRAWS, q): within 6 standard deviations (+1 for discreteness)
    bound = 6 * math.sqrt(DRAWS * q * (1 - q)) + 1
    assert np.all(np.abs(counts - DRAWS * q) <= bound), (counts, q)
    if q == 1:
        assert np.all(counts == DRAWS)


@FAST
@given(st.lists(st.integers(0, 3), max_size=30), st.floats(min_value=0, max_value=1, exclude_min=True),
       st.integers(0, 2**32))
def test_a_sample_is_a_subsequence_of_the_population(population, q, seed):
    sample = poisson_sample(population, q, np.random.default_rng(seed))
    rest = iter(population)
    assert all(member in rest for member in sample)  # in order, each member at most as often
    assert poisson_sample(population, 1.0, np.random.default_rng(seed)) == population


@FAST
@given(st.one_of(st.floats(max_value=0), st.floats(min_value=1, exclude_min=True), st.just(math.nan)))
def test_a_rate_outside_zero_one_is_refused(q):
    with pytest.raises(ValueError, match="sampling rate must be in"):
        poisson_sample([1, 2, 3], q, np.random.default_rng(0))


# --- the run-config parser (fl_app/config.py) -----------------------------------------

DEFAULTS = project_defaults(REPO)
BASES = {
    "defaults": DEFAULTS,
    "central-dp-secagg": DEFAULTS | {"dp-mode": "central", "dp-clipping": "client", "dp-noise-multiplier": 1.0,
                                     "secure-aggregation": True, "dp-clients-per-round": 10.0},
    "local-dp": DEFAULTS | {"dp-mode": "local", "dp-target-epsilon": 8.0},
}
# the values that other keys take, so that cross-key rules are reached
KNOWN_VALUES = list({repr(v): v for v in DEFAULTS.values()}.values())
values = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.integers(min_value=2**1024),  # beyond float's range (tomllib reads integers of any length)
    st.floats(),
    st.booleans(),
    st.sampled_from([None, "", "auto", "none", "true", "central", "local", "client", "fixed", "fedprox",
                     "fedavgm", "krum", "mlflow", 0, 1, 2, -1, 0.5, 1.5, 1e-6, 1e6, math.inf]),
    st.sampled_from(KNOWN_VALUES),
)
# strategy = 'module:Class' is imported: only from letters no module is named after
strategy_names = st.one_of(values.filter(lambda v: not isinstance(v, str)),
                           st.text(alphabet="._:xyzK\n ", max_size=10),
                           st.sampled_from(["fedavg", "krum", "examples.norm_bounded_fedavg:NormBoundedFedAvg",
                                            "examples.norm_bounded_fedavg:math", "fl_app.config:AppConfig"]))
CONFIG_ERROR = re.compile(r"Invalid run-config: ([a-z0-9-]+) = ")


def test_the_bases_are_valid_configs():
    for run_config in BASES.values():
        AppConfig.from_run_config(run_config)


@st.composite
def one_key_changed(draw) -> tuple[dict, str, object]:
    base = BASES[draw(st.sampled_from(sorted(BASES)))]
    key = draw(st.sampled_from(sorted(DECLARED)))
    value = draw(strategy_names if key == "strategy" else values)
    return base | {key: value}, key, value


@examples(100)
@given(strategy_names.filter(lambda v: isinstance(v, str)))
@example(".x:K")  # a relative module name: importlib raised TypeError
@example("x\n:K")  # the import error quoted the name with its line break
def test_any_strategy_name_is_accepted_or_refused_in_one_line(name):
    try:
        AppConfig.from_run_config(DEFAULTS | {"strategy": name})
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(f"Invalid run-config: strategy = {name!r}"), str(err)


@examples(400)
@given(one_key_changed())
@example((BASES["central-dp-secagg"] | {"dp-clients-per-round": 10**400}, "dp-clients-per-round", 10**400))
def test_one_changed_key_is_accepted_or_refused_in_one_line_naming_a_key(case):
    """With one key of a valid config changed to anything, `from_run_config` returns or
    raises ConfigError (never another exception) whose message is one line
    `Invalid run-config: <key> = <value> ...`, naming a declared key; when the value breaks
    its own key's rule it names that key and value: `<key> = <value!r> (allowed: ...)`
    (the cross-key rules of `check` name the key they refuse, possibly another)."""
    run_config, key, value = case
    try:
        AppConfig.from_run_config(run_config)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message, message
        named = CONFIG_ERROR.match(message)
        assert named and named.group(1) in DECLARED, message
        resolved = auto_settings(run_config).get(key, value)
        if RULES[key](resolved) is not None:
            assert message.startswith(f"Invalid run-config: {key} = {resolved!r} (allowed: "), message
