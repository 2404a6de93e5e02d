"""Image grids of samples, each image with its label, norm and kNN prediction, and a larger view on click."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from normprobe.app import explore, loading
from normprobe.app.explore import Group
from normprobe.app.session import Session

from normprobe.errors import NormprobeError


def _images(session: Session, group: Group, frame: pd.DataFrame, size: int) -> np.ndarray:
    """Decoded, enlarged images of ``frame``'s rows, from the dataset the run's ``datasets`` entry names."""
    entry = loading.dataset_entry(session.run, group.dataset, group.split)
    source = (
        (entry.spec if entry is not None else "") or group.dataset,
        group.split,
        loading.data_root_for(entry, session.data_root),
        int((entry.image_size if entry is not None and entry.image_size else (32,))[0]),
    )
    indices = tuple(int(i) for i in frame["index"])
    return loading.thumbnails(source, indices, tuple(int(label) for label in frame["label"]), size)


@st.dialog("Sample", width="large")
def _enlarge(session: Session, group: Group, row: dict[str, Any]) -> None:
    frame = pd.DataFrame([row])
    try:
        image = _images(session, group, frame, loading.LARGE_SIZE)[0]
    except NormprobeError as err:
        st.warning(f"The image is not available: {explore.plain(err)}")
    else:
        st.image(image, caption=f"{group.label} · index {row['index']}", output_format="PNG")
    details = pd.DataFrame({"field": list(row), "value": [str(v) for v in row.values()]})
    st.dataframe(details, hide_index=True, width="stretch")


def show(
    session: Session,
    group: Group,
    frame: pd.DataFrame,
    *,
    key: str,
    n_columns: int = 8,
    prefixes: Sequence[str] | None = None,
) -> None:
    """The rows of ``frame`` (all from ``group``) as an image grid inside a container keyed ``key``."""
    if frame.empty:
        st.caption("No samples.")
        return
    entry = loading.dataset_entry(session.run, group.dataset, group.split)
    if entry is not None and not entry.images:
        st.info(
            f"No images: {explore.plain(group.label)} was analysed from {explore.plain(entry.source)} "
            "(embedding input or a Python object), not from images the explorer can open. The samples:"
        )
        columns = ["index", "id", "label_name", session.norm_column, "knn_pred", "knn_correct"]
        st.dataframe(frame[[c for c in columns if c in frame.columns]], hide_index=True, key=f"{key}-table")
        return
    try:
        images = _images(session, group, frame, loading.THUMBNAIL_SIZE)
    except NormprobeError as err:
        st.warning(
            f"Images of {explore.plain(group.label)} are not available: {explore.plain(err)}. "
            "Set the data root in the sidebar."
        )
        return
    rows = frame.to_dict("records")
    captions = [explore.caption(pd.Series(r), session.norm_column, session.id_classes) for r in rows]
    # Class names come from the results folder: markdown-escaped in the caption, raw in the alt text.
    shown = [explore.plain(c) for c in captions]
    if prefixes is not None:
        captions = [f"{p} · {c}" for p, c in zip(prefixes, captions, strict=True)]
        shown = [f"{p} · {c}" for p, c in zip(prefixes, shown, strict=True)]
    with st.container(key=key):
        for line in explore.grid(len(rows), n_columns):
            for column, i in zip(st.columns(n_columns), line, strict=False):
                with column:
                    st.image(images[i], output_format="PNG", alt=captions[i])
                    if st.button(
                        "enlarge", key=f"{key}-zoom-{i}", type="tertiary", icon=":material/zoom_in:"
                    ):
                        _enlarge(session, group, rows[i])
                    st.caption(shown[i])
