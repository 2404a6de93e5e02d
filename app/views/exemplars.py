"""Per class, the images the encoder finds most and least familiar, and a walk along the norm ranking."""

from __future__ import annotations

from typing import cast

import streamlit as st
from normprobe.app import explore
from normprobe.app.session import Session
from normprobe.app.views import gallery

from normprobe.analyses.exemplars import norm_exemplars


def render(session: Session) -> None:
    samples = session.samples
    column = session.norm_column
    labelled = [g for g in explore.groups(samples) if (explore.select(samples, g)["label"] >= 0).any()]
    if not labelled:
        st.info("No dataset split of this run has class labels.")
        return
    default = next((i for i, g in enumerate(labelled) if g.role == "id-test"), 0)
    top = st.columns([3, 3, 2])
    # selectbox returns the chosen option, or None when there are none; under python_version 3.10
    # mypy reads streamlit's overloads (typing.Never, 3.11+) as always None, so the real type is cast.
    group = cast(
        "explore.Group | None",
        top[0].selectbox(
            "Dataset split", labelled, index=default, format_func=lambda g: g.label, key="exemplar-group"
        ),
    )
    if group is None:
        st.info("No dataset split of this run has class labels.")
        return
    rows = explore.select(samples, group)
    classes = explore.class_names(rows)
    label = cast(
        "int | None",
        top[1].selectbox(
            "Class", list(classes), format_func=lambda c: f"{classes[c]} ({c})", key="exemplar-class"
        ),
    )
    if label is None:
        st.info("This dataset split has no class labels.")
        return
    per_row = top[2].slider("Images per row", 4, 12, 8, key="exemplar-per-row")
    in_class = rows[(rows["label"] == label).to_numpy()]
    chosen = norm_exemplars(in_class[column].to_numpy(), in_class["label"].to_numpy(), per_group=per_row)
    highest, lowest = (
        in_class.iloc[chosen.loc[chosen["extreme"] == e, "position"].to_numpy()]
        for e in ("highest", "lowest")
    )
    head = explore.plain(session.head)

    st.markdown(
        f"**Highest ‖{head}‖: what the encoder finds most familiar** ({len(in_class):,} {explore.plain(classes[label])} images)"
    )
    gallery.show(session, group, highest, key="exemplars-highest", n_columns=per_row)
    st.markdown(f"**Lowest ‖{head}‖: what it finds least familiar**")
    gallery.show(session, group, lowest, key="exemplars-lowest", n_columns=per_row)

    st.markdown("**Browse by norm rank**")
    by_rank = explore.ranked(in_class, column)
    if len(by_rank) <= per_row:
        st.caption("All images of this class are shown above.")
        return
    start = st.slider(
        "Norm rank of the first image (0 = lowest norm)",
        0,
        len(by_rank) - per_row,
        (len(by_rank) - per_row) // 2,
        key="exemplar-rank",
    )
    window = explore.rank_window(by_rank, start, per_row)
    ranks = [f"#{start + i}" for i in range(len(window))]
    gallery.show(session, group, window, key="exemplars-rank", n_columns=per_row, prefixes=ranks)
