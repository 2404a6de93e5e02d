"""Embeddings as analysis input: the files `normprobe embed` writes, plain ``.npz`` files and arrays.

    from normprobe.embedding_files import read_embeddings
    train = read_embeddings("train.npz")          # EmbeddingSet: heads, labels, index, ids, provenance

Accepted layouts, all read the same way:

* ``.npz`` from `normprobe embed`: one float ``N×D`` array per head (``feats``, ``z``, ``p``) plus
  ``index``, ``labels``, ``ids`` and a JSON ``config`` string;
* a plain ``.npz``: an ``embeddings`` array (``N×D`` float; it becomes the head ``embeddings``) and,
  optionally, ``labels`` (``N`` integers, -1 = unknown), ``index`` (original positions, used to line
  human labels up), ``ids`` and ``classes`` (label names);
* ``.parquet`` from `normprobe embed`: one row per sample, a list<float> column per head (any other
  list<float> column counts as a head too), optional ``label``, ``index`` and ``id`` columns; the
  config in the schema metadata under ``normprobe``;
* in Python, arrays: :func:`from_arrays`.

Files are untrusted input: ``.npz`` files are opened with ``allow_pickle=False``, every array is
checked for kind, shape and dtype, NaN and Inf are refused, and each problem is one
:class:`NormprobeError` naming the file. Any other array in an ``.npz`` is an error too (an image
``.npz`` given where embeddings are expected is then caught with a clear message).

Light to import: numpy only (pyarrow when a ``.parquet`` file is read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normprobe.atomic import atomic_write, check_new_file
from normprobe.data.hashing import file_sha256, fingerprint
from normprobe.errors import NormprobeError
from normprobe.record import CheckpointInfo, DatasetInfo, to_json

if TYPE_CHECKING:
    from normprobe.checkpoints import LoadedEncoder
    from normprobe.data import ImageSet

SUFFIXES = (".npz", ".parquet")
PLAIN_HEAD = "embeddings"
"""The array (or column) of a plain file, and the name of its one head."""
NPZ_METADATA = ("labels", "index", "ids", "classes", "config")
PARQUET_METADATA = ("dataset", "split", "index", "id", "label")
DEFAULT_PRIMARY = ("z", "feats", PLAIN_HEAD)
"""The primary head when none is chosen: the first of these the inputs have."""


@dataclass(frozen=True)
class EmbeddingSet:
    """The embeddings of one set of samples, in order, with what is known about the samples.

    ``heads`` are float32 ``N×D`` arrays (one per head), ``labels`` int64 (-1 unknown), ``index``
    each sample's original position in its dataset, ``ids`` stable sample ids. ``record`` is the
    provenance written to run.json (path, format, sha256, shape of every head, and the
    checkpoint and dataset a `normprobe embed` file names); ``fingerprint`` identifies the content.
    """

    name: str
    split: str
    heads: Mapping[str, np.ndarray]
    labels: np.ndarray
    index: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]
    source: str
    fingerprint: str
    record: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    """The `normprobe embed` config of the file ({} for a plain file or arrays)."""
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dataset(self) -> str | None:
        """The dataset (manifest) name a `normprobe embed` file records, else None."""
        name = self.config.get("dataset", {}).get("name")
        return name if isinstance(name, str) else None

    @property
    def checkpoint_sha256(self) -> str | None:
        sha = self.config.get("checkpoint", {}).get("sha256")
        return sha if isinstance(sha, str) else None

    def norms(self, head: str) -> np.ndarray:
        return np.linalg.norm(self.heads[head], axis=1)

    def first(self, n: int) -> EmbeddingSet:
        """The first ``n`` samples (all when there are no more)."""
        if n >= len(self):
            return self
        return replace(
            self,
            heads={h: v[:n] for h, v in self.heads.items()},
            labels=self.labels[:n],
            index=self.index[:n],
            ids=self.ids[:n],
            fingerprint=fingerprint(self.fingerprint, f"first {n}"),
            notes=(*self.notes, f"subset first {n}: {n} of {len(self)} samples"),
        )


# --------------------------------------------------------------------------- validation


def _where(source: str, key: str) -> str:
    return f"{source}: {key!r}"


def _head(source: str, key: str, values: np.ndarray) -> np.ndarray:
    """A float ``N×D`` array as float32, finite."""
    if values.dtype.kind != "f" or values.ndim != 2 or 0 in values.shape:
        raise NormprobeError(
            f"{_where(source, key)} must be a non-empty N×D float array, got {values.dtype} {values.shape}"
        )
    with np.errstate(over="ignore"):  # values beyond float32's range become Inf, refused just below
        # a copy: the caller's arrays are never shared with the analysis
        values = np.array(values, dtype=np.float32, order="C")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise NormprobeError(
            f"{_where(source, key)}: {int(bad.sum())} of {len(values)} embeddings are NaN or Inf (first: row {int(np.argmax(bad))})"
        )
    return values


def _integers(source: str, key: str, values: np.ndarray, n: int, minimum: int) -> np.ndarray:
    if values.dtype.kind not in "iu" or values.shape != (n,):
        raise NormprobeError(
            f"{_where(source, key)} must be {n} integers (one per embedding), got {values.dtype} {values.shape}"
        )
    values = values.astype(np.int64)
    if n and int(values.min()) < minimum:
        raise NormprobeError(f"{_where(source, key)} holds {int(values.min())}; values must be >= {minimum}")
    return values


def _strings(source: str, key: str, values: np.ndarray, n: int | None) -> np.ndarray:
    if values.dtype.kind not in "US" or values.ndim != 1 or (n is not None and len(values) != n):
        expected = f"{n} strings" if n is not None else "a list of strings"
        raise NormprobeError(f"{_where(source, key)} must be {expected}, got {values.dtype} {values.shape}")
    return values.astype(str)


def _config(source: str, text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NormprobeError(f"{source}: its normprobe config is not valid JSON ({err})") from err
    if not isinstance(config, dict) or not all(
        isinstance(config.get(k, {}), dict) for k in ("dataset", "checkpoint")
    ):
        raise NormprobeError(f"{source}: its normprobe config is not a JSON object of the expected shape")
    return config


def _build(
    source: str,
    heads: dict[str, np.ndarray],
    *,
    labels: np.ndarray | None,
    index: np.ndarray | None,
    ids: np.ndarray | None,
    classes: np.ndarray | None,
    config: dict[str, Any],
    default_name: str,
    record: dict[str, Any],
) -> EmbeddingSet:
    """Validate the parts of one set and put them together (every reader ends here)."""
    if not heads:
        raise NormprobeError(f"{source}: no embeddings (an N×D float array such as {PLAIN_HEAD!r})")
    heads = {name: _head(source, name, values) for name, values in heads.items()}
    sizes = {name: len(values) for name, values in heads.items()}
    n = next(iter(sizes.values()))
    if len(set(sizes.values())) > 1:
        raise NormprobeError(
            f"{source}: the heads have different numbers of rows ({', '.join(f'{h} {m}' for h, m in sizes.items())})"
        )
    labels = np.full(n, -1, np.int64) if labels is None else _integers(source, "labels", labels, n, -1)
    index = np.arange(n, dtype=np.int64) if index is None else _integers(source, "index", index, n, 0)
    dataset = config.get("dataset", {})
    name = dataset.get("name", default_name)
    split = dataset.get("split", "all")
    if not isinstance(name, str) or not isinstance(split, str) or not name or not split:
        raise NormprobeError(f"{source}: the dataset name and split in its config must be strings")
    ids = (
        np.array([f"{name}/{split}/{i}" for i in index.tolist()], dtype=object)
        if ids is None
        else _strings(source, "ids", ids, n)
    )
    recorded_classes = dataset.get("classes")
    if classes is not None:
        names = tuple(_strings(source, "classes", classes, None).tolist())
    elif isinstance(recorded_classes, list) and all(isinstance(c, str) for c in recorded_classes):
        names = tuple(recorded_classes)
    else:
        names = ()
    content = fingerprint("embedding-set/1", *heads.values(), labels, index)
    record = {
        **record,
        "n": n,
        "shapes": {h: list(v.shape) for h, v in heads.items()},
        "labelled": int((labels >= 0).sum()),
        "fingerprint": content,
        "embedded_with": config.get("checkpoint") or None,
        "dataset": dataset.get("spec") or None,
    }
    return EmbeddingSet(name, split, heads, labels, index, ids, names, source, content, record, config)


# --------------------------------------------------------------------------- readers


def _file_record(path: Path, file_format: str, config: dict[str, Any]) -> dict[str, Any]:
    """The provenance of an embeddings file that its reader knows (:func:`_build` adds the rest)."""
    return {
        "path": str(path),
        "format": file_format,
        "layout": "normprobe embed" if config else "plain",
        "sha256": file_sha256(path),
    }


def _npz(path: Path) -> EmbeddingSet:
    source = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile, ValueError, OSError, EOFError: all mean "not a readable .npz"
        raise NormprobeError(f"{source}: not a readable .npz file ({type(err).__name__}: {err})") from err
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except Exception as err:  # object arrays (pickle refused), a damaged member, ...
                raise NormprobeError(
                    f"{_where(source, key)} cannot be read ({type(err).__name__}: {err})"
                ) from err
    config = {}
    if "config" in arrays:
        text = arrays["config"]
        if text.dtype.kind not in "US" or text.shape != ():
            raise NormprobeError(f"{_where(source, 'config')} must be one JSON string")
        config = _config(source, str(text))
    heads = {k: v for k, v in arrays.items() if k not in NPZ_METADATA}
    if not config and PLAIN_HEAD not in heads:
        found = ", ".join(f"{k} {v.dtype} {v.shape}" for k, v in arrays.items()) or "nothing"
        raise NormprobeError(
            f"{source}: no {PLAIN_HEAD!r} array and no normprobe embed config (has: {found}); "
            "a plain file needs embeddings (N×D float) and, for ID sets, labels"
        )
    extra = [k for k in heads if k != PLAIN_HEAD] if not config else []
    if extra:
        raise NormprobeError(
            f"{_where(source, extra[0])} is neither {PLAIN_HEAD!r} nor one of {', '.join(NPZ_METADATA[:-1])}"
        )
    return _build(
        source,
        heads,
        labels=arrays.get("labels"),
        index=arrays.get("index"),
        ids=arrays.get("ids"),
        classes=arrays.get("classes"),
        config=config,
        default_name=path.stem,
        record=_file_record(path, "npz", config),
    )


def _list_column(source: str, name: str, column: Any) -> np.ndarray:
    """A list<float> Parquet column as an ``N×D`` array (every list of one length, no nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    if column.null_count:
        raise NormprobeError(f"{_where(source, name)}: {column.null_count} rows have no embedding (null)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise NormprobeError(
            f"{_where(source, name)}: embeddings of different lengths ({int(lengths.min())} to {int(lengths.max())})"
        )
    values = column.flatten()
    if not pa.types.is_floating(values.type) or values.null_count:
        raise NormprobeError(f"{_where(source, name)} must hold floats without nulls, got {values.type}")
    width = int(lengths[0]) if len(lengths) else 0
    return values.to_numpy(zero_copy_only=False).reshape(len(column), width)


def _plain_column(source: str, name: str, column: Any) -> np.ndarray:
    import pyarrow as pa

    if column.null_count:
        raise NormprobeError(f"{_where(source, name)} has {column.null_count} missing values")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=str)
    return column.to_numpy()


def _parquet(path: Path) -> EmbeddingSet:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean "unreadable"
        raise NormprobeError(f"{source}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    metadata = (table.schema.metadata or {}).get(b"normprobe")
    config = _config(source, metadata.decode("utf-8", "replace")) if metadata else {}
    heads = {}
    for name in table.column_names:
        kind = table.schema.field(name).type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            heads[name] = _list_column(source, name, table.column(name))
    if not heads:
        raise NormprobeError(
            f"{source}: no embedding column (a list<float> column per head; columns: {', '.join(table.column_names)})"
        )

    def optional(name: str) -> np.ndarray | None:
        return _plain_column(source, name, table.column(name)) if name in table.column_names else None

    return _build(
        source,
        heads,
        labels=optional("label"),
        index=optional("index"),
        ids=optional("id"),
        classes=None,
        config=config,
        default_name=path.stem,
        record=_file_record(path, "parquet", config),
    )


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """An embeddings file (``.npz`` or ``.parquet``, see the module docstring), validated."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise NormprobeError(
            f"{path}: not an embeddings file (expected {' or '.join(SUFFIXES)}, as `normprobe embed` writes)"
        )
    if not path.is_file():
        raise NormprobeError(f"{path}: no such file")
    return _npz(path) if path.suffix.lower() == ".npz" else _parquet(path)


def from_arrays(
    embeddings: np.ndarray | Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    name: str,
    index: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> EmbeddingSet:
    """An EmbeddingSet from arrays in memory, validated like a file: ``embeddings`` is ``N×D`` (the
    head ``embeddings``) or ``{head: N×D}``; ``labels`` N integers (-1 unknown) or None. ``config``
    is a `normprobe embed` config (what :func:`normprobe.embed` records), naming the dataset."""
    heads = dict(embeddings) if isinstance(embeddings, Mapping) else {PLAIN_HEAD: embeddings}
    return _build(
        f"arrays {name}",
        {h: np.asarray(v) for h, v in heads.items()},
        labels=None if labels is None else np.asarray(labels),
        index=None if index is None else np.asarray(index),
        ids=None if ids is None else np.asarray(ids).astype(str),
        classes=None if classes is None else np.asarray(list(classes), dtype=str),
        config=config or {},
        default_name=name,
        record={
            "path": None,
            "format": "arrays",
            "layout": "normprobe embed" if config else "arrays",
            "sha256": None,
        },
    )


def primary_head(heads: tuple[str, ...], chosen: str | None) -> str:
    """The primary head: ``chosen``, else the first of :data:`DEFAULT_PRIMARY` present, else the only head."""
    if chosen is not None:
        return chosen
    found = next((h for h in DEFAULT_PRIMARY if h in heads), None)
    if found is None and len(heads) > 1:
        raise NormprobeError(f"choose the primary head with --head (heads: {', '.join(heads)})")
    return found or heads[0]


# --------------------------------------------------------------------------- writing


def write_npz(
    path: Path,
    heads: dict[str, np.ndarray],
    index: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    config: dict[str, Any],
) -> None:
    arrays = {name: np.asarray(values, dtype=np.float32) for name, values in heads.items()}
    arrays.update(
        index=index.astype(np.int64),
        labels=labels.astype(np.int64),
        ids=ids.astype(str),
        config=np.array(json.dumps(config)),
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            # numpy's stubs let **arrays fill the allow_pickle flag; the names here are array keys.
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    atomic_write(path, write)


def write_parquet(
    path: Path,
    heads: dict[str, np.ndarray],
    index: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    config: dict[str, Any],
    *,
    row_group_rows: int | None = None,
) -> None:
    """One row per image, written in row groups of ``row_group_rows`` (default
    :data:`normprobe.results.ROW_GROUP_ROWS`): only one group's columns are built at a time, so
    memory-mapped embeddings (the cache's) are read group by group, never copied whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from normprobe.analyses.norms import embedding_norms
    from normprobe.results import ROW_GROUP_ROWS

    rows = row_group_rows or ROW_GROUP_ROWS
    n = len(index)
    dataset, split = config["dataset"]["name"], config["dataset"]["split"]

    def group(r0: int, r1: int) -> pa.Table:
        columns: dict[str, pa.Array] = {
            "dataset": pa.array([dataset] * (r1 - r0), pa.string()),
            "split": pa.array([split] * (r1 - r0), pa.string()),
            "index": pa.array(index[r0:r1].astype(np.int64)),
            "id": pa.array(ids[r0:r1].astype(str).tolist(), pa.string()),
            "label": pa.array(labels[r0:r1].astype(np.int64)),
        }
        for name, values in heads.items():
            block = np.ascontiguousarray(values[r0:r1], dtype=np.float32)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
            columns[f"{name}_norm"] = pa.array(embedding_norms(block, np.float32))
        return pa.table(columns)

    first = group(0, min(n, rows))
    schema = first.schema.with_metadata({b"normprobe": json.dumps(config).encode()})

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            writer.write_table(first, row_group_size=rows)
            for r0 in range(rows, n, rows):
                writer.write_table(group(r0, min(n, r0 + rows)), row_group_size=rows)

    atomic_write(path, write)


def check_output_file(out: str | Path, force: bool = False) -> Path:
    """The output file, checked before any work: a .npz or .parquet name, not an existing file unless
    ``force`` (its folder is created when it is written)."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in SUFFIXES:
        raise NormprobeError(
            f"--out {out}: unknown output format {out.suffix!r} (use {' or '.join(SUFFIXES)})"
        )
    if out.is_dir():
        raise NormprobeError(f"--out {out} is a folder; give a file name ending in {' or '.join(SUFFIXES)}")
    check_new_file(out, force=force, what="--out")
    return out


def embed_config(
    loaded: LoadedEncoder, imageset: ImageSet, spec: str, heads: list[str], precision: str, device: object
) -> dict[str, Any]:
    """What a file of embeddings records about how they were made (its ``config``)."""
    from normprobe import __version__  # at call time: this module loads while normprobe initialises

    return {
        "normprobe": __version__,
        "checkpoint": to_json(CheckpointInfo.of(loaded)),
        "dataset": {"spec": spec, **to_json(DatasetInfo.of(imageset)), "classes": list(imageset.classes)},
        "heads": heads,
        "precision": precision,
        "device": str(device),
    }


def write_embeddings(
    out: Path, heads: dict[str, np.ndarray], imageset: ImageSet, config: dict[str, Any]
) -> None:
    """Write ``heads`` of ``imageset`` to ``out`` as .npz or .parquet, by its suffix (atomically)."""
    writer = write_parquet if out.suffix.lower() == ".parquet" else write_npz
    try:
        writer(out, heads, imageset.index, imageset.labels, imageset.ids, config)
    except OSError as err:  # a full disk: one line, and (atomic write) no partial file
        raise NormprobeError(f"cannot write {out}: {err.strerror or err}") from err
