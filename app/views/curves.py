"""Curves computed from samples.parquet with normprobe's own analyses and report figures: kNN accuracy
and human-label signals per norm bucket, and ROC curves of every OOD set and scorer.

Tables and figures are cached per results folder and setting (``st.cache_resource``: building plotly
figures costs more than the arithmetic), so switching back and forth is instant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from normprobe.app import explore, loading
from normprobe.app.loading import FileStamp
from normprobe.app.session import Session

from normprobe.analyses.buckets import SCALINGS, bucket_curve
from normprobe.analyses.human import human_correlations, human_curves, signal_columns, signal_label
from normprobe.analyses.ood import evaluate_ood
from normprobe.analyses.settings import HUMAN_MIN_BUCKET_COUNT
from normprobe.errors import NormprobeError
from normprobe.record import RecordedSettings
from normprobe.report import bucket_figure, human_figures, id_train_mean_norm, roc_figure

SCALING_AXES = {"max": "norm / max norm", "minmax": "(norm − min) / (max − min)", "quantile": "norm quantile"}


@dataclass(frozen=True)
class Buckets:
    """How norms are bucketed: the run's settings, adjustable in the page."""

    n: int
    scaling: str
    min_count: int
    """Buckets of the kNN curves with fewer samples are hidden."""
    human_min_count: int
    """Buckets of the human-label curves with fewer samples are hidden (the paper: 50)."""


def bucket_controls(settings: RecordedSettings) -> Buckets:
    st.caption("Norm buckets of the kNN and human-label curves below; the defaults are the run's settings.")
    recorded = settings.bucket_scaling
    left, middle, right, human = st.columns(4)
    n = left.number_input("Buckets", 2, 200, settings.buckets, key="buckets-n")
    scaling = middle.selectbox(
        "Scaling",
        SCALINGS,
        index=SCALINGS.index(recorded) if recorded in SCALINGS else 0,
        key="buckets-scaling",
        format_func=lambda s: f"{s}: {SCALING_AXES[s]}",
    )
    min_count = right.number_input(
        "Hide kNN buckets with fewer samples than",
        0,
        100_000,
        settings.min_bucket_count,
        key="buckets-min",
    )
    human_min_count = human.number_input(
        "Hide human-label buckets with fewer samples than",
        0,
        100_000,
        settings.human_min_bucket_count
        or HUMAN_MIN_BUCKET_COUNT,  # none before it was recorded: the paper's 50
        key="buckets-human-min",
    )
    return Buckets(int(n), str(scaling), int(min_count), int(human_min_count))


@st.cache_resource(show_spinner="Bucketing…", max_entries=32)
def knn_buckets(
    path: str, files: FileStamp, norm_column: str, buckets: Buckets
) -> tuple[pd.DataFrame, list[str]]:
    """kNN accuracy per norm bucket of every split with kNN correctness (one ``series`` each), and problems."""
    samples = loading.open_results(path, files).samples
    curves, problems = [], []
    for group in explore.groups(samples):
        rows = explore.select(samples, group)
        correct = rows["knn_correct"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        if np.isnan(correct).all():
            continue
        try:
            curve = bucket_curve(
                rows[norm_column].to_numpy(np.float64),
                correct,
                n_buckets=buckets.n,
                scaling=buckets.scaling,
                min_count=buckets.min_count,
            )
        except NormprobeError as err:
            problems.append(f"{group.label}: {err}")
            continue
        curves.append(curve.assign(series=group.label))
    return (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()), problems


@st.cache_resource(show_spinner=False, max_entries=32)
def knn_bucket_figure(path: str, files: FileStamp, norm_column: str, buckets: Buckets) -> go.Figure:
    table, _ = knn_buckets(path, files, norm_column, buckets)
    samples = loading.open_results(path, files).samples
    return bucket_figure(
        table,
        title="kNN accuracy per embedding-norm bucket",
        y_title="kNN accuracy",
        unit=id_train_mean_norm(samples, norm_column.removeprefix("norm_")),
    )


def bucket_section(session: Session, buckets: Buckets) -> None:
    st.subheader(f"kNN accuracy per ‖{explore.plain(session.head)}‖ bucket (paper Fig. 4, left)")
    table, problems = knn_buckets(session.path, session.files, session.norm_column, buckets)
    for problem in problems:
        st.warning(explore.plain(problem))
    if table.empty:
        st.info("No split of this run has kNN correctness.")
        return
    st.plotly_chart(
        knn_bucket_figure(session.path, session.files, session.norm_column, buckets), key="buckets-figure"
    )
    with st.expander("Bucket table"):
        st.dataframe(table, hide_index=True, width="stretch")


@st.cache_resource(show_spinner="Bootstrapping the correlations with the human labels…", max_entries=8)
def human_correlation_table(path: str, files: FileStamp, head: str) -> pd.DataFrame:
    """Spearman correlations of ``head``'s norm with every human signal: the run's own table for its primary
    head, else computed (seeded bootstrap, the run's seed)."""
    results = loading.open_results(path, files)
    if head == results.run.primary_head:
        try:
            return results.table("human_correlations")
        except NormprobeError:
            pass  # an older run without the table: compute it
    return human_correlations(results.samples, f"norm_{head}", seed=results.run.settings.seed)


@st.cache_resource(show_spinner="Bucketing the human labels…", max_entries=32)
def human_label_figures(path: str, files: FileStamp, head: str, buckets: Buckets) -> list[go.Figure]:
    samples = loading.open_results(path, files).samples
    curves = human_curves(
        samples,
        f"norm_{head}",
        n_buckets=buckets.n,
        scaling=buckets.scaling,
        min_count=buckets.human_min_count,
    )
    unit = id_train_mean_norm(samples, head)
    return human_figures(curves, human_correlation_table(path, files, head), signal_label, unit)


def human_label_section(session: Session, buckets: Buckets) -> None:
    if not signal_columns(session.samples):
        return
    st.subheader(f"Human labels per ‖{explore.plain(session.head)}‖ bucket (paper Fig. 4, middle and right)")
    for i, fig in enumerate(human_label_figures(session.path, session.files, session.head, buckets)):
        st.plotly_chart(fig, key=f"human-figure-{i}")
    st.dataframe(
        human_correlation_table(session.path, session.files, session.head), hide_index=True, width="stretch"
    )


@st.cache_resource(show_spinner="Computing ROC curves…", max_entries=8)
def roc(path: str, files: FileStamp) -> tuple[pd.DataFrame, go.Figure | None]:
    """Metrics of every OOD set and scorer (:func:`~normprobe.analyses.ood.evaluate_ood`) and their ROC figure."""
    results = loading.open_results(path, files)
    metrics, points = evaluate_ood(results.samples, results.scorers, results.run.primary_head)
    return metrics, (roc_figure(points, metrics) if not points.empty else None)


def roc_section(session: Session) -> None:
    if not (session.samples["role"] == "ood").any():
        return
    st.subheader("ROC curves per OOD set and scorer")
    try:
        metrics, figure = roc(session.path, session.files)
    except NormprobeError as err:
        st.warning(f"No ROC curves: {explore.plain(err)}")
        return
    if figure is None:
        st.info("This run has no OOD scores.")
        return
    st.plotly_chart(figure, key="roc-figure")
    st.dataframe(metrics, hide_index=True, width="stretch")


def render(session: Session) -> None:
    buckets = bucket_controls(session.run.settings)
    bucket_section(session, buckets)
    human_label_section(session, buckets)
    roc_section(session)
