"""Checkpoints: our file format and adapters for other people's.

    loaded = load_encoder("simclr.pt")        # auto-detects the format
    loaded.encoder(x)["z"]                     # raw projector embeddings
    print(loaded.summary())                    # adapter, method, heads, preprocessing, remapping notes

Adapters, tried in this order (``ADAPTERS``): normprobe's own file, the paper's state_dicts,
solo-learn and lightly Lightning checkpoints, bare torchvision / timm backbones, TorchScript and
``torch.export`` archives. Files are ``torch.save`` files (read with the weights-only unpickler) or
``.safetensors`` files; the adapters see the same state_dict either way. TorchScript and
``torch.export`` files are programs and load only with ``trust_code``. ``--arch`` (:mod:`normprobe.checkpoints.arch`) names or overrides the
architecture and preprocessing where the file does not say them. What adapters are given and
return is :mod:`normprobe.checkpoints.contract`; the key and architecture helpers they share are
:mod:`~normprobe.checkpoints.keys` and :mod:`~normprobe.checkpoints.layouts`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from normprobe.checkpoints.arch import parse_arch
from normprobe.checkpoints.archive import screen_archive
from normprobe.checkpoints.contract import CheckpointSource
from normprobe.checkpoints.fileio import open_source
from normprobe.checkpoints.loaded import LoadedEncoder
from normprobe.checkpoints.native import FORMAT, save_checkpoint
from normprobe.checkpoints.registry import ADAPTERS, adapter_by_name
from normprobe.data.hashing import file_sha256
from normprobe.errors import NormprobeError

__all__ = ["FORMAT", "ADAPTERS", "LoadedEncoder", "load_encoder", "save_checkpoint"]


def _describe(source: CheckpointSource) -> str:
    if source.is_program:  # only reached when --adapter names a weights format for a program file
        return f"a {source.kind} archive"
    obj = source.state
    if isinstance(obj, dict):
        keys = list(obj)[:6]
        return f"a dict with keys {keys}{' ...' if len(obj) > 6 else ''}"
    return f"a {type(obj).__name__}"


def _allow_program(path: Path, kind: str, trust_code: bool) -> None:
    """Refuse a file that is a program unless its source is trusted; warn when it is."""
    if not trust_code:
        raise NormprobeError(
            f"{path}: refused: a {kind} file is a program, not weights, and loading and running it executes "
            f"the code it holds (it may write files or start processes); pass --trust-code (trust_code=True) "
            f"only for a file from a source you trust"
        )
    screen_archive(path)
    print(
        f"normprobe: warning: {path}: running the code of a {kind} file (--trust-code): it can do anything you can",
        file=sys.stderr,
        flush=True,
    )


def load_encoder(
    path: str | Path, arch: str | None = None, adapter: str | None = None, *, trust_code: bool = False
) -> LoadedEncoder:
    """Load any supported checkpoint as an eval-mode encoder on the CPU.

    ``adapter`` forces a format instead of auto-detection; ``arch`` (an ``--arch`` string, see
    :mod:`normprobe.checkpoints.arch`) names or overrides the architecture and preprocessing for
    formats that do not describe them (see each adapter). The adapter used is ``.adapter``; how
    keys were remapped and what was ignored or assumed is in ``.origin.notes``. TorchScript and
    ``torch.export`` files are refused unless ``trust_code`` (``--trust-code``), and then load with
    a warning on stderr: they are programs, and what they run is up to whoever wrote them.
    """
    parsed_arch = parse_arch(arch)
    path = Path(path)
    if not path.is_file():
        raise NormprobeError(f"{path}: no such checkpoint file")
    source = open_source(path)
    if source.is_program:
        _allow_program(path, source.kind, trust_code)
    candidates = [adapter_by_name(adapter)] if adapter else ADAPTERS
    chosen = next((a for a in candidates if a.detect(source)), None)
    if chosen is None:
        names = ", ".join(a.name for a in candidates)
        raise NormprobeError(
            f"{path}: not a checkpoint format normprobe knows ({_describe(source)}; tried {names})"
        )
    built = chosen.build(source, parsed_arch)
    built.module.eval()
    for parameter in built.module.parameters():
        parameter.requires_grad_(False)
    return LoadedEncoder(
        built.module,
        built.preprocess,
        built.heads,
        chosen.name,
        built.method,
        file_sha256(path),
        source.label,
        built.origin,
    )
