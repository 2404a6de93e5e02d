"""The memory one checkpoint may claim, checked before anything is allocated.

A checkpoint is untrusted input, and the sizes it declares (how far an archive member inflates,
how wide a layer is) cost memory once believed. They are checked against half the machine's
physical memory first, so a hostile or broken file fails in one line instead of swapping the
machine to a halt or being killed by the out-of-memory killer.
"""

from __future__ import annotations

import os

FALLBACK_BUDGET = 16 << 30
"""The budget where the operating system does not report its physical memory."""


def memory_budget() -> int:
    """Bytes one checkpoint may claim: half the physical memory (``FALLBACK_BUDGET`` where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return FALLBACK_BUDGET


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    size, unit = float(n), 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{n} B" if unit == 0 else f"{size:.1f} {units[unit]}"
