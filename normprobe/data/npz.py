"""An .npz file read as untrusted input.

Every member is checked from the zip's central directory, and every array from its ``.npy``
header, before a byte of array data is inflated. Refused with a :class:`NormprobeError`: duplicate
or encrypted members, members whose stored bytes overlap (a "non-recursive" zip bomb), members
that would inflate past :data:`MAX_BYTES` or compress suspiciously well (an archive bomb), object
arrays (they need pickle, and a data file never gets to run code) and headers whose shape
disagrees with the member's size (a header claiming 10^9 images in a few kilobytes).

Arrays are then read only as far as the rows asked for (:class:`LazyRows`): the first 200 images
of a large mirror inflate only those images' bytes.
"""

from __future__ import annotations

import math
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normprobe.errors import NormprobeError

MAX_BYTES = 8 << 30
"""The most the arrays of one .npz may hold together, inflated (a decoded ImageNet validation
split, 50,000 RGB images of 224x224, is 7.5 GB)."""
FREE_RATIO_BYTES = 64 << 20
"""Members up to this size may compress arbitrarily well (a label array of one value does)."""
MAX_RATIO = 200
"""Larger members may inflate to at most this many times their stored size. Real data compresses
1-5x (images) and up to about 50x (file-name strings); an archive bomb compresses about 1000x."""
MAX_MEMBERS = 10_000
_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_LOCAL_HEADER_BYTES = 30  # a zip local file header without its name and extra field
_GROWTH_BYTES = 4 << 20  # LazyRows inflates at least this much more each time it grows
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member: where it is in the zip and what its header declares."""

    name: str
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    header_bytes: int

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class NpzArchive:
    """A checked .npz: ``files``, ``shape(key)``, ``dtype(key)``, ``npz[key]`` (whole array), ``rows(key)`` (lazy)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                _check_members(path, infos, archive.start_dir)
                members = [_read_header(path, archive, i) for i in infos if i.filename.endswith(".npy")]
        except NormprobeError:
            raise
        except (
            Exception
        ) as err:  # zipfile, zlib, OSError, numpy's header parser: all mean "not a readable npz"
            raise NormprobeError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err
        self._members = {m.name: m for m in members}

    @property
    def files(self) -> list[str]:
        return list(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def member(self, key: str) -> Member:
        return self._members[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._members[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._members[key].dtype

    def __getitem__(self, key: str) -> np.ndarray:
        """The whole array (its size was checked against the caps when the archive was opened)."""
        member = self._members[key]
        return self.read_rows(member, member.shape[0] if member.shape else 1)

    def rows(self, key: str) -> LazyRows:
        """The array as :class:`LazyRows`: rows are inflated on first use, only up to the last one used."""
        return LazyRows(self, self._members[key])

    def read_rows(self, member: Member, stop: int) -> np.ndarray:
        """The first ``stop`` rows of a C-order array (the whole array when Fortran-ordered or 0-d)."""
        whole = member.fortran_order or not member.shape or stop >= member.shape[0]
        nbytes = member.data_bytes if whole else stop * member.row_bytes
        buffer = bytearray(nbytes)  # writable, so torch can wrap the array without a copy
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(member.info) as fh:
                fh.read(member.header_bytes)
                filled = 0
                while filled < nbytes:
                    chunk = fh.read(min(_CHUNK_BYTES, nbytes - filled))
                    if not chunk:
                        raise EOFError(f"{nbytes - filled} bytes missing")
                    buffer[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
        except Exception as err:  # zlib, bz2, lzma and zipfile (a CRC mismatch) raise many types for damage
            raise NormprobeError(
                f"{self.path}: array {member.name!r} is damaged ({type(err).__name__}: {err})"
            ) from err
        array = np.frombuffer(buffer, member.dtype)
        if whole:
            return array.reshape(member.shape, order="F" if member.fortran_order else "C")
        return array.reshape((stop, *member.shape[1:]))


class LazyRows:
    """A read-only view of one array's rows that inflates only the prefix that indexing reaches.

    Supports what the image readers use: ``len``, ``shape``, ``dtype``, ``ndim`` and indexing along
    the first axis by an int, a slice or an integer array. The loaded prefix grows at least twofold
    each time, so reading a whole array in order inflates it at most about twice.
    """

    def __init__(self, archive: NpzArchive, member: Member) -> None:
        self._archive = archive
        self._member = member
        self.shape = member.shape
        self.dtype = member.dtype
        self.ndim = len(member.shape)
        self._loaded = np.empty((0, *member.shape[1:]), member.dtype)
        self._lock = threading.Lock()  # the decode thread and the main thread may both read

    def __len__(self) -> int:
        return self.shape[0]

    def _upto(self, stop: int) -> np.ndarray:
        with self._lock:
            if stop > len(self._loaded):
                row_bytes = max(1, self._member.row_bytes)
                grow = max(stop, 2 * len(self._loaded), len(self._loaded) + _GROWTH_BYTES // row_bytes)
                self._loaded = self._archive.read_rows(self._member, min(len(self), grow))
            return self._loaded

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            return self._upto(stop if step > 0 else n)[start:stop:step]
        if isinstance(key, (int, np.integer)):
            return self._upto(n if key < 0 else int(key) + 1)[key]
        index = np.asarray(key)
        if index.dtype == bool or index.size == 0 or index.min() < 0:
            return self._upto(n)[index]
        return self._upto(int(index.max()) + 1)[index]


def _check_members(path: Path, infos: list[zipfile.ZipInfo], directory_start: int) -> None:
    if len(infos) > MAX_MEMBERS:
        raise NormprobeError(f"{path}: {len(infos)} members; an .npz of images has a handful")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        # zip readers disagree on which copy of a duplicated name is "the" member: refuse, never guess
        raise NormprobeError(f"{path}: the archive holds two members named {twice[0]!r}")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1:
            raise NormprobeError(f"{path}: member {info.filename!r} is encrypted")
        if info.compress_type not in _COMPRESSIONS:
            raise NormprobeError(
                f"{path}: member {info.filename!r} uses unsupported compression {info.compress_type}"
            )
        if not info.filename.endswith(".npy"):
            continue  # never read
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > FREE_RATIO_BYTES and ratio > MAX_RATIO:
            raise NormprobeError(
                f"{path}: member {info.filename!r} would inflate {info.compress_size:,} bytes to "
                f"{info.file_size:,} ({ratio:.0f}:1, more than {MAX_RATIO}:1): refused as an archive bomb"
            )
    if total > MAX_BYTES:
        raise NormprobeError(
            f"{path}: its arrays would inflate to {total:,} bytes, more than the {MAX_BYTES:,} normprobe reads "
            "from one .npz: refused (split the file, or store images as JPEG bytes + offsets)"
        )
    spans = sorted((i.header_offset, i.header_offset + _LOCAL_HEADER_BYTES + i.compress_size) for i in infos)
    ends = [end for _, end in spans]
    starts = [start for start, _ in spans[1:]] + [directory_start]
    if any(end > start for end, start in zip(ends, starts, strict=True)):
        raise NormprobeError(f"{path}: members overlap inside the archive: refused as an archive bomb")


def _read_header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    name = info.filename[: -len(".npy")]
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise NormprobeError(f"{path}: array {name!r} has unsupported .npy format version {version}")
        header_bytes = fh.tell()
    if dtype.hasobject:
        raise NormprobeError(
            f"{path}: array {name!r} holds Python objects, which only pickle can read; "
            "normprobe never unpickles data files (save plain numeric or string arrays)"
        )
    if dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise NormprobeError(f"{path}: array {name!r} has an invalid header ({dtype}, shape {shape})")
    member = Member(name, info, dtype, tuple(shape), fortran_order, header_bytes)
    if header_bytes + member.data_bytes != info.file_size:
        raise NormprobeError(
            f"{path}: array {name!r} declares shape {member.shape} ({member.data_bytes:,} bytes of {dtype}) "
            f"but holds {info.file_size - header_bytes:,} bytes"
        )
    return member
