"""Typed records of what a run read and wrote: run.json of a results folder, and the provenance
(:class:`CheckpointInfo`, :class:`DatasetInfo`) that ``analyze``, ``rank`` and ``embed`` share.

One set of dataclasses is written, validated and read: :func:`to_json` turns a record into strict
JSON values, :func:`from_json` builds it back from a parsed file and checks every field against
its annotation, so the results folder, the report, the CLI summary and the explorer all read the
same types instead of agreeing on string keys by hand.

run.json versions: ``format`` is :data:`RUN_FORMAT`. A run.json without ``format`` was written by
normprobe 0.1 (``normprobe.run/1``); it holds a subset of today's fields and reads with the missing
ones at their defaults, so results folders from before still open.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from normprobe.errors import NormprobeError

RUN_FORMAT = "normprobe.run/2"
LEGACY_RUN_FORMAT = "normprobe.run/1"
"""What a run.json without a ``format`` field is."""
RUN_FORMATS = (LEGACY_RUN_FORMAT, RUN_FORMAT)
ROLES = ("id-train", "id-test", "ood")


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint an encoder was loaded from: where, which bytes, read how."""

    path: str
    sha256: str
    adapter: str
    method: str
    heads: tuple[str, ...]
    preprocess: dict[str, Any]
    """The preprocessing the encoder was trained with (``input_size``, ``mean``, ``std``, ``description``)."""

    @classmethod
    def of(cls, loaded: Any) -> CheckpointInfo:
        """The provenance of a :class:`normprobe.checkpoints.LoadedEncoder`."""
        return cls(
            path=str(loaded.path),
            sha256=loaded.sha256,
            adapter=loaded.adapter,
            method=loaded.method,
            heads=tuple(loaded.heads),
            preprocess={**loaded.preprocess.to_dict(), "description": loaded.preprocess.describe()},
        )


@dataclass(frozen=True)
class DatasetInfo:
    """One set of samples a run read: its name and split, size, content fingerprint and origin."""

    name: str
    split: str
    n: int
    fingerprint: str
    source: str
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, samples: Any) -> DatasetInfo:
        """The provenance of an :class:`~normprobe.data.ImageSet` or an embedding set."""
        return cls(
            name=samples.name,
            split=samples.split,
            n=len(samples),
            fingerprint=samples.fingerprint,
            source=samples.source,
            notes=tuple(samples.notes),
        )


@dataclass(frozen=True)
class AnalysedDataset(DatasetInfo):
    """A set in an analysis: its provenance, its role and how the run got its embeddings."""

    role: str = "ood"
    title: str = ""
    """The dataset's display name (its manifest's ``title``); empty in folders from normprobe 0.1."""
    spec: str = ""
    """What named the set on the command line (``cifar100``, a folder, a file)."""
    data_root: str = ""
    image_size: tuple[int, int] | None = None
    images: bool = True
    """Whether the explorer can open the images again from ``spec`` (folders from before it was
    recorded were all analysed from images)."""
    embeddings_from_cache: bool = False
    ood_group: str | None = None
    """``near`` | ``far`` for OOD sets."""

    @property
    def key(self) -> str:
        return f"{self.name}/{self.split}"

    @property
    def label(self) -> str:
        """How the report names the set: ``CIFAR-100 (test)``."""
        return f"{self.title or self.name} ({self.split})"


@dataclass(frozen=True)
class EmbeddingInput:
    """An embeddings file an analysis without a checkpoint read (one per set)."""

    role: str
    path: str | None
    sha256: str | None
    shapes: dict[str, list[int]]
    spec: str = ""
    format: str = ""
    layout: str = ""
    n: int = 0
    labelled: int = 0
    fingerprint: str = ""
    embedded_with: dict[str, Any] | None = None
    """The checkpoint a `normprobe embed` file was made with (its config's ``checkpoint``)."""
    dataset: str | None = None


@dataclass(frozen=True)
class RecordedSettings:
    """The settings that shaped the results, as run.json records them (``device`` as resolved)."""

    k: int
    temperature: float
    buckets: int
    bucket_scaling: str
    min_bucket_count: int
    scorers: tuple[str, ...]
    seed: int
    precision: str | None
    batch_size: int | None
    device: str
    ood_k: int | None = None
    human_min_bucket_count: int | None = None
    max_train: int | None = None
    max_per_split: int | None = None
    human: str | None = None
    exemplars_per_class: int | None = None
    plotly: str | None = None
    knn_backend: str = "torch"
    near: tuple[str, ...] = ()
    far: tuple[str, ...] = ()
    knn: str = ""
    cache: str = ""


@dataclass(frozen=True)
class Summary:
    """The headline numbers. Keys of the mappings are data names: ``dataset/split``, scorer and head names."""

    norms: dict[str, Any]
    """``dataset/split`` -> ``{role, n, heads: {head: {mean, median, mean_scaled, median_scaled}}}``."""
    knn_accuracy: dict[str, float | None]
    """``id-test`` and ``id-train-loo``."""
    spearman: dict[str, Any]
    ood: dict[str, Any]
    """``dataset/split`` of each OOD set -> scorer -> metric name -> value (``auroc_ci`` a pair)."""
    ood_groups: dict[str, Any] = field(default_factory=dict)
    ood_verdicts: dict[str, Any] = field(default_factory=dict)
    ood_convention: str = ""
    human: dict[str, Any] | None = None


@dataclass(frozen=True)
class Timings:
    """Seconds per stage, and which stages the cache answered (None: the stage did not run)."""

    total_s: float
    embeddings_from_cache: dict[str, bool]
    load_data_s: float | None = None
    load_checkpoint_s: float | None = None
    embed_s: dict[str, float] = field(default_factory=dict)
    knn_s: float | None = None
    knn_from_cache: bool | None = None
    scores_s: float | None = None
    scores_from_cache: bool | None = None
    recall_s: float | None = None
    analyses_s: float | None = None
    report_s: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """run.json: provenance, every setting, the summary and the timings of one `normprobe analyze`."""

    normprobe_version: str
    created_utc: str
    command: tuple[str, ...]
    checkpoint: CheckpointInfo | None
    """None for an analysis of embedding files (then ``inputs`` says what was read)."""
    id_dataset: str | None
    datasets: tuple[AnalysedDataset, ...]
    heads: tuple[str, ...]
    primary_head: str
    settings: RecordedSettings
    summary: Summary
    timings: Timings
    format: str = LEGACY_RUN_FORMAT
    inputs: tuple[EmbeddingInput, ...] = ()
    notes: tuple[str, ...] = ()
    knn_search: dict[str, Any] | None = None
    """An approximate search's parameters and measured recall (absent for exact search)."""
    files: tuple[str, ...] | None = None
    """The files normprobe wrote into the folder (None in folders from before it was recorded)."""

    def dataset(self, key: str) -> AnalysedDataset:
        """The set ``dataset/split``."""
        for entry in self.datasets:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def role(self, role: str) -> AnalysedDataset:
        """The first set with ``role`` (``id-train``, ``id-test``)."""
        return next(d for d in self.datasets if d.role == role)

    @property
    def set_labels(self) -> dict[str, str]:
        """``dataset/split`` -> the report's name for it."""
        return {d.key: d.label for d in self.datasets}

    def validate(self, where: str) -> None:
        """What the types cannot say: the roles, the primary head, inputs for a checkpoint-less run."""
        if self.format not in RUN_FORMATS:
            raise NormprobeError(
                f"{where}: format {self.format!r} is newer than this normprobe reads ({', '.join(RUN_FORMATS)}); "
                "upgrade normprobe"
            )
        if not self.datasets:
            raise NormprobeError(f"{where}: 'datasets' must be a non-empty list")
        for entry in self.datasets:
            if entry.role not in ROLES:
                raise NormprobeError(f"{where}: dataset role {entry.role!r} is not one of {', '.join(ROLES)}")
        if self.primary_head not in self.heads:
            raise NormprobeError(
                f"{where}: 'primary_head' {self.primary_head!r} is not among the heads {list(self.heads)}"
            )
        if self.checkpoint is None and not self.inputs:
            raise NormprobeError(f"{where}: 'checkpoint' is null, so 'inputs' must be a non-empty list")


# --------------------------------------------------------------------------- JSON


def to_json(value: Any) -> Any:
    """``value`` (records, numpy values, paths, mappings, sequences) as strict JSON values: NaN and Inf become None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_json(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


_R = TypeVar("_R")


def from_json(cls: type[_R], raw: Any, where: str, path: str = "") -> _R:
    """Build the record ``cls`` from parsed JSON, checking each field against its annotation.

    A missing field without a default is ``'settings' lacks FIELD`` (``'run'`` at the top, ``a
    'datasets' entry`` in a list); a value of the wrong kind names its path (``'settings.k'``);
    unknown keys (written by a newer normprobe) are ignored. Raises :class:`NormprobeError`.
    """
    if not isinstance(raw, dict):
        what = "expected a JSON object" if not path else f"{_described(path)} must be an object"
        raise NormprobeError(f"{where}: {what}, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    missing = [
        f.name
        for f in fields
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise NormprobeError(f"{where}: {_described(path)} lacks {', '.join(missing)}")
    values = {
        f.name: _convert(hints[f.name], raw[f.name], where, f"{path}.{f.name}" if path else f.name)
        for f in fields
        if f.name in raw
    }
    return cls(**values)


def _convert(hint: Any, value: Any, where: str, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value, where, path)
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise NormprobeError(f"{where}: '{path}' must be a list, got {type(value).__name__}")
        if origin is list or args[-1] is Ellipsis:
            items = [_convert(args[0], v, where, f"{path}[]") for v in value]
            return tuple(items) if origin is tuple else items
        if len(value) != len(args):
            raise NormprobeError(f"{where}: '{path}' must have {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, where, path) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise NormprobeError(f"{where}: '{path}' must be an object, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, where, f"{path}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise NormprobeError(f"{where}: '{path}' must be {hint.__name__}, got {type(value).__name__}")


def _described(path: str) -> str:
    """How a message names the object at ``path``: ``'run'``, ``'settings'``, ``an 'inputs' entry``."""
    if not path:
        return "'run'"
    if path.endswith("[]"):
        name = path[:-2]
        return f"{'an' if name[0] in 'aeiou' else 'a'} '{name}' entry"
    return f"'{path}'"


def read_run(raw: Any, where: str) -> RunRecord:
    """A parsed run.json as a validated :class:`RunRecord` (``format`` absent = normprobe 0.1)."""
    record = from_json(RunRecord, raw, where)
    record.validate(where)
    return record
