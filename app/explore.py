"""Plain, Streamlit-free logic of the explorer: groups, filters, rankings, image grids and CSV export.

Everything here is vectorised over the samples table (pandas / numpy), so it stays fast at 100k rows,
and is tested directly. Score direction, as everywhere in normprobe: larger = more familiar, so the
*unfamiliar* samples are those with the smallest norm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from normprobe.errors import NormprobeError

ROLE_ORDER = ("id-train", "id-test", "ood")
Correctness = Literal["all", "correct", "incorrect"]


@dataclass(frozen=True)
class Group:
    """One dataset split of a run (an ID split or an OOD set)."""

    dataset: str
    split: str
    role: str
    n: int

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.split} ({self.role})"


def groups(samples: pd.DataFrame) -> list[Group]:
    """The run's dataset splits, ID train first, then ID test, then the OOD sets in table order."""
    counts = samples.groupby(["dataset", "split", "role"], sort=False, observed=True).size()
    found = [Group(str(d), str(s), str(r), int(n)) for (d, s, r), n in counts.items()]
    rank = {role: i for i, role in enumerate(ROLE_ORDER)}
    return sorted(found, key=lambda g: rank.get(g.role, len(ROLE_ORDER)))


def heads(samples: pd.DataFrame) -> list[str]:
    """Heads with a ``norm_<head>`` column (``norm_scaled`` is the scaled norm, not a head)."""
    return [c.removeprefix("norm_") for c in samples.columns if c.startswith("norm_") and c != "norm_scaled"]


def scorers(samples: pd.DataFrame) -> list[str]:
    return [c.removeprefix("score_") for c in samples.columns if c.startswith("score_")]


def group_mask(samples: pd.DataFrame, group: Group) -> np.ndarray:
    return ((samples["dataset"] == group.dataset) & (samples["split"] == group.split)).to_numpy()


def select(
    samples: pd.DataFrame,
    group: Group,
    *,
    labels: list[int] | None = None,
    correctness: Correctness = "all",
) -> pd.DataFrame:
    """Rows of ``group``, optionally only the given labels and only correctly / incorrectly kNN-classified rows.

    Rows whose correctness is unknown (OOD sets, unlabelled rows) are dropped by the correct/incorrect filters.
    """
    mask = group_mask(samples, group)
    if labels:
        mask = mask & samples["label"].isin(labels).to_numpy()
    if correctness != "all":
        correct = samples["knn_correct"].astype("boolean")
        wanted = correct if correctness == "correct" else ~correct
        mask = mask & wanted.fillna(False).to_numpy(dtype=bool)
    return samples[mask]


def ranked(frame: pd.DataFrame, column: str, *, ascending: bool = True) -> pd.DataFrame:
    """``frame`` sorted by ``column`` (stable, so ties keep table order); NaN values go last."""
    return frame.sort_values(column, ascending=ascending, kind="stable", na_position="last")


def rank_window(frame_by_rank: pd.DataFrame, start: int, size: int) -> pd.DataFrame:
    """``size`` rows from rank ``start`` of a frame already sorted by rank (clamped to the frame)."""
    start = max(0, min(int(start), max(len(frame_by_rank) - size, 0)))
    return frame_by_rank.iloc[start : start + size]


def class_names(samples: pd.DataFrame) -> dict[int, str]:
    """label -> label name for the known labels of the table (``-1``, unknown, is left out)."""
    known = (
        samples.loc[(samples["label"] >= 0).to_numpy(), ["label", "label_name"]]
        .drop_duplicates("label")
        .sort_values("label")
    )
    return {int(k): str(v) for k, v in zip(known["label"], known["label_name"], strict=True)}


def id_classes(samples: pd.DataFrame) -> dict[int, str]:
    """Class names of the in-distribution rows: the label space of the kNN predictions."""
    return class_names(samples[samples["role"].isin(("id-train", "id-test")).to_numpy()])


def positions_in(imageset_index: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Row positions in an ImageSet (whose ``index`` holds original positions) of the given original positions.

    Raises :class:`NormprobeError` when the dataset found at the data root lacks some of them.
    """
    imageset_index = np.asarray(imageset_index, dtype=np.int64)
    original = np.asarray(original, dtype=np.int64)
    order = np.argsort(imageset_index, kind="stable")
    found = np.searchsorted(imageset_index, original, sorter=order)
    found = np.minimum(found, len(order) - 1)
    positions = order[found]
    missing = imageset_index[positions] != original
    if missing.any():
        raise NormprobeError(
            f"{int(missing.sum())} sample(s) (e.g. index {int(original[missing][0])}) are not in the dataset found at the data root"
        )
    return positions


_MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()#!|<>~$:&")
_LIST_MARKER = re.compile(r"^(\d+)([.)])|^([-+=])")


def plain(value: object) -> str:
    """``value`` as literal text inside Streamlit markdown (captions, headers, messages).

    Strings from a results folder (run.json, dataset and file names, class names) are data, not
    markup: a crafted name must not render bold, link, or fetch a remote image (a tracking pixel).
    CommonMark lets a backslash escape any ASCII punctuation; escaping the characters that open
    markup (and Streamlit's ``:color[...]`` / ``:icon:`` directives) disarms it while numbers such as
    ``0.708`` stay as they are. The text becomes one line (control characters turn into spaces),
    so only a list marker at its very start needs escaping too.
    """
    text = "".join(" " if (ord(c) < 32 or ord(c) == 127) else c for c in str(value))
    text = "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in text)
    return _LIST_MARKER.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text, count=1)


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour enlargement of uint8 ``N×H×W×3`` images by the integer factor that brings H closest to ``size``.

    Pixel-exact blocks keep 32×32 images legible where a browser's smooth scaling would blur them.
    """
    factor = max(1, round(size / images.shape[1]))
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def caption(row: pd.Series, norm_column: str, classes: dict[int, str]) -> str:
    """``"cat · z 3.21 · kNN dog ✗"``: label, norm and kNN prediction (named by ``classes``) of one sample."""
    label = str(row["label_name"]) if int(row["label"]) >= 0 else "unlabelled"
    text = f"{label} · {norm_column.removeprefix('norm_')} {float(row[norm_column]):.3g}"
    pred = row.get("knn_pred")
    if pred is not None and not pd.isna(pred) and int(pred) >= 0:
        mark = "" if pd.isna(row.get("knn_correct")) else (" ✓" if bool(row["knn_correct"]) else " ✗")
        text += f" · kNN {classes.get(int(pred), str(int(pred)))}{mark}"
    return text


def grid(n_items: int, n_columns: int) -> list[list[int]]:
    """Item positions laid out row by row in ``n_columns`` columns."""
    return [list(range(start, min(start + n_columns, n_items))) for start in range(0, n_items, n_columns)]


def to_csv(frame: pd.DataFrame) -> bytes:
    """UTF-8 CSV of ``frame`` without the pandas index, for ``st.download_button``."""
    return frame.to_csv(index=False).encode("utf-8")
