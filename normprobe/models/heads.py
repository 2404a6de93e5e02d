"""Projector and predictor heads described as plain layer lists, so a checkpoint can rebuild them.

A head spec is a list of dicts, one per ``nn.Sequential`` entry:
``{"type": "linear", "in": 512, "out": 2048, "bias": False}``, ``{"type": "bn", "dim": 2048,
"affine": True}``, ``{"type": "ln", "dim": 2048}``, ``{"type": "relu"}``, ``{"type": "gelu"}``.
The builders below give the heads "as in the papers".
"""

from __future__ import annotations

from typing import Any

from torch import nn

from normprobe.errors import NormprobeError

LayerSpec = dict[str, Any]


def build_head(layers: list[LayerSpec]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        kind = layer.get("type")
        if kind == "linear":
            modules.append(nn.Linear(layer["in"], layer["out"], bias=layer.get("bias", True)))
        elif kind == "bn":
            modules.append(nn.BatchNorm1d(layer["dim"], affine=layer.get("affine", True)))
        elif kind == "ln":
            modules.append(nn.LayerNorm(layer["dim"]))
        elif kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        elif kind == "gelu":
            modules.append(nn.GELU())
        else:
            raise NormprobeError(f"unknown head layer type {kind!r} in checkpoint")
    return nn.Sequential(*modules)


def head_out_dim(layers: list[LayerSpec]) -> int:
    return next(layer["out"] for layer in reversed(layers) if layer["type"] == "linear")


def _linear(d_in: int, d_out: int, bias: bool = True) -> LayerSpec:
    return {"type": "linear", "in": d_in, "out": d_out, "bias": bias}


def _bn(dim: int, affine: bool = True) -> LayerSpec:
    return {"type": "bn", "dim": dim, "affine": affine}


RELU: LayerSpec = {"type": "relu"}


def simclr_projector(d_in: int, hidden: int = 2048, out: int = 256) -> list[LayerSpec]:
    """SimCLR: "a MLP with one hidden layer ... z = W2 ReLU(W1 h)" (BN after W1 as in SimCLR v2 code)."""
    return [_linear(d_in, hidden, bias=False), _bn(hidden), RELU, _linear(hidden, out)]


def simsiam_projector(d_in: int, dim: int = 2048) -> list[LayerSpec]:
    """SimSiam: 3 fc layers with BN on each, ReLU on all but the output, whose BN has no affine."""
    return [
        _linear(d_in, dim, bias=False),
        _bn(dim),
        RELU,
        _linear(dim, dim, bias=False),
        _bn(dim),
        RELU,
        _linear(dim, dim, bias=False),
        _bn(dim, affine=False),
    ]


def bottleneck_predictor(dim: int = 2048, hidden: int = 512) -> list[LayerSpec]:
    """SimSiam's / BYOL's predictor: "a bottleneck structure" fc-BN-ReLU-fc with a narrow hidden layer."""
    return [_linear(dim, hidden, bias=False), _bn(hidden), RELU, _linear(hidden, dim)]


def byol_projector(d_in: int, hidden: int = 4096, out: int = 256) -> list[LayerSpec]:
    """BYOL: "a linear layer with output size 4096 followed by batch normalization, ReLU, and a final linear layer"."""
    return [_linear(d_in, hidden), _bn(hidden), RELU, _linear(hidden, out)]


def mocov2_projector(d_in: int, hidden: int = 2048, out: int = 128) -> list[LayerSpec]:
    """MoCo v2: a 2-layer MLP head (hidden 2048, ReLU) replacing the fc layer."""
    return [_linear(d_in, hidden), RELU, _linear(hidden, out)]


def mocov3_projector(d_in: int, hidden: int = 4096, out: int = 256) -> list[LayerSpec]:
    """MoCo v3: 3-layer MLP with BN on every layer, the last BN without affine."""
    return [
        _linear(d_in, hidden, bias=False),
        _bn(hidden),
        RELU,
        _linear(hidden, hidden, bias=False),
        _bn(hidden),
        RELU,
        _linear(hidden, out, bias=False),
        _bn(out, affine=False),
    ]


def mocov3_predictor(dim: int = 256, hidden: int = 4096) -> list[LayerSpec]:
    """MoCo v3: 2-layer predictor, the last BN without affine."""
    return [
        _linear(dim, hidden, bias=False),
        _bn(hidden),
        RELU,
        _linear(hidden, dim, bias=False),
        _bn(dim, affine=False),
    ]
