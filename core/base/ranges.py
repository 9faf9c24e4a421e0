"""The numbers a setting allows, stated once per setting (TrainConfig's field
table, the CLI's options, the run files' schemas, the environment's numeric
variables) and checked where the value comes in."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The numbers a setting allows: from low to high (None: no upper bound),
    each end included unless open. NaN is never in a range, and an infinity
    only where it is an included end (Range(0, math.inf))."""
    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        high = math.inf if self.high is None else self.high
        above = value > self.low if self.open_low else value >= self.low
        below = value < high if self.open_high or self.high is None else value <= high
        return above and below

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high is None:
            return f"{'above' if self.open_low else 'at least'} {low}"
        if not (self.open_low or self.open_high):
            return f"between {low} and {high}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"

    def check(self, value, name: str):
        """`value` when it is in the range, else ValueError naming the setting."""
        if value not in self:
            raise ValueError(f"{name} {value!r} must be {self}")
        return value


def _number(value) -> str:
    """A bound as people write it: whole numbers in full (a seed's 4294967295), others as %g."""
    if value is None or isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(value if value is None or isinstance(value, int) else int(value))
    return f"{value:g}"


NOT_NEGATIVE = Range(0)
FINITE = Range(-math.inf, math.inf, open_low=True, open_high=True)


def from_environment(variable: str, default, allowed: Range, kind=float):
    """The number in the environment variable (`default` when unset), ValueError
    naming the variable when it is not a number of `kind` in `allowed`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a {'whole ' if kind is int else ''}number") from None
    return allowed.check(value, variable)
