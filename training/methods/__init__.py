"""Method registry: ``METHODS[name](config)`` builds a :class:`~training.methods.base.Method`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from normprobe.errors import NormprobeError
from training.methods.base import Method
from training.methods.byol import BYOL
from training.methods.moco import MoCoV2, MoCoV3
from training.methods.simclr import SimCLR
from training.methods.simsiam import SimSiam

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
