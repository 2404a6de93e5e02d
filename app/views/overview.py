"""The run at a glance: checkpoint (or embedding input files), datasets, settings and summary metrics from run.json."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from normprobe.app import explore
from normprobe.app.session import Session

from normprobe.record import Summary, to_json


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts/lists as (dotted key, value) pairs, for settings and summaries of any shape."""
    if isinstance(tree, dict):
        return [pair for k, v in tree.items() for pair in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        return [pair for i, v in enumerate(tree) for pair in flatten(v, f"{prefix}[{i}]")]
    if isinstance(tree, float):
        return [(prefix, f"{tree:.4g}")]
    return [(prefix, ", ".join(map(str, tree)) if isinstance(tree, list) else str(tree))]


def _table(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["key", "value"])


def ood_table(summary: Summary) -> pd.DataFrame:
    """summary.ood as one row per (OOD set, scorer) with every metric."""
    rows = [
        {"ood set": name, "scorer": scorer, **metrics}
        for name, by_scorer in summary.ood.items()
        for scorer, metrics in by_scorer.items()
    ]
    return pd.DataFrame(rows)


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "—"


def _knn_metrics(summary: Summary) -> dict[str, str]:
    """kNN accuracy per ID role (``id-test``, ``id-train-loo``)."""
    return {f"kNN accuracy ({role})": _percent(value) for role, value in summary.knn_accuracy.items()}


def render(session: Session) -> None:
    run = session.run
    checkpoint, inputs, summary = run.checkpoint, run.inputs, run.summary
    metrics = {
        "Method": explore.plain(checkpoint.method) if checkpoint else "embedding input",
        "In-distribution": explore.plain(run.id_dataset or "?"),
        "Samples": f"{len(session.samples):,}",
        **_knn_metrics(summary),
    }
    for column, (name, value) in zip(st.columns(len(metrics)), metrics.items(), strict=True):
        column.metric(name, value)
    # Every value here comes from run.json: shown as text, never as markdown.
    text = explore.plain
    source = (
        f"**Checkpoint** {text(checkpoint.path)} · sha256 {text(checkpoint.sha256[:16])}… · "
        f"adapter {text(checkpoint.adapter)}"
        if checkpoint
        else f"**Embedding input** ({len(inputs)} files, no images)"
    )
    st.markdown(
        f"{source} · heads {text(', '.join(run.heads))} "
        f"(primary {text(run.primary_head)}) · normprobe {text(run.normprobe_version)} · "
        f"{text(run.created_utc)}"
    )
    if inputs:
        st.dataframe(pd.DataFrame(to_json(inputs)).astype(str), hide_index=True, width="stretch")
    if run.command:
        st.code(" ".join(run.command), language="bash")
    for note in run.notes:
        st.caption(explore.plain(note))

    ood = ood_table(summary)
    if not ood.empty:
        st.subheader("OOD detection")
        st.caption(
            explore.plain(
                summary.ood_convention or "Larger score = more familiar; ID-test is the positive class."
            )
        )
        st.dataframe(ood, hide_index=True, width="stretch")
    if summary.spearman:
        st.subheader(f"Spearman correlation of ‖{explore.plain(run.primary_head)}‖ with kNN correctness")
        st.dataframe(pd.DataFrame(summary.spearman).T, width="stretch")

    st.subheader("Datasets")
    datasets = pd.DataFrame(to_json(run.datasets))
    if not datasets.empty:
        st.dataframe(datasets.astype(str), hide_index=True, width="stretch")
    st.caption(
        "Rows in samples.parquet: "
        + ", ".join(f"{explore.plain(g.label)}: {g.n:,}" for g in explore.groups(session.samples))
    )
    left, right = st.columns(2)
    with left:
        st.subheader("Settings")
        st.dataframe(_table(flatten(to_json(run.settings))), hide_index=True, width="stretch")
    with right:
        st.subheader("Timings")
        st.dataframe(_table(flatten(to_json(run.timings))), hide_index=True, width="stretch")
    with st.expander("The whole summary of run.json"):
        st.dataframe(_table(flatten(to_json(summary))), hide_index=True, width="stretch")
