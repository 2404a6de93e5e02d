"""Reading and writing checkpoint files safely.

Reading uses ``torch.load(weights_only=True)`` only, after the archive screen of
:mod:`normprobe.checkpoints.archive`: a checkpoint is untrusted input, and the restricted
unpickler refuses anything that would run code. torch's readers parse untrusted bytes and raise
many exception types on garbage; every failure becomes one :class:`NormprobeError`. Writing is
atomic (temporary file in the same folder, then ``os.replace``) so an interrupted save never
leaves a half-written file.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from normprobe.atomic import atomic_write
from normprobe.checkpoints.archive import screen_archive
from normprobe.checkpoints.sniff import program_kind, torch_reason, unpickling_failure
from normprobe.errors import NormprobeError


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file, loaded with the weights-only unpickler on the CPU."""
    if not path.is_file():
        raise NormprobeError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise NormprobeError(f"{path}: empty file")
    screen_archive(path)
    kind = program_kind(path)
    if kind is not None:
        raise NormprobeError(f"{path}: a {kind} archive (a program), not weights written by torch.save")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # e.g. "unexpected pickle protocol": the error below says it in one line
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise NormprobeError(unpickling_failure(path, str(err))) from err
    except Exception as err:  # noqa: BLE001 -- on garbage torch's readers raise IndexError, struct.error, ... too
        raise NormprobeError(
            f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {torch_reason(_first_line(err))}"
        ) from err


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))
