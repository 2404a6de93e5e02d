"""Build normprobe's Encoder from remapped foreign weights and check that every key fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from normprobe.checkpoints.arch import Arch
from normprobe.checkpoints.contract import BuildResult, Origin
from normprobe.checkpoints.keys import StateDict, prefixed
from normprobe.checkpoints.weights import load_weights
from normprobe.models import build_encoder
from normprobe.models.heads import LayerSpec
from normprobe.preprocess import Preprocess


@dataclass
class Remapped:
    """A foreign checkpoint translated to normprobe's names: ``Encoder.backbone/projector/predictor``."""

    backbone_spec: dict[str, Any]
    backbone: StateDict
    preprocess: Preprocess
    method: str
    projector: list[LayerSpec] | None = None
    projector_weights: StateDict = field(default_factory=dict)
    predictor: list[LayerSpec] | None = None
    predictor_weights: StateDict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # What a Lightning checkpoint says of its run, passed through to Origin.
    run_config: dict[str, Any] | None = None
    epoch: int | None = None
    global_step: int | None = None


def assemble(remapped: Remapped, source: str, arch: Arch | None) -> BuildResult:
    """Build the Encoder (``--arch`` overriding the inferred backbone and preprocessing) and load the weights strictly."""
    backbone_spec = arch.backbone_spec(remapped.backbone_spec) if arch else remapped.backbone_spec
    preprocess = arch.preprocess(remapped.preprocess) if arch else remapped.preprocess
    notes = list(remapped.notes)
    if arch:
        notes.append(
            f"--arch {arch.text} applied: backbone {backbone_spec}, preprocessing {preprocess.describe()}"
        )
    spec = {"backbone": backbone_spec, "projector": remapped.projector, "predictor": remapped.predictor}
    encoder = build_encoder(spec)
    state_dict = {
        **prefixed(remapped.backbone, "backbone."),
        **prefixed(remapped.projector_weights, "projector."),
        **prefixed(remapped.predictor_weights, "predictor."),
    }
    # Older files and some exporters omit BatchNorm's step counter; eval mode never reads it.
    load_weights(encoder, state_dict, source, ignore_missing=("num_batches_tracked",))
    origin = Origin(
        notes=tuple(notes),
        encoder_spec=spec,
        arch=arch.text if arch else None,
        run_config=remapped.run_config,
        epoch=remapped.epoch,
        global_step=remapped.global_step,
    )
    return BuildResult(encoder, preprocess, remapped.method, encoder.heads, origin)
