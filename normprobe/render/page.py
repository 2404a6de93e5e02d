"""What every normprobe HTML page shares: one stylesheet, the page shell, tables and embedded images.

The analysis report (:mod:`normprobe.report`) and ``rank``'s contact sheet
(:mod:`normprobe.render.contact_sheet`) are both built on :func:`html_page`, so they look alike and
a change of style is made once. Pages are self-contained: images are PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
from PIL import Image

STYLESHEET = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:2em}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#f5f5f5} .note{background:#fff8e1;border-left:4px solid #f0c040;padding:0.5em 1em;margin:0.5em 0}
.muted{color:#666;font-size:0.9em} .figure{margin:1em 0}
pre{background:#f7f7f7;padding:0.5em;font-size:0.8em;overflow-x:auto}
nav a{margin-right:1em}
/* the report's verdict and per-class exemplar table */
ul.verdict{padding-left:1.2em} ul.verdict li{margin:0.3em 0}
ul.verdict li.inverted{background:#fdecea;border-left:4px solid #d62728;padding:0.4em 0.8em;list-style:none;margin-left:-1.2em}
table.exemplars figure{display:inline-block;margin:2px;text-align:center}
table.exemplars img{width:64px;height:64px;image-rendering:pixelated;display:block}
table.exemplars figcaption{font-size:0.75em;color:#555} td.highest{background:#f3fbf3} td.lowest{background:#fdf3f3}
/* the contact sheet's image grid: small images are enlarged without smoothing */
.grid figure{display:inline-block;margin:3px;width:120px;vertical-align:top;text-align:center}
.grid img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto}
.grid figcaption{font-size:0.72em;color:#444;word-break:break-all}
"""

PLOTLY_MODES = ("inline", "cdn", "directory")
"""Where the page gets plotly.js: inlined (offline, ~5 MB), the plotly CDN, or ``plotly.min.js`` (normprobe.report.PLOTLY_FILE) beside it."""


def html_page(title: str, body: str, *, head: str = "") -> str:
    """A whole page: the stylesheet and ``head`` (trusted HTML, e.g. a script) in its head, the title as its heading, then ``body`` (trusted HTML)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLESHEET}</style>{head}</head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def table_html(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A DataFrame as a plain HTML table (values escaped; NaN and None as empty cells)."""
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
