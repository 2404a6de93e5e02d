"""``rank``'s contact sheets: the least and most familiar images of a ranked table, as a PNG and a page.

Both are drawn from the ranked table (its ``rank``, ``score_*``, ``status`` and ``position``
columns), the image set it ranks and the ranking's settings record; only the images shown are
decoded. The HTML page is self-contained (images as data URIs) and uses the stylesheet of
:mod:`normprobe.render.page`, as the analysis report does.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from normprobe.render.page import html_page, png_data_uri, table_html

if TYPE_CHECKING:
    from normprobe.data import ImageSet

TILE = 64
"""Contact-sheet thumbnail size in pixels (small images are enlarged without smoothing)."""


def _extremes(table: pd.DataFrame, top: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``top`` least and most familiar readable rows; with few rows, each side gets its own half."""
    ok = table[table["status"] == "ok"]
    least = min(top, (len(ok) + 1) // 2)
    most = min(top, len(ok) - least)
    return ok.head(least), ok.tail(most).iloc[::-1]


def _caption(row: Any, by: str) -> str:
    score = row.score_knn if by == "knn" else row.score_norm
    return f"#{row.rank}\n{score:.4g}"


def _tiles(imageset: ImageSet, rows: pd.DataFrame) -> list[np.ndarray]:
    if rows.empty:
        return []
    return list(imageset.images(rows["position"].to_numpy(np.int64)).numpy())


def _thumbnail(image: np.ndarray) -> Image.Image:
    picture = Image.fromarray(image)
    smooth = max(picture.size) > TILE
    return picture.resize((TILE, TILE), Image.Resampling.BICUBIC if smooth else Image.Resampling.NEAREST)


def contact_sheet_png(
    table: pd.DataFrame, imageset: ImageSet, settings: Mapping[str, Any], top: int = 100, columns: int = 10
) -> Image.Image:
    """The ``top`` least familiar samples (most unfamiliar first), then the ``top`` most familiar, captioned."""
    by = settings.get("by", "norm")
    font = ImageFont.load_default(size=12)
    caption_h, header_h, pad = 30, 22, 12
    least, most = _extremes(table, top)
    panels = [
        (f"least familiar by {by} (rank 1 = most unfamiliar)", least),
        (f"most familiar by {by}", most),
    ]
    columns = max(1, min(columns, max(len(least), len(most), 1)))
    cell_w, cell_h = TILE + pad, TILE + caption_h + pad
    height = sum(header_h + -(-len(rows) // columns) * cell_h for _, rows in panels) + pad
    sheet = Image.new("RGB", (columns * cell_w + pad, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for title, rows in panels:
        draw.text((pad, y + 4), f"{title}: {len(rows)} shown", fill="black", font=font)
        y += header_h
        for i, (row, image) in enumerate(zip(rows.itertuples(), _tiles(imageset, rows), strict=True)):
            x0, y0 = pad + (i % columns) * cell_w, y + (i // columns) * cell_h
            sheet.paste(_thumbnail(image), (x0, y0))
            draw.multiline_text((x0, y0 + TILE + 1), _caption(row, by), fill="black", font=font, spacing=1)
        y += -(-len(rows) // columns) * cell_h
    return sheet


def contact_sheet_html(
    table: pd.DataFrame, imageset: ImageSet, settings: Mapping[str, Any], top: int = 100
) -> str:
    """A self-contained HTML page (images as data URIs) of the extremes, the unreadable files and the settings."""
    least, most = _extremes(table, top)

    def figures(rows: pd.DataFrame) -> str:
        out = []
        for row, image in zip(rows.itertuples(), _tiles(imageset, rows), strict=True):
            label = "" if pd.isna(row.label) else f" · {row.label_name or row.label}"
            scores = f"norm {row.score_norm:.4g}" + (
                "" if np.isnan(row.score_knn) else f" · kNN {row.score_knn:.4g}"
            )
            out.append(
                f'<figure><img src="{png_data_uri(np.asarray(_thumbnail(image)))}" alt="{html.escape(str(row.id))}">'
                f"<figcaption><b>#{row.rank}</b> {html.escape(str(row.id))}{html.escape(label)}<br>{scores}</figcaption></figure>"
            )
        return "".join(out)

    unreadable = table[table["status"] != "ok"][["id", "reason"]]
    skipped = (
        f"<h2>Unreadable files ({len(unreadable)})</h2>{table_html(unreadable)}" if len(unreadable) else ""
    )
    by = settings.get("by", "norm")
    title = f"normprobe rank: {settings['data']['name']} ({settings['data']['n']} images)"
    return html_page(
        title,
        f"<p>Ranked by <b>{html.escape(by)}</b>; every score: larger = more familiar. Head "
        f"<code>{html.escape(settings['head'])}</code> of <code>{html.escape(str(settings['checkpoint']))}</code>.</p>"
        f"<h2>Least familiar ({len(least)})</h2><div class=grid>{figures(least)}</div>"
        f"<h2>Most familiar ({len(most)})</h2><div class=grid>{figures(most)}</div>"
        f"{skipped}<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>",
    )
