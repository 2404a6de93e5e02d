"""The HTML report: plotly figures, tables and exemplar images in one page that leads with a verdict.

The page opens with the verdict: per OOD set, the scorer that separates it best from ID-test with
its AUROC interval, any scorer whose signal is inverted for that set and what that means, the
summary table and a scorer x OOD-set AUROC heatmap. The rest is a list of :class:`Section` s, each
made by one analysis, so a new analysis (e.g. the human-label curves) adds its section without
touching the others.

Everything here is built from the run record (``run.json``) and the results tables it is given;
the report imports nothing from :mod:`normprobe.analyses`. plotly.js is inlined once in the page
head by default (works offline); ``plotly="cdn"`` links it from the plotly CDN and
``plotly="directory"`` from a ``plotly.min.js`` beside the page (:func:`plotly_js` gives its
text). Images are embedded as base64 PNG data URIs, decoded only for the samples shown. Labels
are readable names (``CIFAR-100 (test)``, ``kNN distance``), never raw column names. The page
shell, stylesheet and tables are :mod:`normprobe.render.page`'s, shared with ``rank``'s contact sheet.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs, get_plotlyjs_version
from plotly.subplots import make_subplots

from normprobe.data import ImageSet
from normprobe.metrics import OOD_METRICS
from normprobe.record import RunRecord, to_json
from normprobe.render.page import PLOTLY_MODES, html_page, png_data_uri, table_html
from normprobe.scores import SCORERS

COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
TEMPLATE = "plotly_white"
PLOTLY_FILE = "plotly.min.js"
ROLE_LABELS = {"id-train": "ID train", "id-test": "ID test", "ood": "OOD"}
METRIC_LABELS = {m.key: m.label for m in OOD_METRICS}
SUMMARY_METRICS = ("fpr@95tpr_id", "fpr@95tpr_ood", "aupr_in_trapz", "aupr_out_trapz")
"""The metrics of each OOD set's best scorer in the summary table, besides its AUROC."""


@dataclass
class Section:
    """One part of the report: a title, explanatory text, figures (id -> figure) and extra HTML."""

    title: str
    intro: str = ""
    figures: dict[str, go.Figure] = field(default_factory=dict)
    html: str = ""
    """Trusted HTML built by this module (tables, image grids), placed after the figures."""
    lead: str = ""
    """Trusted HTML placed before the figures (the verdict)."""


# --------------------------------------------------------------------------- labels


def scorer_label(column: str) -> str:
    """``knn`` -> ``kNN distance``; ``norm@feats`` -> ``embedding norm (head feats)``."""
    method, _, head = column.partition("@")
    text = SCORERS[method].label if method in SCORERS else method
    return f"{text} (head {head})" if head else text


def _id_label(run: RunRecord, role: str) -> str:
    """``CIFAR-10 (test)``: the label of the run's set in ``role``."""
    return run.role(role).label


def _role_label(role: str, group: str | None = None) -> str:
    return f"{group}-OOD" if role == "ood" and group else ROLE_LABELS.get(role, role)


def _interval(low: float, high: float) -> str:
    return f"{low:.3f}–{high:.3f}"


# --------------------------------------------------------------------------- figures


def norm_histogram_figure(
    samples: pd.DataFrame, head: str, bins: int = 80, labels: Mapping[str, str] | None = None
) -> go.Figure:
    """Density of norm / ID-train mean norm for every split and OOD set (paper Figure 3), one head.

    Histograms are binned here (shared edges over the central 99.8% of all values; the few beyond
    fall into the end bins) and drawn as step lines, so the page holds ``bins`` numbers per set
    rather than every sample. ``labels`` names the sets (``dataset/split`` -> label).
    """
    labels = labels or {}
    scaled = samples[f"norm_{head}"].to_numpy(np.float64) / id_train_mean_norm(samples, head)
    low, high = np.quantile(scaled, [0.001, 0.999])
    pad = 0.02 * max(high - low, 1e-12)
    edges = np.linspace(max(low - pad, 0.0), high + pad, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for i, ((dataset, split, role), rows) in enumerate(
        samples.groupby(["dataset", "split", "role"], sort=False).groups.items()
    ):
        values = scaled[np.asarray(rows)]
        density, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges, density=True)
        name = labels.get(f"{dataset}/{split}", f"{dataset}/{split}")
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=density,
                mode="lines",
                line_shape="hvh",
                name=f"{name}, {ROLE_LABELS.get(role, role)} (n={len(values)})",
                line={"color": COLORS[i % len(COLORS)], "width": 2},
                hovertemplate="norm / ID-train mean %{x:.3f}<br>density %{y:.3f}<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_vline(x=1.0, line_dash="dot", line_color="grey", annotation_text="ID-train mean")
    fig.update_layout(
        title=f"Embedding norms of head {head}, divided by the ID-train mean",
        xaxis_title="‖embedding‖ / mean ‖embedding‖ on ID train",
        yaxis_title="density",
        template=TEMPLATE,
        height=420,
    )
    return fig


def norm_bars_figure(norm_table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> go.Figure:
    """Mean norm / ID-train mean per set, grouped by head (the bars of paper Figure 3)."""
    labels = labels or {}
    keys = norm_table["dataset"] + "/" + norm_table["split"]
    names = keys.map(lambda key: labels.get(key, key))
    fig = go.Figure()
    for i, (head, rows) in enumerate(norm_table.assign(set=names).groupby("head", sort=False)):
        roles = rows["role"].map(lambda role: ROLE_LABELS.get(role, role))
        fig.add_trace(
            go.Bar(
                x=rows["set"],
                y=rows["mean_scaled"],
                name=f"head {head}",
                marker_color=COLORS[i % len(COLORS)],
                customdata=np.stack([rows["n"], rows["mean"], roles], axis=1),
                hovertemplate="%{x} (%{customdata[2]}, n=%{customdata[0]})<br>mean norm %{customdata[1]:.4g}"
                "<br>/ ID-train mean: %{y:.3f}<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_layout(
        barmode="group",
        title="Mean embedding norm per split and OOD set (ID train = 1)",
        template=TEMPLATE,
        height=380,
        xaxis={"title": "", "categoryorder": "array", "categoryarray": names.unique().tolist()},
        yaxis_title="mean norm / ID-train mean",
    )
    return fig


BUCKET_X_TITLE = "‖embedding‖ / mean ‖embedding‖ on ID train (bucket centre)"
"""The x-axis of every bucket plot: the same unit as the norm histograms', so the plots line up."""


def id_train_mean_norm(samples: pd.DataFrame, head: str) -> float:
    """The mean norm of ``head`` on ID train: the unit of the histograms' and bucket plots' x-axes."""
    return float(samples.loc[samples["role"] == "id-train", f"norm_{head}"].mean())


def bucket_figure(curves: pd.DataFrame, *, title: str, y_title: str, unit: float) -> go.Figure:
    """Per-bucket means (one line per ``series``) from :func:`normprobe.analyses.buckets.bucket_curve` tables.

    Whatever the bucket scheme, each bucket sits at the centre of its norm range divided by ``unit``
    (:func:`id_train_mean_norm`), the x-axis of the norm histograms. Only buckets with ``shown`` are
    drawn; error bars are one standard error; hover gives the count and the bucket's norm range.
    """
    fig = go.Figure()
    for i, (series, rows) in enumerate(curves.groupby("series", sort=False)):
        rows = rows[rows["shown"].astype(bool)]
        fig.add_trace(
            go.Scatter(
                x=(rows["norm_lower"] + rows["norm_upper"]) / (2 * unit),
                y=rows["mean"],
                mode="lines+markers",
                name=str(series),
                line={"color": COLORS[i % len(COLORS)]},
                error_y={"type": "data", "array": rows["sem"].fillna(0), "visible": True, "thickness": 1},
                customdata=np.stack([rows["count"], rows["norm_lower"], rows["norm_upper"]], axis=1),
                hovertemplate="%{x:.3f} x the ID-train mean: mean %{y:.3f}<br>n=%{customdata[0]}, norm %{customdata[1]:.4g}"
                "–%{customdata[2]:.4g}<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        title=title, xaxis_title=BUCKET_X_TITLE, yaxis_title=y_title, template=TEMPLATE, height=420
    )
    return fig


def roc_figure(
    roc: pd.DataFrame, metrics: pd.DataFrame, labels: Mapping[str, str] | None = None
) -> go.Figure:
    """ROC curves (ID-test positive) per OOD set (one panel each) and scorer (one colour each)."""
    labels = labels or {}
    sets = list(dict.fromkeys(roc["ood_set"]))
    scorers = list(dict.fromkeys(roc["scorer"]))
    columns = min(3, len(sets))
    rows_n = -(-len(sets) // columns)
    fig = make_subplots(
        rows=rows_n,
        cols=columns,
        subplot_titles=[labels.get(s, s) for s in sets],
        horizontal_spacing=0.06,
        vertical_spacing=0.12,
    )
    auroc = {(r.ood_set, r.scorer): r.auroc for r in metrics.itertuples()}
    for s, ood_set in enumerate(sets):
        row, col = divmod(s, columns)
        for c, scorer in enumerate(scorers):
            part = roc[(roc["ood_set"] == ood_set) & (roc["scorer"] == scorer)]
            if part.empty:
                continue
            name = scorer_label(scorer)
            fig.add_trace(
                go.Scatter(
                    x=part["fpr"],
                    y=part["tpr"],
                    mode="lines",
                    name=name,
                    legendgroup=scorer,
                    showlegend=s == 0,
                    line={"color": COLORS[c % len(COLORS)]},
                    hovertemplate=f"{name} on {labels.get(ood_set, ood_set)} "
                    f"(AUROC {auroc.get((ood_set, scorer), float('nan')):.3f})"
                    "<br>FPR %{x:.3f}, TPR %{y:.3f}<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"dash": "dot", "color": "lightgrey"},
                showlegend=False,
                hoverinfo="skip",
            ),
            row=row + 1,
            col=col + 1,
        )
    fig.update_xaxes(title_text="false positive rate (OOD kept as ID)", range=[0, 1])
    fig.update_yaxes(title_text="true positive rate (ID test kept)", range=[0, 1.01])
    fig.update_layout(
        title="ROC curves: ID test (positive) vs each OOD set; larger score = more familiar",
        template=TEMPLATE,
        height=380 * rows_n + 60,
    )
    return fig


def auroc_heatmap_figure(run: RunRecord) -> go.Figure:
    """AUROC of every scorer (rows) on every OOD set (columns), 0.5 white, inverted signals red.

    Each cell shows the AUROC and its 95% bootstrap interval.
    """
    ood = run.summary.ood
    labels = run.set_labels
    sets = list(ood)
    scorers = list(dict.fromkeys(s for per_set in ood.values() for s in per_set))
    z = [[ood[key].get(s, {}).get("auroc") for key in sets] for s in scorers]
    text = [
        [
            f"{ood[key][s]['auroc']:.3f}<br>[{_interval(*ood[key][s]['auroc_ci'])}]" if s in ood[key] else ""
            for key in sets
        ]
        for s in scorers
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[labels.get(key, key) for key in sets],
            y=[scorer_label(s) for s in scorers],
            text=text,
            texttemplate="%{text}",
            colorscale="RdBu",
            zmin=0.0,
            zmax=1.0,
            zmid=0.5,
            colorbar={"title": "AUROC"},
            hovertemplate="%{y} on %{x}<br>AUROC %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="AUROC per scorer and OOD set (blue: detects the set; white: chance; red: inverted)",
        template=TEMPLATE,
        height=140 + 48 * len(scorers),
        yaxis={"autorange": "reversed"},
    )
    return fig


HUMAN_FIGURES = (
    (
        "accuracy",
        "Accuracy of human labels per embedding-norm bucket (paper Fig. 4, middle)",
        "accuracy of the human label",
    ),
    (
        "mean entropy (bits)",
        "Entropy of the CIFAR-10H label distribution per norm bucket (paper Fig. 4, right)",
        "entropy of the human labels (bits)",
    ),
    (
        "fraction",
        "Human majority disagrees with the dataset label, per norm bucket",
        "human majority disagrees with the label",
    ),
)
"""(statistic of the human-label curves, figure title, y-axis title) of each human-label figure."""


def human_figures(
    curves: pd.DataFrame, correlations: pd.DataFrame | None, label_of: Callable[[str], str], unit: float
) -> list[go.Figure]:
    """Plotly figures of the shown buckets: human label accuracy (Fig. 4 middle), CIFAR-10H entropy
    (Fig. 4 right) and the CIFAR-10H majority's disagreement; each line is named by
    ``label_of(signal)`` (the analysis's names; the report computes nothing) and its legend gives
    its Spearman rho; ``unit``: see :func:`bucket_figure`."""
    rho = (
        {}
        if correlations is None
        else dict(zip(correlations["signal"], correlations["spearman_rho"], strict=True))
    )

    def series(signal: str) -> str:
        value = rho.get(signal, np.nan)
        return label_of(signal) + ("" if pd.isna(value) else f" (Spearman {value:+.3f})")

    figures = []
    for statistic, title, y_title in HUMAN_FIGURES:
        part = curves[curves["statistic"] == statistic]
        if part.empty:
            continue
        figures.append(
            bucket_figure(
                part.assign(series=part["signal"].map(series)),
                title=title,
                y_title=y_title,
                unit=unit,
            )
        )
    return figures


# --------------------------------------------------------------------------- HTML pieces


NO_IMAGES = (
    "No images: this set was analysed from its embeddings, so its exemplars are listed by index "
    "(also in tables/exemplars.csv)."
)


def exemplar_list_html(exemplars: pd.DataFrame) -> str:
    """The exemplars of a set without images (embedding input): a note and the samples by index."""
    shown = pd.DataFrame(
        {
            "class": [
                name or ("all" if label < 0 else str(label))
                for name, label in zip(exemplars["label_name"].fillna(""), exemplars["label"], strict=True)
            ],
            "extreme": exemplars["extreme"] + " norm",
            "rank": exemplars["rank"],
            "index": exemplars["index"],
            "id": exemplars["id"],
            "norm": exemplars["norm"],
        }
    )
    return f'<p class="note">{html.escape(NO_IMAGES)}</p>' + table_html(shown)


def exemplar_grid_html(exemplars: pd.DataFrame, imageset: ImageSet) -> str:
    """One row per class: its highest-norm images, then its lowest-norm ones, each with its norm.

    ``exemplars`` are the rows of one set from :mod:`normprobe.analyses.exemplars`; only their
    images are decoded (one ``ImageSet.images`` call).
    """
    positions = exemplars["position"].to_numpy(np.int64)
    images = imageset.images(positions).numpy()
    uri = {int(p): png_data_uri(img) for p, img in zip(positions, images, strict=True)}
    rows = []
    for label, group in exemplars.groupby("label", sort=True):
        name = group["label_name"].iloc[0] or ("all" if label < 0 else str(label))
        cells = []
        for extreme in ("highest", "lowest"):
            part = group[group["extreme"] == extreme].sort_values("rank")
            figs = "".join(
                f'<figure><img src="{uri[int(r.position)]}" alt="{html.escape(str(r.id))}" '
                f'title="{html.escape(str(r.id))} norm {r.norm:.4g}"><figcaption>{r.norm:.3g}</figcaption></figure>'
                for r in part.itertuples()
            )
            cells.append(f'<td class="{extreme}">{figs}</td>')
        rows.append(f"<tr><th>{html.escape(str(name))}</th>{''.join(cells)}</tr>")
    return (
        '<table class="exemplars"><thead><tr><th>class</th><th>highest norm</th><th>lowest norm</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --------------------------------------------------------------------------- page


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


def plotly_js() -> str:
    """The plotly.js bundle of the installed plotly package (what ``plotly="directory"`` expects beside the page)."""
    return get_plotlyjs()


def _plotly_script(mode: str) -> str:
    if mode == "inline":
        return f'<script type="text/javascript">{plotly_js()}</script>'
    if mode == "cdn":
        # the CDN copy of the installed bundle's version, pinned by its hash (subresource integrity)
        digest = base64.b64encode(hashlib.sha256(plotly_js().encode("utf-8")).digest()).decode("ascii")
        url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        return f'<script src="{url}" integrity="sha256-{digest}" crossorigin="anonymous"></script>'
    if mode == "directory":
        return f'<script src="{PLOTLY_FILE}"></script>'
    raise ValueError(f"plotly must be one of {', '.join(PLOTLY_MODES)}, got {mode!r}")


def render_report(
    title: str, header: Sequence[Section], sections: Sequence[Section], *, plotly: str = "inline"
) -> str:
    """The whole HTML page: plotly.js once in the head (see :data:`PLOTLY_MODES`), then each section in order."""
    script = _plotly_script(plotly)
    parts = []
    for section in (*header, *sections):
        figures = "".join(
            '<div class="figure">'
            + pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,
                div_id=fig_id,
                default_height=f"{int(fig.layout.height or 450)}px",
                config={"displaylogo": False, "responsive": True},
            )
            + "</div>"
            for fig_id, fig in section.figures.items()
        )
        parts.append(
            f'<section id="{_anchor(section.title)}"><h2>{html.escape(section.title)}</h2>'
            f"{_paragraphs(section.intro)}{section.lead}{figures}{section.html}</section>"
        )
    nav = "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in (*header, *sections))
    return html_page(title, f"<nav>{nav}</nav>{''.join(parts)}", head=script)


def _value_text(value: Any) -> str:
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def settings_rows(settings: Mapping[str, Any]) -> pd.DataFrame:
    """Settings as readable (setting, value) rows: ``max_train`` -> ``max train``, None -> ``—``."""
    return pd.DataFrame(
        {
            "setting": [key.replace("_", " ") for key in settings],
            "value": [_value_text(v) for v in settings.values()],
        }
    )


# --------------------------------------------------------------------------- the verdict


def summary_table(run: RunRecord) -> pd.DataFrame:
    """One row per split / OOD set: n, mean norm (ID train = 1, primary head), kNN accuracy, and for
    each OOD set its best scorer with AUROC, 95% interval, both FPR@95 conventions and the AUPRs.

    The same table is printed on the terminal and shown on the report's first screen; blank cells
    do not apply to the row.
    """
    summary = run.summary
    primary = run.primary_head
    knn = summary.knn_accuracy
    labels = run.set_labels
    verdicts = summary.ood_verdicts
    rows = []
    for key, entry in summary.norms.items():
        role = entry["role"]
        verdict = verdicts.get(key)
        row: dict[str, Any] = {
            "set": labels.get(key, key),
            "role": _role_label(role, verdict["group"] if verdict else None),
            "n": entry["n"],
            f"norm / ID train ({primary})": entry["heads"][primary]["mean_scaled"],
            "kNN accuracy": {"id-test": knn["id-test"], "id-train": knn["id-train-loo"]}.get(role, np.nan),
            "best scorer": "",
            "AUROC": np.nan,
            "95% CI": "",
            **{METRIC_LABELS[k]: np.nan for k in SUMMARY_METRICS},
        }
        if verdict:
            best = summary.ood[key][verdict["best"]]
            row.update(
                {
                    "best scorer": scorer_label(verdict["best"]),
                    "AUROC": verdict["auroc"],
                    "95% CI": _interval(*verdict["auroc_ci"]),
                    **{METRIC_LABELS[k]: best[k] for k in SUMMARY_METRICS},
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def auroc_table(run: RunRecord) -> pd.DataFrame:
    """AUROC of every scorer (rows) on every OOD set (columns), as the heatmap shows it."""
    ood = run.summary.ood
    labels = run.set_labels
    scorers = list(dict.fromkeys(s for per_set in ood.values() for s in per_set))
    return pd.DataFrame(
        {
            "scorer": [scorer_label(s) for s in scorers],
            **{
                labels.get(key, key): [ood[key].get(s, {}).get("auroc", np.nan) for s in scorers]
                for key in ood
            },
        }
    )


def _join(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _norm_detail(run: RunRecord, ood_set: str, scorer: str) -> str | None:
    """``gets larger norms than the in-distribution data (mean 1.90× the ID-train mean, ID test 1.00×)``,
    or None when the mean norms do not show it (the AUROC then reflects the distributions' shapes)."""
    norms = run.summary.norms
    head = scorer.partition("@")[2] or run.primary_head
    id_test = next((k for k, v in norms.items() if v["role"] == "id-test"), None)
    if ood_set not in norms or id_test is None or head not in norms[ood_set]["heads"]:
        return None
    ood_ratio = norms[ood_set]["heads"][head]["mean_scaled"]
    id_ratio = norms[id_test]["heads"][head]["mean_scaled"]
    if not ood_ratio > id_ratio:
        return None
    return (
        f"gets larger norms than the in-distribution data (mean {ood_ratio:.2f}× the ID-train mean, "
        f"ID test {id_ratio:.2f}×)"
    )


def _alternatives(per_scorer: Mapping[str, Any], exclude: Sequence[str]) -> str:
    """``kNN distance (AUROC 0.981) or Mahalanobis distance (0.975)``: the best two scorers that detect the set."""
    detecting = sorted(
        (s for s, m in per_scorer.items() if s not in exclude and m["auroc_ci"][0] > 0.5),
        key=lambda s: -per_scorer[s]["auroc"],
    )[:2]
    return " or ".join(
        f"{scorer_label(s)} ({'AUROC ' if i == 0 else ''}{per_scorer[s]['auroc']:.3f})"
        for i, s in enumerate(detecting)
    )


def _inverted_text(run: RunRecord, ood_set: str, name: str, inverted: Sequence[str]) -> str:
    per_scorer = run.summary.ood[ood_set]
    listed = [
        f"{scorer_label(s)} (AUROC {per_scorer[s]['auroc']:.3f}, 95% CI {_interval(*per_scorer[s]['auroc_ci'])})"
        for s in inverted
    ]
    text = (
        f"Inverted signal on {name}: {_join(listed)} {'ranks' if len(listed) == 1 else 'rank'} it as more "
        "familiar than ID test, consistently rather than by chance."
    )
    norm_scorers = [s for s in inverted if s.partition("@")[0] == "norm"]
    detail = _norm_detail(run, ood_set, norm_scorers[0]) if norm_scorers else None
    if detail:
        text += f" {name} {detail}: the norm calls it more familiar."
    text += (
        " Such a score does tell the sets apart, but in the opposite direction: flagging low scores "
        "would wave this set through, so do not read it as a broken detector or as no signal."
    )
    alternatives = _alternatives(per_scorer, inverted)
    return text + (
        f" Use {alternatives} for this set." if alternatives else " No scorer here detects this set."
    )


def verdict_items(run: RunRecord) -> list[tuple[str, bool]]:
    """The verdict in words, ``(sentence, is_inverted_warning)`` per item: for each OOD set its best
    scorer (or that none beats chance), then, if any scorer's signal is inverted for it, what that means."""
    labels = run.set_labels
    items: list[tuple[str, bool]] = []
    for ood_set, verdict in run.summary.ood_verdicts.items():
        name = labels.get(ood_set, ood_set)
        best, auroc, ci = verdict["best"], verdict["auroc"], _interval(*verdict["auroc_ci"])
        where = f"{name}, {verdict['group']}-OOD"
        if verdict["detected"]:
            text = f"{where}: best scorer {scorer_label(best)}, AUROC {auroc:.3f} (95% CI {ci})"
            ties = [scorer_label(s) for s in verdict["within_interval"]]
            if ties:
                verb = "lies" if len(ties) == 1 else "lie"
                text += f"; {_join(ties)} {verb} within that interval, so the data do not rank them apart"
            items.append((text + ".", False))
        else:
            items.append(
                (
                    f"{where}: no scorer separates it from ID test better than chance; the best, "
                    f"{scorer_label(best)}, has AUROC {auroc:.3f} (95% CI {ci}).",
                    False,
                )
            )
        if verdict["inverted"]:
            items.append((_inverted_text(run, ood_set, name, verdict["inverted"]), True))
    return items


def verdict_lines(run: RunRecord) -> list[str]:
    """:func:`verdict_items` as plain lines (the terminal summary), inverted signals marked ``!``."""
    return [("! " if inverted else "- ") + text for text, inverted in verdict_items(run)]


def _group_means(run: RunRecord) -> pd.DataFrame:
    """The summary's near-/far-OOD means as rows: group, OOD sets, scorer, every metric."""
    return pd.DataFrame(
        [
            {
                "group": group + "-OOD",
                "OOD sets": ", ".join(run.set_labels.get(s, s) for s in entry["ood_sets"]),
                "scorer": scorer_label(scorer),
                **{m.label: values.get(m.key) for m in OOD_METRICS},
            }
            for group, entry in run.summary.ood_groups.items()
            for scorer, values in entry["scorers"].items()
        ]
    )


def _verdict_section(run: RunRecord) -> Section:
    items = "".join(
        f'<li class="{"inverted" if inverted else "best"}">{html.escape(text)}</li>'
        for text, inverted in verdict_items(run)
    )
    groups = _group_means(run)
    group_table = (
        "<h3>Near- and far-OOD means (as OpenOOD reports them)</h3>" + table_html(groups, "{:.3f}")
        if not groups.empty
        else ""
    )
    return Section(
        "Verdict",
        f"Which scorer tells each OOD set apart from the in-distribution test set ({_id_label(run, 'id-test')}), "
        "and how sure that is: AUROC with its 95% bootstrap interval (0.5 is chance; two scorers whose "
        "AUROCs lie within one interval are not told apart by this data). Larger scores mean more familiar.",
        lead=f'<ul class="verdict">{items}</ul>'
        + table_html(summary_table(run), "{:.3f}")
        + '<p class="muted">norm / ID train: mean norm of the primary head divided by its ID-train mean. '
        "kNN accuracy: ID test classified against ID train, ID train by leave-one-out. FPR@95 (ID pos.): OOD "
        "accepted where 95% of ID test is; FPR@95 (OOD pos.): ID test flagged where 95% of the OOD set is "
        "(OpenOOD, pytorch-ood); AUPR: trapezoid-integrated PR curves (OpenOOD, pytorch-ood).</p>",
        figures={"fig-auroc-heatmap": auroc_heatmap_figure(run)},
        html=group_table,
    )


# --------------------------------------------------------------------------- the analysis report


def _source_name(run: RunRecord) -> str:
    """What was analysed, in a few words: the checkpoint's file name, or the ID-train embeddings file's."""
    if run.checkpoint is not None:
        return Path(run.checkpoint.path).name
    first = run.inputs[0]
    return f"embeddings {Path(first.path).name}" if first.path else "embeddings"


def _field_table(fields: Mapping[str, Any]) -> str:
    return table_html(pd.DataFrame({"field": list(fields), "value": list(fields.values())}))


def _provenance_html(run: RunRecord) -> str:
    """The checkpoint table, or for embedding input one row per input file (sha256 and shapes)."""
    checkpoint = run.checkpoint
    about = {
        "heads (primary)": f"{', '.join(run.heads)} ({run.primary_head})",
        "normprobe": run.normprobe_version,
        "created (UTC)": run.created_utc,
        "command": " ".join(run.command),
    }
    if checkpoint is None:
        inputs = pd.DataFrame(
            [
                {
                    "role": _role_label(entry.role),
                    "file": entry.path or "arrays (Python)",
                    "layout": entry.layout,
                    "sha256": (entry.sha256 or "")[:16],
                    "shape": "; ".join(
                        f"{h} {'×'.join(map(str, shape))}" for h, shape in entry.shapes.items()
                    ),
                    "embedded with": (entry.embedded_with or {}).get("path", ""),
                }
                for entry in run.inputs
            ]
        )
        return "<h3>Embedding input</h3>" + table_html(inputs) + _field_table(about)
    return "<h3>Checkpoint</h3>" + _field_table(
        {
            "path": checkpoint.path,
            "sha256": checkpoint.sha256,
            "adapter": checkpoint.adapter,
            "method": checkpoint.method,
            "preprocess": checkpoint.preprocess.get("description", ""),
            **about,
        }
    )


def _run_section(run: RunRecord) -> Section:
    sets = pd.DataFrame(
        [
            {
                "dataset": d.title or d.name,
                "split": d.split,
                "role": _role_label(d.role, d.ood_group),
                "n": d.n,
                "source": d.source,
                "notes": "; ".join(d.notes),
                "fingerprint": d.fingerprint[:16],
            }
            for d in run.datasets
        ]
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in run.notes)
    return Section(
        "Run",
        html=_provenance_html(run)
        + "<h3>Datasets</h3>"
        + table_html(sets)
        + "<h3>Settings</h3>"
        + table_html(settings_rows(to_json(run.settings)))
        + notes,
    )


def ood_section(run: RunRecord, ood: pd.DataFrame, roc: pd.DataFrame) -> Section:
    """Metrics of every scorer per OOD set (``tables/ood.csv``) and their ROC curves."""
    labels = run.set_labels
    shown = pd.DataFrame(
        {
            "OOD set": ood["ood_set"].map(lambda key: labels.get(key, key)),
            "group": ood["group"] + "-OOD",
            "scorer": ood["scorer"].map(scorer_label),
            "head": ood["head"],
            "n ID test": ood["n_id"],
            "n OOD": ood["n_ood"],
            "AUROC": ood["auroc"],
            "AUROC 95% CI": [
                _interval(lo, hi) for lo, hi in zip(ood["auroc_ci_low"], ood["auroc_ci_high"], strict=True)
            ],
            **{m.label: ood[m.key] for m in OOD_METRICS if m.key != "auroc"},
        }
    )
    legend = pd.DataFrame(
        {
            "metric": [m.label for m in OOD_METRICS],
            "name in run.json and tables/ood.csv": [m.key for m in OOD_METRICS],
            "positive class": [m.positive for m in OOD_METRICS],
            "better": ["higher" if m.higher_is_better else "lower" for m in OOD_METRICS],
            "the same number elsewhere": [m.reference for m in OOD_METRICS],
        }
    )
    return Section(
        "OOD detection",
        "Scorers are fitted on ID train; each OOD set is compared with ID test. Larger scores mean more "
        "familiar. AUROC and AUPR: larger is better; FPR: smaller is better. Metrics whose value depends on "
        "the positive class say which class it is, so they can be put into OpenOOD or pytorch-ood tables "
        "as they are (second table).",
        figures={"fig-roc": roc_figure(roc, ood, labels)},
        html=table_html(shown, "{:.4f}") + "<h3>The metrics</h3>" + table_html(legend),
    )


def _norm_table(norms: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    keys = norms["dataset"] + "/" + norms["split"]
    shown = norms.drop(columns=["dataset", "split"]).rename(
        columns={"mean_scaled": "mean / ID train", "median_scaled": "median / ID train"}
    )
    shown.insert(0, "set", keys.map(lambda key: labels.get(key, key)))
    shown["role"] = shown["role"].map(lambda role: ROLE_LABELS.get(role, role))
    return shown


def _spearman_table(spearman: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kNN correctness of": spearman["role"].map(
                {"id-test": "ID test", "id-train-loo": "ID train (leave-one-out)"}
            ),
            "head": spearman["head"],
            "n": spearman["n"],
            "Spearman ρ with the norm": spearman["rho"],
            "p-value": spearman["p_value"],
            "95% CI low": spearman["ci_low"],
            "95% CI high": spearman["ci_high"],
            "bootstrap resamples": spearman["n_boot"],
        }
    )


def norms_section(run: RunRecord, norm_table: pd.DataFrame, samples: pd.DataFrame) -> Section:
    """Mean norms per set (``tables/norms.csv``) and each head's norm histograms."""
    labels = run.set_labels
    return Section(
        "Embedding norms",
        f"Norms of the raw (un-normalised) embeddings, divided by the mean norm on ID train ({_id_label(run, 'id-train')}), "
        "as in the paper's Figure 3: the further a set is from the training data, the smaller its norms.",
        figures={
            "fig-norm-bars": norm_bars_figure(norm_table, labels),
            **{
                f"fig-norm-hist-{head}": norm_histogram_figure(samples, head, labels=labels)
                for head in run.heads
            },
        },
        html=table_html(_norm_table(norm_table, labels), "{:.4g}"),
    )


BUCKET_SCALINGS = {
    "max": "norm / max norm of the set (paper)",
    "minmax": "(norm - min) / (max - min)",
    "quantile": "norm quantile within the set",
}


def buckets_section(run: RunRecord, curves: pd.DataFrame, spearman: pd.DataFrame, unit: float) -> Section:
    """kNN accuracy per norm bucket (``tables/buckets.csv``) and the norm-correctness Spearman table;
    ``unit`` is the ID-train mean norm the x axis is divided by."""
    settings, primary = run.settings, run.primary_head
    return Section(
        "Norm buckets vs kNN accuracy",
        f"Weighted cosine kNN (k={settings.k}, T={settings.temperature}) on head {primary}, "
        f"{settings.buckets} buckets of {BUCKET_SCALINGS[settings.bucket_scaling]}; buckets with fewer than "
        f"{settings.min_bucket_count} samples are hidden "
        "(paper Figure 4, left). ID train is classified by leave-one-out (see the notes under Run).",
        figures={
            "fig-buckets": bucket_figure(
                curves,
                title=f"kNN accuracy per norm bucket (head {primary})",
                y_title="kNN accuracy",
                unit=unit,
            )
        },
        html=table_html(_spearman_table(spearman), "{:.4g}"),
    )


def exemplars_section(run: RunRecord, exemplars: pd.DataFrame, imagesets: Mapping[str, ImageSet]) -> Section:
    """The highest- and lowest-norm samples: image grids where ``imagesets`` has the set, else lists."""
    labels = run.set_labels
    grids = "".join(
        f"<h3>{html.escape(labels.get(key, key))}, {html.escape(ROLE_LABELS.get(part['role'].iloc[0], ''))}</h3>"
        + (exemplar_grid_html(part, imagesets[key]) if key in imagesets else exemplar_list_html(part))
        for key, part in exemplars.groupby(exemplars["dataset"] + "/" + exemplars["split"], sort=False)
    )
    return Section(
        "Exemplars",
        f"The highest- and lowest-norm samples (head {run.primary_head}) of each class; OOD sets overall. "
        "Hover an image for its id and norm.",
        html=grids,
    )


def human_section(
    curves: pd.DataFrame,
    correlations: pd.DataFrame,
    *,
    min_count: int,
    unit: float,
    signal_label: Callable[[str], str],
) -> Section:
    """Human-label curves and their Spearman correlations with the norm (paper Figure 4, middle and right)."""
    figures = human_figures(curves, correlations, signal_label, unit)
    return Section(
        "Human labels",
        "Human annotations against the embedding norm (paper Figure 4, middle and right): larger norms should go "
        "with more accurate and more consistent human labels; buckets with fewer than "
        f"{min_count} samples are hidden. Spearman correlations with bootstrap intervals below.",
        figures={f"fig-human-{i}": fig for i, fig in enumerate(figures)},
        html=table_html(
            pd.DataFrame(
                {
                    "human signal": correlations["signal"].map(signal_label),
                    "n": correlations["n"],
                    "mean": correlations["mean"],
                    "Spearman ρ with the norm": correlations["spearman_rho"],
                    "p-value": correlations["p_value"],
                    "95% CI low": correlations["ci_low"],
                    "95% CI high": correlations["ci_high"],
                }
            ),
            "{:.4f}",
        ),
    )


def analysis_report(run: RunRecord, sections: Sequence[Section], *, plotly: str = "inline") -> str:
    """The report of one `normprobe analyze` run: the verdict and the run's provenance (from the
    record), then the analyses' ``sections`` in the order given."""
    return render_report(
        f"normprobe analysis: {_source_name(run)}",
        [_verdict_section(run), _run_section(run)],
        sections,
        plotly=plotly,
    )
