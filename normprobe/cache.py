"""On-disk embedding cache: one ``.npy`` per (checkpoint, dataset fingerprint, head, preprocessing, precision).

Location: ``$NORMPROBE_CACHE``, else ``~/.cache/normprobe/embeddings``. Writes are atomic (temporary
file + ``os.replace``), so a crash never leaves a truncated entry; reads are memory-mapped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from normprobe.atomic import atomic_write
from normprobe.terminal import warn

CACHE_ENV = "NORMPROBE_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normprobe" / "embeddings"


class EmbeddingCache:
    """Get and put arrays by key. The cache only saves time: an entry that cannot be written is a
    warning (once per cache), never a failed run."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self._warned = False

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError):
            # A damaged entry is a cache miss, not an error: it is recomputed and overwritten.
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)

        try:
            atomic_write(self._path(key), save)
        except OSError as err:
            if not self._warned:
                self._warned = True
                warn(
                    f"could not write to the embedding cache {self.root} ({err.strerror or err}); continuing without it"
                )
