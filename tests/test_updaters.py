"""Every builtin updater against an independent numpy reference, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from paramserver import SGD, ConfigError, DTypeError, InvalidArgument, TableError
from paramserver.table import Adam, Store, TableSpec, Updater, resolve_updater
from reference import CASES, Reference


@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_updater_matches_reference(name: str, params: dict[str, float], dtype: str) -> None:
    store = Store(TableSpec.create("t", width=3, dtype=dtype, updater=name, updater_args=params))
    ref = Reference(name, params, 3, dtype)
    rng = np.random.default_rng(7)
    universe = np.array([0, 3, 17, 2**40, 2**63 + 1, 2**64 - 1], dtype=np.uint64)
    for _ in range(12):
        keys = np.sort(rng.choice(universe, size=rng.integers(1, 6), replace=False))
        g = rng.normal(size=(len(keys), 3)).astype(dtype)
        store.push(keys, g)
        for k, row in zip(keys.tolist(), g, strict=True):
            ref.step(k, row)
        rtol = 1e-12 if dtype == "float64" else 2e-5
        np.testing.assert_allclose(store.pull(universe), ref.values(universe), rtol=rtol, atol=rtol)


def test_integer_tables_sum_exactly() -> None:
    store = Store(TableSpec.create("c", width=2, dtype="uint32", updater="sum"))
    keys = np.array([1, 2], dtype=np.uint64)
    for _ in range(1000):
        store.push(keys, np.array([[1, 2], [3, 4]], dtype=np.uint32))
    np.testing.assert_array_equal(store.pull(keys), [[1000, 2000], [3000, 4000]])


def test_spec_validation_messages() -> None:
    with pytest.raises(DTypeError, match="needs a floating-point dtype"):
        TableSpec.create("t", dtype="int32", updater="adam")
    with pytest.raises(ConfigError, match="unknown updater 'nope'"):
        TableSpec.create("t", updater="nope")
    with pytest.raises(InvalidArgument, match="has no parameter"):
        TableSpec.create("t", updater="sgd", updater_args={"learning_rate": 1})
    with pytest.raises(InvalidArgument, match=r"lr=-1.0 must be finite and > 0"):
        SGD(lr=-1)
    with pytest.raises(InvalidArgument, match=r"beta1=1.0 must be < 1"):
        Adam(beta1=1.0)
    with pytest.raises(InvalidArgument, match="width must be"):
        TableSpec.create("t", width=0)
    with pytest.raises(DTypeError, match="not supported"):
        TableSpec.create("t", dtype="complex64")
    with pytest.raises(ConfigError, match="cannot import updater"):
        resolve_updater("no_such_module_xyz:Thing")
    with pytest.raises(TableError, match="exists with width=1"):
        TableSpec.create("t").check_compatible(TableSpec.create("t", width=2))


def test_updater_objects_and_names_give_equal_specs() -> None:
    a = TableSpec.create("t", updater=SGD(lr=0.5))
    b = TableSpec.create("t", updater="sgd", updater_args={"lr": 0.5})
    assert a == b and TableSpec.from_wire(a.to_wire()) == a


class Halve(Updater):
    """A user updater for the tests: w = (w + u) / 2."""

    def apply(self, values, state, slots, update):  # type: ignore[no-untyped-def]
        values[slots] = (values[slots] + update) / 2


def test_user_updater_by_import_path() -> None:
    spec = TableSpec.create("t", updater=Halve, dtype="float64")
    assert spec.updater == "test_updaters:Halve"
    store = Store(spec)
    keys = np.array([4], dtype=np.uint64)
    store.push(keys, np.array([[8.0]]))
    store.push(keys, np.array([[8.0]]))
    np.testing.assert_array_equal(store.pull(keys), [[6.0]])
