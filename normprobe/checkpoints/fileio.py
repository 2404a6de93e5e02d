"""Reading and writing checkpoint files safely.

Reading uses ``torch.load(weights_only=True)`` only: a checkpoint is untrusted input, and the
restricted unpickler refuses anything that would run code. Writing is atomic (temporary file in
the same folder, then ``os.replace``) so an interrupted save never leaves a half-written file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from normprobe.atomic import atomic_write
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
        raise NormprobeError(
            f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {str(err).splitlines()[0][:200]}"
        ) from err


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))
