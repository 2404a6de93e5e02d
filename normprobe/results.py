"""The results folder (Contract 2 in ARCHITECTURE.md): write it atomically, read it back validated.

Layout::

    DIR/run.json          provenance, every setting, the summary metrics
    DIR/samples.parquet   one row per analysed sample (columns below)
    DIR/tables/*.csv      the summary tables (norms, buckets, ood, exemplars, ...)
    DIR/report.html       self-contained plotly report (absent with --no-report)

run.json's ``files`` lists every file normprobe wrote into the folder: ``--force`` replaces and
removes only those, never a file the user added (notes, figures, weights). A folder is a results
folder only if its run.json validates.

``samples.parquet`` columns: ``dataset``, ``split``, ``index`` (original position in the split),
``id``, ``role`` (``id-train`` | ``id-test`` | ``ood``), ``label`` (-1 unknown), ``label_name``,
``norm_<head>`` for every head, ``norm_scaled`` (primary-head norm / its ID-train mean),
``knn_pred`` / ``knn_correct`` (nullable; ID rows only, ID-train by leave-one-out),
``score_<scorer>`` for every scorer (larger = more familiar), and ``human_*`` fields.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from normprobe.atomic import check_writable, remove_stale, temporary_prefix
from normprobe.errors import NormprobeError
from normprobe.record import ROLES, RunRecord, read_run, to_json
from normprobe.spreadsheet import spreadsheet_safe

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.parquet"
ROW_GROUP_ROWS = 65_536
"""Rows per parquet row group (samples.parquet, ``normprobe embed --out x.parquet``): a reader can
stream or skip groups, and a writer holds at most one group's columns beyond its input."""
TABLES_DIR = "tables"
REPORT_FILE = "report.html"
LEGACY_FILES = (
    RUN_FILE,
    SAMPLES_FILE,
    REPORT_FILE,
    *(
        f"{TABLES_DIR}/{t}.csv"
        for t in (
            "norms",
            "buckets",
            "ood",
            "ood_groups",
            "spearman",
            "exemplars",
            "human_curves",
            "human_correlations",
        )
    ),
)
"""What a results folder written before ``files`` existed may hold of normprobe's."""
_OUR_FILES = re.compile(
    rf"{re.escape(RUN_FILE)}|{re.escape(SAMPLES_FILE)}|{re.escape(REPORT_FILE)}|{TABLES_DIR}/[A-Za-z0-9_+@-]+\.csv"
    r"|[A-Za-z0-9_-]+(?:\.min)?\.js"  # scripts the report loads from beside it (--plotly directory)
)

BASE_COLUMNS = (
    "dataset",
    "split",
    "index",
    "id",
    "role",
    "label",
    "label_name",
    "norm_scaled",
    "knn_pred",
    "knn_correct",
)


def sample_columns(heads: list[str] | tuple[str, ...], scorers: list[str] | tuple[str, ...]) -> list[str]:
    """The columns every ``samples.parquet`` of a run with these heads and scorers has (``human_*`` may follow)."""
    return [
        *BASE_COLUMNS[:7],
        *(f"norm_{h}" for h in heads),
        *BASE_COLUMNS[7:],
        *(f"score_{s}" for s in scorers),
    ]


@dataclass(frozen=True)
class Results:
    """A results folder read back: ``run`` (run.json), ``samples`` (samples.parquet) and where it lives."""

    run: RunRecord
    samples: pd.DataFrame
    path: Path

    @property
    def heads(self) -> list[str]:
        return list(self.run.heads)

    @property
    def scorers(self) -> list[str]:
        return [c.removeprefix("score_") for c in self.samples.columns if c.startswith("score_")]

    def table(self, name: str) -> pd.DataFrame:
        """``tables/<name>.csv`` as a DataFrame (``norms``, ``buckets``, ``ood``, ``exemplars``, ...)."""
        path = self.path / TABLES_DIR / f"{name}.csv"
        if not path.is_file():
            known = sorted(p.stem for p in (self.path / TABLES_DIR).glob("*.csv"))
            raise NormprobeError(f"{path}: no such table (tables: {', '.join(known) or 'none'})")
        return pd.read_csv(path)


def _is_ours(name: object) -> bool:
    """A path (relative to the folder) that normprobe writes: never a user's file, never outside the folder."""
    return isinstance(name, str) and _OUR_FILES.fullmatch(name) is not None


def recorded_files(path: Path) -> list[str] | None:
    """The files normprobe wrote into results folder ``path``, from its run.json; None when ``path``
    is not a results folder (no run.json, or one that does not validate)."""
    try:
        run = read_run(json.loads((path / RUN_FILE).read_text()), str(path / RUN_FILE))
    except (OSError, ValueError, NormprobeError):
        return None
    if run.files is None:  # written before run.json recorded its files: the names normprobe has always used
        return [f for f in LEGACY_FILES if (path / f).is_file()]
    return list(run.files) if all(_is_ours(f) for f in run.files) else None


def is_results_folder(path: Path) -> bool:
    return path.is_dir() and recorded_files(path) is not None


def _is_staging(folder: Path) -> bool:
    """A folder holding nothing but what :func:`write_results` stages (so removing it loses no user file)."""
    try:
        entries = [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
    except OSError:
        return False
    return all(_is_ours(e) or e == TABLES_DIR for e in entries)


def check_output_dir(out: str | Path, force: bool = False) -> Path:
    """Refuse an output path that would clobber something that is not a previous results folder.

    Allowed: a path that does not exist, an empty folder, or (with ``force``) a previous results
    folder. The folder must be writable. Called before any work, so a mistake costs nothing; it
    also removes results staging folders that a killed run left in the parent.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NormprobeError(f"output path {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        recorded = recorded_files(out)
        if recorded is None:
            raise NormprobeError(
                f"output folder {out} is not empty and not a normprobe results folder "
                f"(no valid {RUN_FILE}); choose another --out"
            )
        if not force:
            raise NormprobeError(
                f"output folder {out} holds a previous results folder; pass --force to replace the files "
                "normprobe wrote there (other files are kept)"
            )
        _refuse_foreign(out, recorded, LEGACY_FILES)
    if not out.parent.is_dir():
        raise NormprobeError(f"the folder {out.parent} (parent of --out) does not exist")
    check_writable(out.parent, f"--out {out}")  # where the results are staged
    if out.is_dir():
        check_writable(out, f"--out {out}")
    remove_stale(out.parent, None, lambda entry: entry.is_dir() and _is_staging(entry))
    return out


def write_results(
    out: str | Path,
    run: RunRecord,
    samples: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    report_html: str | None = None,
    *,
    force: bool = False,
    report_files: Mapping[str, str] | None = None,
) -> Path:
    """Write the whole folder into a temporary sibling, validate it, then move it into place.

    ``report_files`` are text files the report loads from beside it (name -> content, e.g.
    ``plotly.min.js``), written and recorded with it. A new folder appears whole or not at all. A previous results folder (``force``) has its
    recorded files replaced one by one, run.json last, and its other recorded files removed; files
    it did not record are kept. A write that fails (a full disk) is a :class:`NormprobeError` and
    leaves the previous folder as it was.
    """
    out = check_output_dir(out, force)
    run.validate(str(out / RUN_FILE))
    _validate_samples(samples, run, str(out / SAMPLES_FILE))
    for name in [*(f"{TABLES_DIR}/{t}.csv" for t in tables), *(report_files or {})]:
        if not _is_ours(name):
            raise ValueError(f"output name {name!r} is not one normprobe writes")
    files = [RUN_FILE, SAMPLES_FILE, *(f"{TABLES_DIR}/{name}.csv" for name in tables)]
    if report_html is not None:
        files += [REPORT_FILE, *(report_files or {})]
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(out.name), dir=out.parent))
    try:
        # mkdtemp makes the folder private (0700); results are for sharing: the mode mkdir would give
        staging.chmod(0o777 & ~_umask())
        record = to_json(replace(run, files=tuple(files)))
        (staging / RUN_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        samples.to_parquet(staging / SAMPLES_FILE, index=False, row_group_size=ROW_GROUP_ROWS)
        (staging / TABLES_DIR).mkdir()
        for name, table in tables.items():
            spreadsheet_safe(table).to_csv(staging / TABLES_DIR / f"{name}.csv", index=False)
        if report_html is not None:
            (staging / REPORT_FILE).write_text(report_html, encoding="utf-8")
            for name, content in (report_files or {}).items():
                (staging / name).write_text(content, encoding="utf-8")
        if out.is_dir() and any(out.iterdir()):
            _replace_recorded(staging, out, files)
        else:
            os.replace(staging, out)  # onto a missing or empty folder: atomic
    except OSError as err:
        raise NormprobeError(f"cannot write the results folder {out}: {err.strerror or err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _refuse_foreign(out: Path, recorded: list[str], names: Iterable[str]) -> None:
    """Refuse to write any of ``names`` into ``out`` where a file exists that normprobe did not record
    (e.g. the user's own ``report.html`` after a ``--no-report`` run)."""
    foreign = [f for f in names if f not in recorded and ((out / f).exists() or (out / f).is_symlink())]
    if foreign:
        raise NormprobeError(
            f"{out / foreign[0]} exists but was not written by normprobe, and a run writes that name; "
            "move it, then run again"
        )


def _replace_recorded(staging: Path, out: Path, files: list[str]) -> None:
    """Move the staged ``files`` into the previous results folder ``out``, then remove the files its
    run.json recorded that this run did not write. run.json moves last, so until the end the folder
    describes the previous run; nothing it did not record is touched."""
    previous = recorded_files(out)
    if previous is None:  # checked before the analysis; changed since
        raise NormprobeError(
            f"output folder {out} is no longer a normprobe results folder; nothing was replaced"
        )
    if (out / TABLES_DIR).is_symlink():
        raise NormprobeError(f"{out / TABLES_DIR} is a link; normprobe writes only inside {out}")
    _refuse_foreign(out, previous, files)
    (out / TABLES_DIR).mkdir(exist_ok=True)
    for name in [f for f in files if f != RUN_FILE] + [RUN_FILE]:
        os.replace(staging / name, out / name)
    for name in previous:
        if name not in files:
            (out / name).unlink(missing_ok=True)


def read_results(path: str | Path) -> Results:
    """Read and validate a results folder; a missing or malformed one is a :class:`NormprobeError`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise NormprobeError(f"{path}: no such results folder")
    run_path = path / RUN_FILE
    if not run_path.is_file():
        raise NormprobeError(f"{path} is not a normprobe results folder: {RUN_FILE} is missing")
    try:
        raw = json.loads(run_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NormprobeError(f"{run_path}: not valid JSON ({err})") from err
    run = read_run(raw, str(run_path))
    samples_path = path / SAMPLES_FILE
    if not samples_path.is_file():
        raise NormprobeError(f"{path} is not a complete results folder: {SAMPLES_FILE} is missing")
    try:
        samples = pd.read_parquet(samples_path)
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean "unreadable"
        raise NormprobeError(
            f"{samples_path}: not a readable Parquet file ({type(err).__name__}: {err})"
        ) from err
    _validate_samples(samples, run, str(samples_path))
    return Results(run, samples, path)


def _validate_samples(samples: pd.DataFrame, run: RunRecord, where: str) -> None:
    scorers = [c.removeprefix("score_") for c in samples.columns if c.startswith("score_")]
    missing = [c for c in sample_columns(run.heads, scorers) if c not in samples.columns]
    if missing:
        raise NormprobeError(f"{where}: missing column(s) {', '.join(missing)}")
    if samples.empty:
        raise NormprobeError(f"{where}: no samples")
    roles = set(samples["role"].unique())
    if not roles <= set(ROLES):
        raise NormprobeError(f"{where}: unknown role(s) {', '.join(sorted(map(str, roles - set(ROLES))))}")
    for head in run.heads:
        if not np.isfinite(samples[f"norm_{head}"].to_numpy(np.float64)).all():
            raise NormprobeError(f"{where}: column norm_{head} has missing or non-finite values")
