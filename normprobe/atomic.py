"""Atomic file writes: write a temporary sibling, then rename it onto the target.

An interrupted write never leaves a half-written file, and a failed one leaves an existing file
untouched. The temporary file is opened normally (not with ``mkstemp``, which creates 0600), so the
result gets the permissions an ordinary write would give it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place (what
    ``write`` returns is ignored, so ``lambda tmp: tmp.write_text(text)`` will do)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
