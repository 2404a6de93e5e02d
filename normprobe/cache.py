"""The one on-disk cache of computed arrays: embeddings, kNN predictions, OOD scores, search recalls.

Every entry is one ``.npy`` file named by its key, :meth:`Cache.key` of a namespace (what is
stored, with a version: ``embed/2``, ``analyze-knn/1``) and the key parts it depends on (the
checkpoint, the data, the settings that shape it). Results computed from embeddings use the
embeddings' own keys as parts, so that they change when the embeddings do.

Location: ``$NORMPROBE_CACHE``, else ``~/.cache/normprobe/embeddings``. Writes are atomic (temporary
file + ``os.replace``), so a crash never leaves a truncated entry; reads are memory-mapped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from normprobe.atomic import atomic_write
from normprobe.data.hashing import fingerprint
from normprobe.terminal import warn

CACHE_ENV = "NORMPROBE_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normprobe" / "embeddings"


class Cache:
    """Arrays by key. The cache only saves time: an entry that cannot be written is a warning (once
    per cache), never a failed run. ``enabled=False`` (``--no-cache``) neither reads nor writes."""

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self._warned = False

    @staticmethod
    def key(namespace: str, *parts: str | np.ndarray) -> str:
        """The key of what ``namespace`` stores for these ``parts`` (strings, or arrays by content)."""
        return fingerprint(namespace, *parts)

    def memoize(
        self, namespace: str, key_parts: tuple[str, ...], compute: Callable[[], np.ndarray]
    ) -> tuple[np.ndarray, bool]:
        """``(array, from_cache)``: the stored array (a writable copy), else ``compute()``, then stored."""
        key = self.key(namespace, *key_parts)
        hit = self.get(key)
        if hit is not None:
            return np.array(hit), True
        value = compute()
        self.put(key, value)
        return value, False

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if not self.enabled:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError):
            # A damaged entry is a cache miss, not an error: it is recomputed and overwritten.
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        if not self.enabled:
            return

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
