"""Rank the samples of any image collection from the most unfamiliar to the most familiar.

The encoder's confidence in a sample is the norm of its raw embedding (Draganov et al., 2025,
Section 5: "embedding norms decrease progressively with increasing distributional distance from
the training data"). With a reference set, each sample is also scored by its cosine distance to
the k-th nearest reference embedding (Sun et al., 2022, "Out-of-distribution detection with deep
nearest neighbors"). Scores follow normprobe's one direction: **larger = more familiar**.

* ``score_norm``: ‖embedding‖ of the chosen head;
* ``score_knn``: minus the cosine distance ``1 - cos`` to the k-th nearest reference embedding;
* ``rank_<score>``: 1 = the most unfamiliar sample by that score; ``rank`` is the one chosen by ``by``;
* ``is_unfamiliar``: the ``by`` score is below the threshold that keeps a fraction ``retain`` (0.95)
  of the reference set (of the ranked set itself without one), the scorers' calibrated ``predict``.

Rows come most-unfamiliar first; files that could not be read come last with ``status``
``unreadable`` and the ``reason`` (they are listed, not fatal).

    import normprobe
    table = normprobe.rank("simclr.pt", "photos/", reference="cifar10", ood_k=50)

Heavy libraries (torch, pandas, Pillow) are imported inside the functions, because ``import
normprobe`` binds :func:`rank` eagerly and must stay light.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normprobe.atomic import atomic_write, check_new_file
from normprobe.errors import NormprobeError
from normprobe.spreadsheet import spreadsheet_safe

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from normprobe.cache import EmbeddingCache
    from normprobe.checkpoints import LoadedEncoder
    from normprobe.data import ImageSet

SCORES = ("norm", "knn")
TABLE_SUFFIXES = (".csv", ".parquet")
DEFAULT_K = 50
"""k of the kNN distance score: Sun et al. (2022) use k = 50 for CIFAR-10."""
TILE = 64
"""Contact-sheet thumbnail size in pixels (small images are enlarged without smoothing)."""

COLUMNS = (
    "rank",
    "id",
    "status",
    "reason",
    "label",
    "label_name",
    "score_norm",
    "rank_norm",
    "score_knn",
    "rank_knn",
    "is_unfamiliar",
    "dataset",
    "split",
    "index",
    "position",
)


@dataclass(frozen=True)
class RankSettings:
    """Every choice of a ranking (the CLI's options; recorded in ``Ranking.settings``).

    ``head``: ``auto`` = ``z`` if the checkpoint has a projector, else ``feats``. ``reference``: a
    dataset (its train split by default), folder or .npz whose embeddings the kNN score measures
    distance to, and on which the ``is_unfamiliar`` threshold is calibrated (``reference_size``
    random samples of it, seeded by ``seed``, when given). ``ood_k``: k of the kNN distance score,
    as ``analyze --ood-k``. ``by``: ``norm`` or ``knn``, the score that sets ``rank`` and
    ``is_unfamiliar``. ``retain``: fraction of the reference kept familiar by the threshold.
    ``trust_code``: load TorchScript / ``torch.export`` checkpoints, which run their own code.
    """

    head: str | None = "auto"
    reference: str | None = None
    ood_k: int = DEFAULT_K
    by: str = "norm"
    retain: float = 0.95
    split: str | None = None
    reference_size: int | None = None
    seed: int = 0
    data_root: str | None = None
    batch_size: int = 256
    device: str | None = None
    use_cache: bool = True
    progress: bool = True
    trust_code: bool = False

    def check(self) -> None:
        """Reject impossible combinations before any work."""
        if self.by not in SCORES:
            raise NormprobeError(f"unknown ranking score {self.by!r} (choose from {', '.join(SCORES)})")
        if self.by == "knn" and self.reference is None:
            raise NormprobeError("ranking by the kNN distance needs a reference set (--reference)")
        if self.ood_k < 1:
            raise NormprobeError(f"--ood-k must be >= 1, got {self.ood_k}")
        if not 0.0 < self.retain <= 1.0:
            raise NormprobeError(f"--retain must be in (0, 1], got {self.retain}")
        if self.reference_size is not None and self.reference_size < 1:
            raise NormprobeError(f"--reference-size must be >= 1, got {self.reference_size}")
        if self.batch_size < 1:
            raise NormprobeError(f"--batch-size must be >= 1, got {self.batch_size}")


@dataclass
class Ranking:
    """A ranked table plus what produced it: the image set (for contact sheets) and every setting."""

    table: pd.DataFrame
    imageset: ImageSet
    settings: dict[str, Any] = field(default_factory=dict)


def resolve_head(loaded: LoadedEncoder, head: str | None) -> str:
    """``auto`` (or None): the projector output ``z`` when the checkpoint has one, else the backbone ``feats``."""
    if head in (None, "auto"):
        return "z" if "z" in loaded.heads else "feats"
    if head not in loaded.heads:
        raise NormprobeError(f"checkpoint has no head {head!r} (heads: {', '.join(loaded.heads)})")
    return head


def load_reference(spec: str, data_root: str | Path | None, image_size: int) -> ImageSet:
    """A reference set: a dataset name (its train split unless ``name:split`` says otherwise), a folder or an .npz."""
    from normprobe import data

    name = spec.partition(":")[0]
    split = data.default_split(name, "train") if name in data.manifest_names("images") else None
    return data.load_any(spec, split, data_root, image_size)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1 = smallest score (most unfamiliar); ties keep the set order."""
    ranks = np.empty(len(scores), np.int64)
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return ranks


def score_imageset(
    loaded: LoadedEncoder,
    imageset: ImageSet,
    settings: RankSettings,
    reference: ImageSet | None = None,
    cache: EmbeddingCache | None = None,
) -> Ranking:
    """Score and rank every sample of ``imageset`` (readable ones), listing ``imageset.skipped`` as unreadable."""
    import pandas as pd

    from normprobe.analyses.norms import embedding_norms
    from normprobe.embed import extract
    from normprobe.scores import KNNDistanceScorer, NormScorer

    settings.check()
    head, by, k = resolve_head(loaded, settings.head), settings.by, settings.ood_k
    extract_options: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "device": settings.device,
        "cache": cache,
        "progress": settings.progress,
    }
    if reference is not None and len(reference) < k + 1:
        raise NormprobeError(
            f"k = {k} needs at least k + 1 = {k + 1} reference samples, the reference set has {len(reference)}; lower --ood-k"
        )
    embeddings = extract(loaded, imageset, [head], **extract_options)
    z = np.asarray(embeddings.heads[head], dtype=np.float32)
    labels = imageset.labels
    known = labels >= 0
    names = np.array(imageset.classes, dtype=object)
    table = pd.DataFrame(
        {
            "id": imageset.ids.astype(str),
            "status": "ok",
            "reason": "",
            "label": pd.array(np.where(known, labels, 0), dtype="Int64"),
            "label_name": [
                names[c] if ok and c < len(names) else ""
                for c, ok in zip(labels.tolist(), known, strict=True)
            ],
            "score_norm": embedding_norms(z),
            "dataset": imageset.name,
            "split": imageset.split,
            "index": imageset.index,
            "position": np.arange(len(imageset)),
        }
    )
    table.loc[~known, "label"] = pd.NA
    table["rank_norm"] = _ranks(table["score_norm"].to_numpy())
    record: dict[str, Any] = {
        **asdict(settings),
        "checkpoint": loaded.path,
        "checkpoint_sha256": loaded.sha256,
        "adapter": loaded.adapter,
        "head": head,
        "data": {
            "name": imageset.name,
            "split": imageset.split,
            "n": len(imageset),
            "source": imageset.source,
            "fingerprint": imageset.fingerprint,
            "notes": list(imageset.notes),
            "unreadable": len(imageset.skipped),
        },
        "preprocess": loaded.preprocess.describe(),
        "score_direction": "larger = more familiar",
    }
    # The threshold of is_unfamiliar is calibrated on the reference (what "familiar" means); without
    # one, on the ranked set itself, so that its least familiar 1 - retain are flagged.
    calibration = z
    if reference is not None:
        bank = extract(loaded, reference, [head], **extract_options)
        calibration = np.asarray(bank.heads[head], dtype=np.float32)
        scorer = KNNDistanceScorer(k, retain=settings.retain).fit(calibration)
        # The same set as its own reference: leave-one-out, so no sample is its own nearest neighbour.
        same = reference.fingerprint == imageset.fingerprint
        table["score_knn"] = scorer.score_samples(None if same else z)
        table["rank_knn"] = _ranks(table["score_knn"].to_numpy())
        if by == "knn":
            record["threshold"] = float(scorer.offset_)
        record["reference"] = {
            "name": reference.name,
            "split": reference.split,
            "n": len(reference),
            "source": reference.source,
            "fingerprint": reference.fingerprint,
            "leave_one_out": same,
        }
    else:
        table["score_knn"] = np.nan
        table["rank_knn"] = pd.array([pd.NA] * len(table), dtype="Int64")
    if by == "norm":
        record["threshold"] = float(NormScorer(retain=settings.retain).fit(calibration).offset_)
    record["threshold_of"] = f"score_{by}"
    table["is_unfamiliar"] = table[f"score_{by}"] < record["threshold"]
    table["rank"] = table[f"rank_{by}"]
    table = table.sort_values("rank", kind="stable")
    if imageset.skipped:
        unreadable = pd.DataFrame(
            {
                "id": [p for p, _ in imageset.skipped],
                "status": "unreadable",
                "reason": [r for _, r in imageset.skipped],
                "dataset": imageset.name,
                "split": imageset.split,
            }
        )
        table = pd.concat([table, unreadable], ignore_index=True)
    table = table.reset_index(drop=True)
    for column in ("rank", "rank_norm", "rank_knn", "index", "position"):
        table[column] = table[column].astype("Int64")
    table["is_unfamiliar"] = table["is_unfamiliar"].astype("boolean")
    table.attrs["normprobe"] = record
    return Ranking(table[list(COLUMNS)], imageset, record)


def run_rank(
    checkpoint: str | Path | LoadedEncoder,
    data: str | Path | Any,
    settings: RankSettings,
    reference_data: Any = None,
) -> Ranking:
    """Load the checkpoint and the data, then :func:`score_imageset`; see :class:`RankSettings`.

    ``data`` (and ``reference_data``, which replaces ``settings.reference`` when given) may also be an
    ImageSet or a map-style ``torch.utils.data.Dataset`` of images.
    """
    from normprobe import data as datasets
    from normprobe.cache import EmbeddingCache
    from normprobe.checkpoints import LoadedEncoder, load_encoder
    from normprobe.data.torch_dataset import python_imageset
    from normprobe.zoo import resolve_checkpoint

    settings.check()
    loaded = (
        checkpoint
        if isinstance(checkpoint, LoadedEncoder)
        else load_encoder(resolve_checkpoint(checkpoint), trust_code=settings.trust_code)
    )
    image_size = int(loaded.preprocess.input_size[0])
    imageset = (
        datasets.load_any(str(data), settings.split, settings.data_root, image_size)
        if isinstance(data, str | Path)
        else python_imageset(data, "all", image_size)
    )
    reference_set = None
    if reference_data is not None:
        reference_set = python_imageset(reference_data, "reference", image_size)
    elif settings.reference is not None:
        reference_set = load_reference(settings.reference, settings.data_root, image_size)
    if reference_set is not None:
        size = settings.reference_size
        if size is not None and size < len(reference_set):
            picked = np.sort(
                np.random.default_rng(settings.seed).choice(len(reference_set), size, replace=False)
            )
            reference_set = reference_set.subset(picked, f"random {size} (seed {settings.seed})")
    cache = EmbeddingCache() if settings.use_cache else None
    return score_imageset(loaded, imageset, settings, reference_set, cache)


def rank(checkpoint: str | Path | LoadedEncoder, data: str | Path | Any, **options: Any) -> pd.DataFrame:
    """Every sample of ``data`` scored and ranked, most unfamiliar first (a pandas DataFrame).

    ``checkpoint``: a checkpoint file, a zoo model name or a loaded encoder. ``data``: an image
    folder (any size or format Pillow reads; class sub-folders give labels), a dataset name
    (``cifar10:test``), an .npz, an ImageSet or a map-style ``torch.utils.data.Dataset`` of images
    (so may ``reference`` be). ``options``: the fields of :class:`RankSettings` (``reference``,
    ``ood_k``, ``by``, ``retain``, ...). Columns: :data:`COLUMNS`; the settings and the
    ``is_unfamiliar`` threshold are in ``table.attrs["normprobe"]``.
    """
    reference = options.get("reference")
    reference_data = None
    if reference is not None and not isinstance(reference, str | Path):
        # an ImageSet or torch Dataset: handed over as data, recorded in the settings by its type
        reference_data, options["reference"] = reference, f"<{type(reference).__name__}>"
    elif reference is not None:
        options["reference"] = str(reference)
    try:
        settings = RankSettings(**options)
    except TypeError as err:
        raise NormprobeError(f"rank: {err}") from err
    return run_rank(checkpoint, data, settings, reference_data).table


# --------------------------------------------------------------------------- outputs


def check_table_path(path: str | Path) -> Path:
    """The output table path: a ``.csv`` or ``.parquet`` file name (its folder is created when written)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise NormprobeError(f"{path}: the output must end in {' or '.join(TABLE_SUFFIXES)}")
    if path.is_dir():
        raise NormprobeError(f"{path} is a folder; give a file name")
    return path


def check_outputs(path: str | Path, *, sheets: bool, force: bool) -> Path:
    """Before any work: the table path, and that neither it nor (with ``sheets``) the contact sheets beside
    it exist unless ``force`` (``--out r/mine.csv`` also writes ``r/mine.png`` and ``r/mine.html``),
    and that their folder can be written."""
    table = check_table_path(path)
    check_new_file(table, force=force, what="--out")
    for sheet in sheet_paths(table) if sheets else ():
        if not force and (sheet.exists() or sheet.is_symlink()):
            raise NormprobeError(
                f"{sheet} already exists, and rank writes a contact sheet there (beside --out {table}); "
                "pass --force to overwrite it, or --no-sheet"
            )
    return table


def _write(path: Path, write: Callable[[Path], object]) -> None:
    try:
        atomic_write(path, write)
    except (
        OSError
    ) as err:  # a full disk, a folder made read-only since the check: no traceback, no partial file
        raise NormprobeError(f"cannot write {path}: {err.strerror or err}") from err


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the ranked table as CSV (string cells defused for spreadsheets) or Parquet (by suffix), atomically."""
    path = check_table_path(path)
    if path.suffix.lower() == ".csv":
        safe = spreadsheet_safe(table)
        _write(path, lambda tmp: safe.to_csv(tmp, index=False))
    else:
        _write(path, lambda tmp: table.to_parquet(tmp, index=False))
    return path


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
    from PIL import Image

    picture = Image.fromarray(image)
    smooth = max(picture.size) > TILE
    return picture.resize((TILE, TILE), Image.Resampling.BICUBIC if smooth else Image.Resampling.NEAREST)


def contact_sheet_png(ranking: Ranking, top: int = 100, columns: int = 10) -> Image.Image:
    """The ``top`` least familiar samples (most unfamiliar first), then the ``top`` most familiar, captioned."""
    from PIL import Image, ImageDraw, ImageFont

    by = ranking.settings.get("by", "norm")
    font = ImageFont.load_default(size=12)
    caption_h, header_h, pad = 30, 22, 12
    least, most = _extremes(ranking.table, top)
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
        for i, (row, image) in enumerate(zip(rows.itertuples(), _tiles(ranking.imageset, rows), strict=True)):
            x0, y0 = pad + (i % columns) * cell_w, y + (i // columns) * cell_h
            sheet.paste(_thumbnail(image), (x0, y0))
            draw.multiline_text((x0, y0 + TILE + 1), _caption(row, by), fill="black", font=font, spacing=1)
        y += -(-len(rows) // columns) * cell_h
    return sheet


def contact_sheet_html(ranking: Ranking, top: int = 100) -> str:
    """A self-contained HTML page (images as data URIs) of the extremes, the unreadable files and the settings."""
    import json

    import pandas as pd

    from normprobe.report import png_data_uri, table_html

    settings = ranking.settings
    least, most = _extremes(ranking.table, top)

    def figures(rows: pd.DataFrame) -> str:
        out = []
        for row, image in zip(rows.itertuples(), _tiles(ranking.imageset, rows), strict=True):
            label = "" if pd.isna(row.label) else f" · {row.label_name or row.label}"
            scores = f"norm {row.score_norm:.4g}" + (
                "" if np.isnan(row.score_knn) else f" · kNN {row.score_knn:.4g}"
            )
            out.append(
                f'<figure><img src="{png_data_uri(np.asarray(_thumbnail(image)))}" alt="{html.escape(str(row.id))}">'
                f"<figcaption><b>#{row.rank}</b> {html.escape(str(row.id))}{html.escape(label)}<br>{scores}</figcaption></figure>"
            )
        return "".join(out)

    unreadable = ranking.table[ranking.table["status"] != "ok"][["id", "reason"]]
    skipped = (
        f"<h2>Unreadable files ({len(unreadable)})</h2>{table_html(unreadable)}" if len(unreadable) else ""
    )
    by = settings.get("by", "norm")
    title = f"normprobe rank: {settings['data']['name']} ({settings['data']['n']} images)"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Ranked by <b>{html.escape(by)}</b>; every score: larger = more familiar. Head "
        f"<code>{html.escape(settings['head'])}</code> of <code>{html.escape(str(settings['checkpoint']))}</code>.</p>"
        f"<h2>Least familiar ({len(least)})</h2><div class=grid>{figures(least)}</div>"
        f"<h2>Most familiar ({len(most)})</h2><div class=grid>{figures(most)}</div>"
        f"{skipped}<h2>Settings</h2><pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>"
        "</body></html>\n"
    )


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.5em}
.grid figure{display:inline-block;margin:3px;width:120px;vertical-align:top;text-align:center}
.grid img{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto}
.grid figcaption{font-size:0.72em;color:#444;word-break:break-all}
table{border-collapse:collapse;font-size:0.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
pre{background:#f7f7f7;padding:0.5em;font-size:0.8em;overflow-x:auto}
"""


def sheet_paths(table_path: Path) -> tuple[Path, Path]:
    """Where the contact sheets go: beside the table, same stem, ``.png`` and ``.html``."""
    return table_path.with_suffix(".png"), table_path.with_suffix(".html")


def write_contact_sheets(ranking: Ranking, table_path: Path, top: int) -> tuple[Path, Path]:
    png_path, html_path = sheet_paths(table_path)
    sheet = contact_sheet_png(ranking, top)
    _write(png_path, lambda tmp: sheet.save(tmp, format="PNG"))
    page = contact_sheet_html(ranking, top)
    _write(html_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return png_path, html_path
