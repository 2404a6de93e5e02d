"""Screening zip archives before anything reads a member of them.

``torch.save``, TorchScript and ``torch.export`` files are zip archives. torch reads them with its
own zip reader (miniz); normprobe looks inside them with Python's :mod:`zipfile`. A screen is only
worth something if both see the same members, so an archive is refused where they could disagree:

- two members whose names are equal ignoring case (zipfile takes the last; miniz finds names
  ignoring ASCII case, by a binary search that may land on either);
- a member outside the archive's one top folder (torch looks every record up under the folder of
  the first member), or a first member that does not start the file (zipfile shifts the offsets of
  an archive with bytes prepended; miniz does not);
- a compression method other than stored and deflate (zipfile also reads bzip2 and LZMA, miniz
  does not).

Before any member is inflated, the sizes the central directory declares are checked: in total at
most the memory budget (:mod:`normprobe.memory`), and at most ``MAX_RATIO`` times the file's own
size once past ``RATIO_FLOOR`` (a zip bomb). Last, every member is read once to check its CRC-32,
which torch never checks: a flipped byte would otherwise load silently as a different weight.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from normprobe.errors import NormprobeError
from normprobe.memory import format_bytes, memory_budget

ZIP_MAGIC = b"PK\x03\x04"
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20
"""Archives inflating to less than this are never refused for their compression ratio: they are cheap."""
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_CHUNK = 1 << 22


def is_zip(path: Path) -> bool:
    """Whether torch reads ``path`` as a zip archive: it starts with a local file header (torch's own test)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    except OSError:
        return False


def _damaged(path: Path, err: BaseException) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return (
        f"{path}: not a readable PyTorch checkpoint (a damaged zip archive, corrupt or truncated?): {reason}"
    )


def _check_directory(path: Path, members: list[zipfile.ZipInfo]) -> None:
    if not members:
        raise NormprobeError(f"{path}: an empty zip archive")
    first = members[0].filename
    if "/" not in first:
        raise NormprobeError(
            f"{path}: refused: the archive's first member {first!r} is not in a folder, as torch's reader requires"
        )
    folder = first.split("/", 1)[0] + "/"
    seen: dict[str, str] = {}
    for info in members:
        name = info.filename
        if name.lower() in seen:
            raise NormprobeError(
                f"{path}: refused: the archive holds two members named {seen[name.lower()]!r} and {name!r}, "
                "which torch and Python would resolve differently"
            )
        seen[name.lower()] = name
        if not name.startswith(folder):
            raise NormprobeError(
                f"{path}: refused: archive member {name!r} is outside the archive's folder {folder!r}"
            )
        if info.compress_type not in _METHODS:
            raise NormprobeError(
                f"{path}: refused: archive member {name!r} uses compression method {info.compress_type}, which torch cannot read"
            )
    if min(info.header_offset for info in members) != 0:
        raise NormprobeError(
            f"{path}: refused: the zip archive does not start the file (bytes before it or a second archive)"
        )
    declared = sum(info.file_size for info in members)
    budget = memory_budget()
    if declared > budget:
        raise NormprobeError(
            f"{path}: refused: the archive would inflate to {format_bytes(declared)}, more than this machine's "
            f"budget of {format_bytes(budget)} for one checkpoint"
        )
    size = max(path.stat().st_size, 1)
    if declared > RATIO_FLOOR and declared > MAX_RATIO * size:
        raise NormprobeError(
            f"{path}: refused: a {format_bytes(size)} archive that would inflate to {format_bytes(declared)} "
            f"(over {MAX_RATIO}x: a zip bomb, not a checkpoint)"
        )


def zip_members(path: Path) -> list[str] | None:
    """Member names of a zip archive that torch and Python read alike, or ``None`` for a file that is no zip.

    Reads only the central directory; raises :class:`NormprobeError` for the archives the module
    docstring lists.
    """
    if not is_zip(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except Exception as err:  # noqa: BLE001 -- on garbage zipfile raises BadZipFile, NotImplementedError, ...
        raise NormprobeError(_damaged(path, err)) from err
    _check_directory(path, members)
    return [info.filename for info in members]


def screen_archive(path: Path) -> list[str] | None:
    """:func:`zip_members`, then every member read once to check its CRC-32 (``None`` for a file that is no zip)."""
    names = zip_members(path)
    if names is None:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                # CRC 0: written with torch.serialization.set_crc32_options(False), nothing to check against.
                if info.CRC == 0:
                    continue
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
    except Exception as err:  # noqa: BLE001 -- a bad CRC, a broken deflate stream, an encrypted member ...
        raise NormprobeError(_damaged(path, err)) from err
    return names
