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


# Required sizes and optional flags of each layer type; sizes are positive ints, flags bools.
_SIZES: dict[str, tuple[str, ...]] = {
    "linear": ("in", "out"),
    "bn": ("dim",),
    "ln": ("dim",),
    "relu": (),
    "gelu": (),
}
_FLAGS: dict[str, str] = {"linear": "bias", "bn": "affine"}


def check_head(layers: Any, what: str = "head") -> list[LayerSpec]:
    """``layers`` as a list of valid layer specs, or one line saying what is wrong (specs come from files)."""
    if not isinstance(layers, (list, tuple)):
        raise NormprobeError(f"{what} is a {type(layers).__name__}, not a list of layers")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise NormprobeError(f"{what} layer {index} is a {type(layer).__name__}, not a mapping")
        kind = layer.get("type")
        if kind not in _SIZES:
            raise NormprobeError(f"unknown head layer type {kind!r} in checkpoint")
        for key in _SIZES[kind]:
            if key not in layer:
                raise NormprobeError(f"{what} layer {index} ({kind}) lacks {key!r}")
            value = layer[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NormprobeError(
                    f"{what} layer {index} ({kind}) has {key}={value!r}; a size must be a positive integer"
                )
        flag = _FLAGS.get(kind)
        if flag in layer and not isinstance(layer[flag], bool):
            raise NormprobeError(
                f"{what} layer {index} ({kind}) has {flag}={layer[flag]!r}; expected true or false"
            )
    return list(layers)


def head_width(layers: list[LayerSpec], d_in: int | None, what: str = "head") -> int | None:
    """The width a (checked) head outputs when fed ``d_in`` features (``None``: unknown), refusing a layer that
    does not take what the one before it gives: that would fail only later, at the first forward pass."""
    dim = d_in
    for index, layer in enumerate(layers):
        kind = layer["type"]
        takes = layer["in"] if kind == "linear" else layer.get("dim")
        if takes is not None and dim is not None and takes != dim:
            raise NormprobeError(f"{what} layer {index} ({kind}) takes {takes} features but is given {dim}")
        dim = layer["out"] if kind == "linear" else takes if takes is not None else dim
    return dim


def build_head(layers: list[LayerSpec]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in check_head(layers):
        kind = layer["type"]
        if kind == "linear":
            modules.append(nn.Linear(layer["in"], layer["out"], bias=layer.get("bias", True)))
        elif kind == "bn":
            modules.append(nn.BatchNorm1d(layer["dim"], affine=layer.get("affine", True)))
        elif kind == "ln":
            modules.append(nn.LayerNorm(layer["dim"]))
        elif kind == "relu":
            modules.append(nn.ReLU(inplace=True))
        else:
            modules.append(nn.GELU())
    return nn.Sequential(*modules)


def head_out_dim(layers: list[LayerSpec]) -> int:
    return next(layer["out"] for layer in reversed(layers) if layer["type"] == "linear")


def _linear(d_in: int, d_out: int, bias: bool = True) -> LayerSpec:
    return {"type": "linear", "in": d_in, "out": d_out, "bias": bias}


def _bn(dim: int, affine: bool = True) -> LayerSpec:
    return {"type": "bn", "dim": dim, "affine": affine}


RELU: LayerSpec = {"type": "relu"}


def _bn_mlp(*dims: int) -> list[LayerSpec]:
    """Bias-free linear layers through ``dims``, each followed by BN, with ReLU between them; the
    last BN has no affine (SimSiam's projector, MoCo v3's projector and predictor)."""
    layers: list[LayerSpec] = []
    last = len(dims) - 2
    for i in range(last + 1):
        layers += [_linear(dims[i], dims[i + 1], bias=False), _bn(dims[i + 1], affine=i < last)]
        if i < last:
            layers.append(RELU)
    return layers


def simclr_projector(d_in: int, hidden: int = 2048, out: int = 256) -> list[LayerSpec]:
    """SimCLR: "a MLP with one hidden layer ... z = W2 ReLU(W1 h)" (BN after W1 as in SimCLR v2 code)."""
    return [_linear(d_in, hidden, bias=False), _bn(hidden), RELU, _linear(hidden, out)]


def simsiam_projector(d_in: int, dim: int = 2048) -> list[LayerSpec]:
    """SimSiam: 3 fc layers with BN on each, ReLU on all but the output, whose BN has no affine."""
    return _bn_mlp(d_in, dim, dim, dim)


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
    return _bn_mlp(d_in, hidden, hidden, out)


def mocov3_predictor(dim: int = 256, hidden: int = 4096) -> list[LayerSpec]:
    """MoCo v3: 2-layer predictor, the last BN without affine."""
    return _bn_mlp(dim, hidden, dim)
