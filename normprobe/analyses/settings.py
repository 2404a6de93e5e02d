"""Every choice of a `normprobe analyze` run, as one dataclass (light to import: no torch, no pandas)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from normprobe.errors import NormprobeError

DEFAULT_SCORERS = ("norm", "knn", "mahalanobis", "norm+knn")
DEFAULT_ID_DATASET = "cifar10"
"""The in-distribution dataset when neither ``id_dataset`` nor the ID sets are given."""
KNN_BACKENDS = ("torch", "faiss", "faiss-ivf", "faiss-hnsw")
"""Searches analyze can run (:data:`normprobe.knn.BACKENDS`): exact torch and faiss, approximate IVF and HNSW."""
HUMAN_MIN_BUCKET_COUNT = 50
"""Human-label curves hide buckets with fewer samples, as in the paper's Figure 4."""


@dataclass(frozen=True)
class AnalysisSettings:
    """Every choice of an analysis; all of it is recorded in ``run.json``.

    ``id_train`` / ``id_test`` name the ID sets when they are not ``id_dataset``'s train and test
    splits: embedding files (``.npz`` / ``.parquet``) when the analysis has no checkpoint, image
    sets (folders, ``.npz`` files, ``dataset:split``) with one. ``id_dataset`` is then only the
    dataset whose human label sets apply (None: none; see :attr:`named_id_dataset`).
    ``head`` is the primary head (kNN, scorers, buckets; default ``z`` when the encoder has a
    projector, else ``feats``); ``heads`` are the heads embedded (default: all), each getting a
    ``norm_<head>`` column and a norm scorer. ``max_train`` / ``max_per_split`` keep the first N
    samples (deterministic) of ID-train / of every other set, for quick runs. ``near`` / ``far``
    put OOD sets (each named by its ``ood`` value or dataset name) in OpenOOD's near- or far-OOD
    group, overriding the manifests' ``ood_group`` (user folders and files are far by default). ``min_bucket_count``
    hides small buckets of the kNN bucket curves, ``human_min_bucket_count`` those of the human-label
    curves (50, as in the paper). ``plotly`` is where report.html gets plotly.js
    (:data:`normprobe.render.page.PLOTLY_MODES`). ``trust_code`` lets TorchScript / ``torch.export``
    checkpoints load: they are programs that run their own code. ``knn_backend`` is the search behind
    the kNN classifier and the kNN scorers (:data:`KNN_BACKENDS`; ``faiss-ivf`` / ``faiss-hnsw`` are
    approximate, tuned by ``nlist`` / ``nprobe`` and ``hnsw_m`` / ``ef_search``, their recall against
    the exact search measured on ``recall_sample`` seeded queries and recorded in run.json).
    """

    id_dataset: str | None = None
    id_train: str | None = None
    id_test: str | None = None
    ood: tuple[str, ...] = ("cifar100",)
    near: tuple[str, ...] = ()
    far: tuple[str, ...] = ()
    head: str | None = None
    heads: tuple[str, ...] | None = None
    k: int = 200
    temperature: float = 0.1
    ood_k: int = 50
    buckets: int = 20
    bucket_scaling: str = "max"
    min_bucket_count: int = 10
    human_min_bucket_count: int = HUMAN_MIN_BUCKET_COUNT
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    human: str = "auto"
    exemplars_per_class: int = 4
    max_train: int | None = None
    max_per_split: int | None = None
    seed: int = 0
    precision: str = "fp32"
    batch_size: int = 256
    device: str | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    arch: str | None = None
    trust_code: bool = False
    report: bool = True
    plotly: str = "inline"
    knn_backend: str = "torch"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    recall_sample: int = 1000

    @property
    def named_id_dataset(self) -> str | None:
        """The in-distribution dataset: ``id_dataset``, else :data:`DEFAULT_ID_DATASET` unless the ID
        sets are given (``id_train`` / ``id_test``), whose dataset is then unknown."""
        if self.id_dataset is not None or self.id_train is not None:
            return self.id_dataset
        return DEFAULT_ID_DATASET

    def check(self) -> None:
        """Reject impossible settings before any work is done."""
        if (self.id_train is None) != (self.id_test is None):
            raise NormprobeError("give both --id-train and --id-test, or neither")
        positive = {
            "k": self.k,
            "ood_k": self.ood_k,
            "buckets": self.buckets,
            "batch_size": self.batch_size,
            "exemplars_per_class": self.exemplars_per_class,
        }
        for name, value in positive.items():
            if value < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name, limit in (("max_train", self.max_train), ("max_per_split", self.max_per_split)):
            if limit is not None and limit < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be >= 1, got {limit}")
        if not self.temperature > 0:
            raise NormprobeError(f"--temperature must be > 0, got {self.temperature}")
        for name, value in (
            ("min_bucket_count", self.min_bucket_count),
            ("human_min_bucket_count", self.human_min_bucket_count),
        ):
            if value < 0:
                raise NormprobeError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        from normprobe.analyses.buckets import SCALINGS
        from normprobe.analyses.ood import scorer_names
        from normprobe.extraction import PRECISIONS
        from normprobe.render.page import PLOTLY_MODES

        if self.bucket_scaling not in SCALINGS:
            raise NormprobeError(
                f"--bucket-scaling must be one of {', '.join(SCALINGS)}, got {self.bucket_scaling!r}"
            )
        if self.precision not in PRECISIONS:
            raise NormprobeError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.plotly not in PLOTLY_MODES:
            raise NormprobeError(f"--plotly must be one of {', '.join(PLOTLY_MODES)}, got {self.plotly!r}")
        if not self.ood:
            raise NormprobeError("name at least one OOD set with --ood")
        both = [name for name in self.near if name in self.far]
        if both:
            raise NormprobeError(f"{both[0]} is given to both --near and --far")
        known = scorer_names()
        unknown = [s for s in self.scorers if s not in known]
        if unknown:
            raise NormprobeError(f"unknown scorer {unknown[0]!r} (known: {', '.join(known)})")
        if not self.scorers:
            raise NormprobeError("--scorers must name at least one scorer")
        if self.knn_backend not in KNN_BACKENDS:
            raise NormprobeError(
                f"--knn-backend must be one of {', '.join(KNN_BACKENDS)}, got {self.knn_backend!r}"
            )
        owners = {
            "nlist": "faiss-ivf",
            "nprobe": "faiss-ivf",
            "hnsw_m": "faiss-hnsw",
            "ef_search": "faiss-hnsw",
        }
        for name, owner in owners.items():
            value = getattr(self, name)
            if value is not None and self.knn_backend != owner:
                raise NormprobeError(f"--{name.replace('_', '-')} applies to --knn-backend {owner} only")
            if value is not None and value < 1:
                raise NormprobeError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.recall_sample < 1:
            raise NormprobeError(f"--recall-sample must be >= 1, got {self.recall_sample}")


def comma_list(text: str) -> tuple[str, ...]:
    """``"z, feats,"`` -> ``("z", "feats")``: the items of a comma list, stripped, empty ones dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def split_ood_specs(values: Sequence[str]) -> tuple[str, ...]:
    """``["cifar100,mnist", "tinyimagenet"]`` -> ``("cifar100", "mnist", "tinyimagenet")`` (order kept, duplicates dropped)."""
    return tuple(dict.fromkeys(spec for value in values for spec in comma_list(value)))
