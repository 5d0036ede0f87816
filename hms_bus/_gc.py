"""The cyclic garbage collector's first threshold while a process runs roles.

A role handles thousands of records a second, and each leaves short-lived containers
(decoded events, claims, futures). With the interpreter's default first threshold of
700 allocations, the young generation is collected hundreds of times a second, and
every tenth of those collections is an older one that walks the whole heap. Raising the
threshold while roles run makes those collections rarer without keeping garbage long:
on Kafka + Postgres, ``gc_threshold=10000`` measured 10-15% more steps per second and
that much less CPU per step (``bench/README.md``).

The thresholds are the process's, shared with whatever else runs in it, so the change
is held only while at least one node with roles is connected, and undone when the last
one closes unless something else has set its own thresholds in the meantime.
``gc_threshold=0`` leaves them alone.
"""

from __future__ import annotations

import gc

__all__ = ["hold", "release"]

_holders = 0
_saved: tuple[int, int, int] | None = None  # the thresholds before the first hold
_ours: tuple[int, int, int] | None = None  # what the first hold set


def hold(threshold: int) -> bool:
    """Raise the first threshold to at least ``threshold`` (0: do nothing); return
    whether a hold was taken, to be given back with :func:`release`."""
    global _holders, _saved, _ours
    if threshold <= 0:
        return False
    if _holders == 0:
        _saved = gc.get_threshold()
        first, second, third = _saved
        if first != 0 and first < threshold:  # 0: automatic collection is turned off
            _ours = (threshold, second, third)
            gc.set_threshold(*_ours)
        else:
            _ours = None
    _holders += 1
    return True


def release() -> None:
    """Give back one :func:`hold`; the last restores the thresholds it found."""
    global _holders, _saved, _ours
    if _holders == 0:
        return
    _holders -= 1
    if _holders == 0:
        if _ours is not None and _saved is not None and gc.get_threshold() == _ours:
            gc.set_threshold(*_saved)
        _saved = _ours = None
