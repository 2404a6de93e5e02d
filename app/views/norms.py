"""Norm distributions per dataset split, OOD set and head (the paper's Figure 3)."""

from __future__ import annotations

import streamlit as st

from app import explore
from app.session import Session
from normprobe.analyses.norms import norm_summary
from normprobe.errors import NormprobeError
from normprobe.report import norm_bars_figure, norm_histogram_figure


def render(session: Session) -> None:
    samples = session.samples
    heads = explore.heads(samples)
    head = st.selectbox("Head", heads, index=heads.index(session.head), key="norms-head")
    try:
        table = norm_summary(samples, heads)
    except NormprobeError as err:
        st.warning(f"No norm summary: {err}")
        return
    st.plotly_chart(norm_histogram_figure(samples, head), key="norms-histogram")
    st.caption("Click a legend entry to hide or show a split.")
    st.plotly_chart(norm_bars_figure(table), key="norms-bars")
    st.dataframe(table, hide_index=True, width="stretch")
