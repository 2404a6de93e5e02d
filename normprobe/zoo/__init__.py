"""The model zoo: really-trained checkpoints shipped with normprobe, each with a model card.

Each entry is ``<name>.pt`` (a Contract-1 checkpoint, fp16 weights) beside ``<name>.json`` (the
card's data: training command and config, epochs, kNN accuracy, mean norms, sha256) and
``<name>.md`` (the human-readable card). A checkpoint argument anywhere in the CLI may be a zoo name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normprobe.errors import NormprobeError

ZOO_ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "simclr-r18w16-e60"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    checkpoint: Path
    card: dict[str, Any]

    @property
    def card_path(self) -> Path:
        return self.checkpoint.with_suffix(".md")


def zoo_entries(root: Path = ZOO_ROOT) -> list[ZooEntry]:
    entries = []
    for card_file in sorted(root.glob("*.json")):
        checkpoint = card_file.with_suffix(".pt")
        if checkpoint.is_file():
            entries.append(ZooEntry(card_file.stem, checkpoint, json.loads(card_file.read_text())))
    return entries


def zoo_entry(name: str, root: Path = ZOO_ROOT) -> ZooEntry:
    for entry in zoo_entries(root):
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in zoo_entries(root)) or "none installed"
    raise NormprobeError(f"{name!r} is neither a checkpoint file nor a zoo model (zoo: {known})")


def resolve_checkpoint(spec: str | Path) -> Path:
    """A path to an existing file, or the checkpoint of the zoo model named ``spec``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix or len(path.parts) > 1:
        raise NormprobeError(f"{path}: no such checkpoint file")
    return zoo_entry(str(spec)).checkpoint
