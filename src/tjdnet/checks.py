"""The one check of an integer setting, shared by every place a count enters (configs, options, commands)."""

from __future__ import annotations


def check_int(name: str, value: object, low: int = 1, allowed: str | None = None) -> None:
    """ValueError ``<name>=<value> is not allowed; use an integer >= <low>`` (or ``<allowed>``) unless ``value`` is
    an int (not a bool) of at least ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} is not allowed; use an integer {allowed or f'>= {low}'}")
