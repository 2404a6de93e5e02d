"""Reading and writing checkpoint files safely.

Reading uses ``torch.load(weights_only=True)`` only: a checkpoint is untrusted input, and the
restricted unpickler refuses anything that would run code. Writing is atomic (temporary file in
the same folder, then ``os.replace``) so an interrupted save never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from normprobe.checkpoints.sniff import unpickling_failure
from normprobe.errors import NormprobeError


def read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file, loaded with the weights-only unpickler on the CPU."""
    if not path.is_file():
        raise NormprobeError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise NormprobeError(f"{path}: empty file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except torch.serialization.pickle.UnpicklingError as err:
        raise NormprobeError(unpickling_failure(path, str(err))) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise NormprobeError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {str(err).splitlines()[0][:200]}") from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; a checkpoint gets the permissions an ordinary write would give it.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
