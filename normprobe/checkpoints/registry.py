"""The adapter registry: each known checkpoint format, how to recognise it and how to rebuild it.

An adapter's ``build(obj, source, arch)`` returns ``(module, preprocess, method, meta)``, where
``module(x)`` returns a dict of raw embeddings by head. ``file_level`` adapters (TorchScript,
``torch.export``) recognise and read the file themselves, because those archives are not loaded
with ``torch.load``; all others receive the object ``torch.load(weights_only=True)`` returned.
Order matters: the first adapter whose ``detect`` accepts the input wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from normprobe.checkpoints.native import is_native, load_native
from normprobe.preprocess import Preprocess

BuildResult = tuple[nn.Module, Preprocess, str, dict[str, Any]]


@dataclass(frozen=True)
class Adapter:
    name: str
    summary: str
    detect: Callable[[Any], bool]
    build: Callable[[Any, str, str | None], BuildResult]
    file_level: bool = False


def _build_native(obj: Any, source: str, arch: str | None) -> BuildResult:
    return load_native(obj, source)


ADAPTERS: list[Adapter] = [
    Adapter("normprobe", "normprobe's own checkpoint file (Contract 1)", is_native, _build_native),
]


def adapter_by_name(name: str) -> Adapter:
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    from normprobe.errors import NormprobeError

    raise NormprobeError(f"unknown adapter {name!r} (known: {', '.join(a.name for a in ADAPTERS)})")
