"""Cached loaders: the results folder, the ImageSets it points at and decoded thumbnails.

The results are held once per process (``st.cache_resource``; views treat them as read-only) and
re-read only when ``run.json`` or ``samples.parquet`` change on disk: the files' (mtime, size) are
part of every cache key. Images are decoded only for the rows on screen
(``ImageSet.images(positions)``), and those thumbnails are cached by row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
from normprobe.app import explore

from normprobe import data
from normprobe.data import ImageSet
from normprobe.errors import NormprobeError
from normprobe.record import AnalysedDataset, RunRecord
from normprobe.results import RUN_FILE, SAMPLES_FILE, Results, read_results

THUMBNAIL_SIZE = 96
"""Thumbnails are enlarged by an integer factor to about this many pixels (pixel-exact, not smoothed)."""
LARGE_SIZE = 320
"""Size of the larger view of one image."""

FileStamp = tuple[tuple[str, int, int], ...]


def resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def stamp(path: str) -> FileStamp:
    """(file, mtime, size) of the results files: part of the cache keys, so a re-run analysis is re-read."""
    found = []
    for name in (RUN_FILE, SAMPLES_FILE):
        try:
            info = (Path(path) / name).stat()
        except OSError:
            continue
        found.append((name, info.st_mtime_ns, info.st_size))
    return tuple(found)


@st.cache_resource(show_spinner="Reading the results folder…", max_entries=4)
def open_results(path: str, files: FileStamp) -> Results:
    """The validated results folder at ``path`` (a :class:`NormprobeError` when missing or malformed)."""
    return read_results(path)


def dataset_entry(run: RunRecord, name: str, split: str) -> AnalysedDataset | None:
    """The ``datasets`` entry of run.json for one dataset split (None when the run does not list it)."""
    return next((d for d in run.datasets if d.name == name and d.split == split), None)


def data_root_for(entry: AnalysedDataset | None, override: str) -> str | None:
    """Where to find a dataset's images: the user's override, else the run's data root if it exists here,
    else None (``$NORMPROBE_DATA`` or the default data root)."""
    if override.strip():
        return override.strip()
    if entry is not None and entry.data_root and Path(entry.data_root).expanduser().is_dir():
        return entry.data_root
    return None


@st.cache_resource(show_spinner="Opening the dataset…", max_entries=16)
def imageset(spec: str, split: str, data_root: str | None, image_size: int) -> ImageSet:
    """The full split behind a ``datasets`` entry: a manifest name, an image folder or an .npz file."""
    return data.load_any(spec, split, data_root, image_size)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnails(
    entry: tuple[str, str, str | None, int], indices: tuple[int, ...], labels: tuple[int, ...], size: int
) -> np.ndarray:
    """Enlarged uint8 images of the samples at the original ``indices`` of one dataset split, decoding only those.

    ``entry`` is (spec, split, data root, image size) for :func:`imageset`. ``labels`` are the labels the
    results record: a dataset whose labels differ is not the one analysed, which is a
    :class:`NormprobeError` rather than silently wrong pictures.
    """
    images = imageset(*entry)
    positions = explore.positions_in(images.index, np.asarray(indices, dtype=np.int64))
    recorded = np.asarray(labels, dtype=np.int64)
    found = images.labels[positions]
    differ = (recorded >= 0) & (found >= 0) & (recorded != found)
    if differ.any():
        raise NormprobeError(
            f"the images at {images.source} are not the analysed ones (labels differ for {int(differ.sum())} "
            f"of {len(positions)} samples)"
        )
    return explore.upscale(images.images(positions).numpy(), size)
