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

This module scores and ranks; the contact sheets are drawn by :mod:`normprobe.render.contact_sheet`
and the CLI (:mod:`normprobe.commands.rank`) writes the table and the sheets. Heavy libraries
(torch, pandas) are imported inside the functions, because ``import normprobe`` binds
:func:`rank` eagerly and must stay light.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normprobe.errors import NormprobeError
from normprobe.record import CheckpointInfo, DatasetInfo, to_json

if TYPE_CHECKING:
    import pandas as pd

    from normprobe.cache import Cache
    from normprobe.checkpoints import LoadedEncoder
    from normprobe.data import ImageSet

SCORES = ("norm", "knn")
DEFAULT_K = 50
"""k of the kNN distance score: Sun et al. (2022) use k = 50 for CIFAR-10."""

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
    cache: Cache | None = None,
) -> Ranking:
    """Score and rank every sample of ``imageset`` (readable ones), listing ``imageset.skipped`` as unreadable."""
    import pandas as pd

    from normprobe.analyses.norms import embedding_norms
    from normprobe.extraction import extract
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
        "checkpoint": to_json(CheckpointInfo.of(loaded)),
        "head": head,
        "data": {**to_json(DatasetInfo.of(imageset)), "unreadable": len(imageset.skipped)},
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
        record["reference"] = {**to_json(DatasetInfo.of(reference)), "leave_one_out": same}
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
    from normprobe.cache import Cache
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
    cache = Cache(enabled=settings.use_cache)
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
