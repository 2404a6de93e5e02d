"""What every section of the page needs: the opened results and the sidebar's choices."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from normprobe.app.loading import FileStamp

from normprobe.record import RunRecord
from normprobe.results import Results


@dataclass(frozen=True)
class Session:
    """An opened results folder plus the norm head and data root chosen in the sidebar."""

    path: str
    """The resolved results folder; with ``files`` it keys the cached analyses."""
    files: FileStamp
    results: Results
    head: str
    data_root: str
    """Where to find the images; empty means the data root the run recorded, else ``$NORMPROBE_DATA``."""
    id_classes: dict[int, str]
    """Class names of the in-distribution label space, in which kNN predictions are made."""

    @property
    def run(self) -> RunRecord:
        return self.results.run

    @property
    def samples(self) -> pd.DataFrame:
        return self.results.samples

    @property
    def norm_column(self) -> str:
        return f"norm_{self.head}"
