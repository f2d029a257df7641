"""Sizes and durations as policy and configuration files write them.

Sizes: an integer number of bytes, or a whole number with a binary unit
("64KiB", "512MiB", "1GiB"). Durations: a number of seconds, or whole numbers
with units d, h, m, s in that order ("30s", "10m", "1h30m").
"""

from __future__ import annotations

import json
import math
import re

SIZE_UNITS = {"TiB": 1024**4, "GiB": 1024**3, "MiB": 1024**2, "KiB": 1024, "B": 1}
DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
SIZE_PATTERN = r"^[0-9]+(B|KiB|MiB|GiB|TiB)$"
DURATION_PATTERN = r"^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"


def parse_size(value: object) -> int:
    """Bytes from an integer or `"<n><unit>"` with a binary unit; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(SIZE_PATTERN, value):
        number = re.match(r"[0-9]+", value)
        assert number is not None
        return int(number.group()) * SIZE_UNITS[value[number.end() :]]
    raise ValueError(
        f"invalid size {_shown(value)}: use an integer number of bytes or a whole number"
        ' with one of the units B, KiB, MiB, GiB, TiB, e.g. "512MiB"'
    )


def parse_duration(value: object) -> float:
    """Seconds from a number or `"1h30m"`-style text (units d, h, m, s); ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str) and re.fullmatch(DURATION_PATTERN, value):
        parts = re.findall(r"([0-9]+)([dhms])", value)
        return float(sum(int(number) * DURATION_UNITS[unit] for number, unit in parts))
    raise ValueError(
        f"invalid duration {_shown(value)}: use a number of seconds or whole numbers"
        ' with the units d, h, m, s in that order, e.g. "30s", "10m" or "1h30m"'
    )


def format_size(size: int) -> str:
    """The largest unit that divides `size` exactly: 1073741824 -> "1GiB"."""
    for unit, factor in SIZE_UNITS.items():
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return "0B"


def format_duration(seconds: float) -> str | float:
    """ "1h30m" for whole seconds; fractional seconds stay a number."""
    if seconds != int(seconds):
        return seconds
    rest, text = int(seconds), ""
    for unit, factor in DURATION_UNITS.items():
        if rest >= factor:
            text += f"{rest // factor}{unit}"
            rest %= factor
    return text or "0s"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)
