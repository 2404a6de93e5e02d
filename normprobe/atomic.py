"""Atomic file writes, and the checks that an output can be written before any work starts.

:func:`atomic_write` writes a temporary sibling, then renames it onto the target: an interrupted
write never leaves a half-written file, and a failed one leaves an existing file untouched. The
temporary file is opened normally (not with ``mkstemp``, which creates 0600), so the result gets
the permissions an ordinary write would give it. Its name records the writer's process id
(``.NAME.tmp-PID-TAG``), so that one left behind by a killed process is recognised and removed
by the next write (:func:`remove_stale`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from normprobe.errors import NormprobeError

MIN_FREE_BYTES = 1 << 20
"""An output disk with less free space than this counts as full."""
STALE_AFTER_S = 600.0
"""A temporary file or folder older than this is stale even if a process with its PID runs (PIDs are reused)."""
_PROBE = "normprobe-write-check"
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?:(?P<pid>\d+)-)?[0-9A-Za-z_]{8,}")


def temporary_prefix(target: str) -> str:
    """The name prefix of this process's temporary siblings of ``target``."""
    return f".{target}.tmp-{os.getpid()}-"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place (what
    ``write`` returns is ignored, so ``lambda tmp: tmp.write_text(text)`` will do)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name, is_stale_file)
    tmp = path.with_name(f"{temporary_prefix(path.name)}{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned(entry: Path, pid: str | None) -> bool:
    """A temporary entry whose writer is gone: its process is dead, or it is older than STALE_AFTER_S."""
    if pid is not None and int(pid) == os.getpid():
        return False  # ours, being written
    try:
        age = time.time() - entry.lstat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S or (pid is not None and not pid_alive(int(pid)))


def is_stale_file(entry: Path) -> bool:
    """An abandoned temporary file of :func:`atomic_write` (a plain file, never a folder or link)."""
    return entry.is_file() and not entry.is_symlink()


def remove_stale(parent: Path, target: str | None, removable: Callable[[Path], bool]) -> list[Path]:
    """Remove the abandoned temporary siblings in ``parent`` (of ``target`` only, unless None) that pass ``removable``.

    Only names of the form ``.NAME.tmp-PID-TAG`` are candidates; failures to remove are ignored
    (the next run tries again). Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        if not _abandoned(entry, match["pid"]) or not removable(entry):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def nearest_folder(path: Path) -> Path:
    """``path`` or its nearest existing ancestor: where a write into ``path`` would create folders."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work, an output ``folder`` that cannot take a file: read-only, not a folder, or full.

    A file is really created and written (permission bits say nothing for root, a read-only mount
    or a full disk); ``what`` names the output in the message.
    """
    folder = nearest_folder(folder)
    if not folder.is_dir():
        raise NormprobeError(f"{what}: {folder} is a file, not a folder")
    remove_stale(folder, _PROBE, is_stale_file)
    probe = folder / f"{temporary_prefix(_PROBE)}{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "xb") as fh:
            fh.write(b"\0")
    except OSError as err:
        raise NormprobeError(f"{what}: cannot write in {folder} ({err.strerror or err})") from err
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that let us create the file lets us remove it; if not, nothing is lost
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise NormprobeError(f"{what}: the disk holding {folder} is full ({free:,} bytes free)")


def check_new_file(path: Path, *, force: bool, what: str) -> None:
    """Before any work: ``path`` may be written (its folder can take a file) and holds nothing, unless ``force``."""
    if path.is_dir():
        raise NormprobeError(f"{what}: {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not force:
        raise NormprobeError(f"{what}: {path} already exists; pass --force to overwrite it")
    check_writable(path.parent, what)
