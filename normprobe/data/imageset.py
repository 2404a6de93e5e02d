"""ImageSet: labels, stable ids and lazily decoded uint8 images of one dataset split; Samples: what identifies the samples of a set."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from normprobe.data.hashing import fingerprint
from normprobe.data.readers import ImageReader

if TYPE_CHECKING:  # torch is imported where images are decoded, so `import normprobe.data` stays light
    import torch


@dataclass(frozen=True)
class Samples:
    """What identifies the samples of one set, in order (an :class:`ImageSet` adds their images, the
    analysis its embeddings).

    ``index`` holds each row's position in the original split (a partial mirror or a subset keeps
    the original numbering); ``labels`` is -1 where unknown; ``ids`` are stable sample ids;
    ``fingerprint`` identifies the content.
    """

    name: str
    split: str
    labels: np.ndarray
    index: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...]
    fingerprint: str
    source: str


@dataclass(frozen=True)
class ImageSet(Samples):
    """One split of a dataset, ready to embed: its :class:`Samples` and a reader of their images.

    Images are decoded on demand, so a cached analysis never pays for decoding, and a viewer
    decodes only what it shows.
    """

    reader: ImageReader = field(repr=False)
    rows: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.reader.image_size

    def images(self, positions: np.ndarray | slice | None = None) -> torch.Tensor:
        """uint8 ``N×H×W×3`` images at the given positions of this set (all when None)."""
        import torch

        rows = self.rows if positions is None else self.rows[positions]
        return torch.from_numpy(self.reader.read(np.atleast_1d(rows)))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive uint8 batches in set order; the last one may be smaller (nothing is dropped)."""
        for start in range(0, len(self), batch_size):
            yield self.images(slice(start, start + batch_size))

    def subset(self, positions: np.ndarray, tag: str) -> ImageSet:
        """The rows at ``positions``; ``tag`` names the selection and enters the fingerprint."""
        positions = np.asarray(positions, dtype=np.int64)
        return replace(
            self,
            labels=self.labels[positions],
            index=self.index[positions],
            ids=self.ids[positions],
            rows=self.rows[positions],
            fingerprint=fingerprint(self.fingerprint, tag, positions),
            notes=(*self.notes, f"subset {tag}: {len(positions)} of {len(self)} images"),
        )
