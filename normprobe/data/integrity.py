"""Mirror files are checked against their manifest's sha256 before first use.

A mirror file that is damaged (one flipped byte) or was replaced (a valid .npz with other images)
is refused with a message naming it and ``normprobe datasets verify``. Hashing a large mirror
costs seconds, so a match is remembered in a small JSON file in the cache folder
(:data:`MEMO_FILE`), keyed by the file's path, size, mtime, ctime and inode: a file changed in any
way is hashed again. The bundled sample (partial copies of the mirrors) is checked against the
``SHA256SUMS`` shipped inside the package beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normprobe.atomic import atomic_write
from normprobe.data.hashing import file_sha256
from normprobe.data.root import SAMPLE_ROOT, SAMPLE_SUMS
from normprobe.errors import NormprobeError
from normprobe.terminal import warn

MEMO_FILE = "mirror_sha256.json"
_MEMO_VERSION = 1
_MEMO_ENTRIES = 256  # a few data roots' worth; the oldest entries go first

_warned: set[str] = set()  # memo files whose write failed: warn once per process


def _memo_path() -> Path:
    from normprobe.cache import default_cache_dir  # imported here: normprobe.cache is not a data module

    return default_cache_dir() / MEMO_FILE


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _read_memo(memo: Path) -> dict[str, Any]:
    try:
        raw = json.loads(memo.read_text())
    except (OSError, ValueError):  # absent or damaged: a memo only saves time, so start afresh
        return {}
    if (
        not isinstance(raw, dict)
        or raw.get("version") != _MEMO_VERSION
        or not isinstance(raw.get("files"), dict)
    ):
        return {}
    return raw["files"]


def _remember(memo: Path, files: dict[str, Any], key: str, entry: list[Any]) -> None:
    files.pop(key, None)
    files[key] = entry
    kept = dict(list(files.items())[-_MEMO_ENTRIES:])
    text = json.dumps({"version": _MEMO_VERSION, "files": kept}, indent=1) + "\n"
    try:
        atomic_write(memo, lambda tmp: tmp.write_text(text))
    except OSError as err:
        if str(memo) not in _warned:
            _warned.add(str(memo))
            warn(
                f"could not record verified mirror checksums in {memo} ({err.strerror}); they are re-hashed next run"
            )


def sample_sums(root: Path) -> dict[str, str]:
    """file -> sha256 of the bundled sample's partial mirror copies when ``root`` is the sample, else {}."""
    try:
        if root.resolve() != SAMPLE_ROOT.resolve():
            return {}
        lines = (SAMPLE_ROOT / SAMPLE_SUMS).read_text().splitlines()
    except OSError:
        return {}
    return {name.strip(): digest for digest, _, name in (line.partition("  ") for line in lines) if name}


def expected_sha256(path: Path, manifest_sha256: str) -> str:
    """The sha256 ``path`` must have: the manifest's, or the bundled sample's own for its partial copies."""
    return sample_sums(path.parent).get(path.name, manifest_sha256)


def verified_sha256(path: Path, manifest_sha256: str, dataset: str) -> str:
    """The sha256 of mirror file ``path``, after checking it against ``dataset``'s manifest."""
    expected = expected_sha256(path, manifest_sha256)
    memo = _memo_path()
    files = _read_memo(memo)
    key = str(path.resolve())
    stamp = _stamp(path)
    entry = files.get(key)
    if isinstance(entry, list) and entry[:-1] == stamp and entry[-1] == expected:
        return expected
    actual = file_sha256(path)
    if actual != expected:
        raise NormprobeError(
            f"{path}: sha256 {actual[:16]}... does not match the {dataset} manifest's {expected[:16]}...: "
            "the file is damaged or was replaced; run `normprobe datasets verify` and restore it"
        )
    if stamp == _stamp(path):  # unchanged while it was hashed
        _remember(memo, files, key, [*stamp, actual])
    return actual
