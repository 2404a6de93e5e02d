"""The sets of one analysis, by role: named, checked, loaded (and embedded), or read from embedding files.

Every input check that needs no data runs in :func:`check_datasets` before anything is loaded;
:func:`check_sets` then checks what was loaded. A set is known by its role (``id-train``,
``id-test``, ``ood``), never by its position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normprobe import data
from normprobe.analyses.ood import ood_group
from normprobe.analyses.settings import AnalysisSettings
from normprobe.cache import Cache
from normprobe.checkpoints import LoadedEncoder
from normprobe.data import ImageSet
from normprobe.data.imageset import Samples
from normprobe.embedding_files import SUFFIXES, EmbeddingSet, primary_head, read_embeddings
from normprobe.errors import NormprobeError
from normprobe.extraction import extract

ROLE_OPTIONS = {"id-train": "--id-train", "id-test": "--id-test", "ood": "--ood"}
ROLE_SPLITS = {"id-train": "train", "id-test": "test", "ood": "test"}
"""The split of a named dataset each role takes when the name gives none."""
GivenSets = Mapping[str, ImageSet | EmbeddingSet]
"""Sets handed over in Python instead of being named: by the ``id_train`` / ``id_test`` / ``ood``
value of the settings that stands for them."""
Log = Callable[[str], None]


@dataclass(frozen=True)
class AnalysedSet(Samples):
    """One set in the analysis (an ID split or an OOD set): its samples, with their embeddings."""

    role: str
    spec: str
    """What named the set: a dataset (``cifar100``), a folder or a file, or a Python object's name."""
    manifest: str | None
    """The dataset manifest the set comes from (its title and OOD group), None for anything else."""
    embeddings: dict[str, np.ndarray]
    from_cache: bool
    embed_seconds: float
    cache_keys: dict[str, str]
    """The cache key of each head's embeddings: their identity, also used to key results computed
    from them (kNN predictions, scores)."""
    notes: list[str] = field(default_factory=list)
    imageset: ImageSet | None = None
    """The images; None for embedding input."""
    reopenable: bool = False
    """Whether the images can be opened again from ``spec`` (by the explorer): not for embedding
    input nor for sets given as Python objects."""
    input_record: dict[str, Any] | None = None
    """For embedding input, the file's provenance (run.json ``inputs``)."""

    @property
    def key(self) -> str:
        return f"{self.name}/{self.split}"

    def __len__(self) -> int:
        return len(self.labels)


def _samples_of(item: ImageSet | EmbeddingSet) -> dict[str, Any]:
    """The :class:`Samples` fields of an image or embedding set, as keyword arguments."""
    return {f.name: getattr(item, f.name) for f in fields(Samples)}


def _plan(settings: AnalysisSettings) -> list[tuple[str, str | None]]:
    """(role, spec) of every set in order: ID-train, ID-test, each OOD set; spec None = the ID dataset's split."""
    return [("id-train", settings.id_train), ("id-test", settings.id_test)] + [
        ("ood", spec) for spec in settings.ood
    ]


def choose_heads(
    available: Sequence[str], settings: AnalysisSettings, owner: str
) -> tuple[str, tuple[str, ...]]:
    """(primary head, heads to analyse) among the ``available`` heads of the checkpoint or the inputs."""
    available = tuple(available)
    heads = tuple(dict.fromkeys(settings.heads or available))
    primary = primary_head(available, settings.head)
    for head in (*heads, primary):
        if head not in available:
            raise NormprobeError(f"{owner} no head {head!r} (heads: {', '.join(available)})")
    if primary not in heads:
        heads = (*heads, primary)
    return primary, heads


def _manifest_name(spec: str) -> str | None:
    """The dataset manifest an ``--ood`` value names, or None for a folder or file."""
    return None if Path(spec).expanduser().exists() else spec.partition(":")[0]


def _split_for(spec: str, role: str) -> str | None:
    """The split to take of a dataset named without one (None for folders and files)."""
    name = _manifest_name(spec)
    return data.default_split(name, ROLE_SPLITS[role]) if name in data.manifest_names("images") else None


def check_datasets(settings: AnalysisSettings, given: GivenSets, images: bool) -> None:
    """Name checks that need no data: a known ID dataset (with train and test splits unless the ID
    sets are given); sets that are folders, .npz files or known dataset splits with a checkpoint
    (``images``), embedding files without one; none equal to an ID split or given twice; and
    ``--near`` / ``--far`` values that name OOD sets."""
    id_dataset = settings.named_id_dataset
    seen: dict[tuple[str, str], str] = {}
    if id_dataset is not None:
        manifest = data.load_manifest(id_dataset)
        if manifest.kind != "images":
            raise NormprobeError(f"--id {id_dataset} is a label set, not an image dataset")
        if settings.id_train is None:
            if not {"train", "test"} <= set(manifest.splits):
                raise NormprobeError(
                    f"--id {id_dataset}: the in-distribution dataset needs train and test splits"
                )
            seen = {(id_dataset, "train"): "the ID-train set", (id_dataset, "test"): "the ID-test set"}
    if not images and settings.id_train is None:
        raise NormprobeError(
            "without a checkpoint, give the ID embeddings: --id-train FILE --id-test FILE (.npz or .parquet)"
        )
    for role, spec in _plan(settings):
        if spec is None or spec in given:
            continue
        option = f"{ROLE_OPTIONS[role]} {spec}"
        path = Path(spec).expanduser()
        if not images:
            if path.suffix.lower() not in SUFFIXES:
                raise NormprobeError(f"{option}: not an embeddings file (use {' or '.join(SUFFIXES)})")
            if not path.is_file():
                raise NormprobeError(f"{option}: no such file")
            continue
        if path.exists():
            continue
        name, _, split = spec.partition(":")
        if name not in data.manifest_names("images"):
            raise NormprobeError(
                f"{option}: neither a folder, an .npz file nor a known dataset ({', '.join(data.manifest_names('images'))})"
            )
        split = split or data.default_split(name, ROLE_SPLITS[role])
        if split not in data.load_manifest(name).splits:
            raise NormprobeError(
                f"{option}: {name} has no split {split!r} (splits: {', '.join(data.load_manifest(name).splits)})"
            )
        if (name, split) in seen:
            raise NormprobeError(f"{option} is {name} {split}, the same split as {seen[(name, split)]}")
        seen[(name, split)] = option
    known = {*settings.ood, *filter(None, map(_manifest_name, settings.ood))}
    for option, names in (("--near", settings.near), ("--far", settings.far)):
        for name in names:
            if name not in known:
                raise NormprobeError(
                    f"{option} {name}: not one of the OOD sets (--ood {', '.join(settings.ood)})"
                )


def ood_groups(sets: Sequence[AnalysedSet], settings: AnalysisSettings) -> dict[str, str]:
    """``dataset/split`` -> ``near`` | ``far`` of every OOD set: ``--near`` / ``--far``, else its manifest's."""
    groups = {}
    for s in sets:
        if s.role == "ood":
            default = data.load_manifest(s.manifest).raw.get("ood_group") if s.manifest else None
            groups[s.key] = ood_group((s.spec, s.name), default, settings.near, settings.far)
    return groups


def _given(given: GivenSets, spec: str, kind: type, role: str) -> Any:
    value = given[spec]
    if not isinstance(value, kind):
        wanted = "images (the checkpoint embeds them)" if kind is ImageSet else "embeddings (no checkpoint)"
        raise NormprobeError(
            f"{ROLE_OPTIONS[role]} {spec}: this analysis takes {wanted}, not {type(value).__name__}"
        )
    return value


def check_sets(sets: Sequence[tuple[ImageSet | EmbeddingSet, str, str]], what: str) -> None:
    """Every set has samples, the ID sets are labelled (the kNN analyses need labels), and no two
    sets share a name."""
    names: dict[tuple[str, str], str] = {}
    for item, role, spec in sets:
        if len(item) == 0:
            raise NormprobeError(f"{spec} ({role}) has no {what}")
        unlabelled = int((item.labels < 0).sum())
        if role != "ood" and unlabelled:
            raise NormprobeError(
                f"{spec} ({role}): {unlabelled} of {len(item)} samples have no label; the kNN analyses need "
                "a label for every ID sample"
            )
        key = (item.name, item.split)
        if key in names:
            raise NormprobeError(
                f"{spec} ({role}) and {names[key]} are both named {item.name}/{item.split}; give each set once, or rename one"
            )
        names[key] = f"{spec} ({role})"


def load_images(
    settings: AnalysisSettings, given: GivenSets, input_size: tuple[int, int]
) -> list[tuple[ImageSet, str, str, str | None]]:
    """(imageset, role, spec, manifest) for ID-train, ID-test and each OOD set, subsets applied."""
    id_dataset = settings.named_id_dataset
    sets = []
    for role, spec in _plan(settings):
        if spec is None:  # the named ID dataset's split
            assert id_dataset is not None, "_plan names no ID dataset split without an ID dataset"
            split = ROLE_SPLITS[role]
            imageset, spec, manifest = (
                data.load(id_dataset, split, settings.data_root),
                f"{id_dataset}:{split}",
                id_dataset,
            )
        elif spec in given:
            imageset, manifest = _given(given, spec, ImageSet, role), None
        else:
            imageset = data.load_any(
                spec, _split_for(spec, role), settings.data_root, image_size=input_size[0]
            )
            manifest = _manifest_name(spec)
        sets.append((imageset, role, spec, manifest))
    check_sets([(s, role, spec) for s, role, spec, _ in sets], "images")
    out = []
    for imageset, role, spec, manifest in sets:
        limit = settings.max_train if role == "id-train" else settings.max_per_split
        if limit is not None and limit < len(imageset):
            imageset = imageset.subset(np.arange(limit), f"first {limit}")
        out.append((imageset, role, spec, manifest))
    return out


def embed_sets(
    sets: list[tuple[ImageSet, str, str, str | None]],
    given: GivenSets,
    loaded: LoadedEncoder,
    heads: tuple[str, ...],
    settings: AnalysisSettings,
    *,
    device: torch.device,
    cache: Cache,
    log: Log,
    progress: bool,
) -> list[AnalysedSet]:
    """Each loaded set embedded through ``cache`` (``progress``: the extraction's progress bars)."""
    out = []
    for imageset, role, spec, manifest in sets:
        result = extract(
            loaded,
            imageset,
            heads,
            batch_size=settings.batch_size,
            device=device,
            precision=settings.precision,
            cache=cache,
            progress=progress,
        )
        log(
            f"embedded {imageset.name}/{imageset.split} ({role}, {len(imageset)} images) "
            f"{'from the cache' if result.from_cache else 'by the encoder'} in {result.seconds:.1f}s"
        )
        notes = list(imageset.notes)
        if tuple(imageset.image_size) != tuple(loaded.preprocess.input_size):
            h, w = imageset.image_size
            notes.append(
                f"images resized from {h}x{w} to {loaded.preprocess.input_size[0]}x{loaded.preprocess.input_size[1]} "
                "(bilinear, antialiased)"
            )
        out.append(
            AnalysedSet(
                role=role,
                spec=spec,
                **_samples_of(imageset),
                manifest=manifest,
                # np.array copies: cached embeddings are read-only memory maps, which torch will not wrap
                embeddings={h: np.array(result.heads[h], dtype=np.float32) for h in heads},
                from_cache=result.from_cache,
                embed_seconds=result.seconds,
                cache_keys=result.keys,
                notes=notes,
                imageset=imageset,
                reopenable=spec not in given,
            )
        )
    return out


def read_embedding_sets(
    settings: AnalysisSettings, given: GivenSets, log: Log
) -> tuple[list[AnalysedSet], str, tuple[str, ...]]:
    """The sets of an analysis without a checkpoint, from their embedding files (or given sets):
    validated, subsets applied; returns ``(sets, primary head, heads)``."""
    read = []
    for role, spec in _plan(settings):
        assert spec is not None  # check_datasets: without a checkpoint the ID sets are named
        tick = time.perf_counter()
        item = _given(given, spec, EmbeddingSet, role) if spec in given else read_embeddings(spec)
        read.append((item, role, spec, time.perf_counter() - tick))
    check_sets([(item, role, spec) for item, role, spec, _ in read], "samples")
    embedded_with = {item.checkpoint_sha256: spec for item, _, spec, _ in read if item.checkpoint_sha256}
    if len(embedded_with) > 1:
        (a, first), (b, second) = list(embedded_with.items())[:2]
        raise NormprobeError(
            f"{first} and {second} were embedded with different checkpoints (sha256 {a[:12]}… and {b[:12]}…); "
            "the sets of one analysis must come from one encoder"
        )
    id_dataset = settings.named_id_dataset
    images = data.manifest_names("images")
    for item, role, spec, _ in read:
        if role != "ood" and id_dataset and item.dataset in images and item.dataset != id_dataset:
            raise NormprobeError(
                f"{spec} holds {item.dataset} embeddings (its config), not --id {id_dataset}"
            )
    common = [h for h in read[0][0].heads if all(h in item.heads for item, *_ in read)]
    if not common:
        raise NormprobeError(
            "the inputs have no head in common ("
            + "; ".join(f"{spec}: {', '.join(item.heads)}" for item, _, spec, _ in read)
            + ")"
        )
    primary, heads = choose_heads(common, settings, "the inputs (all of them) have")
    train = read[0][0]
    for item, _, spec, _ in read:
        for head in heads:
            if item.heads[head].shape[1] != train.heads[head].shape[1]:
                raise NormprobeError(
                    f"{spec}: head {head} is {item.heads[head].shape[1]}-d, ID-train's is {train.heads[head].shape[1]}-d"
                )
    out = []
    for item, role, spec, seconds in read:
        limit = settings.max_train if role == "id-train" else settings.max_per_split
        part = item.first(limit) if limit is not None else item
        log(
            f"read {part.name}/{part.split} ({role}, {len(part)} embeddings) from {part.source} in {seconds:.1f}s"
        )
        dropped = [h for h in item.heads if h not in heads]
        notes = list(part.notes) + ([f"heads not analysed: {', '.join(dropped)}"] if dropped else [])
        out.append(
            AnalysedSet(
                role=role,
                spec=spec,
                **_samples_of(part),
                manifest=part.dataset if part.dataset in images else None,
                embeddings={h: part.heads[h] for h in heads},
                from_cache=False,
                embed_seconds=seconds,
                # the content itself (with the labels the kNN and Mahalanobis fits use) keys what is computed from it
                cache_keys={h: Cache.key("embedding-input/1", part.heads[h], part.labels) for h in heads},
                notes=notes,
                input_record={"role": role, "spec": spec, **item.record},
            )
        )
    return out, primary, heads
