"""Looking inside checkpoint archives without unpickling anything.

``torch.save``, TorchScript and ``torch.export`` all write zip archives; their member names (read
through :func:`~normprobe.checkpoints.archive.zip_members`, so that torch and Python agree on them)
tell them apart. A pickle's opcodes can be listed with :func:`pickletools.genops`, which parses and
never executes, so a refused file can still be described (e.g. "a Lightning checkpoint whose
hyper_parameters hold omegaconf objects") without running any of it.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from normprobe.checkpoints.archive import zip_members

_MAX_PICKLE_BYTES = 64 << 20
LIGHTNING_KEY = "pytorch-lightning_version"
ProgramKind = Literal["TorchScript", "torch.export"]


def inner_name(name: str) -> str:
    """A member name without the archive's top folder (``ts/code/x.py`` -> ``code/x.py``), lower-cased as
    torch's zip reader compares names."""
    return (name.split("/", 1)[1] if "/" in name else name).lower()


def _inner_names(path: Path) -> set[str] | None:
    names = zip_members(path)
    return None if names is None else {inner_name(n) for n in names}


def is_torchscript(path: Path) -> bool:
    """``torch.jit.save`` archives: a ``<name>/constants.pkl`` member, the test ``torch.load`` itself uses
    to hand an archive to ``torch.jit.load``."""
    inner = _inner_names(path)
    return inner is not None and "constants.pkl" in inner


def is_exported_program(path: Path) -> bool:
    """``torch.export.save`` archives: ``archive_format`` + ``models/<name>.json`` (torch >= 2.6), or the older ``serialized_exported_program.json``."""
    inner = _inner_names(path)
    if inner is None:
        return False
    new = "archive_format" in inner and any(n.startswith("models/") and n.endswith(".json") for n in inner)
    return new or "serialized_exported_program.json" in inner


def program_kind(path: Path) -> ProgramKind | None:
    """``"TorchScript"`` or ``"torch.export"`` for the archives that are programs rather than weights."""
    if is_torchscript(path):
        return "TorchScript"
    if is_exported_program(path):
        return "torch.export"
    return None


@dataclass(frozen=True)
class PickleSummary:
    globals: frozenset[str]
    strings: frozenset[str]


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle of a ``torch.save`` zip (``data.pkl``), or the head of a plain pickle file."""
    try:
        names = zip_members(path)
        if names is not None:
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in names if inner_name(n) == "data.pkl"), None)
                if member is None or archive.getinfo(member).file_size > _MAX_PICKLE_BYTES:
                    return None
                return archive.read(member)
        with open(path, "rb") as fh:
            return fh.read(_MAX_PICKLE_BYTES)
    except (OSError, zipfile.BadZipFile):
        return None


def summarize_pickle(path: Path) -> PickleSummary | None:
    """Globals and strings named by the (first) pickle in a file (parsed, never run)."""
    data = _pickle_bytes(path)
    if data is None:
        return None
    found: set[str] = set()
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.add(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, UnicodeDecodeError):
        pass  # a truncated or foreign stream: keep what was read before it
    return PickleSummary(frozenset(found), frozenset(strings))


# torch's errors end in advice (load with weights_only off, allowlist the global "if you trust" it) that
# runs the file's code when followed; normprobe's messages never repeat it.
_ADVICE = re.compile(r"weights_only|safe_globals|trust", re.IGNORECASE)


def torch_reason(text: str) -> str:
    """A line of a torch error without its advice: from the first sentence that gives advice on, nothing is kept."""
    kept: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if _ADVICE.search(sentence):
            break
        kept.append(sentence)
    return " ".join(kept)[:200] or "unreadable"


def _detail(error_text: str) -> str:
    """The informative line of torch's weights-only error (its first lines are boilerplate)."""
    lines = [line.strip() for line in error_text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Unsupported"):
            return torch_reason(line)
        if "WeightsUnpickler error:" in line:
            after = line.split("WeightsUnpickler error:", 1)[1].strip()
            return torch_reason(after or (lines[i + 1] if i + 1 < len(lines) else ""))
    return torch_reason(lines[0]) if lines else "unreadable"


def unpickling_failure(path: Path, error_text: str) -> str:
    """One line for a file the weights-only unpickler refused: code it would run, or plain corruption.

    A Lightning checkpoint refused for Python objects is told how to save its weights alone. The
    advice never loads the refused file: every way of loading it runs the objects' code.
    """
    summary = summarize_pickle(path)
    named = re.search(r"GLOBAL ([\w.]+)", error_text)
    foreign = sorted(
        g for g in (summary.globals if summary else ()) if not g.startswith(("torch.", "collections."))
    )
    objects = [named.group(1)] if named else foreign[:3]
    if not objects:
        return f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or not written by torch.save): {_detail(error_text)}"
    if summary is not None and LIGHTNING_KEY in summary.strings:
        export = path.with_name(path.stem + ".weights.ckpt")
        return (
            f"{path}: a PyTorch Lightning checkpoint holding Python objects ({', '.join(objects)}; typically hyper_parameters) "
            f"that normprobe will not unpickle, because unpickling them runs code; where the model was trained, save its "
            f"weights alone with torch.save({{'state_dict': model.state_dict()}}, '{export}') and load {export.name} "
            f"(keep args.json beside it)"
        )
    return f"{path}: refused to load: unpickling it would run code ({', '.join(objects)}), which normprobe never allows"
