"""`normprobe analyze` as a function: embed, analyse, write the results folder.

    from normprobe.analyses.pipeline import AnalysisSettings, run_analysis
    results = run_analysis("simclr.pt", "results/", AnalysisSettings(ood=("cifar100", "mnist")))
    results.run["summary"]["ood"]["cifar100/test"]["norm"]["auroc"]

The CLI, the demo command and notebooks all call :func:`run_analysis`. Steps: load the checkpoint
and the datasets (ID train and test splits, every OOD set); embed each through the cache; kNN
classification on the primary head (ID-test against ID-train, ID-train by leave-one-out); OOD
scorers fitted on ID-train; then the analyses (norm summaries, norm buckets vs kNN accuracy,
OOD metrics, exemplars, human labels) and the results folder (Contract 2).

The kNN predictions and the per-set scores are cached too (same cache, keyed by the embeddings'
cache keys and the settings that shape them), because on a 50,000-image training set the
leave-one-out searches cost minutes while everything else costs seconds: a re-run, or a run
that only adds an OOD set, recomputes just what changed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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
from normprobe.device import pick_device
from normprobe.embed import cache_key, extract
from normprobe.errors import NormprobeError
from normprobe.knn import CosineIndex, approximate_params, measure_recall
from normprobe.report import PLOTLY_FILE, Section, analysis_report, plotly_js, table_html
from normprobe.results import Results, check_output_dir, jsonable, read_results, sample_columns, write_results
from normprobe.terminal import printable
from normprobe.zoo import resolve_checkpoint


@dataclass
class AnalysedSet:
    """One dataset split in the analysis, with its embeddings."""

    imageset: ImageSet
    role: str
    spec: str
    embeddings: dict[str, np.ndarray]
    from_cache: bool
    embed_seconds: float
    cache_keys: dict[str, str]
    """The embedding cache key of each head: the identity of these embeddings, also used to key
    results computed from them (kNN predictions, scores)."""
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.imageset.name}/{self.imageset.split}"


def _log(progress: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if progress:
            print(f"normprobe: {printable(message)}", file=sys.stderr, flush=True)

    return log


def _first(imageset: ImageSet, limit: int | None) -> ImageSet:
    if limit is None or limit >= len(imageset):
        return imageset
    return imageset.subset(np.arange(limit), f"first {limit}")


def _primary_head(loaded: LoadedEncoder, settings: AnalysisSettings) -> tuple[str, tuple[str, ...]]:
    heads = tuple(dict.fromkeys(settings.heads or loaded.heads))
    primary = settings.head or ("z" if "z" in loaded.heads else "feats")
    for head in (*heads, primary):
        if head not in loaded.heads:
            raise NormprobeError(f"checkpoint has no head {head!r} (heads: {', '.join(loaded.heads)})")
    if primary not in heads:
        heads = (*heads, primary)
    return primary, heads


def _manifest_name(spec: str) -> str | None:
    """The dataset manifest an ``--ood`` value names, or None for a folder or file."""
    return None if Path(spec).expanduser().exists() else spec.partition(":")[0]


def check_datasets(settings: AnalysisSettings) -> None:
    """Name checks that need no data: a known ID dataset with train and test splits, OOD sets that
    are folders, .npz files or known dataset splits, none equal to an ID split or given twice, and
    ``--near`` / ``--far`` values that name OOD sets."""
    manifest = data.load_manifest(settings.id_dataset)
    if manifest.kind != "images" or not {"train", "test"} <= set(manifest.splits):
        raise NormprobeError(
            f"--id {settings.id_dataset}: the in-distribution dataset needs train and test splits"
        )
    seen = {
        (settings.id_dataset, "train"): "the ID-train set",
        (settings.id_dataset, "test"): "the ID-test set",
    }
    for spec in settings.ood:
        if Path(spec).expanduser().exists():
            continue
        name, _, split = spec.partition(":")
        if name not in data.manifest_names("images"):
            raise NormprobeError(
                f"--ood {spec}: neither a folder, an .npz file nor a known dataset ({', '.join(data.manifest_names('images'))})"
            )
        split = split or data.default_split(name, "test")
        if split not in data.load_manifest(name).splits:
            raise NormprobeError(
                f"--ood {spec}: {name} has no split {split!r} (splits: {', '.join(data.load_manifest(name).splits)})"
            )
        if (name, split) in seen:
            raise NormprobeError(f"--ood {spec} is {name} {split}, the same split as {seen[(name, split)]}")
        seen[(name, split)] = f"--ood {spec}"
    known = {*settings.ood, *filter(None, map(_manifest_name, settings.ood))}
    for option, names in (("--near", settings.near), ("--far", settings.far)):
        for name in names:
            if name not in known:
                raise NormprobeError(
                    f"{option} {name}: not one of the OOD sets (--ood {', '.join(settings.ood)})"
                )


def _title(s: AnalysedSet) -> str:
    """The dataset's display name: its manifest's ``title`` (CIFAR-100), else its own name (a folder's)."""
    manifest = _manifest_name(s.spec)
    return str(data.load_manifest(manifest).raw.get("title", manifest)) if manifest else s.imageset.name


def _ood_groups(sets: list[AnalysedSet], settings: AnalysisSettings) -> dict[str, str]:
    """``dataset/split`` -> ``near`` | ``far`` for every OOD set (see :data:`OOD_GROUPS`)."""
    groups = {}
    for s in sets:
        if s.role == "ood":
            manifest = _manifest_name(s.spec)
            default = data.load_manifest(manifest).raw.get("ood_group") if manifest else None
            groups[s.key] = ood_group((s.spec, s.imageset.name), default, settings.near, settings.far)
    return groups


def _load_sets(settings: AnalysisSettings, input_size: tuple[int, int]) -> list[tuple[ImageSet, str, str]]:
    """(imageset, role, spec) for ID-train, ID-test and each OOD set, subsets applied."""
    train = data.load(settings.id_dataset, "train", settings.data_root)
    test = data.load(settings.id_dataset, "test", settings.data_root)
    if (train.labels < 0).any():
        raise NormprobeError(
            f"--id {settings.id_dataset}: ID-train has unlabelled samples; the kNN analyses need labels"
        )
    sets = [
        (train, "id-train", f"{settings.id_dataset}:train"),
        (test, "id-test", f"{settings.id_dataset}:test"),
    ]
    for spec in settings.ood:
        sets.append((data.load_any(spec, None, settings.data_root, image_size=input_size[0]), "ood", spec))
    names: dict[tuple[str, str], str] = {}
    for imageset, role, spec in sets:
        if len(imageset) == 0:
            raise NormprobeError(f"{spec} ({role}) has no images")
        other = names.setdefault((imageset.name, imageset.split), spec)
        if other != spec:
            raise NormprobeError(
                f"--ood {spec} and {other} are both named {imageset.name}/{imageset.split}; rename one"
            )
    return [
        (_first(s, settings.max_train if role == "id-train" else settings.max_per_split), role, spec)
        for s, role, spec in sets
    ]


def _embed(
    sets: list[tuple[ImageSet, str, str]],
    loaded: LoadedEncoder,
    heads: tuple[str, ...],
    settings: AnalysisSettings,
    progress: bool,
) -> list[AnalysedSet]:
    cache = EmbeddingCache(settings.cache_dir) if settings.use_cache else None
    device = pick_device(settings.device)
    log = _log(progress)
    out = []
    for imageset, role, spec in sets:
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
        # np.array copies: cached embeddings are read-only memory maps, which torch will not wrap
        keys = {h: cache_key(loaded, imageset, h, settings.precision) for h in heads}
        out.append(
            AnalysedSet(
                imageset,
                role,
                spec,
                {h: np.array(result.heads[h], dtype=np.float32) for h in heads},
                result.from_cache,
                result.seconds,
                keys,
                notes,
            )
        )
    return out


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
        names = s.imageset.classes
        labels = s.imageset.labels
        frames.append(
            pd.DataFrame(
                {
                    "dataset": s.imageset.name,
                    "split": s.imageset.split,
                    "index": s.imageset.index.astype(np.int64),
                    "id": s.imageset.ids.astype(str),
                    "role": s.role,
                    "label": labels.astype(np.int64),
                    "label_name": [names[i] if 0 <= i < len(names) else "" for i in labels.tolist()],
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


def _human(
    samples: pd.DataFrame, sets: list[AnalysedSet], primary: str, settings: AnalysisSettings
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Add the ``human_*`` columns; return the human curves, correlations and notes (empty when no label set applies)."""
    label_sets, notes = human.select_label_sets(settings.id_dataset, settings.human, settings.data_root)
    if not label_sets:
        return pd.DataFrame(), pd.DataFrame(), notes
    frames = [human.human_columns(label_sets, s.imageset.index, s.imageset.labels, s.role) for s in sets]
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
    checkpoint: str | Path,
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> Results:
    """Run every analysis of ``checkpoint`` and write the results folder ``out`` (Contract 2).

    ``checkpoint`` is a file or a zoo model name. ``force`` overwrites a previous results folder
    (never anything else). ``command`` is recorded in run.json (default: ``sys.argv``). Returns
    the folder as read back by :func:`normprobe.results.read_results`. Raises
    :class:`NormprobeError` for bad input, before any expensive work where possible.
    """
    if distributed.launched():
        # every rank would analyse everything and write the same folder; extraction is what shards
        raise NormprobeError(
            "normprobe analyze runs as one process, not under torchrun: embed the sets with "
            "`torchrun ... -m normprobe embed` (rank 0 fills the embedding cache), then run analyze once"
        )
    settings = settings or AnalysisSettings()
    settings.check()
    began = time.perf_counter()
    log = _log(progress)
    timings: dict[str, Any] = {}
    out_path = check_output_dir(out, force)
    check_datasets(settings)
    human.check_label_sets(
        settings.id_dataset, settings.human, settings.data_root
    )  # a bad --human fails before embedding

    tick = time.perf_counter()
    path = resolve_checkpoint(checkpoint)
    loaded = load_encoder(path, arch=settings.arch, trust_code=settings.trust_code)
    primary, heads = _primary_head(loaded, settings)
    timings["load_checkpoint_s"] = time.perf_counter() - tick
    log(
        f"checkpoint {path} ({loaded.adapter}, {loaded.method}), heads {', '.join(heads)}; primary head {primary}"
    )

    tick = time.perf_counter()
    loaded_sets = _load_sets(settings, loaded.preprocess.input_size)
    timings["load_data_s"] = time.perf_counter() - tick
    sets = _embed(loaded_sets, loaded, heads, settings, progress)
    timings["embed_s"] = {s.key: s.embed_seconds for s in sets}
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
                train.imageset.labels,
                test.embeddings[primary],
                k=settings.k,
                temperature=settings.temperature,
                device=device,
                index=index(),
            )
        ),
    )
    _knn_columns(samples, predictions[: len(train.imageset)], predictions[len(train.imageset) :])
    timings["knn_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    scores, timings["scores_from_cache"] = fit_and_score(
        train=train.embeddings,
        train_labels=train.imageset.labels,
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
        path=path,
        loaded=loaded,
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
        extra = [_human_section(human_curves, human_corr, settings)] if not human_curves.empty else []
        report_html = analysis_report(
            run, samples, tables, roc, {s.key: s.imageset for s in sets}, extra, plotly=settings.plotly
        )
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


def _human_section(curves: pd.DataFrame, correlations: pd.DataFrame, settings: AnalysisSettings) -> Section:
    figures = human.human_figures(curves, correlations)
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
        n = len(s.imageset)
        norms = samples[f"norm_{primary}"].to_numpy()[start : start + n]
        start += n
        by_class = s.role != "ood" and len(s.imageset.classes) > 0
        table = norm_exemplars(
            norms,
            s.imageset.labels,
            per_group=settings.exemplars_per_class * (1 if by_class else 2),
            by_class=by_class,
            class_names=s.imageset.classes,
        )
        frames.append(
            describe_exemplars(
                table,
                dataset=s.imageset.name,
                split=s.imageset.split,
                role=s.role,
                index=s.imageset.index,
                ids=s.imageset.ids,
            )
        )
    return pd.concat(frames, ignore_index=True)


def _run_record(
    *,
    command: list[str],
    path: Path,
    loaded: LoadedEncoder,
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
    return {
        "normprobe_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "checkpoint": {
            "path": str(path),
            "sha256": loaded.sha256,
            "adapter": loaded.adapter,
            "method": loaded.method,
            "heads": list(loaded.heads),
            "preprocess": {**loaded.preprocess.to_dict(), "description": loaded.preprocess.describe()},
        },
        "id_dataset": settings.id_dataset,
        "datasets": [
            {
                "name": s.imageset.name,
                "title": _title(s),
                "split": s.imageset.split,
                "role": s.role,
                "n": len(s.imageset),
                "fingerprint": s.imageset.fingerprint,
                "source": s.imageset.source,
                "notes": s.notes,
                "data_root": data_root,
                "spec": s.spec,
                "image_size": list(s.imageset.image_size),
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
