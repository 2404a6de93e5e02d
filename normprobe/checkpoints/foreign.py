"""Self-describing model files for architectures normprobe does not build: TorchScript and ``torch.export``.

Both carry their own graph and weights, so no architecture is inferred. They are zip archives,
not pickles, and are recognised by their member names (:mod:`normprobe.checkpoints.sniff`). Both
are programs: a TorchScript ``forward`` can call ``torch.save`` and its ``__setstate__`` runs during
``torch.jit.load`` (and can write any file), and ``torch.export.load`` evaluates the shape
expressions in the archive's JSON as Python. :func:`~normprobe.checkpoints.load_encoder` therefore
refuses them unless the user passes ``--trust-code``; these builders run only after that.

- TorchScript (``torch.jit.save``): loaded with ``torch.jit.load(map_location="cpu")``.
- ``torch.export`` (``torch.export.save``, ``.pt2``): loaded with ``torch.export.load``. That loader
  also unpickles some members without the weights-only unpickler (pickled weights, sample inputs,
  legacy files, object constants), so every such member is first checked with
  ``torch.load(weights_only=True)`` and archives holding Python-object constants are refused:
  trusting a file's code is no reason to unpickle arbitrary objects from it as well.

Output: a tensor is the ``feats`` head; a dict keeps its ``feats``/``z``/``p`` entries; a tuple or
list is ``(feats, z, p)`` in that order. Each head must be N×D (N×D×1×1 is flattened).
Preprocessing: [0, 1] without mean/std at 32x32 unless ``--arch input_size=N:norm=...`` says
otherwise; an exported program with a static input shape fixes the size itself. An exported
program with a static batch size is run in chunks of that size. Save the module in eval mode:
a traced or exported graph keeps the BatchNorm mode it was recorded in.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normprobe.checkpoints.arch import Arch, make_preprocess
from normprobe.checkpoints.contract import BuildResult, CheckpointSource, Origin
from normprobe.checkpoints.sniff import inner_name
from normprobe.errors import NormprobeError
from normprobe.models import HEADS
from normprobe.preprocess import Preprocess


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def as_heads(out: Any) -> dict[str, torch.Tensor]:
    """Read a foreign module's output as normprobe heads (see the module docstring)."""
    if isinstance(out, torch.Tensor):
        heads = {"feats": out}
    elif isinstance(out, dict):
        heads = {k: out[k] for k in HEADS if k in out}
        if not heads:
            raise NormprobeError(
                f"the model returns a dict with keys {list(out)[:6]}; normprobe reads 'feats', 'z' and 'p'"
            )
    elif isinstance(out, (tuple, list)) and 1 <= len(out) <= len(HEADS):
        heads = dict(zip(HEADS[: len(out)], out, strict=True))
    else:
        raise NormprobeError(
            f"the model returns {type(out).__name__}; normprobe reads a tensor, a dict of heads or a tuple (feats, z, p)"
        )
    for name, value in heads.items():
        if not isinstance(value, torch.Tensor):
            raise NormprobeError(f"the model's {name!r} output is a {type(value).__name__}, not a tensor")
        if value.ndim == 4 and value.shape[2:] == (1, 1):
            heads[name] = value = value.flatten(1)
        if value.ndim != 2:
            raise NormprobeError(
                f"the model's {name!r} output has shape {tuple(value.shape)}; normprobe needs pooled N×D embeddings"
            )
    return heads


class ForeignEncoder(nn.Module):
    """Wraps a TorchScript module or an exported program so that ``forward`` returns ``{head: N×D}``."""

    def __init__(self, module: nn.Module, static_batch: int | None = None, switchable: bool = True) -> None:
        super().__init__()
        self.module = module
        self.static_batch = static_batch
        # Exported programs refuse .train()/.eval(): their mode was fixed when they were exported.
        self.switchable = switchable

    def train(self, mode: bool = True) -> ForeignEncoder:
        self.training = mode
        if self.switchable:
            self.module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.static_batch
        if size is None or len(x) == size:
            return as_heads(self.module(x))
        n = len(x)
        pad = (-n) % size
        if pad:  # fill the last chunk with copies of the last image; their outputs are cut off below
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        chunks = [as_heads(self.module(chunk)) for chunk in x.split(size)]
        return {head: torch.cat([c[head] for c in chunks])[:n] for head in chunks[0]}


def _probe(encoder: ForeignEncoder, preprocess: Preprocess, source: str) -> tuple[str, ...]:
    """Run a zero batch once so that a wrong input size or output type fails now, in one line."""
    x = torch.zeros(encoder.static_batch or 2, 3, *preprocess.input_size)
    try:
        with torch.inference_mode():
            out = encoder(x)
    except NormprobeError as err:
        raise NormprobeError(f"{source}: {err}") from err
    except Exception as err:  # noqa: BLE001 -- a foreign graph can fail in any way; report it in one line
        raise NormprobeError(
            f"{source}: the model fails on a {tuple(x.shape)} input ({type(err).__name__}: {first_line(err)}); give its input with --arch input_size=N"
        ) from err
    return tuple(out)


def _preprocess(arch: Arch | None, source: str, fixed: tuple[int, int] | None = None) -> Preprocess:
    if arch is not None and arch.backbone is not None:
        raise NormprobeError(
            f"{source}: --arch {arch.text} names an architecture, but this file carries its own; only input_size=N:norm=... apply"
        )
    default = Preprocess(fixed, None, None) if fixed else make_preprocess(32, "none")
    preprocess = arch.preprocess(default) if arch else default
    if fixed and preprocess.input_size != fixed:
        raise NormprobeError(
            f"{source}: the exported program only takes {fixed[0]}x{fixed[1]} input, not {preprocess.input_size}"
        )
    return preprocess


def _built(
    encoder: ForeignEncoder, preprocess: Preprocess, arch: Arch | None, notes: list[str], source: str
) -> BuildResult:
    """Probe the wrapped program and describe it; a program's method is never known."""
    heads = _probe(encoder, preprocess, source)
    if arch is None or arch.input_size is None:
        notes.append(f"input {preprocess.describe()} (override with --arch input_size=N:norm=...)")
    origin = Origin(notes=tuple(notes), arch=arch.text if arch else None)
    return BuildResult(encoder, preprocess, "unknown", heads, origin)


def build_torchscript(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    path, label = source.path, source.label
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        raise NormprobeError(f"{label}: not a loadable TorchScript archive: {first_line(err)}") from err
    encoder = ForeignEncoder(module)
    encoder.eval()
    preprocess = _preprocess(arch, label)
    return _built(encoder, preprocess, arch, ["TorchScript module run as saved"], label)


def _member_config(archive: zipfile.ZipFile, name: str, source: str) -> dict[str, Any]:
    """The ``config`` mapping of a weights/constants config member (fqn -> entry)."""
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, AttributeError) as err:
        raise NormprobeError(f"{source}: archive member {name} is not a readable config") from err
    if not isinstance(config, dict) or not all(isinstance(e, dict) for e in config.values()):
        raise NormprobeError(f"{source}: archive member {name} is not a readable config")
    return config


def _screen_pt2(path: Path, source: str) -> None:
    """Refuse an archive whose pickled members need more than the weights-only unpickler.

    Names are compared lower-cased, as torch's zip reader finds them.
    """
    from torch.export.pt2_archive.constants import TENSOR_CONSTANT_FILENAME_PREFIX

    with zipfile.ZipFile(path) as archive:
        by_name = {n.lower(): n for n in archive.namelist()}
        pickled = [n for n in by_name if n.endswith(".pt")]
        for name in by_name:
            inner = inner_name(name)
            if not inner.endswith(("_weights_config.json", "_constants_config.json")):
                continue
            folder = name.rsplit("/", 1)[0]
            for fqn, entry in _member_config(archive, by_name[name], source).items():
                file = str(entry.get("path_name", ""))
                if inner.endswith("_constants_config.json") and not file.startswith(
                    TENSOR_CONSTANT_FILENAME_PREFIX
                ):
                    raise NormprobeError(
                        f"{source}: refused: the exported program holds a Python object constant ({fqn}); normprobe loads tensors only"
                    )
                if entry.get("use_pickle"):
                    pickled.append(f"{folder}/{file}".lower())
        for name in pickled:
            try:
                torch.load(io.BytesIO(archive.read(by_name[name])), map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 -- any failure (a missing member too) means not plain tensors
                raise NormprobeError(
                    f"{source}: refused: archive member {name} needs code execution to unpickle, which normprobe never allows"
                ) from err


def _static_input(program: Any, source: str) -> tuple[int | None, tuple[int, int] | None]:
    """Static batch size and (H, W) of an exported program's single image input (``None`` where dynamic)."""
    names = set(program.graph_signature.user_inputs)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(inputs) != 1:
        raise NormprobeError(
            f"{source}: the exported program takes {len(inputs)} inputs; normprobe feeds it one image batch"
        )
    value = inputs[0].meta.get("val")
    shape = tuple(value.shape) if value is not None else ()
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise NormprobeError(
            f"{source}: the exported program's input has shape {shape}; normprobe feeds N×3×H×W images"
        )
    static = [d if isinstance(d, int) else None for d in shape]
    batch = static[0]
    size = (static[2], static[3]) if static[2] is not None and static[3] is not None else None
    return batch, size


def build_exported(source: CheckpointSource, arch: Arch | None) -> BuildResult:
    path, label = source.path, source.label
    _screen_pt2(path, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 -- the loader raises many types for a bad archive
        raise NormprobeError(
            f"{label}: not a loadable torch.export archive: {type(err).__name__}: {first_line(err)}"
        ) from err
    batch, size = _static_input(program, label)
    encoder = ForeignEncoder(program.module(), static_batch=batch, switchable=False)
    preprocess = _preprocess(arch, label, size)
    notes = ["torch.export program run as exported (its train/eval mode is fixed)"]
    if batch is not None:
        notes.append(f"static batch size {batch}: batches are run in chunks of {batch}")
    return _built(encoder, preprocess, arch, notes, label)


def detect_torchscript(source: CheckpointSource) -> bool:
    return source.kind == "TorchScript"


def detect_exported(source: CheckpointSource) -> bool:
    return source.kind == "torch.export"
