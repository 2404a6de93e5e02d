"""Embedding norms against human labellers (the paper's Figure 4, middle and right).

Draganov et al. (2025), Section 5: "Using the Cifar-10-N and Cifar-100-N labels [...], where each
training sample is labeled by the consensus label over multiple human annotators, Figure 4 (middle)
shows higher embedding norms correspond to more accurate consensus labels. Similarly, the Cifar-10-H
dataset [...] provides human predictions for each image from the Cifar-10 test set, allowing us to
evaluate the entropy of the label distribution. Figure 4 (right) shows that, as the embedding norms
grow, the human labels have less entropy."

Three steps, each a pure function:

* :func:`select_label_sets` decides which label sets apply to the in-distribution dataset;
* :func:`human_columns` turns them into per-sample ``human_*`` fields, aligned by each row's
  *original* index (so subsets and partial mirrors line up);
* :func:`human_curves` / :func:`human_correlations` summarise those fields against a norm column:
  per norm bucket (buckets with fewer than 50 samples hidden, as in the paper) and as a Spearman
  correlation with a seeded bootstrap confidence interval.

Per-sample fields (prefix ``human_`` then the label set's short name, e.g. ``c10n``):

* label sets of single annotations (CIFAR-10N, CIFAR-100N): for each annotation field,
  ``_<field>_correct`` (the annotation equals the dataset label) and, for the consensus field
  named by the manifest, ``_<field>_label``;
* label distributions (CIFAR-10H ``counts``): ``_entropy`` (base 2, in bits, of the label
  distribution), ``_majority_disagrees`` (the true class is not among the most-voted classes,
  so a tie that includes it counts as agreement), ``_majority_label`` (ties: smallest class),
  ``_annotations`` (number of annotations).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from normprobe.analyses.buckets import CURVE_COLUMNS, bucket_curve
from normprobe.analyses.settings import HUMAN_MIN_BUCKET_COUNT, comma_list
from normprobe.data import load_labels, load_manifest, manifest_names, resolve_data_root
from normprobe.errors import NormprobeError
from normprobe.metrics import bootstrap_spearman

PREFIX = "human_"

ROLE_SPLITS = {"id-train": "train", "id-test": "test"}
"""The image split each analysis role holds; a label set applies to the role holding its split."""

# Per-sample field suffix -> (statistic computed per bucket, its axis title).
SIGNAL_KINDS = {
    "_correct": ("accuracy", "accuracy of the human label"),
    "_entropy": ("mean entropy (bits)", "entropy of the human labels (bits)"),
    "_majority_disagrees": ("fraction", "human majority disagrees with the label"),
}


CURVE_COLUMNS_HUMAN = ("signal", "label_set", "statistic", *CURVE_COLUMNS)


def short_name(label_set: str) -> str:
    """``cifar10n`` -> ``c10n``: the column infix of a label set."""
    return label_set.replace("cifar", "c")


def _field_short(field: str) -> str:
    """``aggre_label`` -> ``aggre``, ``random_label1`` -> ``random1``."""
    return field.replace("_label", "")


def _annotation_fields(manifest_fields: Sequence[str], consensus: str | None) -> list[str]:
    """Fields holding one human label per image, consensus first; ``clean*`` fields are the dataset's own labels."""
    fields = [f for f in manifest_fields if "_label" in f and not f.startswith("clean")]
    return sorted(fields, key=lambda f: (f != consensus, fields.index(f)))


def _explicit_names(id_dataset: str | None, requested: str | Sequence[str] | None) -> list[str] | None:
    """The label sets named by ``requested`` (None for ``auto``), each checked to describe ``id_dataset``."""
    if requested is None or requested == "auto":
        return None
    names = list(comma_list(requested)) if isinstance(requested, str) else [n for n in requested if n]
    if names == ["none"] or not names:
        return []
    known = manifest_names("labels")
    for name in names:
        if name not in known:
            raise NormprobeError(
                f"unknown human label set {name!r} (known: {', '.join(known)}, or auto / none)"
            )
        images = load_manifest(name).raw["images"]
        if images["dataset"] != id_dataset:
            raise NormprobeError(
                f"human label set {name} describes {images['dataset']} {images['split']} images, "
                f"but the in-distribution set is {id_dataset or 'not a named dataset'}"
            )
    return names


def check_label_sets(
    id_dataset: str | None,
    requested: str | Sequence[str] | None = "auto",
    data_root: str | Path | None = None,
) -> None:
    """Before any expensive work: the errors :func:`select_label_sets` would raise, without reading the files."""
    for name in _explicit_names(id_dataset, requested) or ():
        file = load_manifest(name).mirror["file"]
        if not (resolve_data_root(data_root) / file).is_file():
            load_labels(name, data_root)  # raises the one "label file ... not found" message


def select_label_sets(
    id_dataset: str | None,
    requested: str | Sequence[str] | None = "auto",
    data_root: str | Path | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """The human label sets for an analysis whose in-distribution set is ``id_dataset``.

    ``requested``: ``"auto"`` (or None) loads every label set whose manifest describes ``id_dataset``
    and skips, with a note, those whose file is not in the data root; ``"none"`` (or an empty list)
    uses none; a list or comma-separated string (``"cifar10n,cifar10h"``) names the sets, and a set
    that does not describe ``id_dataset`` or whose file is missing is a :class:`NormprobeError`.
    Returns ``({name: fields}, notes)``.
    """
    names = _explicit_names(id_dataset, requested)
    if names is not None:
        return {name: load_labels(name, data_root) for name in names}, []
    label_sets: dict[str, dict[str, np.ndarray]] = {}
    notes = []
    for name in manifest_names("labels"):
        if load_manifest(name).raw["images"]["dataset"] != id_dataset:
            continue
        try:
            label_sets[name] = load_labels(name, data_root)
        except NormprobeError as err:
            notes.append(f"human labels {name} skipped: {err}")
    return label_sets, notes


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (base 2) of each row's label distribution ``counts / counts.sum()``; 0·log 0 = 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / totals
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    entropy = terms.sum(axis=1)
    entropy[totals[:, 0] == 0] = np.nan
    return entropy


def _as_boolean(values: np.ndarray, known: np.ndarray) -> pd.arrays.BooleanArray:
    """A nullable boolean column: ``values`` where ``known``, missing elsewhere."""
    out = pd.array(values.astype(bool), dtype="boolean")
    out[~known] = pd.NA
    return out


def _check_alignment(
    name: str, fields: Mapping[str, np.ndarray], index: np.ndarray, labels: np.ndarray
) -> None:
    """The label set's copy of the dataset labels must match the images' labels at the same original index."""
    clean = fields.get("clean_label")
    if clean is None:
        return
    known = labels >= 0
    wrong = int((clean[index][known] != labels[known]).sum())
    if wrong:
        raise NormprobeError(
            f"human label set {name} does not line up with these images: its clean_label differs from the "
            f"dataset label for {wrong} of {int(known.sum())} samples (wrong dataset, split or order?)"
        )


def human_columns(
    label_sets: Mapping[str, Mapping[str, np.ndarray]],
    imageset_index: np.ndarray,
    labels: np.ndarray,
    role: str,
) -> pd.DataFrame:
    """Per-sample ``human_*`` fields for the rows of one role (``id-train``, ``id-test``, ``ood``).

    ``imageset_index`` is each row's original position in its split (``ImageSet.index``), used to
    look the human labels up; ``labels`` the dataset's labels (-1 unknown, giving missing values).
    Only label sets describing the split this role holds contribute; the frame has one row per
    sample (no columns when none applies).
    """
    index = np.asarray(imageset_index, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if index.shape != labels.shape or index.ndim != 1:
        raise NormprobeError(
            f"human_columns: index {index.shape} and labels {labels.shape} must be equal-length vectors"
        )
    columns: dict[str, Any] = {}
    known = labels >= 0
    safe_labels = np.where(known, labels, 0)
    for name, fields in label_sets.items():
        manifest = load_manifest(name)
        if manifest.raw["images"]["split"] != ROLE_SPLITS.get(role):
            continue
        size = len(next(iter(fields.values())))
        if len(index) and (index.min() < 0 or index.max() >= size):
            raise NormprobeError(
                f"human label set {name} covers original indices 0..{size - 1}, but the images have index "
                f"{int(index.min())}..{int(index.max())}"
            )
        _check_alignment(name, fields, index, labels)
        infix = PREFIX + short_name(name)
        if "counts" in fields:
            counts = np.asarray(fields["counts"])[index]
            majority = counts.argmax(axis=1)
            own_votes = np.take_along_axis(counts, safe_labels[:, None], axis=1)[:, 0]
            columns[f"{infix}_entropy"] = _entropy_bits(counts)
            columns[f"{infix}_majority_disagrees"] = _as_boolean(own_votes < counts.max(axis=1), known)
            columns[f"{infix}_majority_label"] = majority.astype(np.int64)
            columns[f"{infix}_annotations"] = counts.sum(axis=1).astype(np.int64)
            continue
        consensus = manifest.raw.get("consensus")
        for field in _annotation_fields(list(manifest.raw["fields"]), consensus):
            human = np.asarray(fields[field])[index]
            if field == consensus:
                columns[f"{infix}_{_field_short(field)}_label"] = human.astype(np.int64)
            columns[f"{infix}_{_field_short(field)}_correct"] = _as_boolean(human == labels, known)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(index)))


def signal_columns(samples: pd.DataFrame) -> list[str]:
    """The ``human_*`` columns that are summarised per bucket (not the label and count fields)."""
    return [c for c in samples.columns if c.startswith(PREFIX) and any(c.endswith(s) for s in SIGNAL_KINDS)]


def _label_set_of(column: str) -> str:
    """``human_c10n_aggre_correct`` -> ``c10n``."""
    return column[len(PREFIX) :].split("_")[0]


_FIELD_NAMES = {"aggre": "consensus label", "worse": "worst label", "noisy": "label"}


@functools.cache
def _label_set_titles() -> dict[str, str]:
    """Short name (``c10n``) -> title of every label set manifest (package data, read once; the first
    manifest in name order wins a shared short name)."""
    titles: dict[str, str] = {}
    for name in manifest_names("labels"):
        titles.setdefault(short_name(name), str(load_manifest(name).raw.get("title", name)))
    return titles


def signal_label(column: str) -> str:
    """A readable name: ``human_c10n_aggre_correct`` -> ``CIFAR-10N consensus label is correct``."""
    infix, _, rest = column[len(PREFIX) :].partition("_")
    # the report labels every curve and table row: parsing each manifest each time took seconds
    title = _label_set_titles().get(infix, infix)
    if rest == "entropy":
        return f"{title} label entropy (bits)"
    if rest == "majority_disagrees":
        return f"{title} majority disagrees with the dataset label"
    field = rest.removesuffix("_correct")
    name = _FIELD_NAMES.get(field, f"annotator {field[6:]}'s label" if field.startswith("random") else field)
    return f"{title} {name} is correct"


def _signal_kind(column: str) -> tuple[str, str]:
    return next(kind for suffix, kind in SIGNAL_KINDS.items() if column.endswith(suffix))


def _signal_rows(
    samples: pd.DataFrame, norm_column: str, column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(norms, signal as float) over the rows where both are present, and the mask of those rows."""
    if norm_column not in samples.columns:
        raise NormprobeError(
            f"no column {norm_column!r} in the samples (columns: {', '.join(samples.columns)})"
        )
    signal = samples[column].astype("Float64")
    norms = samples[norm_column].astype("Float64")
    present = (signal.notna() & norms.notna()).to_numpy()
    return (
        norms.to_numpy(dtype=np.float64, na_value=np.nan)[present],
        signal.to_numpy(dtype=np.float64, na_value=np.nan)[present],
        present,
    )


def human_curves(
    samples: pd.DataFrame,
    norm_column: str,
    *,
    n_buckets: int = 20,
    scaling: str = "max",
    min_count: int = HUMAN_MIN_BUCKET_COUNT,
) -> pd.DataFrame:
    """Each human signal per norm bucket: the paper's Figure 4 (middle: accuracy, right: entropy).

    The norms of the rows carrying a signal (the CIFAR-10 train set for CIFAR-10N, the test set for
    CIFAR-10H) are bucketed by :func:`normprobe.analyses.buckets.bucket_curve` (paper: norms divided
    by their maximum, 20 buckets); ``mean`` is the signal's mean per bucket (an accuracy, a mean
    entropy or a fraction). Buckets with fewer than ``min_count`` samples (50, as in the paper) have
    ``shown = False``. Columns: signal, label_set, statistic, then :data:`~normprobe.analyses.buckets.CURVE_COLUMNS`.
    """
    frames = []
    for column in signal_columns(samples):
        norms, signal, _ = _signal_rows(samples, norm_column, column)
        if len(norms) == 0:
            continue
        curve = bucket_curve(norms, signal, n_buckets=n_buckets, scaling=scaling, min_count=min_count)
        curve.insert(0, "signal", column)
        curve.insert(1, "label_set", _label_set_of(column))
        curve.insert(2, "statistic", _signal_kind(column)[0])
        frames.append(curve)
    if not frames:
        return pd.DataFrame(columns=list(CURVE_COLUMNS_HUMAN))
    return pd.concat(frames, ignore_index=True)


def human_correlations(
    samples: pd.DataFrame, norm_column: str, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Spearman correlation between the norm and each human signal, with a percentile bootstrap interval.

    A positive rho for ``_correct`` and a negative one for ``_entropy`` / ``_majority_disagrees`` is
    the paper's finding (larger norm: humans more accurate and more in agreement). Signals over the
    same rows share their bootstrap resamples.
    Columns: signal, label_set, n, mean (of the signal), spearman_rho, p_value, ci_low, ci_high, confidence, n_boot, seed.
    """
    if not 0 < confidence < 1:
        raise NormprobeError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1 - confidence) / 2
    rows = {}
    groups: dict[bytes, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for column in signal_columns(samples):
        norms, signal, present = _signal_rows(samples, norm_column, column)
        groups.setdefault(np.packbits(present).tobytes(), []).append((column, norms, signal))
    for members in groups.values():
        norms = members[0][1]
        varying = [(c, y) for c, _, y in members if len(y) >= 3 and np.ptp(y) > 0 and np.ptp(norms) > 0]
        boots = (
            bootstrap_spearman(norms, [y for _, y in varying], n_boot=n_boot, seed=seed) if varying else None
        )
        intervals = (
            {c: np.nanquantile(boots[i], [alpha, 1 - alpha]) for i, (c, _) in enumerate(varying)}
            if boots is not None
            else {}
        )
        for column, _, signal in members:
            if len(signal) < 3:
                continue
            rho = p_value = np.nan
            if column in intervals:
                result = stats.spearmanr(norms, signal)
                rho, p_value = float(result.statistic), float(result.pvalue)
            low, high = intervals.get(column, (np.nan, np.nan))
            rows[column] = {
                "signal": column,
                "label_set": _label_set_of(column),
                "n": len(signal),
                "mean": float(signal.mean()),
                "spearman_rho": rho,
                "p_value": p_value,
                "ci_low": float(low),
                "ci_high": float(high),
                "confidence": confidence,
                "n_boot": n_boot,
                "seed": seed,
            }
    columns = [
        "signal",
        "label_set",
        "n",
        "mean",
        "spearman_rho",
        "p_value",
        "ci_low",
        "ci_high",
        "confidence",
        "n_boot",
        "seed",
    ]
    return pd.DataFrame([rows[c] for c in signal_columns(samples) if c in rows], columns=columns)


def human_summary(curves: pd.DataFrame, correlations: pd.DataFrame) -> dict[str, Any]:
    """A JSON-ready summary per signal: n, overall mean, Spearman rho with its interval, the shown curve's ends."""
    summary: dict[str, Any] = {}
    for row in correlations.itertuples(index=False):
        shown = curves[(curves["signal"] == row.signal) & curves["shown"].astype(bool)]
        entry: dict[str, Any] = {
            "label_set": row.label_set,
            "statistic": _signal_kind(row.signal)[0],
            "n": int(row.n),
            "mean": _json_float(row.mean),
            "spearman_rho": _json_float(row.spearman_rho),
            "p_value": _json_float(row.p_value),
            "ci": [_json_float(row.ci_low), _json_float(row.ci_high)],
            "confidence": float(row.confidence),
        }
        if len(shown):
            for key, at in (("lowest_shown_bucket", 0), ("highest_shown_bucket", -1)):
                entry[key] = {
                    "bucket": int(shown["bucket"].iloc[at]),
                    "center": float(shown["center"].iloc[at]),
                    "count": int(shown["count"].iloc[at]),
                    "mean": _json_float(shown["mean"].iloc[at]),
                }
        summary[row.signal] = entry
    return summary


def _json_float(value: Any) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value
