"""The run at a glance: checkpoint (or embedding input files), datasets, settings and summary metrics from run.json."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from normprobe.app import explore
from normprobe.app.session import Session


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


def ood_table(summary: dict[str, Any]) -> pd.DataFrame:
    """summary.ood as one row per (OOD set, scorer) with auroc, aupr_in, aupr_out, fpr95."""
    rows = [
        {"ood set": name, "scorer": scorer, **metrics}
        for name, by_scorer in (summary.get("ood") or {}).items()
        for scorer, metrics in by_scorer.items()
        if isinstance(metrics, dict)
    ]
    return pd.DataFrame(rows)


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "—"


def _knn_metrics(summary: dict[str, Any]) -> dict[str, str]:
    """kNN accuracy per ID role (a number or a dict ``{"id-test": acc, "id-train-loo": acc}``)."""
    knn = summary.get("knn_accuracy")
    if isinstance(knn, dict):
        return {f"kNN accuracy ({role})": _percent(value) for role, value in knn.items()}
    return {"kNN accuracy": _percent(knn)}


def render(session: Session) -> None:
    run = session.run
    checkpoint = run.get("checkpoint") or {}
    inputs = run.get("inputs") or []
    summary = run.get("summary", {})
    metrics = {
        "Method": explore.plain(checkpoint.get("method", "?")) if checkpoint else "embedding input",
        "In-distribution": explore.plain(run.get("id_dataset", "?")),
        "Samples": f"{len(session.samples):,}",
        **_knn_metrics(summary),
    }
    for column, (name, value) in zip(st.columns(len(metrics)), metrics.items(), strict=True):
        column.metric(name, value)
    # Every value here comes from run.json: shown as text, never as markdown.
    text = explore.plain
    source = (
        f"**Checkpoint** {text(checkpoint.get('path', '?'))} · sha256 {text(str(checkpoint.get('sha256', '?'))[:16])}… · "
        f"adapter {text(checkpoint.get('adapter', '?'))}"
        if checkpoint
        else f"**Embedding input** ({len(inputs)} files, no images)"
    )
    st.markdown(
        f"{source} · heads {text(', '.join(map(str, run.get('heads', []))))} "
        f"(primary {text(run.get('primary_head', '?'))}) · normprobe {text(run.get('normprobe_version', '?'))} · "
        f"{text(run.get('created_utc', '?'))}"
    )
    if inputs:
        st.dataframe(pd.DataFrame(inputs).astype(str), hide_index=True, width="stretch")
    command = run.get("command")
    if command:
        st.code(command if isinstance(command, str) else " ".join(map(str, command)), language="bash")
    for note in run.get("notes") or []:
        st.caption(explore.plain(note))

    ood = ood_table(summary)
    if not ood.empty:
        st.subheader("OOD detection")
        st.caption(
            explore.plain(
                summary.get("ood_convention", "Larger score = more familiar; ID-test is the positive class.")
            )
        )
        st.dataframe(ood, hide_index=True, width="stretch")
    spearman = summary.get("spearman")
    if isinstance(spearman, dict) and spearman and all(isinstance(v, dict) for v in spearman.values()):
        st.subheader(
            f"Spearman correlation of ‖{explore.plain(run.get('primary_head', '?'))}‖ with kNN correctness"
        )
        st.dataframe(pd.DataFrame(spearman).T, width="stretch")

    st.subheader("Datasets")
    datasets = pd.DataFrame(run.get("datasets", []))
    if not datasets.empty:
        st.dataframe(datasets.astype(str), hide_index=True, width="stretch")
    st.caption(
        "Rows in samples.parquet: "
        + ", ".join(f"{explore.plain(g.label)}: {g.n:,}" for g in explore.groups(session.samples))
    )
    left, right = st.columns(2)
    with left:
        st.subheader("Settings")
        st.dataframe(_table(flatten(run.get("settings", {}))), hide_index=True, width="stretch")
    with right:
        st.subheader("Timings")
        st.dataframe(_table(flatten(run.get("timings", {}))), hide_index=True, width="stretch")
    with st.expander("The whole summary of run.json"):
        st.dataframe(_table(flatten(summary)), hide_index=True, width="stretch")
