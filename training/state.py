"""The files of a run folder: Contract-1 encoder checkpoints with a ``resume`` entry, keep-last-N,
RNG states stored as tensors/lists so every file loads with ``torch.load(weights_only=True)``, and
the guard that keeps a new run from mixing with (or silently replacing) a previous one."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from normprobe.atomic import atomic_write
from normprobe.checkpoints.fileio import read_torch_file
from normprobe.errors import NormprobeError

EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt$")
# What training writes at the top of a run folder (besides checkpoints/epoch_NNNN.pt).
RUN_FILES = ("config.yaml", "config.json", "metrics.csv", "metrics.jsonl", "steps.jsonl", "final.pt")


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    # legacy=True (the default) returns the tuple form; numpy's stubs also allow the dict form
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in directory.glob("epoch_*.pt") if (m := EPOCH_FILE.search(p.name))]
    return sorted(found)


def keep_last(directory: Path, n: int) -> None:
    """Delete all but the newest ``n`` epoch checkpoints (``n <= 0`` keeps all)."""
    if n > 0:
        for _, path in epoch_checkpoints(directory)[:-n]:
            path.unlink(missing_ok=True)


def find_resume_file(target: str | Path) -> Path:
    """A checkpoint file, or a run folder whose newest ``checkpoints/epoch_*.pt`` is used."""
    path = Path(target)
    if path.is_file():
        return path
    if path.is_dir():
        found = epoch_checkpoints(path / "checkpoints") or epoch_checkpoints(path)
        if found:
            return found[-1][1]
        raise NormprobeError(f"{path}: no epoch_*.pt checkpoint to resume from")
    raise NormprobeError(f"{path}: no such checkpoint or run folder")


def read_resume(path: Path) -> dict[str, Any]:
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or "resume" not in payload or "training" not in payload:
        raise NormprobeError(f"{path}: not a resumable training checkpoint (it has no 'resume' entry)")
    return payload


def copy_atomic(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def previous_run_files(out_dir: Path) -> list[Path]:
    """The files a training run wrote into ``out_dir`` (with the temporaries a kill can leave)."""
    found = []
    for name in RUN_FILES:
        found += [out_dir / name] if (out_dir / name).is_file() else []
        found += sorted(out_dir.glob(f".{name}.tmp-*"))
    ckpt_dir = out_dir / "checkpoints"
    found += [path for _, path in epoch_checkpoints(ckpt_dir)]
    found += sorted(ckpt_dir.glob(".epoch_*.pt.tmp-*"))
    return found


def clear_previous_run(out_dir: Path, force: bool) -> None:
    """Refuse to start a new run where one was written before, or with ``force`` delete that run's
    files (and only those: a user's notes or figures in the folder stay)."""
    found = previous_run_files(out_dir)
    if not found:
        return
    if not force:
        names = ", ".join(str(p.relative_to(out_dir)) for p in found[:3]) + (
            ", ..." if len(found) > 3 else ""
        )
        raise NormprobeError(
            f"{out_dir} holds a previous run ({names}): continue it with --resume {out_dir}, "
            "start over with --force (deletes only that run's files), or choose another out_dir"
        )
    # torchrun's other ranks reach here too, before the process group exists: one process deletes.
    if os.environ.get("RANK", "0") == "0":
        for path in found:
            path.unlink(missing_ok=True)
        ckpt_dir = out_dir / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
