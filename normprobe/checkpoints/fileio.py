"""Reading and writing checkpoint files safely.

Reading never runs code from the file. A ``.safetensors`` file (or any file that is safetensors
by its content) is read by the ``safetensors`` package, which parses a JSON header and raw tensor
bytes and has no pickle path at all. Everything else is read by ``torch.load(weights_only=True)``,
whose restricted unpickler refuses anything that would run code, after the archive screen of
:mod:`normprobe.checkpoints.archive`. Both readers parse untrusted bytes and raise many exception
types on garbage; every failure becomes one :class:`NormprobeError`. Writing is atomic (temporary
file in the same folder, then ``os.replace``) so an interrupted save never leaves a half-written file.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from normprobe.atomic import atomic_write
from normprobe.checkpoints.archive import is_zip, screen_archive
from normprobe.checkpoints.contract import CheckpointSource
from normprobe.checkpoints.sniff import program_kind, torch_reason, unpickling_failure
from normprobe.errors import NormprobeError

SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors reader's own limit on its JSON header


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or a file that is no zip and starts as safetensors do (u64 header length, ``{``)."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return True
    if is_zip(path):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    length = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:] == b"{" and 2 <= length <= min(_SAFETENSORS_MAX_HEADER, size - 8)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as err:  # noqa: BLE001 -- SafetensorError, OSError, dtype errors ...: all mean a malformed file
        raise NormprobeError(
            f"{path}: not a readable safetensors file (corrupt or truncated?): {_first_line(err)[:200]}"
        ) from err


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


def open_source(path: Path) -> CheckpointSource:
    """A checkpoint file for the adapters: a program as it is (its adapter loads it, only once it is
    trusted), a safetensors file's tensors, or the object ``torch.save`` wrote."""
    program = program_kind(path)
    if program is not None:
        return CheckpointSource(path, program)
    if path.is_file() and path.stat().st_size > 0 and is_safetensors(path):
        return CheckpointSource(path, "safetensors", read_safetensors(path))
    return CheckpointSource(path, "torch.save", read_torch_file(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))
