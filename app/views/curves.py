"""Curves computed from samples.parquet with normprobe's own analyses and report figures: kNN accuracy
and human-label signals per norm bucket, and ROC curves of every OOD set and scorer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app import explore, loading
from app.session import Session
from normprobe.analyses.buckets import SCALINGS, bucket_curve
from normprobe.analyses.human import human_curves, human_figures, signal_columns
from normprobe.errors import NormprobeError
from normprobe.report import bucket_figure, roc_figure

SCALING_AXES = {"max": "norm / max norm", "minmax": "(norm − min) / (max − min)", "quantile": "norm quantile"}


@dataclass(frozen=True)
class Buckets:
    """How norms are bucketed: the run's settings, adjustable in the page."""

    n: int
    scaling: str
    min_count: int


def bucket_controls(settings: dict[str, Any]) -> Buckets:
    st.caption("Norm buckets of the kNN and human-label curves below; the defaults are the run's settings.")
    scaling = settings.get("bucket_scaling", "max")
    left, middle, right = st.columns(3)
    n = left.number_input("Buckets", 2, 200, int(settings.get("buckets", 20)), key="buckets-n")
    scaling = middle.selectbox(
        "Scaling", SCALINGS, index=SCALINGS.index(scaling) if scaling in SCALINGS else 0, key="buckets-scaling",
        format_func=lambda s: f"{s}: {SCALING_AXES[s]}",
    )
    min_count = right.number_input(
        "Hide buckets with fewer samples than", 0, 100_000, int(settings.get("min_bucket_count", 10)), key="buckets-min"
    )
    return Buckets(int(n), str(scaling), int(min_count))


def bucket_section(session: Session, buckets: Buckets) -> None:
    samples = session.samples
    st.subheader(f"kNN accuracy per ‖{session.head}‖ bucket (paper Fig. 4, left)")
    with_knn = [g for g in explore.groups(samples) if explore.select(samples, g)["knn_correct"].notna().any()]
    if not with_knn:
        st.info("No split of this run has kNN correctness.")
        return
    n_buckets, scaling, min_count = buckets.n, buckets.scaling, buckets.min_count
    curves = []
    for group in with_knn:
        rows = explore.select(samples, group)
        correct = rows["knn_correct"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        try:
            curve = bucket_curve(rows[session.norm_column].to_numpy(np.float64), correct, n_buckets=n_buckets, scaling=scaling, min_count=min_count)
        except NormprobeError as err:
            st.warning(f"{group.label}: {err}")
            continue
        curves.append(curve.assign(series=group.label))
    if curves:
        table = pd.concat(curves, ignore_index=True)
        st.plotly_chart(
            bucket_figure(table, title="kNN accuracy per embedding-norm bucket", y_title="kNN accuracy",
                          x_title=f"{SCALING_AXES[scaling]} (bucket centre)"),
            key="buckets-figure",
        )
        with st.expander("Bucket table"):
            st.dataframe(table, hide_index=True, width="stretch")


def human_label_section(session: Session, buckets: Buckets) -> None:
    samples = session.samples
    if not signal_columns(samples):
        return
    st.subheader(f"Human labels per ‖{session.head}‖ bucket (paper Fig. 4, middle and right)")
    curves = human_curves(samples, session.norm_column, n_buckets=buckets.n, scaling=buckets.scaling, min_count=buckets.min_count)
    seed = int(session.run.get("settings", {}).get("seed", 0))
    correlations = loading.human_correlation_table(session.path, session.files, session.norm_column, seed)
    for i, fig in enumerate(human_figures(curves, correlations)):
        st.plotly_chart(fig, key=f"human-figure-{i}")
    st.dataframe(correlations, hide_index=True, width="stretch")


def roc_section(session: Session) -> None:
    if not (session.samples["role"] == "ood").any():
        return
    st.subheader("ROC curves per OOD set and scorer")
    try:
        metrics, roc = loading.ood_evaluation(session.path, session.files)
    except NormprobeError as err:
        st.warning(f"No ROC curves: {err}")
        return
    if roc.empty:
        st.info("This run has no OOD scores.")
        return
    st.plotly_chart(roc_figure(roc, metrics), key="roc-figure")
    st.dataframe(metrics, hide_index=True, width="stretch")


def render(session: Session) -> None:
    buckets = bucket_controls(session.run.get("settings", {}))
    bucket_section(session, buckets)
    human_label_section(session, buckets)
    roc_section(session)
