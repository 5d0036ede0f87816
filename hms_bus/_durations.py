"""Durations as people type them: ``45s``, ``90m``, ``12h``, ``30d``.

One parser for the command line (``--since``, ``prune --older-than``) and the console's
time filters, so that each accepts the same spellings.
"""

from __future__ import annotations

__all__ = ["seconds_of"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(text: str) -> float | None:
    """The seconds of a duration such as ``30d`` (a number, with or without a decimal
    point, then ``s``, ``m``, ``h`` or ``d``); None for anything else."""
    number, unit = text[:-1], text[-1:]
    if unit in _UNITS and number.replace(".", "", 1).isdigit():
        return float(number) * _UNITS[unit]
    return None
