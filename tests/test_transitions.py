from __future__ import annotations

import pytest

from appgateway.transitions import STATES, allowed, pack

TABLE = ((1, 2), (0,), (), (3,))
EVERYTHING = [tuple(range(STATES))] * STATES


@pytest.mark.parametrize("current", range(len(TABLE)))
@pytest.mark.parametrize("new", range(len(TABLE)))
def test_exactly_the_listed_moves_are_allowed(current: int, new: int) -> None:
    assert allowed(pack(TABLE), current, new) is (new in TABLE[current])


def test_the_largest_table_packs_into_disjoint_bits() -> None:
    legal = pack(EVERYTHING)
    assert legal.bit_count() == STATES * STATES
    assert legal < 1 << 63  # a native i64 when compiled
    for state in range(STATES):
        only = pack([() if row != state else (state,) for row in range(STATES)])
        moves = [(c, n) for c in range(STATES) for n in range(STATES) if allowed(only, c, n)]
        assert moves == [(state, state)]


@pytest.mark.parametrize(("current", "new"), [(-1, 0), (0, -1), (STATES, 0), (0, STATES), (9, 9)])
def test_states_outside_the_table_are_never_allowed(current: int, new: int) -> None:
    assert not allowed(pack(EVERYTHING), current, new)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ([()] * (STATES + 1), r"at most 7 states"),
        (((1,),), r"state 1 \(from 0\) is not in the table"),
        (((-1,),), r"state -1 \(from 0\) is not in the table"),
    ],
)
def test_tables_that_do_not_fit_are_refused(
    table: tuple[tuple[int, ...], ...], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        pack(table)
