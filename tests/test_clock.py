"""Range vector clocks against a naive per-key clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver import InvalidArgument, ProtocolError
from paramserver.clock import RangeClock
from paramserver.protocol import KEY_SPACE as KEY_END

N = 40  # keys 0..N-1 are modelled one by one; [N, 2**64) is one more cell

ops = st.lists(
    st.tuples(st.sampled_from(["set", "advance"]), st.integers(0, N), st.integers(1, N + 1), st.integers(-3, 6)),
    max_size=30,
)


def _bounds(lo: int, hi: int) -> tuple[int, int]:
    lo, hi = min(lo, hi - 1), hi
    return lo, (KEY_END if hi > N else hi)


@given(ops, st.lists(st.tuples(st.integers(0, N), st.integers(1, N + 1)), max_size=10))
@settings(max_examples=400)
def test_matches_a_naive_per_key_clock(operations: list[tuple[str, int, int, int]],
                                       queries: list[tuple[int, int]]) -> None:
    clock = RangeClock()
    naive = np.zeros(N + 1, dtype=np.int64)  # cell N stands for every key >= N
    for op, a, b, t in operations:
        lo, hi = _bounds(a, b)
        cells = slice(lo, min(hi, N) if hi <= N else N + 1)
        if op == "set":
            clock.set(lo, hi, t)
            naive[cells] = t
        else:
            clock.advance(lo, hi, t)
            naive[cells] = np.maximum(naive[cells], t)
        # invariants: starts increase from 0, neighbours differ, one range per run of equal times
        ranges = list(clock)
        assert ranges[0][0] == 0 and ranges[-1][1] == KEY_END
        assert all(r[1] == s[0] and r[2] != s[2] for r, s in itertools.pairwise(ranges))
        runs = 1 + int(np.count_nonzero(np.diff(naive)))
        assert len(clock) == runs
    for a, b in queries:
        lo, hi = _bounds(a, b)
        cells = slice(lo, min(hi, N) if hi <= N else N + 1)
        assert clock.min(lo, hi) == naive[cells].min()
        assert clock.max(lo, hi) == naive[cells].max()
    for k in range(N):
        assert clock.get(k) == naive[k]
    assert clock.get(2**64 - 1) == naive[N]
    assert RangeClock.from_wire(clock.to_wire()) == clock


def test_setting_a_range_splits_into_at_most_three_pieces() -> None:
    clock = RangeClock()
    clock.set(10, 20, 5)
    assert list(clock) == [(0, 10, 0), (10, 20, 5), (20, KEY_END, 0)]
    clock.set(0, 10, 5)
    assert list(clock) == [(0, 20, 5), (20, KEY_END, 0)]  # merged
    clock.set(0, KEY_END, 7)
    assert list(clock) == [(0, KEY_END, 7)]
    assert clock.min() == 7


def test_memory_is_per_range_not_per_key() -> None:
    clock = RangeClock()
    for i in range(1000):  # one million keys touched, in 1000 adjacent blocks of time i
        clock.advance(i * 1000, (i + 1) * 1000, i + 1)
    assert len(clock) == 1001
    clock.advance(0, 10**6, 5000)
    assert len(clock) == 2


def test_bad_ranges_and_wire_data() -> None:
    with pytest.raises(InvalidArgument):
        RangeClock().set(5, 5, 1)
    with pytest.raises(InvalidArgument):
        RangeClock().min(0, KEY_END + 1)
    with pytest.raises(ProtocolError):
        RangeClock.from_wire([[1, 0]])
    with pytest.raises(ProtocolError):
        RangeClock.from_wire("x")
