"""OOD evaluation: every scorer fitted on ID-train, each OOD set against ID-test, one score direction.

Convention (everywhere in normprobe): a larger score means *more familiar* (in-distribution).
The in-distribution set is ID-test. Every metric of :data:`normprobe.metrics.OOD_METRICS` is
reported under a name that states its positive class: AUROC is the chance that a random ID-test
sample outscores a random OOD sample; ``fpr@95tpr_id`` is the fraction of OOD samples accepted at
the threshold keeping 95% of ID-test, ``fpr@95tpr_ood`` (OpenOOD v1.5, pytorch-ood) the fraction
of ID-test flagged at the threshold flagging 95% of the OOD set; the AUPRs come as average
precision (``_ap``) and trapezoid-integrated PR curves (``_trapz``, OpenOOD / pytorch-ood), each
with ID (``aupr_in``) or OOD (``aupr_out``) positive.

Scorers (``normprobe.scores``): ``norm`` on every head (``norm`` for the primary head,
``norm@<head>`` for the others) and ``knn`` (Sun et al., 2022), ``mahalanobis`` and ``norm+knn``
on the primary head. For ID-train rows, kNN-based scores leave the point itself out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from normprobe import metrics, scores
from normprobe.cache import Cache
from normprobe.errors import NormprobeError
from normprobe.knn import CosineIndex

ROC_POINTS = 201
"""ROC curves are stored on a fixed grid of false positive rates (exact upper envelope), not per sample."""

METRIC_KEYS = tuple(metric.key for metric in metrics.OOD_METRICS)
METRIC_COLUMNS = (
    "ood_set",
    "group",
    "scorer",
    "method",
    "head",
    "n_id",
    "n_ood",
    *METRIC_KEYS,
    "auroc_ci_low",
    "auroc_ci_high",
)
AUROC_CONFIDENCE = 0.95
"""Level of the AUROC bootstrap intervals (``auroc_ci_low`` / ``auroc_ci_high``)."""
ID_ROLE = "id-test"
"""The in-distribution side of every OOD comparison."""
OOD_GROUPS = ("near", "far")
"""OpenOOD's two kinds of OOD set, whose mean metrics it reports: near-OOD (new classes among similar
images: CIFAR-100 and Tiny-ImageNet for a CIFAR-10 model) and far-OOD (other image statistics: MNIST,
Fashion-MNIST). A dataset manifest's ``ood_group`` gives the default; user folders and files are far."""


def scorer_names() -> list[str]:
    return list(scores.SCORERS)


def column_name(scorer: str, head: str, primary: str) -> str:
    """``norm`` on the primary head is ``norm``; on another head ``norm@<head>``."""
    return scorer if head == primary else f"{scorer}@{head}"


def fit_and_score(
    *,
    train: dict[str, np.ndarray],
    train_labels: np.ndarray,
    others: Sequence[dict[str, np.ndarray]],
    heads: Sequence[str],
    primary: str,
    scorers: Sequence[str],
    ood_k: int,
    device: torch.device | None = None,
    cache: Cache | None = None,
    keys: Sequence[dict[str, str]] | None = None,
    index: CosineIndex | Callable[[], CosineIndex] | None = None,
    search_tag: str = "",
) -> tuple[dict[str, np.ndarray], bool]:
    """Score every row (ID-train first, then each of ``others`` in order) with every scorer.

    Returns ``({column name: scores}, all_from_cache)``, scores concatenated in row order. Each
    scorer is built by its class's ``from_settings(k=ood_k)`` and fitted on ``train`` (placed on
    ``device``, default the CPU, where the scoring then runs); ID-train rows get the scorer's
    ``train_scores_`` (the point itself left out where the scorer uses neighbours). With a
    ``cache`` and ``keys`` (the embedding cache key of each head, for train then each of
    ``others``), each set's scores are cached under the scorer's parameters, and a scorer is
    fitted only if some are missing. ``index``: an index of ``train[primary]`` shared by the
    neighbour-based scorers (and the kNN classifier), so that each set is searched once, or a
    function returning it (called only when some scores are not cached). ``search_tag`` names an
    approximate search behind ``index`` (:func:`normprobe.knn.approximate_params`) and enters the
    cache keys.
    """
    plan = [(name, primary) for name in scorers]
    if "norm" in scorers:
        plan += [("norm", head) for head in heads if head != primary]
    sets = [train, *others]
    out: dict[str, np.ndarray] = {}
    all_cached = True
    for name, head in plan:
        scorer = _LazyScorer(
            scores.scorer_class(name).from_settings(k=ood_k),
            torch.as_tensor(train[head], device=device),
            train_labels,
            index if head == primary else None,
        )
        params = repr(sorted(scorer.scorer.get_params().items()))
        parts = []
        for i, embeddings in enumerate(sets):
            queries = None if i == 0 else torch.as_tensor(embeddings[head], device=device)
            if cache is not None and keys is not None:
                key_parts = (name, params, keys[0][head], keys[i][head], "loo" if i == 0 else "")
                values, hit = cache.memoize(
                    "analyze-score/2",
                    key_parts + ((search_tag,) if search_tag else ()),
                    lambda queries=queries, scorer=scorer: scorer.score_samples(queries),  # type: ignore[misc]
                )
            else:
                values, hit = scorer.score_samples(queries), False
            all_cached = all_cached and hit
            parts.append(np.asarray(values, dtype=np.float64))
        values = np.concatenate(parts)
        if not np.isfinite(values).all():
            raise NormprobeError(f"scorer {name} on head {head} produced NaN or infinite scores")
        out[column_name(name, head, primary)] = values
    return out, all_cached


class _LazyScorer:
    """A scorer fitted on its first use: when the cache holds every set's scores, it is never fitted
    (nor the shared index built)."""

    def __init__(
        self,
        scorer: scores.Scorer,
        train: torch.Tensor,
        labels: np.ndarray,
        index: CosineIndex | Callable[[], CosineIndex] | None,
    ) -> None:
        self.scorer, self.train, self.labels, self.index = scorer, train, labels, index
        self.fitted = False

    def score_samples(self, queries: torch.Tensor | None) -> np.ndarray:
        """Scores of ``queries``; None: ID-train's own (``train_scores_``, leave-one-out where it applies)."""
        if not self.fitted:
            shared = self.index() if callable(self.index) else self.index
            self.scorer.fit(self.train, self.labels, index=shared)
            self.fitted = True
        return self.scorer.score_samples(queries)


def ood_group(names: Sequence[str], default: str | None, near: Sequence[str], far: Sequence[str]) -> str:
    """The group of the OOD set known by ``names`` (its ``--ood`` value and dataset name).

    ``near`` / ``far`` (``--near`` / ``--far``) naming it win; then ``default`` (the manifest's
    ``ood_group``); a set neither names is far, as OpenOOD files anything unlike the training data.
    """
    if any(n in near for n in names):
        return "near"
    if any(n in far for n in names):
        return "far"
    if default is not None and default not in OOD_GROUPS:
        raise NormprobeError(f"ood_group {default!r} of {names[0]} is not one of {', '.join(OOD_GROUPS)}")
    return default or "far"


def group_means(table: pd.DataFrame) -> pd.DataFrame:
    """Per group and scorer, every metric's mean over the group's OOD sets (OpenOOD's near-/far-OOD rows).

    ``table`` is :func:`evaluate_ood`'s; columns: ``group``, ``scorer``, ``n_sets``, ``ood_sets``
    (``;``-joined) and :data:`METRIC_KEYS`. Groups without sets have no rows.
    """
    rows = []
    for (group, scorer), part in table.groupby(["group", "scorer"], sort=False):
        rows.append(
            {
                "group": group,
                "scorer": scorer,
                "n_sets": len(part),
                "ood_sets": ";".join(part["ood_set"]),
                **{key: float(part[key].mean()) for key in METRIC_KEYS},
            }
        )
    frame = pd.DataFrame(rows, columns=["group", "scorer", "n_sets", "ood_sets", *METRIC_KEYS])
    order = {group: i for i, group in enumerate(OOD_GROUPS)}
    return frame.sort_values("group", key=lambda g: g.map(order), kind="stable", ignore_index=True)


def roc_points(
    id_scores: np.ndarray, ood_scores: np.ndarray, n_points: int = ROC_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """ROC of ID (positive) vs OOD on a grid of false positive rates: the best TPR at FPR <= each grid value."""
    fpr, tpr = metrics.roc_curve(id_scores, ood_scores)
    grid = np.linspace(0.0, 1.0, n_points)
    best = np.maximum.accumulate(tpr)
    at = np.searchsorted(fpr, grid, side="right") - 1
    return grid, best[np.clip(at, 0, len(best) - 1)]


def evaluate_ood(
    samples: pd.DataFrame,
    score_columns: Sequence[str],
    primary: str,
    groups: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and ROC curves of every scorer for every OOD set (rows with role ``ood``) vs ID-test.

    Returns ``(metrics, roc)``: ``metrics`` has :data:`METRIC_COLUMNS` (``head`` names the head a
    scorer ran on, ``primary`` for the unsuffixed columns; ``group`` comes from ``groups``, OOD set
    ``dataset/split`` -> ``near`` | ``far``, far where absent; ``auroc_ci_*`` is the 95%
    percentile interval of ``n_boot`` stratified bootstrap resamples, seeded with ``seed``, from
    :func:`normprobe.metrics.bootstrap_auroc`, the scorers of one OOD set sharing their resamples
    through :func:`normprobe.metrics.bootstrap_aurocs`); ``roc`` has ``ood_set``, ``scorer``, ``fpr``,
    ``tpr``.
    """
    groups = groups or {}
    id_rows = samples["role"] == ID_ROLE
    if not id_rows.any():
        raise NormprobeError("OOD evaluation needs ID-test rows")
    ood = samples[samples["role"] == "ood"]
    rows, curves = [], []
    id_scores = {
        column: samples.loc[id_rows, f"score_{column}"].to_numpy(np.float64) for column in score_columns
    }
    for (dataset, split), part in ood.groupby(["dataset", "split"], sort=False):
        ood_set = f"{dataset}/{split}"
        ood_scores = {column: part[f"score_{column}"].to_numpy(np.float64) for column in score_columns}
        # every scorer of this set sees the same resamples (same seed and sizes): drawn once
        intervals = (
            metrics.bootstrap_aurocs(
                [id_scores[c] for c in score_columns],
                [ood_scores[c] for c in score_columns],
                n_resamples=n_boot,
                confidence=AUROC_CONFIDENCE,
                seed=seed,
            )
            if score_columns
            else []
        )
        for column, interval in zip(score_columns, intervals, strict=True):
            positive, negative = id_scores[column], ood_scores[column]
            method, _, head = column.partition("@")
            rows.append(
                {
                    "ood_set": ood_set,
                    "group": groups.get(ood_set, "far"),
                    "scorer": column,
                    "method": method,
                    "head": head or primary,
                    "n_id": len(positive),
                    "n_ood": len(negative),
                    **metrics.ood_metrics(positive, negative),
                    "auroc_ci_low": interval.low,
                    "auroc_ci_high": interval.high,
                }
            )
            fpr, tpr = roc_points(positive, negative)
            curves.append(pd.DataFrame({"ood_set": ood_set, "scorer": column, "fpr": fpr, "tpr": tpr}))
    roc = (
        pd.concat(curves, ignore_index=True)
        if curves
        else pd.DataFrame(columns=["ood_set", "scorer", "fpr", "tpr"])
    )
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS)), roc


def ood_verdicts(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """What :func:`evaluate_ood`'s ``table`` says about each OOD set, for the report's first screen.

    Per OOD set: ``best`` (the scorer of largest AUROC) with its ``auroc`` and ``auroc_ci``;
    ``detected`` (that interval lies above 0.5); ``within_interval`` (other scorers whose AUROC
    falls inside the best one's interval: the data do not tell them apart); ``inverted`` (scorers
    whose whole interval lies below 0.5: they rank this set as *more* familiar than ID-test, a
    real signal in the wrong direction rather than no signal).
    """
    verdicts: dict[str, dict[str, Any]] = {}
    for ood_set, part in table.groupby("ood_set", sort=False):
        best = part.loc[part["auroc"].idxmax()]
        low, high = float(best["auroc_ci_low"]), float(best["auroc_ci_high"])
        others = part[part["scorer"] != best["scorer"]]
        verdicts[str(ood_set)] = {
            "group": best["group"],
            "best": best["scorer"],
            "auroc": float(best["auroc"]),
            "auroc_ci": [low, high],
            "detected": low > 0.5,
            "within_interval": others.loc[others["auroc"] >= low, "scorer"].tolist(),
            "inverted": part.loc[part["auroc_ci_high"] < 0.5, "scorer"].tolist(),
        }
    return verdicts


def norm_correctness_spearman(
    samples: pd.DataFrame, primary: str, *, seed: int = 0, n_boot: int = 1000, confidence: float = 0.95
) -> pd.DataFrame:
    """Spearman's rho between the primary-head norm and kNN correctness, per ID role, with a bootstrap CI.

    The interval is the percentile interval of ``n_boot`` seeded paired resamples from
    :func:`normprobe.metrics.spearman` (its vectorised tie-exact bootstrap: correctness is binary, so
    nearly every rank is tied).
    """
    rows = []
    for role, name in (("id-test", "id-test"), ("id-train", "id-train-loo")):
        part = samples[samples["role"] == role]
        norms = part[f"norm_{primary}"].to_numpy(np.float64)
        correct = part["knn_correct"].astype(float).to_numpy()
        result = metrics.spearman(norms, correct, n_boot=n_boot, confidence=confidence, seed=seed)
        rows.append(
            {
                "role": name,
                "head": primary,
                "n": len(norms),
                "rho": result.rho,
                "p_value": result.p_value,
                "ci_low": result.ci_low,
                "ci_high": result.ci_high,
                "n_boot": n_boot,
                "seed": seed,
            }
        )
    return pd.DataFrame(rows)
