"""`normprobe rank CKPT DATA --out ranked.csv`: the most unfamiliar samples of any image collection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from normprobe.atomic import atomic_write, check_new_file
from normprobe.commands.options import add_trust_code
from normprobe.errors import NormprobeError
from normprobe.rank import DEFAULT_K, SCORES, Ranking, RankSettings, run_rank
from normprobe.spreadsheet import spreadsheet_safe
from normprobe.terminal import printable

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")

DESCRIPTION = """\
Score every image of DATA by the norm of its raw embedding (larger = more familiar to the encoder;
Draganov et al., ICML 2025) and, with --reference, by its cosine distance to the k-th nearest
embedding of a reference set (Sun et al., 2022), then rank them most unfamiliar first.

Writes the table (--out, CSV or Parquet by suffix: id or path, label if known, every score, the
ranks, status) and two contact sheets beside it (same stem, .png and a self-contained .html) with
the --top least and most familiar images. Files that cannot be read are listed with status
`unreadable` and the reason, and skipped; the run still succeeds.
"""

EPILOG = """\
examples:
  normprobe rank simclr.pt photos/ --out ranked.csv
  normprobe rank simclr-r18w16 cifar10:test --reference cifar10 --by knn --out ranked.parquet
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rank",
        help="rank the images of a folder or dataset from most unfamiliar to most familiar",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint file (any supported format) or zoo model name"
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        help="an image folder (any size/format Pillow reads; class sub-folders give labels), a dataset "
        "(cifar10, cifar10:test, ...) or an .npz of images",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output table, .csv or .parquet; the contact sheets go beside it (same stem, .png and .html); "
        "its folder is created",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite the table and contact sheets if they exist"
    )
    parser.add_argument(
        "--top",
        type=int,
        default=100,
        help="images per side (least / most familiar) in the contact sheets (default: 100)",
    )
    parser.add_argument(
        "--head",
        default="auto",
        help="embedding head: feats, z, p, or auto = z when the checkpoint has a projector, else feats (default: auto)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="reference set for the kNN score: dataset (train split by default, or name:split), folder or .npz (default: none)",
    )
    parser.add_argument(
        "--reference-size",
        type=int,
        default=None,
        help="use this many random reference images (seeded by --seed; default: all)",
    )
    parser.add_argument(
        "--ood-k",
        type=int,
        default=DEFAULT_K,
        help=f"k of the kNN distance score, as in `analyze --ood-k` (default: {DEFAULT_K}, Sun et al. 2022)",
    )
    parser.add_argument(
        "--retain",
        type=float,
        default=0.95,
        help="is_unfamiliar flags scores below the threshold that keeps this fraction of the reference set "
        "(of DATA itself without --reference) familiar (default: 0.95)",
    )
    parser.add_argument(
        "--by", choices=SCORES, default="norm", help="the score that sets `rank` (default: norm)"
    )
    parser.add_argument(
        "--split", default=None, help="split of a DATA dataset given without one (default: test)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --reference-size (default: 0)")
    parser.add_argument(
        "--data-root", default=None, help="folder of the dataset mirrors (default: $NORMPROBE_DATA)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto = CUDA if available)"
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute embeddings instead of using the on-disk cache"
    )
    parser.add_argument("--no-sheet", action="store_true", help="write only the table, no contact sheets")
    add_trust_code(parser)
    parser.set_defaults(func=run)


def check_table_path(path: str | Path) -> Path:
    """The output table path: a ``.csv`` or ``.parquet`` file name (its folder is created when written)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise NormprobeError(f"{path}: the output must end in {' or '.join(TABLE_SUFFIXES)}")
    if path.is_dir():
        raise NormprobeError(f"{path} is a folder; give a file name")
    return path


def sheet_paths(table_path: Path) -> tuple[Path, Path]:
    """Where the contact sheets go: beside the table, same stem, ``.png`` and ``.html``."""
    return table_path.with_suffix(".png"), table_path.with_suffix(".html")


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
    except OSError as err:
        # a full disk, or a folder made read-only since the check: one line, and no partial file
        raise NormprobeError(f"cannot write {path}: {err.strerror or err}") from err


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write the ranked table as CSV (string cells defused for spreadsheets) or Parquet (by suffix), atomically."""
    if path.suffix.lower() == ".csv":
        safe = spreadsheet_safe(table)
        _write(path, lambda tmp: safe.to_csv(tmp, index=False))
    else:
        _write(path, lambda tmp: table.to_parquet(tmp, index=False))


def write_contact_sheets(ranking: Ranking, table_path: Path, top: int) -> tuple[Path, Path]:
    # Imported here: Pillow and pandas load only once there is a ranking to draw.
    from normprobe.render.contact_sheet import contact_sheet_html, contact_sheet_png

    png_path, html_path = sheet_paths(table_path)
    sheet = contact_sheet_png(ranking.table, ranking.imageset, ranking.settings, top)
    _write(png_path, lambda tmp: sheet.save(tmp, format="PNG"))
    page = contact_sheet_html(ranking.table, ranking.imageset, ranking.settings, top)
    _write(html_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return png_path, html_path


def run(args: argparse.Namespace) -> int:
    out = check_outputs(args.out, sheets=not args.no_sheet, force=args.force)
    if args.top < 1:
        raise NormprobeError(f"--top must be >= 1, got {args.top}")
    settings = RankSettings(
        head=args.head,
        reference=args.reference,
        ood_k=args.ood_k,
        by=args.by,
        retain=args.retain,
        split=args.split,
        reference_size=args.reference_size,
        seed=args.seed,
        data_root=args.data_root,
        batch_size=args.batch_size,
        device=args.device,
        use_cache=not args.no_cache,
        trust_code=args.trust_code,
    )
    ranking = run_rank(args.checkpoint, args.data, settings)
    write_table(ranking.table, out)
    table = ranking.table
    ok = table[table["status"] == "ok"]
    # ids are file names: printable() keeps their escape sequences and control characters off the terminal
    flagged = int(ok["is_unfamiliar"].sum())
    print(
        printable(
            f"ranked {len(ok)} images by {args.by} (head {ranking.settings['head']}) -> {out}; "
            f"{flagged} below the threshold {ranking.settings['threshold']:.4g} (is_unfamiliar)"
        )
    )
    if not args.no_sheet:
        png, page = write_contact_sheets(ranking, out, args.top)
        print(printable(f"contact sheets: {png}, {page}"))
    if len(ok):
        first = ok.iloc[0]
        print(printable(f"most unfamiliar: {first['id']} (score_{args.by} {first[f'score_{args.by}']:.4g})"))
    unreadable = table[table["status"] == "unreadable"]
    for row in unreadable.itertuples():
        print(printable(f"unreadable, skipped: {row.id}: {row.reason}"), file=sys.stderr)
    return 0
