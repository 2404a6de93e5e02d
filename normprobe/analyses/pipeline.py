"""`normprobe analyze` as a function: embed (or read embeddings), analyse, write the results folder.

    from normprobe.analyses.pipeline import AnalysisSettings, run_analysis
    results = run_analysis("simclr.pt", "results/", AnalysisSettings(ood=("cifar100", "mnist")))
    results.run["summary"]["ood"]["cifar100/test"]["norm"]["auroc"]

    # without a checkpoint: embeddings written by `normprobe embed`, or plain .npz files
    settings = AnalysisSettings(id_train="train.npz", id_test="test.npz", ood=("c100.parquet",))
    results = run_analysis(None, "results/", settings)

The CLI, the demo command, :func:`normprobe.analyze` and notebooks all call :func:`run_analysis`.
Steps: load the checkpoint and the datasets (ID train and test, every OOD set) and embed each
through the cache, or read each set's embeddings file; kNN classification on the primary head
(ID-test against ID-train, ID-train by leave-one-out); OOD scorers fitted on ID-train; then the
analyses (norm summaries, norm buckets vs kNN accuracy, OOD metrics, exemplars, human labels) and
the results folder (Contract 2). Embedding input has no images: the exemplars are listed by
index, and the report and the explorer say there are no images to show.

The kNN predictions and the per-set scores are cached too (same cache, keyed by the embeddings'
cache keys and the settings that shape them), because on a 50,000-image training set the
leave-one-out searches cost minutes while everything else costs seconds: a re-run, or a run
that only adds an OOD set, recomputes just what changed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from normprobe import __version__, data, distributed
from normprobe.analyses import human
from normprobe.analyses.accuracy import knn_predictions
from normprobe.analyses.buckets import SELF_VOTE_NOTE, bucket_curve
from normprobe.analyses.exemplars import describe_exemplars, norm_exemplars
from normprobe.analyses.norms import embedding_norms, norm_summary
from normprobe.analyses.ood import (
    METRIC_KEYS,
    evaluate_ood,
    fit_and_score,
    group_means,
    norm_correctness_spearman,
    ood_group,
    ood_verdicts,
)
from normprobe.analyses.settings import AnalysisSettings
from normprobe.cache import EmbeddingCache
from normprobe.checkpoints import LoadedEncoder, load_encoder
from normprobe.data import ImageSet, resolve_data_root
from normprobe.data.hashing import fingerprint
from normprobe.data.imageset import Samples
from normprobe.device import pick_device
from normprobe.embedding_files import SUFFIXES, EmbeddingSet, primary_head, read_embeddings
from normprobe.errors import NormprobeError
from normprobe.extraction import cache_key, extract
from normprobe.knn import CosineIndex, approximate_params, measure_recall
from normprobe.render.page import table_html
from normprobe.report import (
    PLOTLY_FILE,
    Section,
    analysis_report,
    human_figures,
    id_train_mean_norm,
    plotly_js,
)
from normprobe.results import Results, check_output_dir, jsonable, read_results, sample_columns, write_results
from normprobe.terminal import printable
from normprobe.zoo import resolve_checkpoint

ROLE_OPTIONS = {"id-train": "--id-train", "id-test": "--id-test", "ood": "--ood"}
ROLE_SPLITS = {"id-train": "train", "id-test": "test", "ood": "test"}
"""The split of a named dataset each role takes when the name gives none."""
GivenSets = Mapping[str, ImageSet | EmbeddingSet]
"""Sets handed over in Python instead of being named: by the ``id_train`` / ``id_test`` / ``ood``
value of the settings that stands for them."""


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


def _log(progress: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if progress:
            print(f"normprobe: {printable(message)}", file=sys.stderr, flush=True)

    return log


def _plan(settings: AnalysisSettings) -> list[tuple[str, str | None]]:
    """(role, spec) of every set in order: ID-train, ID-test, each OOD set; spec None = the ID dataset's split."""
    return [("id-train", settings.id_train), ("id-test", settings.id_test)] + [
        ("ood", spec) for spec in settings.ood
    ]


def _heads(available: Sequence[str], settings: AnalysisSettings, owner: str) -> tuple[str, tuple[str, ...]]:
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


def _title(s: AnalysedSet) -> str:
    """The dataset's display name: its manifest's ``title`` (CIFAR-100), else its own name (a folder's)."""
    return str(data.load_manifest(s.manifest).raw.get("title", s.manifest)) if s.manifest else s.name


def _ood_groups(sets: list[AnalysedSet], settings: AnalysisSettings) -> dict[str, str]:
    """``dataset/split`` -> ``near`` | ``far`` for every OOD set (see :data:`OOD_GROUPS`)."""
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


def _check_sets(sets: Sequence[tuple[ImageSet | EmbeddingSet, str, str]], what: str) -> None:
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


def _load_images(
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
    _check_sets([(s, role, spec) for s, role, spec, _ in sets], "images")
    out = []
    for imageset, role, spec, manifest in sets:
        limit = settings.max_train if role == "id-train" else settings.max_per_split
        if limit is not None and limit < len(imageset):
            imageset = imageset.subset(np.arange(limit), f"first {limit}")
        out.append((imageset, role, spec, manifest))
    return out


def _embed(
    sets: list[tuple[ImageSet, str, str, str | None]],
    given: GivenSets,
    loaded: LoadedEncoder,
    heads: tuple[str, ...],
    settings: AnalysisSettings,
    progress: bool,
) -> list[AnalysedSet]:
    cache = EmbeddingCache(settings.cache_dir) if settings.use_cache else None
    device = pick_device(settings.device)
    log = _log(progress)
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
        for head, values in result.heads.items():
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).any(axis=1).sum())
                raise NormprobeError(
                    f"{bad} embedding(s) of head {head!r} on {imageset.name}/{imageset.split} are NaN or Inf"
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
                cache_keys={h: cache_key(loaded, imageset, h, settings.precision) for h in heads},
                notes=notes,
                imageset=imageset,
                reopenable=spec not in given,
            )
        )
    return out


def _read_embeddings(
    settings: AnalysisSettings, given: GivenSets, progress: bool
) -> tuple[list[AnalysedSet], str, tuple[str, ...]]:
    """The sets of an analysis without a checkpoint, from their embedding files (or given sets):
    validated, subsets applied; returns ``(sets, primary head, heads)``."""
    log = _log(progress)
    read = []
    for role, spec in _plan(settings):
        assert spec is not None  # check_datasets: without a checkpoint the ID sets are named
        tick = time.perf_counter()
        item = _given(given, spec, EmbeddingSet, role) if spec in given else read_embeddings(spec)
        read.append((item, role, spec, time.perf_counter() - tick))
    _check_sets([(item, role, spec) for item, role, spec, _ in read], "samples")
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
    primary, heads = _heads(common, settings, "the inputs (all of them) have")
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
                cache_keys={h: fingerprint("embedding-input/1", part.heads[h], part.labels) for h in heads},
                notes=notes,
                input_record={"role": role, "spec": spec, **item.record},
            )
        )
    return out, primary, heads


def cached_array(
    cache: EmbeddingCache | None, key: str, compute: Callable[[], np.ndarray]
) -> tuple[np.ndarray, bool]:
    """``(array, from_cache)``: the cached array under ``key``, else ``compute()`` (then stored)."""
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return np.array(hit), True
    value = compute()
    if cache is not None:
        cache.put(key, value)
    return value, False


def _samples_frame(sets: list[AnalysedSet], heads: tuple[str, ...], primary: str) -> pd.DataFrame:
    frames = []
    for s in sets:
        frames.append(
            pd.DataFrame(
                {
                    "dataset": s.name,
                    "split": s.split,
                    "index": s.index.astype(np.int64),
                    "id": s.ids.astype(str),
                    "role": s.role,
                    "label": s.labels.astype(np.int64),
                    "label_name": [
                        s.classes[i] if 0 <= i < len(s.classes) else "" for i in s.labels.tolist()
                    ],
                    **{f"norm_{h}": embedding_norms(s.embeddings[h]) for h in heads},
                }
            )
        )
    samples = pd.concat(frames, ignore_index=True)
    train_mean = samples.loc[samples["role"] == "id-train", f"norm_{primary}"].mean()
    samples["norm_scaled"] = samples[f"norm_{primary}"] / train_mean
    return samples


def _knn_columns(samples: pd.DataFrame, train_pred: np.ndarray, test_pred: np.ndarray) -> None:
    pred = pd.array([pd.NA] * len(samples), dtype="Int64")
    for role, values in (("id-train", train_pred), ("id-test", test_pred)):
        pred[(samples["role"] == role).to_numpy()] = values
    samples["knn_pred"] = pred
    correct = pd.array(pred == pd.array(samples["label"].to_numpy(), dtype="Int64"), dtype="boolean")
    correct[(samples["role"] == "ood").to_numpy()] = pd.NA
    samples["knn_correct"] = correct


def _bucket_curves(samples: pd.DataFrame, primary: str, settings: AnalysisSettings) -> pd.DataFrame:
    frames = []
    for role, series in (
        ("id-test", "ID-test (kNN fit on ID-train)"),
        ("id-train", "ID-train (leave-one-out)"),
    ):
        rows = samples[samples["role"] == role]
        curve = bucket_curve(
            rows[f"norm_{primary}"].to_numpy(),
            rows["knn_correct"].astype(float).to_numpy(),
            n_buckets=settings.buckets,
            scaling=settings.bucket_scaling,
            min_count=settings.min_bucket_count,
        )
        curve.insert(0, "series", series)
        curve.insert(1, "role", role)
        curve.insert(2, "head", primary)
        frames.append(curve)
    return pd.concat(frames, ignore_index=True)


NO_ID_DATASET_NOTE = (
    "human labels skipped: the in-distribution dataset is not named; name it (--id NAME, id_dataset= in "
    "Python) when the ID sets hold that dataset's samples with their original positions (index)"
)


def _human(
    samples: pd.DataFrame, sets: list[AnalysedSet], primary: str, settings: AnalysisSettings
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Add the ``human_*`` columns; return the human curves, correlations and notes (empty when no label set applies)."""
    id_dataset = settings.named_id_dataset
    if id_dataset is None:
        notes = [] if settings.human == "none" else [NO_ID_DATASET_NOTE]
        return pd.DataFrame(), pd.DataFrame(), notes
    label_sets, notes = human.select_label_sets(id_dataset, settings.human, settings.data_root)
    if not label_sets:
        return pd.DataFrame(), pd.DataFrame(), notes
    frames = [human.human_columns(label_sets, s.index, s.labels, s.role) for s in sets]
    # nullable integers: a role without a label set gets missing values, not float NaN
    frames = [
        f.astype({c: "Int64" for c in f.columns if pd.api.types.is_integer_dtype(f[c])}) for f in frames
    ]
    extra = pd.concat(frames, ignore_index=True)
    if extra.columns.empty:
        return pd.DataFrame(), pd.DataFrame(), notes
    for column in extra.columns:
        samples[column] = extra[column].array
    curves = human.human_curves(
        samples,
        f"norm_{primary}",
        n_buckets=settings.buckets,
        scaling=settings.bucket_scaling,
        min_count=settings.human_min_bucket_count,
    )
    correlations = human.human_correlations(samples, f"norm_{primary}", seed=settings.seed)
    return curves, correlations, notes


def run_analysis(
    checkpoint: str | Path | LoadedEncoder | None,
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    given: GivenSets | None = None,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> Results:
    """Run every analysis and write the results folder ``out`` (Contract 2).

    ``checkpoint`` is a file, a zoo model name or a loaded encoder that embeds the image sets; None means
    the sets are embeddings (``settings.id_train`` / ``id_test`` / ``ood`` name ``.npz`` or
    ``.parquet`` files, see :mod:`normprobe.embedding_files`). ``given`` holds sets made in Python
    (ImageSets with a checkpoint, EmbeddingSets without) under the names the settings use for them.
    ``force`` overwrites a previous results folder (never anything else). ``command`` is recorded
    in run.json (default: ``sys.argv``). Returns the folder as read back by
    :func:`normprobe.results.read_results`. Raises :class:`NormprobeError` for bad input, before
    any expensive work where possible.
    """
    if distributed.launched():
        # every rank would analyse everything and write the same folder; extraction is what shards
        raise NormprobeError(
            "normprobe analyze runs as one process, not under torchrun: embed the sets with "
            "`torchrun ... -m normprobe embed` (rank 0 fills the embedding cache), then run analyze once"
        )
    settings = settings or AnalysisSettings()
    settings.check()
    given = given or {}
    began = time.perf_counter()
    log = _log(progress)
    timings: dict[str, Any] = {}
    out_path = check_output_dir(out, force)
    check_datasets(settings, given, images=checkpoint is not None)
    # a bad --human fails before embedding
    human.check_label_sets(settings.named_id_dataset, settings.human, settings.data_root)

    tick = time.perf_counter()
    if checkpoint is None:
        sets, primary, heads = _read_embeddings(settings, given, progress)
        provenance = None
        timings["load_data_s"] = time.perf_counter() - tick  # reading the files: nothing is embedded
    else:
        loaded = (
            checkpoint
            if isinstance(checkpoint, LoadedEncoder)
            else load_encoder(
                resolve_checkpoint(checkpoint), arch=settings.arch, trust_code=settings.trust_code
            )
        )
        primary, heads = _heads(loaded.heads, settings, "checkpoint has")
        timings["load_checkpoint_s"] = time.perf_counter() - tick
        log(
            f"checkpoint {loaded.path} ({loaded.adapter}, {loaded.method}), heads {', '.join(heads)}; primary head {primary}"
        )
        tick = time.perf_counter()
        loaded_sets = _load_images(settings, given, loaded.preprocess.input_size)
        timings["load_data_s"] = time.perf_counter() - tick
        sets = _embed(loaded_sets, given, loaded, heads, settings, progress)
        timings["embed_s"] = {s.key: s.embed_seconds for s in sets}
        provenance = _checkpoint_record(loaded)
    timings["embeddings_from_cache"] = {s.key: s.from_cache for s in sets}

    tick = time.perf_counter()
    device = pick_device(settings.device)
    cache = EmbeddingCache(settings.cache_dir) if settings.use_cache else None
    samples = _samples_frame(sets, heads, primary)
    train, test = sets[0], sets[1]
    # One memoizing index of ID-train's primary head serves the classifier (k = --k) and the kNN
    # scorers (k = --ood-k): each set is searched once, at the larger k, which the classifier asks first.
    # It is built on the first search the cache does not answer (an HNSW graph of a large bank takes minutes).
    bank = train.embeddings[primary]
    built: list[CosineIndex] = []
    search_options: dict[str, Any] = {
        "nlist": settings.nlist,
        "nprobe": settings.nprobe,
        "hnsw_m": settings.hnsw_m,
        "ef_search": settings.ef_search,
        "seed": settings.seed,
    }

    def index() -> CosineIndex:
        if not built:
            built.append(
                CosineIndex(
                    torch.as_tensor(bank, device=device),
                    memoize=True,
                    backend=settings.knn_backend,  # type: ignore[arg-type]
                    **search_options,
                )
            )
        return built[0]

    # what an approximate search's results depend on enters the cache keys (exact searches: none)
    search = approximate_params(settings.knn_backend, len(bank), **search_options)
    search_tag = f"{settings.knn_backend}{sorted(search.items())}" if search else ""
    knn_key = fingerprint(
        "analyze-knn/1",
        train.cache_keys[primary],
        test.cache_keys[primary],
        str(settings.k),
        repr(settings.temperature),
        *([search_tag] if search_tag else []),
    )
    predictions, timings["knn_from_cache"] = cached_array(
        cache,
        knn_key,
        lambda: np.concatenate(
            knn_predictions(
                train.embeddings[primary],
                train.labels,
                test.embeddings[primary],
                k=settings.k,
                temperature=settings.temperature,
                device=device,
                index=index(),
            )
        ),
    )
    _knn_columns(samples, predictions[: len(train)], predictions[len(train) :])
    timings["knn_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    scores, timings["scores_from_cache"] = fit_and_score(
        train=train.embeddings,
        train_labels=train.labels,
        others=[s.embeddings for s in sets[1:]],
        heads=heads,
        primary=primary,
        scorers=settings.scorers,
        ood_k=settings.ood_k,
        device=device,
        cache=cache,
        keys=[s.cache_keys for s in sets],
        index=index,
        search_tag=search_tag,
    )
    for name, values in scores.items():
        samples[f"score_{name}"] = values
    timings["scores_s"] = time.perf_counter() - tick

    knn_search = None
    if search:
        tick = time.perf_counter()
        knn_search = _search_recall(
            index, bank, test.embeddings[primary], search, search_tag, settings, cache, train, test, primary
        )
        timings["recall_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    norm_table = norm_summary(samples, heads)
    curves = _bucket_curves(samples, primary, settings)
    spearman = norm_correctness_spearman(samples, primary, seed=settings.seed)
    groups = _ood_groups(sets, settings)
    ood_metrics, roc = evaluate_ood(samples, list(scores), primary, groups, seed=settings.seed)
    ood_groups = group_means(ood_metrics)
    exemplars = _exemplars(sets, samples, primary, settings)
    human_curves, human_corr, human_notes = _human(samples, sets, primary, settings)
    timings["analyses_s"] = time.perf_counter() - tick

    run = _run_record(
        command=list(sys.argv if command is None else command),
        checkpoint=provenance,
        heads=heads,
        primary=primary,
        settings=settings,
        sets=sets,
        samples=samples,
        norm_table=norm_table,
        spearman=spearman,
        ood_metrics=ood_metrics,
        ood_groups=ood_groups,
        group_of=groups,
        human_curves=human_curves,
        human_corr=human_corr,
        notes=human_notes,
    )
    if knn_search is not None:
        run["knn_search"] = knn_search
    samples = samples[
        sample_columns(heads, list(scores)) + [c for c in samples.columns if c.startswith(human.PREFIX)]
    ]
    tables = {
        "norms": norm_table,
        "buckets": curves,
        "ood": ood_metrics,
        "ood_groups": ood_groups,
        "spearman": spearman,
        "exemplars": exemplars,
    }
    if not human_curves.empty:
        tables["human_curves"] = human_curves
        tables["human_correlations"] = human_corr

    report_html = None
    report_files = {}
    if settings.report:
        tick = time.perf_counter()
        extra = (
            [_human_section(human_curves, human_corr, settings, id_train_mean_norm(samples, primary))]
            if not human_curves.empty
            else []
        )
        images = {s.key: s.imageset for s in sets if s.imageset is not None}
        report_html = analysis_report(run, samples, tables, roc, images, extra, plotly=settings.plotly)
        if settings.plotly == "directory":
            report_files[PLOTLY_FILE] = plotly_js()
        timings["report_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - began
    run["timings"] = jsonable(timings)
    write_results(
        out_path, jsonable(run), samples, tables, report_html, force=force, report_files=report_files
    )
    log(f"wrote {out_path}")
    return read_results(out_path)


def _search_recall(
    index: Callable[[], CosineIndex],
    bank: np.ndarray,
    test: np.ndarray,
    params: dict[str, int | str],
    search_tag: str,
    settings: AnalysisSettings,
    cache: EmbeddingCache | None,
    train_set: AnalysedSet,
    test_set: AnalysedSet,
    primary: str,
) -> dict[str, Any]:
    """run.json's ``knn_search`` of an approximate search: its parameters and its recall@k against the
    exact search, for the classifier's k and the OOD scorers' k, on ``recall_sample`` seeded
    leave-one-out queries of ID-train and as many ID-test queries (cached like the searches)."""
    ks = tuple(sorted({k for k in (settings.k, settings.ood_k) if k <= len(bank) - 1}))
    key = fingerprint(
        "analyze-recall/1",
        train_set.cache_keys[primary],
        test_set.cache_keys[primary],
        search_tag,
        repr(ks),
        str(settings.recall_sample),
        str(settings.seed),
    )

    def measure() -> np.ndarray:
        loo = measure_recall(index(), None, ks, sample=settings.recall_sample, seed=settings.seed)
        queries = measure_recall(index(), test, ks, sample=settings.recall_sample, seed=settings.seed)
        fallback = index().exact_fallback_rows
        return np.array([*(loo[k] for k in ks), *(queries[k] for k in ks), fallback], dtype=np.float64)

    values, _ = cached_array(cache, key, measure)
    loo_values, test_values = values[: len(ks)], values[len(ks) : 2 * len(ks)]
    return {
        "backend": settings.knn_backend,
        "approximate": True,
        "params": params,
        "recall_at_k": {
            "id-train-loo": {str(k): float(v) for k, v in zip(ks, loo_values, strict=True)},
            "id-test": {str(k): float(v) for k, v in zip(ks, test_values, strict=True)},
        },
        "recall_queries": {
            "id-train-loo": min(settings.recall_sample, len(bank)),
            "id-test": min(settings.recall_sample, len(test)),
        },
        "recall_seed": settings.seed,
        "exact_fallback_rows": int(values[-1]),
        "note": "recall@k = mean fraction of the exact k nearest neighbours (float32 cosine, same bank) "
        "that the approximate search returned, on seeded samples of the queries",
    }


def _human_section(
    curves: pd.DataFrame, correlations: pd.DataFrame, settings: AnalysisSettings, unit: float
) -> Section:
    figures = human_figures(curves, correlations, human.signal_label, unit)
    return Section(
        "Human labels",
        "Human annotations against the embedding norm (paper Figure 4, middle and right): larger norms should go "
        "with more accurate and more consistent human labels; buckets with fewer than "
        f"{settings.human_min_bucket_count} samples are hidden. Spearman correlations with bootstrap intervals below.",
        figures={f"fig-human-{i}": fig for i, fig in enumerate(figures)},
        html=table_html(
            pd.DataFrame(
                {
                    "human signal": correlations["signal"].map(human.signal_label),
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


def _exemplars(
    sets: list[AnalysedSet], samples: pd.DataFrame, primary: str, settings: AnalysisSettings
) -> pd.DataFrame:
    frames = []
    start = 0
    for s in sets:
        n = len(s)
        norms = samples[f"norm_{primary}"].to_numpy()[start : start + n]
        start += n
        by_class = s.role != "ood"  # ID sets are labelled throughout (_check_sets)
        table = norm_exemplars(
            norms,
            s.labels,
            per_group=settings.exemplars_per_class * (1 if by_class else 2),
            by_class=by_class,
            class_names=s.classes,
        )
        frames.append(
            describe_exemplars(table, dataset=s.name, split=s.split, role=s.role, index=s.index, ids=s.ids)
        )
    return pd.concat(frames, ignore_index=True)


def _checkpoint_record(loaded: LoadedEncoder) -> dict[str, Any]:
    return {
        "path": loaded.path,
        "sha256": loaded.sha256,
        "adapter": loaded.adapter,
        "method": loaded.method,
        "heads": list(loaded.heads),
        "preprocess": {**loaded.preprocess.to_dict(), "description": loaded.preprocess.describe()},
    }


def _run_record(
    *,
    command: list[str],
    checkpoint: dict[str, Any] | None,
    heads: tuple[str, ...],
    primary: str,
    settings: AnalysisSettings,
    sets: list[AnalysedSet],
    samples: pd.DataFrame,
    norm_table: pd.DataFrame,
    spearman: pd.DataFrame,
    ood_metrics: pd.DataFrame,
    ood_groups: pd.DataFrame,
    group_of: dict[str, str],
    human_curves: pd.DataFrame,
    human_corr: pd.DataFrame,
    notes: list[str],
) -> dict[str, Any]:
    data_root = str(resolve_data_root(settings.data_root))
    knn = {
        "id-test": float(samples.loc[samples["role"] == "id-test", "knn_correct"].astype(float).mean()),
        "id-train-loo": float(samples.loc[samples["role"] == "id-train", "knn_correct"].astype(float).mean()),
    }
    norms: dict[str, Any] = {}
    for row in norm_table.itertuples(index=False):
        entry = norms.setdefault(
            f"{row.dataset}/{row.split}", {"role": row.role, "n": int(row.n), "heads": {}}
        )
        entry["heads"][row.head] = {
            "mean": row.mean,
            "median": row.median,
            "mean_scaled": row.mean_scaled,
            "median_scaled": row.median_scaled,
        }
    ood: dict[str, Any] = {}
    for row in ood_metrics.to_dict("records"):
        ood.setdefault(row["ood_set"], {})[row["scorer"]] = {
            **{key: row[key] for key in METRIC_KEYS},
            "auroc_ci": [row["auroc_ci_low"], row["auroc_ci_high"]],
        }
    groups: dict[str, Any] = {}
    for row in ood_groups.to_dict("records"):
        entry = groups.setdefault(row["group"], {"ood_sets": row["ood_sets"].split(";"), "scorers": {}})
        entry["scorers"][row["scorer"]] = {key: row[key] for key in METRIC_KEYS}
    summary: dict[str, Any] = {
        "norms": norms,
        "knn_accuracy": knn,
        "spearman": {
            r.role: {
                "rho": r.rho,
                "p_value": r.p_value,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "n": int(r.n),
            }
            for r in spearman.itertuples(index=False)
        },
        "ood": ood,
        "ood_groups": groups,
        "ood_verdicts": ood_verdicts(ood_metrics),
        "ood_convention": "ID = the ID-test split; larger score = more familiar; each metric's name states its "
        "positive class: fpr@95tpr_id = fraction of OOD accepted at the threshold keeping 95% of ID-test "
        "(Hendrycks / Sun et al.), fpr@95tpr_ood = fraction of ID-test flagged at the threshold flagging 95% "
        "of the OOD set (OpenOOD v1.5, pytorch-ood); aupr_*_ap = average precision, aupr_*_trapz = "
        "trapezoid-integrated PR curve (OpenOOD, pytorch-ood); aupr_in: ID positive, aupr_out: OOD positive; "
        "auroc_ci = 95% stratified bootstrap interval (1000 resamples seeded with --seed)",
    }
    if not human_corr.empty:
        summary["human"] = human.human_summary(human_curves, human_corr)
    options = asdict(settings)
    if checkpoint is None:  # embedding input: no encoder ran, so its settings do not apply
        options.update(precision=None, batch_size=None)
    return {
        "normprobe_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "checkpoint": checkpoint,
        **({} if checkpoint else {"inputs": [s.input_record for s in sets]}),
        "id_dataset": settings.named_id_dataset,
        "datasets": [
            {
                "name": s.name,
                "title": _title(s),
                "split": s.split,
                "role": s.role,
                "n": len(s),
                "fingerprint": s.fingerprint,
                "source": s.source,
                "notes": s.notes,
                "data_root": data_root,
                "spec": s.spec,
                "image_size": list(s.imageset.image_size) if s.imageset is not None else None,
                "images": s.reopenable,
                "embeddings_from_cache": s.from_cache,
                **({"ood_group": group_of[s.key]} if s.role == "ood" else {}),
            }
            for s in sets
        ],
        "heads": list(heads),
        "primary_head": primary,
        "settings": {
            **{
                k: options[k]
                for k in (
                    "k",
                    "temperature",
                    "ood_k",
                    "buckets",
                    "bucket_scaling",
                    "min_bucket_count",
                    "human_min_bucket_count",
                    "seed",
                    "precision",
                    "batch_size",
                    "max_train",
                    "max_per_split",
                    "human",
                    "exemplars_per_class",
                    "plotly",
                    "knn_backend",
                )
            },
            "scorers": list(settings.scorers),
            "near": list(settings.near),
            "far": list(settings.far),
            "device": str(pick_device(settings.device)),
            "knn": "cosine, weighted vote exp(sim/T); ID-train by leave-one-out",
            "cache": settings.cache_dir or ("default" if settings.use_cache else "off"),
        },
        "summary": summary,
        "notes": notes + [SELF_VOTE_NOTE],
        "timings": {},
    }
