"""Where datasets live: ``--data-root``, else ``$NORMPROBE_DATA``, else a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "NORMPROBE_DATA"
SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "sample"
"""The real image sample shipped inside the package (see :mod:`normprobe.data.sample`)."""
SAMPLE_SUMS = "SHA256SUMS"
"""The sample's own checksums (its files are partial copies, so the manifests' do not apply)."""


def default_data_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normprobe" / "data"


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env).expanduser() if env else default_data_root()
