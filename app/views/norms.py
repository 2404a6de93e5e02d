"""Norm distributions per dataset split, OOD set and head (the paper's Figure 3)."""

from __future__ import annotations

from typing import cast

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from normprobe.app import explore, loading
from normprobe.app.loading import FileStamp
from normprobe.app.session import Session

from normprobe.analyses.norms import norm_summary
from normprobe.errors import NormprobeError
from normprobe.report import norm_bars_figure, norm_histogram_figure


@st.cache_resource(show_spinner=False, max_entries=8)
def summary(path: str, files: FileStamp) -> tuple[pd.DataFrame, go.Figure]:
    """Norm summary of every split and head (:func:`~normprobe.analyses.norms.norm_summary`) and its bar chart."""
    samples = loading.open_results(path, files).samples
    table = norm_summary(samples, explore.heads(samples))
    return table, norm_bars_figure(table)


@st.cache_resource(show_spinner=False, max_entries=16)
def histogram(path: str, files: FileStamp, head: str) -> go.Figure:
    return norm_histogram_figure(loading.open_results(path, files).samples, head)


def render(session: Session) -> None:
    heads = explore.heads(session.samples)
    # selectbox returns the chosen option, or None when there are none; under python_version 3.10
    # mypy reads streamlit's overloads (typing.Never, 3.11+) as always None, so the real type is cast.
    head = cast("str | None", st.selectbox("Head", heads, index=heads.index(session.head), key="norms-head"))
    if head is None:
        st.info("This run has no embedding norms.")
        return
    try:
        table, bars = summary(session.path, session.files)
    except NormprobeError as err:
        st.warning(f"No norm summary: {explore.plain(err)}")
        return
    st.plotly_chart(histogram(session.path, session.files, head), key="norms-histogram")
    st.caption("Click a legend entry to hide or show a split.")
    st.plotly_chart(bars, key="norms-bars")
    st.dataframe(table, hide_index=True, width="stretch")
