"""Shared fixtures.

``analyzed_results``: a real results folder, written by ``normprobe analyze`` (the CLI's code path,
in process) on a tiny randomly initialised encoder (ResNet-18 width 8 + SimCLR projector) and small
real subsets: the first 600 CIFAR-10 train images, the first 200 of CIFAR-10 test, CIFAR-100 test
and MNIST test. Images come from ``$NORMPROBE_DATA`` (default: /work/shared/data).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
# Commands the tests start as subprocesses run without the allocator re-exec (one process each, as
# a killed or timed test expects); the test of the re-exec itself removes this.
os.environ.setdefault("NORMPROBE_NO_REEXEC", "1")


@pytest.fixture(scope="session")
def analyzed_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from normprobe.checkpoints import save_checkpoint
    from normprobe.cli import main
    from normprobe.models import build_encoder
    from normprobe.models.heads import simclr_projector
    from normprobe.preprocess import Preprocess

    work = tmp_path_factory.mktemp("analyzed")
    torch.manual_seed(0)
    spec = {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
        "projector": simclr_projector(64, 128, 32),
    }
    checkpoint = work / "tiny.pt"
    save_checkpoint(
        checkpoint,
        method="simclr",
        encoder_spec=spec,
        preprocess=Preprocess(),
        state_dict=build_encoder(spec).state_dict(),
    )
    out = work / "results"
    status = main(
        [
            "analyze",
            str(checkpoint),
            "--id",
            "cifar10",
            "--ood",
            "cifar100",
            "--ood",
            "mnist",
            "--max-train",
            "600",
            "--max-per-split",
            "200",
            "--data-root",
            str(DATA_ROOT),
            "--cache-dir",
            str(work / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0, f"normprobe analyze exited with {status}"
    return out
