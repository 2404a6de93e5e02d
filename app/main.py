"""normprobe explorer: ``streamlit run app/main.py -- --results DIR``.

The results folder can also come from the URL (``?results=DIR``) or the sidebar; the open section
is kept in the URL (``?section=Exemplars``), so a view can be shared.

Opens a results folder of ``normprobe analyze`` and shows, in tabs, the run's settings and summary,
norm distributions, bucket / human-label / ROC curves, per-class exemplars and the most unfamiliar
samples. A missing or malformed folder is reported in the page, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import cast

import streamlit as st
from normprobe.app import explore, loading
from normprobe.app.session import Session
from normprobe.app.views import curves, exemplars, norms, overview, unfamiliar

from normprobe.errors import NormprobeError

NOT_RESULTS = "this is not a results folder of `normprobe analyze` (a valid run.json and samples.parquet)."

SECTIONS = {
    "Overview": overview.render,
    "Norms": norms.render,
    "Curves": curves.render,
    "Exemplars": exemplars.render,
    "Unfamiliar": unfamiliar.render,
}


def results_argument(argv: list[str]) -> str:
    """``--results DIR`` from the arguments after ``streamlit run app/main.py --`` ("" when absent)."""
    parser = argparse.ArgumentParser(prog="streamlit run app/main.py --", add_help=False)
    parser.add_argument("--results", default="")
    known, _ = parser.parse_known_args(argv)
    return known.results


def sidebar() -> tuple[str, str]:
    """The results folder and data root the user chose."""
    st.sidebar.title("normprobe explorer")
    default = st.query_params.get("results") or results_argument(sys.argv[1:])
    path = st.sidebar.text_input(
        "Results folder",
        value=default,
        key="results-dir",
        placeholder="results/",
        help="A folder written by `normprobe analyze ... --out DIR` (run.json + samples.parquet).",
    )
    data_root = st.sidebar.text_input(
        "Data root for images",
        value="",
        key="data-root",
        placeholder="the run's, else $NORMPROBE_DATA",
        help="Where the analysed datasets' images are; leave empty to use the data root the run recorded.",
    )
    return path.strip(), data_root


def main() -> None:
    st.set_page_config(page_title="normprobe explorer", page_icon=":material/insights:", layout="wide")
    path, data_root = sidebar()
    if not path:
        st.info(
            "Enter a results folder of `normprobe analyze` in the sidebar, or start the app with "
            "`streamlit run app/main.py -- --results DIR`."
        )
        return
    folder = loading.resolve(path)
    files = loading.stamp(folder)
    try:
        results = loading.open_results(folder, files)
    except NormprobeError:
        # One message for every path that is not a valid results folder: the page must not tell a
        # visitor which server paths exist or what they hold (`normprobe explore` prints the reason).
        st.error(f"Cannot open the results folder: {NOT_RESULTS}")
        return
    heads = explore.heads(results.samples)
    primary = results.run.primary_head
    # selectbox returns the chosen option, or None when there are none; under python_version 3.10
    # mypy reads streamlit's overloads (typing.Never, 3.11+) as always None, so the real type is cast.
    head = cast(
        "str | None",
        st.sidebar.selectbox(
            "Norm of head",
            heads,
            index=heads.index(primary) if primary in heads else 0,
            key="head",
            help="The embedding whose norm ranks the samples in the exemplar and unfamiliar views.",
        ),
    )
    if head is None:
        st.error("This results folder has no embedding norms to explore (no norm_<head> column).")
        return
    st.sidebar.caption(f"{len(results.samples):,} samples · {explore.plain(path)}")
    session = Session(
        path=folder,
        files=files,
        results=results,
        head=head,
        data_root=data_root,
        id_classes=explore.id_classes(results.samples),
    )
    tabs = st.tabs(list(SECTIONS), key="section", bind="query-params")
    for tab, render in zip(tabs, SECTIONS.values(), strict=True):
        if tab.open:
            with tab:
                render(session)


main()
