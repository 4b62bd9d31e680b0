"""The legal moves of the data path's small state machines, packed into one int.

Each machine (a request's stage, a connection's phase, an exchange's answer) lists its moves
as a table, read in one place; every transition is checked against it. The check runs several
times per request, so the table is packed into bits: a move is legal when bit
`current * 8 + new` is set. Typed as i64, mypyc compiles the check to a few machine
instructions, where searching a tuple would box both numbers and call into the interpreter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # mypyc's native 64-bit integer; a plain int when interpreted
    from mypy_extensions import i64

_SHIFT: Final = 3  # a row of 8 bits per current state
STATES: Final = 7  # at most, so that the highest bit (6 * 8 + 6) stays below an i64's sign


def pack(table: Sequence[Sequence[int]]) -> int:
    """`table[current]` lists the states reachable from `current`."""
    if len(table) > STATES:
        raise ValueError(f"at most {STATES} states")
    legal = 0
    for current, reachable in enumerate(table):
        for new in reachable:
            if not 0 <= new < len(table):
                raise ValueError(f"state {new} (from {current}) is not in the table")
            legal |= 1 << ((current << _SHIFT) | new)
    return legal


def allowed(legal: i64, current: i64, new: i64) -> bool:
    if not (0 <= current < STATES and 0 <= new < STATES):
        return False  # (and a shift by 64 or more is undefined in C)
    return (legal >> ((current << _SHIFT) | new)) & 1 == 1
