"""The checks of a setting's value shared by every place one enters (configs, options, commands): an integer of
at least some bound, a finite number above zero, or one of a few named choices."""

from __future__ import annotations

import math
from collections.abc import Collection


def check_int(name: str, value: object, low: int = 1, allowed: str | None = None) -> None:
    """ValueError ``<name>=<value> is not allowed; use an integer >= <low>`` (or ``<allowed>``) unless ``value`` is
    an int (not a bool) of at least ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed; use an integer {allowed or f'>= {low}'}")


def check_choice(name: str, value: object, choices: Collection[str]) -> None:
    """ValueError ``<name>=<value> is not allowed; use one of <choices>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {', '.join(choices)}")


def check_positive(name: str, value: object) -> None:
    """ValueError ``<name>=<value> is not allowed; use a number > 0`` unless ``value`` is a finite int or float
    (not a bool) above zero."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; use a number > 0")
