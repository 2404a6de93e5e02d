"""Backbones (ResNet with CIFAR stem, timm ViTs), heads and the Encoder."""

from normprobe.models.encoder import HEADS, Encoder, build_backbone, build_encoder
from normprobe.models.heads import build_head, head_out_dim

__all__ = ["HEADS", "Encoder", "build_backbone", "build_encoder", "build_head", "head_out_dim"]
