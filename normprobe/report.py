"""The self-contained HTML report: plotly figures, tables and exemplar images in one file.

plotly.js is inlined once in the page head (no CDN, works offline); each figure is a ``<div>``
with its data. The report is a list of :class:`Section` s, each made by one analysis, so a new
analysis (e.g. the human-label curves) adds its section without touching the others.
Images are embedded as base64 PNG data URIs, decoded only for the samples shown.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from normprobe.analyses.buckets import SELF_VOTE_NOTE
from normprobe.data import ImageSet

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


@dataclass
class Section:
    """One part of the report: a title, explanatory text, figures (id -> figure) and extra HTML."""

    title: str
    intro: str = ""
    figures: dict[str, go.Figure] = field(default_factory=dict)
    html: str = ""
    """Trusted HTML built by this module (tables, image grids), placed after the figures."""


# --------------------------------------------------------------------------- figures


def norm_histogram_figure(samples: pd.DataFrame, head: str, bins: int = 80) -> go.Figure:
    """Density of norm / ID-train mean norm for every split and OOD set (paper Figure 3), one head.

    Histograms are binned here (shared edges over the central 99.8% of all values; the few beyond
    fall into the end bins) and drawn as step lines, so the page holds ``bins`` numbers per set
    rather than every sample.
    """
    column = f"norm_{head}"
    scaled = samples[column].to_numpy(np.float64) / samples.loc[samples["role"] == "id-train", column].mean()
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
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=density,
                mode="lines",
                line_shape="hvh",
                name=f"{dataset}/{split} ({role}, n={len(values)})",
                line={"color": COLORS[i % len(COLORS)], "width": 2},
                hovertemplate="norm / train mean %{x:.3f}<br>density %{y:.3f}<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_vline(x=1.0, line_dash="dot", line_color="grey", annotation_text="ID-train mean")
    fig.update_layout(
        title=f"Embedding norms of head {head!r}, divided by the ID-train mean",
        xaxis_title="‖embedding‖ / mean ‖embedding‖ on ID-train",
        yaxis_title="density",
        template=TEMPLATE,
        height=420,
    )
    return fig


def norm_bars_figure(norm_table: pd.DataFrame) -> go.Figure:
    """Mean norm / ID-train mean per set, grouped by head (the bars of paper Figure 3)."""
    fig = go.Figure()
    labels = (norm_table["dataset"] + "/" + norm_table["split"]).unique().tolist()
    for i, (head, rows) in enumerate(norm_table.groupby("head", sort=False)):
        rows = rows.assign(set=rows["dataset"] + "/" + rows["split"])
        fig.add_trace(
            go.Bar(
                x=rows["set"],
                y=rows["mean_scaled"],
                name=f"head {head}",
                marker_color=COLORS[i % len(COLORS)],
                customdata=np.stack([rows["n"], rows["mean"], rows["role"]], axis=1),
                hovertemplate="%{x} (%{customdata[2]}, n=%{customdata[0]})<br>mean norm %{customdata[1]:.4g}"
                "<br>/ ID-train mean: %{y:.3f}<extra>%{fullData.name}</extra>",
            )
        )
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_layout(
        barmode="group",
        title="Mean embedding norm per split and OOD set (ID-train = 1)",
        template=TEMPLATE,
        height=380,
        xaxis={"title": "", "categoryorder": "array", "categoryarray": labels},
        yaxis_title="mean norm / ID-train mean",
    )
    return fig


def bucket_figure(curves: pd.DataFrame, *, title: str, y_title: str, x_title: str) -> go.Figure:
    """Per-bucket means (one line per ``series``) from :func:`normprobe.analyses.buckets.bucket_curve` tables.

    Only buckets with ``shown`` are drawn; error bars are one standard error; hover gives the count
    and the bucket's norm range.
    """
    fig = go.Figure()
    for i, (series, rows) in enumerate(curves.groupby("series", sort=False)):
        rows = rows[rows["shown"].astype(bool)]
        fig.add_trace(
            go.Scatter(
                x=rows["center"],
                y=rows["mean"],
                mode="lines+markers",
                name=str(series),
                line={"color": COLORS[i % len(COLORS)]},
                error_y={"type": "data", "array": rows["sem"].fillna(0), "visible": True, "thickness": 1},
                customdata=np.stack([rows["count"], rows["norm_lower"], rows["norm_upper"]], axis=1),
                hovertemplate="bucket %{x:.3f}: mean %{y:.3f}<br>n=%{customdata[0]}, norm %{customdata[1]:.4g}"
                "–%{customdata[2]:.4g}<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template=TEMPLATE, height=420)
    return fig


def roc_figure(roc: pd.DataFrame, metrics: pd.DataFrame) -> go.Figure:
    """ROC curves (ID-test positive) per OOD set (one panel each) and scorer (one colour each)."""
    sets = list(dict.fromkeys(roc["ood_set"]))
    scorers = list(dict.fromkeys(roc["scorer"]))
    columns = min(3, len(sets))
    rows_n = -(-len(sets) // columns)
    fig = make_subplots(
        rows=rows_n, cols=columns, subplot_titles=sets, horizontal_spacing=0.06, vertical_spacing=0.12
    )
    auroc = {(r.ood_set, r.scorer): r.auroc for r in metrics.itertuples()}
    for s, ood_set in enumerate(sets):
        row, col = divmod(s, columns)
        for c, scorer in enumerate(scorers):
            part = roc[(roc["ood_set"] == ood_set) & (roc["scorer"] == scorer)]
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["fpr"],
                    y=part["tpr"],
                    mode="lines",
                    name=scorer,
                    legendgroup=scorer,
                    showlegend=s == 0,
                    line={"color": COLORS[c % len(COLORS)]},
                    hovertemplate=f"{scorer} on {ood_set} (AUROC {auroc.get((ood_set, scorer), float('nan')):.3f})"
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
    fig.update_yaxes(title_text="true positive rate (ID-test kept)", range=[0, 1.01])
    fig.update_layout(
        title="ROC curves: ID-test (positive) vs each OOD set; larger score = more familiar",
        template=TEMPLATE,
        height=380 * rows_n + 60,
    )
    return fig


# --------------------------------------------------------------------------- HTML pieces


def table_html(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A DataFrame as a plain HTML table (values escaped)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, (float, np.floating)):
                text = "" if np.isnan(value) else float_format.format(value)
            else:
                text = "" if value is None or value is pd.NA else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 H×W×3 image as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:2em}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#f5f5f5} .note{background:#fff8e1;border-left:4px solid #f0c040;padding:0.5em 1em;margin:0.5em 0}
.muted{color:#666;font-size:0.9em} .figure{margin:1em 0}
table.exemplars figure{display:inline-block;margin:2px;text-align:center}
table.exemplars img{width:64px;height:64px;image-rendering:pixelated;display:block}
table.exemplars figcaption{font-size:0.75em;color:#555} td.highest{background:#f3fbf3} td.lowest{background:#fdf3f3}
nav a{margin-right:1em}
"""


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


def render_report(title: str, header: Sequence[Section], sections: Sequence[Section]) -> str:
    """The whole HTML page: plotly.js once in the head, then the header and each section in order."""
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
            f"{_paragraphs(section.intro)}{figures}{section.html}</section>"
        )
    nav = "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in (*header, *sections))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{''.join(parts)}</body></html>\n"
    )


def settings_rows(settings: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "setting": list(settings),
            "value": [", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in settings.values()],
        }
    )


# --------------------------------------------------------------------------- the analysis report


def summary_table(run: Mapping[str, Any]) -> pd.DataFrame:
    """One row per split / OOD set: n, mean norm (ID-train = 1, primary head), kNN accuracy, AUROC per scorer.

    The same table is printed on the terminal and shown at the top of the report.
    """
    summary = run["summary"]
    primary = run["primary_head"]
    knn = summary["knn_accuracy"]
    scorers = list(dict.fromkeys(s for per_set in summary["ood"].values() for s in per_set))
    rows = []
    for key, entry in summary["norms"].items():
        role = entry["role"]
        row: dict[str, Any] = {
            "set": key,
            "role": role,
            "n": entry["n"],
            f"norm/train ({primary})": entry["heads"][primary]["mean_scaled"],
        }
        row["kNN acc"] = (
            knn["id-test"] if role == "id-test" else knn["id-train-loo"] if role == "id-train" else None
        )
        for scorer in scorers:
            row[f"AUROC {scorer}"] = summary["ood"].get(key, {}).get(scorer, {}).get("auroc")
        rows.append(row)
    return pd.DataFrame(rows)


def _overview_section(run: Mapping[str, Any]) -> Section:
    checkpoint = run["checkpoint"]
    ckpt = pd.DataFrame(
        {
            "field": [
                "path",
                "sha256",
                "adapter",
                "method",
                "heads (primary)",
                "preprocess",
                "normprobe",
                "created (UTC)",
                "command",
            ],
            "value": [
                checkpoint["path"],
                checkpoint["sha256"],
                checkpoint["adapter"],
                checkpoint["method"],
                f"{', '.join(run['heads'])} ({run['primary_head']})",
                checkpoint["preprocess"].get("description", ""),
                run["normprobe_version"],
                run["created_utc"],
                " ".join(map(str, run["command"])),
            ],
        }
    )
    sets = pd.DataFrame(
        [
            {
                "dataset": d["name"],
                "split": d["split"],
                "role": d["role"],
                "n": d["n"],
                "source": d["source"],
                "notes": "; ".join(d["notes"]),
                "fingerprint": d["fingerprint"][:16],
            }
            for d in run["datasets"]
        ]
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in run.get("notes", []))
    return Section(
        "Run",
        f"norm/train: mean norm of the primary head divided by its ID-train mean. kNN acc: ID-test classified against "
        f"ID-train, ID-train by leave-one-out. AUROC: in-distribution ({run['id_dataset']} test) is the positive class; "
        "larger scores mean more familiar.",
        html="<h3>Summary</h3>"
        + table_html(summary_table(run), "{:.3f}")
        + "<h3>Checkpoint</h3>"
        + table_html(ckpt)
        + "<h3>Datasets</h3>"
        + table_html(sets)
        + "<h3>Settings</h3>"
        + table_html(settings_rows(run["settings"]))
        + notes,
    )


def _ood_section(run: Mapping[str, Any], ood: pd.DataFrame, roc: pd.DataFrame) -> Section:
    return Section(
        "OOD detection",
        "Scorers are fitted on ID-train. Each OOD set is compared with ID-test. "
        "AUROC and AUPR: larger is better; FPR@95TPR: smaller is better.\n\n"
        + run["summary"]["ood_convention"],
        figures={"fig-roc": roc_figure(roc, ood)},
        html=table_html(ood, "{:.4f}"),
    )


def analysis_report(
    run: Mapping[str, Any],
    samples: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    roc: pd.DataFrame,
    imagesets: Mapping[str, ImageSet],
    extra_sections: Sequence[Section] = (),
) -> str:
    """The report of one `normprobe analyze` run; ``extra_sections`` (e.g. human labels) come last."""
    primary = run["primary_head"]
    settings = run["settings"]
    norms = Section(
        "Embedding norms",
        f"Norms of the raw (un-normalised) embeddings, divided by the mean norm on ID-train ({run['id_dataset']} train), "
        "as in the paper's Figure 3: the further a set is from the training data, the smaller its norms.",
        figures={
            "fig-norm-bars": norm_bars_figure(tables["norms"]),
            **{f"fig-norm-hist-{head}": norm_histogram_figure(samples, head) for head in run["heads"]},
        },
        html=table_html(tables["norms"], "{:.4g}"),
    )
    scaling = {
        "max": "norm / max norm of the set (paper)",
        "minmax": "(norm - min) / (max - min)",
        "quantile": "norm quantile within the set",
    }[settings["bucket_scaling"]]
    buckets = Section(
        "Norm buckets vs kNN accuracy",
        f"Weighted cosine kNN (k={settings['k']}, T={settings['temperature']}) on head {primary!r}, "
        f"{settings['buckets']} buckets of {scaling}; buckets with fewer than {settings['min_bucket_count']} samples are hidden "
        "(paper Figure 4, left).\n\n" + SELF_VOTE_NOTE,
        figures={
            "fig-buckets": bucket_figure(
                tables["buckets"],
                title=f"kNN accuracy per norm bucket (head {primary})",
                y_title="kNN accuracy",
                x_title=f"bucket centre: {scaling}",
            )
        },
        html=table_html(tables["spearman"], "{:.4g}"),
    )
    exemplars = tables["exemplars"]
    grids = "".join(
        f"<h3>{html.escape(key)} ({html.escape(str(part['role'].iloc[0]))})</h3>"
        + exemplar_grid_html(part, imagesets[key])
        for key, part in exemplars.groupby(exemplars["dataset"] + "/" + exemplars["split"], sort=False)
    )
    exemplar_section = Section(
        "Exemplars",
        f"The highest- and lowest-norm samples (head {primary!r}) of each class; OOD sets overall. "
        "Hover an image for its id and norm.",
        html=grids,
    )
    return render_report(
        f"normprobe analysis: {Path(run['checkpoint']['path']).name}",
        [_overview_section(run)],
        [norms, buckets, _ood_section(run, tables["ood"], roc), exemplar_section, *extra_sections],
    )
