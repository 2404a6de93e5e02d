"""The :class:`Run` context of one analysis, built once by :func:`open_run`: the settings, the loaded
encoder, the device, the cache and the sets by role. Every step of the analysis reads it; none
loads, checks or resolves anything again."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normprobe import distributed
from normprobe.analyses import human
from normprobe.analyses.settings import AnalysisSettings
from normprobe.cache import Cache
from normprobe.checkpoints import LoadedEncoder, load_encoder
from normprobe.device import pick_device
from normprobe.errors import NormprobeError
from normprobe.pipeline.sets import (
    AnalysedSet,
    GivenSets,
    Log,
    check_datasets,
    choose_heads,
    embed_sets,
    load_images,
    ood_groups,
    read_embedding_sets,
)
from normprobe.results import check_output_dir
from normprobe.terminal import printable
from normprobe.zoo import resolve_checkpoint


@dataclass
class Run:
    """One analysis in progress. ``timings`` collects each step's seconds for run.json."""

    settings: AnalysisSettings
    encoder: LoadedEncoder | None
    """None when the sets are embedding files (no encoder runs)."""
    device: torch.device
    cache: Cache
    id_train: AnalysedSet
    id_test: AnalysedSet
    ood: dict[str, AnalysedSet]
    """By ``dataset/split``, in the order given."""
    ood_groups: dict[str, str]
    """``dataset/split`` -> ``near`` | ``far`` of every OOD set."""
    heads: tuple[str, ...]
    primary: str
    out: Path
    log: Log
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def sets(self) -> list[AnalysedSet]:
        """ID-train, ID-test, then each OOD set: the row order of ``samples.parquet``."""
        return [self.id_train, self.id_test, *self.ood.values()]

    @property
    def bank(self) -> np.ndarray:
        """ID-train's primary-head embeddings: what the kNN classifier and scorers search."""
        return self.id_train.embeddings[self.primary]

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """``with run.timed("knn_s"): ...`` records the block's seconds under ``name``."""
        began = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - began


def progress_log(progress: bool) -> Log:
    """``normprobe: message`` lines on stderr (terminal-safe), or nothing."""

    def log(message: str) -> None:
        if progress:
            print(f"normprobe: {printable(message)}", file=sys.stderr, flush=True)

    return log


def open_run(
    checkpoint: str | Path | LoadedEncoder | None,
    out: str | Path,
    settings: AnalysisSettings,
    *,
    given: GivenSets,
    force: bool,
    progress: bool,
) -> Run:
    """Check every input that can be checked without data, then load the encoder and the sets
    (embedding them through the cache) or read the embedding files. Raises :class:`NormprobeError`
    for bad input, before any expensive work where possible."""
    if distributed.launched():
        # every rank would analyse everything and write the same folder; extraction is what shards
        raise NormprobeError(
            "normprobe analyze runs as one process, not under torchrun: embed the sets with "
            "`torchrun ... -m normprobe embed` (rank 0 fills the embedding cache), then run analyze once"
        )
    settings.check()
    out_path = check_output_dir(out, force)
    check_datasets(settings, given, images=checkpoint is not None)
    # a bad --human fails before embedding
    human.check_label_sets(settings.named_id_dataset, settings.human, settings.data_root)
    log = progress_log(progress)
    device = pick_device(settings.device)
    cache = Cache(settings.cache_dir, enabled=settings.use_cache)
    timings: dict[str, Any] = {}
    tick = time.perf_counter()
    loaded: LoadedEncoder | None = None
    if checkpoint is None:
        sets, primary, heads = read_embedding_sets(settings, given, log)
        timings["load_data_s"] = time.perf_counter() - tick  # reading the files: nothing is embedded
    else:
        loaded = _load(checkpoint, settings)
        primary, heads = choose_heads(loaded.heads, settings, "checkpoint has")
        timings["load_checkpoint_s"] = time.perf_counter() - tick
        log(
            f"checkpoint {loaded.path} ({loaded.adapter}, {loaded.method}), heads {', '.join(heads)}; primary head {primary}"
        )
        tick = time.perf_counter()
        images = load_images(settings, given, loaded.preprocess.input_size)
        timings["load_data_s"] = time.perf_counter() - tick
        sets = embed_sets(
            images, given, loaded, heads, settings, device=device, cache=cache, log=log, progress=progress
        )
        timings["embed_s"] = {s.key: s.embed_seconds for s in sets}
    timings["embeddings_from_cache"] = {s.key: s.from_cache for s in sets}
    return Run(
        settings=settings,
        encoder=loaded,
        device=device,
        cache=cache,
        id_train=next(s for s in sets if s.role == "id-train"),
        id_test=next(s for s in sets if s.role == "id-test"),
        ood={s.key: s for s in sets if s.role == "ood"},
        ood_groups=ood_groups(sets, settings),
        heads=heads,
        primary=primary,
        out=out_path,
        log=log,
        timings=timings,
    )


def _load(checkpoint: str | Path | LoadedEncoder, settings: AnalysisSettings) -> LoadedEncoder:
    if isinstance(checkpoint, LoadedEncoder):
        return checkpoint
    return load_encoder(resolve_checkpoint(checkpoint), arch=settings.arch, trust_code=settings.trust_code)
