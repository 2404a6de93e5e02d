"""Two CPU processes (torchrun, gloo) train exactly what one process does on the same global batch.

The model has no cross-sample coupling inside a rank (ViT backbone with LayerNorm, heads with
LayerNorm instead of BatchNorm), so the only cross-rank interaction is SimCLR's negatives, gathered
with gradients; DDP averages the gradients. Losses and final weights agree to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
REPO = Path(__file__).resolve().parents[1]
SETS = [
    'backbone={name: "timm:vit_tiny_patch16_224", img_size: 32, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}',
    "method_options.proj_hidden=16",
    "method_options.out_dim=8",
    "method_options.head_norm=ln",
    f"dataset.data_root={DATA_ROOT}",
    "dataset.subset=128",
    "batch_size=32",
    "epochs=1",
    "schedule.warmup_epochs=0.5",
    "monitor.every=0",
    "progress=false",
    "threads=1",
    "gradscale=1",
]


@pytest.mark.skipif(
    not (DATA_ROOT / "cifar10_train_jpeg.npz").is_file(), reason="CIFAR-10 mirror not present"
)
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    from normprobe.training.__main__ import main

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "normprobe.training",
            "--config",
            "simclr_cifar10",
            "--set",
            *SETS,
            f"out_dir={tmp_path / 'ddp'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main(["--config", "simclr_cifar10", "--set", *SETS, f"out_dir={tmp_path / 'one'}"]) == 0

    def steps(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "steps.jsonl").read_text().splitlines()]

    assert len(steps("ddp")) == len(steps("one")) == 4
    for a, b in zip(steps("ddp"), steps("one"), strict=True):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    multi, single = (torch.load(tmp_path / r / "final.pt", weights_only=True) for r in ("ddp", "one"))
    assert multi["training"]["world_size"] == 2 and single["training"]["world_size"] == 1
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(multi["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
