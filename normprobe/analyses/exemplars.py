"""The highest- and lowest-norm samples of each class: what the encoder is most and least sure of.

Only positions are chosen here; the report and the app decode just those images
(``ImageSet.images(positions)``), never the whole split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from normprobe.errors import NormprobeError

EXEMPLAR_COLUMNS = (
    "dataset",
    "split",
    "role",
    "label",
    "label_name",
    "extreme",
    "rank",
    "position",
    "index",
    "id",
    "norm",
)
"""``extreme`` is ``highest`` or ``lowest``; ``rank`` 0 is the most extreme; ``position`` is the row
in the analysed set (what ``ImageSet.images`` takes), ``index`` the original position in the split."""


def norm_exemplars(
    norms: np.ndarray,
    labels: np.ndarray,
    *,
    per_group: int = 4,
    by_class: bool = True,
    class_names: tuple[str, ...] = (),
) -> pd.DataFrame:
    """The ``per_group`` highest- and lowest-norm rows of each class (``by_class``) or of the whole set.

    Rows with unknown label (-1) form their own group. Returns columns ``label``, ``label_name``,
    ``extreme``, ``rank``, ``position`` and ``norm``; :func:`describe_exemplars` adds the rest.
    """
    norms = np.asarray(norms, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if norms.shape != labels.shape or norms.ndim != 1:
        raise NormprobeError(
            f"norms and labels must be equally long vectors, got {norms.shape} and {labels.shape}"
        )
    if per_group < 1:
        raise NormprobeError(f"the number of exemplars per group must be >= 1, got {per_group}")
    groups = labels if by_class else np.full_like(labels, -1)
    # one stable sort by (group, norm); each group is then a contiguous run, lowest norm first
    order = np.lexsort((norms, groups))
    starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    frames = []
    for start, end in zip(starts, ends, strict=True):
        run = order[start:end]
        take = min(per_group, len(run))
        for extreme, chosen in (("highest", run[::-1][:take]), ("lowest", run[:take])):
            label = int(groups[chosen[0]])
            frames.append(
                pd.DataFrame(
                    {
                        "label": label,
                        "label_name": class_names[label]
                        if 0 <= label < len(class_names)
                        else ("" if label < 0 else str(label)),
                        "extreme": extreme,
                        "rank": np.arange(take),
                        "position": chosen.astype(np.int64),
                        "norm": norms[chosen],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def describe_exemplars(
    table: pd.DataFrame, *, dataset: str, split: str, role: str, index: np.ndarray, ids: np.ndarray
) -> pd.DataFrame:
    """Add the set's name, split, role, original ``index`` and ``id`` to a :func:`norm_exemplars` table."""
    positions = table["position"].to_numpy()
    out = table.assign(
        dataset=dataset,
        split=split,
        role=role,
        index=np.asarray(index)[positions],
        id=np.asarray(ids)[positions],
    )
    return out[list(EXEMPLAR_COLUMNS)]
