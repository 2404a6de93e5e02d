"""The steps of `normprobe analyze`, each a function of the :class:`~normprobe.pipeline.context.Run`.

``samples_frame`` starts ``samples.parquet`` (one row per sample, its norms); ``classify`` adds the
kNN predictions and ``score`` the OOD scores, both through one memoising index of ID-train and the
cache. Each analysis then returns an :class:`Analysis`: its tables, its part of the run.json
summary and its report section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from normprobe.analyses import human
from normprobe.analyses.accuracy import knn_predictions
from normprobe.analyses.buckets import bucket_curve
from normprobe.analyses.exemplars import describe_exemplars, norm_exemplars
from normprobe.analyses.norms import embedding_norms, norm_summary
from normprobe.analyses.ood import (
    METRIC_KEYS,
    evaluate_ood,
    fit_and_score,
    group_means,
    norm_correctness_spearman,
    ood_verdicts,
)
from normprobe.knn import CosineIndex, approximate_params, measure_recall
from normprobe.pipeline.context import Run
from normprobe.record import RunRecord
from normprobe.report import (
    Section,
    buckets_section,
    exemplars_section,
    human_section,
    id_train_mean_norm,
    norms_section,
    ood_section,
)

NO_ID_DATASET_NOTE = (
    "human labels skipped: the in-distribution dataset is not named; name it (--id NAME, id_dataset= in "
    "Python) when the ID sets hold that dataset's samples with their original positions (index)"
)
OOD_CONVENTION = (
    "ID = the ID-test split; larger score = more familiar; each metric's name states its "
    "positive class: fpr@95tpr_id = fraction of OOD accepted at the threshold keeping 95% of ID-test "
    "(Hendrycks / Sun et al.), fpr@95tpr_ood = fraction of ID-test flagged at the threshold flagging 95% "
    "of the OOD set (OpenOOD v1.5, pytorch-ood); aupr_*_ap = average precision, aupr_*_trapz = "
    "trapezoid-integrated PR curve (OpenOOD, pytorch-ood); aupr_in: ID positive, aupr_out: OOD positive; "
    "auroc_ci = 95% stratified bootstrap interval (1000 resamples seeded with --seed)"
)


@dataclass
class Analysis:
    """What one analysis adds to the results folder."""

    tables: dict[str, pd.DataFrame]
    """``tables/NAME.csv``."""
    summary: dict[str, Any]
    """Its fields of run.json's :class:`~normprobe.record.Summary`."""
    section: Callable[[RunRecord], Section] | None = None
    """Its report section, built from the finished record (None: it has none)."""
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- samples, kNN, scores


def samples_frame(run: Run) -> pd.DataFrame:
    """One row per sample of every set (ID-train, ID-test, each OOD set), with each head's norm and
    ``norm_scaled`` (the primary head's norm over its ID-train mean)."""
    frames = []
    for s in run.sets:
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
                    **{f"norm_{h}": embedding_norms(s.embeddings[h]) for h in run.heads},
                }
            )
        )
    samples = pd.concat(frames, ignore_index=True)
    train_mean = samples.loc[samples["role"] == "id-train", f"norm_{run.primary}"].mean()
    samples["norm_scaled"] = samples[f"norm_{run.primary}"] / train_mean
    return samples


@dataclass
class Neighbours:
    """ID-train's primary head as one memoising index, built on the first search the cache does not
    answer (an HNSW graph of a large bank takes minutes). It serves the classifier (k = --k) and the
    kNN scorers (k = --ood-k): each set is searched once, at the larger k, which the classifier asks first."""

    run: Run
    _index: CosineIndex | None = None

    @property
    def options(self) -> dict[str, Any]:
        s = self.run.settings
        return {
            "nlist": s.nlist,
            "nprobe": s.nprobe,
            "hnsw_m": s.hnsw_m,
            "ef_search": s.ef_search,
            "seed": s.seed,
        }

    @property
    def approximate(self) -> dict[str, int | str]:
        """An approximate search's effective parameters ({} for exact search)."""
        return approximate_params(self.run.settings.knn_backend, len(self.run.bank), **self.options)

    @property
    def tag(self) -> tuple[str, ...]:
        """What an approximate search's results depend on, for the cache keys (exact searches: nothing)."""
        search = self.approximate
        return (f"{self.run.settings.knn_backend}{sorted(search.items())}",) if search else ()

    def index(self) -> CosineIndex:
        if self._index is None:
            self._index = CosineIndex(
                torch.as_tensor(self.run.bank, device=self.run.device),
                memoize=True,
                backend=self.run.settings.knn_backend,  # type: ignore[arg-type]
                **self.options,
            )
        return self._index


def classify(run: Run, samples: pd.DataFrame, neighbours: Neighbours) -> None:
    """Add ``knn_pred`` / ``knn_correct``: ID-test against ID-train, ID-train by leave-one-out."""
    train, test, s = run.id_train, run.id_test, run.settings
    with run.timed("knn_s"):
        predictions, run.timings["knn_from_cache"] = run.cache.memoize(
            "analyze-knn/1",
            (
                train.cache_keys[run.primary],
                test.cache_keys[run.primary],
                str(s.k),
                repr(s.temperature),
                *neighbours.tag,
            ),
            lambda: np.concatenate(
                knn_predictions(
                    train.embeddings[run.primary],
                    train.labels,
                    test.embeddings[run.primary],
                    k=s.k,
                    temperature=s.temperature,
                    device=run.device,
                    index=neighbours.index(),
                )
            ),
        )
        pred = pd.array([pd.NA] * len(samples), dtype="Int64")
        pred[(samples["role"] == "id-train").to_numpy()] = predictions[: len(train)]
        pred[(samples["role"] == "id-test").to_numpy()] = predictions[len(train) :]
        samples["knn_pred"] = pred
        correct = pd.array(pred == pd.array(samples["label"].to_numpy(), dtype="Int64"), dtype="boolean")
        correct[(samples["role"] == "ood").to_numpy()] = pd.NA
        samples["knn_correct"] = correct


def score(run: Run, samples: pd.DataFrame, neighbours: Neighbours) -> list[str]:
    """Add a ``score_<scorer>`` column per scorer (fitted on ID-train); returns the scorer columns."""
    sets = run.sets
    with run.timed("scores_s"):
        scores, run.timings["scores_from_cache"] = fit_and_score(
            train=run.id_train.embeddings,
            train_labels=run.id_train.labels,
            others=[s.embeddings for s in sets[1:]],
            heads=run.heads,
            primary=run.primary,
            scorers=run.settings.scorers,
            ood_k=run.settings.ood_k,
            device=run.device,
            cache=run.cache,
            keys=[s.cache_keys for s in sets],
            index=neighbours.index,
            search_tag=neighbours.tag[0] if neighbours.tag else "",
        )
        for name, values in scores.items():
            samples[f"score_{name}"] = values
    return list(scores)


def search_recall(run: Run, neighbours: Neighbours) -> dict[str, Any] | None:
    """run.json's ``knn_search`` of an approximate search: its parameters and its recall@k against the
    exact search, for the classifier's k and the OOD scorers' k, on ``recall_sample`` seeded
    leave-one-out queries of ID-train and as many ID-test queries (cached like the searches).
    None for exact search."""
    params = neighbours.approximate
    if not params:
        return None
    s, bank, test = run.settings, run.bank, run.id_test.embeddings[run.primary]
    ks = tuple(sorted({k for k in (s.k, s.ood_k) if k <= len(bank) - 1}))

    def measure() -> np.ndarray:
        index = neighbours.index()
        loo = measure_recall(index, None, ks, sample=s.recall_sample, seed=s.seed)
        queries = measure_recall(index, test, ks, sample=s.recall_sample, seed=s.seed)
        return np.array(
            [*(loo[k] for k in ks), *(queries[k] for k in ks), index.exact_fallback_rows], dtype=np.float64
        )

    with run.timed("recall_s"):
        values, _ = run.cache.memoize(
            "analyze-recall/1",
            (
                run.id_train.cache_keys[run.primary],
                run.id_test.cache_keys[run.primary],
                *neighbours.tag,
                repr(ks),
                str(s.recall_sample),
                str(s.seed),
            ),
            measure,
        )
    loo_values, test_values = values[: len(ks)], values[len(ks) : 2 * len(ks)]
    return {
        "backend": s.knn_backend,
        "approximate": True,
        "params": params,
        "recall_at_k": {
            "id-train-loo": {str(k): float(v) for k, v in zip(ks, loo_values, strict=True)},
            "id-test": {str(k): float(v) for k, v in zip(ks, test_values, strict=True)},
        },
        "recall_queries": {
            "id-train-loo": min(s.recall_sample, len(bank)),
            "id-test": min(s.recall_sample, len(test)),
        },
        "recall_seed": s.seed,
        "exact_fallback_rows": int(values[-1]),
        "note": "recall@k = mean fraction of the exact k nearest neighbours (float32 cosine, same bank) "
        "that the approximate search returned, on seeded samples of the queries",
    }


# --------------------------------------------------------------------------- the analyses


def norms(run: Run, samples: pd.DataFrame) -> Analysis:
    """Mean and median norm of every set and head, raw and over ID-train's mean (paper Fig. 3)."""
    table = norm_summary(samples, run.heads)
    summary: dict[str, Any] = {}
    for row in table.itertuples(index=False):
        entry = summary.setdefault(
            f"{row.dataset}/{row.split}", {"role": row.role, "n": int(row.n), "heads": {}}
        )
        entry["heads"][row.head] = {
            "mean": row.mean,
            "median": row.median,
            "mean_scaled": row.mean_scaled,
            "median_scaled": row.median_scaled,
        }
    return Analysis(
        {"norms": table},
        {"norms": summary},
        lambda record: norms_section(record, table, samples),
    )


def buckets(run: Run, samples: pd.DataFrame) -> Analysis:
    """kNN accuracy per norm bucket (paper Fig. 4 left), the overall kNN accuracy, and the Spearman
    correlation of norm and kNN correctness."""
    s, primary = run.settings, run.primary
    frames = []
    for role, series in (
        ("id-test", "ID-test (kNN fit on ID-train)"),
        ("id-train", "ID-train (leave-one-out)"),
    ):
        rows = samples[samples["role"] == role]
        curve = bucket_curve(
            rows[f"norm_{primary}"].to_numpy(),
            rows["knn_correct"].astype(float).to_numpy(),
            n_buckets=s.buckets,
            scaling=s.bucket_scaling,
            min_count=s.min_bucket_count,
        )
        curve.insert(0, "series", series)
        curve.insert(1, "role", role)
        curve.insert(2, "head", primary)
        frames.append(curve)
    curves = pd.concat(frames, ignore_index=True)
    spearman = norm_correctness_spearman(samples, primary, seed=s.seed)
    correct = samples["knn_correct"].astype(float)
    summary = {
        "knn_accuracy": {
            "id-test": float(correct[samples["role"] == "id-test"].mean()),
            "id-train-loo": float(correct[samples["role"] == "id-train"].mean()),
        },
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
    }
    unit = id_train_mean_norm(samples, primary)
    return Analysis(
        {"buckets": curves, "spearman": spearman},
        summary,
        lambda record: buckets_section(record, curves, spearman, unit),
    )


def ood(run: Run, samples: pd.DataFrame, score_columns: list[str]) -> Analysis:
    """Every scorer's metrics per OOD set against ID-test, near-/far-OOD means and the verdicts."""
    metrics, roc = evaluate_ood(samples, score_columns, run.primary, run.ood_groups, seed=run.settings.seed)
    means = group_means(metrics)
    per_set: dict[str, Any] = {}
    for row in metrics.to_dict("records"):
        per_set.setdefault(row["ood_set"], {})[row["scorer"]] = {
            **{key: row[key] for key in METRIC_KEYS},
            "auroc_ci": [row["auroc_ci_low"], row["auroc_ci_high"]],
        }
    groups: dict[str, Any] = {}
    for row in means.to_dict("records"):
        entry = groups.setdefault(row["group"], {"ood_sets": row["ood_sets"].split(";"), "scorers": {}})
        entry["scorers"][row["scorer"]] = {key: row[key] for key in METRIC_KEYS}
    return Analysis(
        {"ood": metrics, "ood_groups": means},
        {
            "ood": per_set,
            "ood_groups": groups,
            "ood_verdicts": ood_verdicts(metrics),
            "ood_convention": OOD_CONVENTION,
        },
        lambda record: ood_section(record, metrics, roc),
    )


def exemplars(run: Run, samples: pd.DataFrame) -> Analysis:
    """The highest- and lowest-norm samples of each class of the ID sets, and of each OOD set overall."""
    frames = []
    start = 0
    norms_of = samples[f"norm_{run.primary}"].to_numpy()
    for s in run.sets:
        n = len(s)
        by_class = s.role != "ood"  # ID sets are labelled throughout (check_sets)
        table = norm_exemplars(
            norms_of[start : start + n],
            s.labels,
            per_group=run.settings.exemplars_per_class * (1 if by_class else 2),
            by_class=by_class,
            class_names=s.classes,
        )
        start += n
        frames.append(
            describe_exemplars(table, dataset=s.name, split=s.split, role=s.role, index=s.index, ids=s.ids)
        )
    table = pd.concat(frames, ignore_index=True)
    images = {s.key: s.imageset for s in run.sets if s.imageset is not None}
    return Analysis({"exemplars": table}, {}, lambda record: exemplars_section(record, table, images))


def human_labels(run: Run, samples: pd.DataFrame) -> Analysis:
    """Add the ``human_*`` columns (CIFAR-10N/100N, CIFAR-10H) and their curves and correlations
    against the norm (paper Fig. 4 middle and right), where a label set applies."""
    s = run.settings
    if s.named_id_dataset is None:
        return Analysis({}, {}, notes=[] if s.human == "none" else [NO_ID_DATASET_NOTE])
    label_sets, notes = human.select_label_sets(s.named_id_dataset, s.human, s.data_root)
    if not label_sets:
        return Analysis({}, {}, notes=notes)
    frames = [human.human_columns(label_sets, a.index, a.labels, a.role) for a in run.sets]
    # nullable integers: a role without a label set gets missing values, not float NaN
    frames = [
        f.astype({c: "Int64" for c in f.columns if pd.api.types.is_integer_dtype(f[c])}) for f in frames
    ]
    extra = pd.concat(frames, ignore_index=True)
    if extra.columns.empty:
        return Analysis({}, {}, notes=notes)
    for column in extra.columns:
        samples[column] = extra[column].array
    norm = f"norm_{run.primary}"
    curves = human.human_curves(
        samples, norm, n_buckets=s.buckets, scaling=s.bucket_scaling, min_count=s.human_min_bucket_count
    )
    correlations = human.human_correlations(samples, norm, seed=s.seed)
    if curves.empty:
        return Analysis({}, {}, notes=notes)
    unit = id_train_mean_norm(samples, run.primary)
    return Analysis(
        {"human_curves": curves, "human_correlations": correlations},
        {"human": human.human_summary(curves, correlations)} if not correlations.empty else {},
        lambda record: human_section(
            curves,
            correlations,
            min_count=s.human_min_bucket_count,
            unit=unit,
            signal_label=human.signal_label,
        ),
        notes,
    )
