"""Method registry: ``METHODS[name](config)`` builds a :class:`~training.methods.base.Method`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from normprobe.training.methods.base import Method
from normprobe.training.methods.byol import BYOL
from normprobe.training.methods.moco import MoCoV2, MoCoV3
from normprobe.training.methods.simclr import SimCLR
from normprobe.training.methods.simsiam import SimSiam

from normprobe.errors import NormprobeError

METHODS: dict[str, Callable[[dict[str, Any]], Method]] = {
    m.name: m for m in (SimCLR, SimSiam, BYOL, MoCoV2, MoCoV3)
}


def build_method(config: dict[str, Any]) -> Method:
    name = config["method"]
    if name not in METHODS:
        raise NormprobeError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    try:
        return METHODS[name](config)
    except KeyError as err:
        raise NormprobeError(f"config: method_options for {name} lacks {err}") from err


__all__ = ["METHODS", "Method", "build_method"]
