"""The lowest-norm (most unfamiliar) samples of any split or OOD set, filterable and downloadable."""

from __future__ import annotations

from typing import cast

import streamlit as st
from normprobe.app import explore
from normprobe.app.session import Session
from normprobe.app.views import gallery

MAX_IMAGES = 120
"""At most this many of the selected samples are drawn as images; the table and the CSV hold them all."""


def render(session: Session) -> None:
    samples = session.samples
    groups = explore.groups(samples)
    top = st.columns([3, 2, 2])
    default = next((i for i, g in enumerate(groups) if g.role == "id-test"), 0)
    # selectbox returns the chosen option, or None when there are none; under python_version 3.10
    # mypy reads streamlit's overloads (typing.Never, 3.11+) as always None, so the real type is cast.
    group = cast(
        "explore.Group | None",
        top[0].selectbox(
            "Dataset split or OOD set",
            groups,
            index=default,
            format_func=lambda g: g.label,
            key="unfamiliar-group",
        ),
    )
    if group is None:
        st.info("This run has no dataset split or OOD set to rank.")
        return
    options = [f"norm_{h}" for h in explore.heads(samples)] + [f"score_{s}" for s in explore.scorers(samples)]
    rank_by = cast(
        "str | None",
        top[1].selectbox(
            "Rank by (lowest first)",
            options,
            index=options.index(session.norm_column),
            key="unfamiliar-rank-by",
            help="Norms and OOD scores: larger means more familiar, so the lowest come first.",
        ),
    )
    if rank_by is None:
        st.info("This run has no norm or OOD score to rank by.")
        return
    how_many = top[2].number_input(
        "How many", min_value=1, max_value=max(1, group.n), value=min(48, group.n), key="unfamiliar-n"
    )
    rows = explore.select(samples, group)
    classes = explore.class_names(rows)
    filters = st.columns([4, 3])
    chosen = filters[0].multiselect(
        "Classes (none = all)", list(classes), format_func=lambda c: classes[c], key="unfamiliar-classes"
    )
    known = "knn_correct" in rows and rows["knn_correct"].notna().any()
    # The options are the Correctness values; radio gives None only for an empty list.
    correctness = cast(
        "explore.Correctness | None",
        filters[1].radio(
            "kNN prediction",
            ["all", "correct", "incorrect"],
            horizontal=True,
            key="unfamiliar-correctness",
            disabled=not known,
            help=None if known else "This set has no kNN correctness (no labels in the ID label space).",
        ),
    )
    picked = explore.select(
        samples, group, labels=chosen, correctness=correctness if known and correctness is not None else "all"
    )
    lowest = explore.ranked(picked, rank_by).head(int(how_many))
    st.caption(f"{len(lowest):,} of {len(picked):,} matching samples, lowest {explore.plain(rank_by)} first.")
    st.download_button(
        "Download CSV",
        explore.to_csv(lowest),
        file_name=f"unfamiliar_{group.dataset}_{group.split}_{rank_by}.csv",
        mime="text/csv",
        key="unfamiliar-csv",
        icon=":material/download:",
    )
    shown = lowest.head(MAX_IMAGES)
    if len(lowest) > MAX_IMAGES:
        st.caption(f"Images of the first {MAX_IMAGES}; the table and the CSV hold all {len(lowest):,}.")
    gallery.show(session, group, shown, key="unfamiliar-grid", prefixes=[f"#{i}" for i in range(len(shown))])
    st.dataframe(lowest, hide_index=True, width="stretch")
