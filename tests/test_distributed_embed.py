"""Extraction under ``torchrun``: each rank embeds a contiguous shard, rank 0 merges them in order and
alone writes; two real gloo processes give the embeddings of one process, bit for bit.

The multi-process tests start real processes (``python -m torch.distributed.run``, one thread each):
every one pays for importing torch, so there are few of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from normprobe import distributed
from normprobe.checkpoints import save_checkpoint
from normprobe.models import build_encoder
from normprobe.models.heads import simclr_projector
from normprobe.preprocess import Preprocess

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
REPO = Path(__file__).resolve().parents[1]
SPEC = {
    "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
    "projector": simclr_projector(64, 128, 32),
}
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "NORMPROBE_NO_REEXEC": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


@pytest.mark.parametrize("n", [1, 7, 64, 65, 100])
@pytest.mark.parametrize("batch_size", [1, 24, 256])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_shards_are_contiguous_runs_of_whole_batches_covering_every_row(
    n: int, batch_size: int, ranks: int
) -> None:
    shards = [distributed.shard(n, batch_size, ranks, me) for me in range(ranks)]
    assert shards[0].start == 0 and shards[-1].stop == n
    for before, after in zip(shards, shards[1:], strict=False):
        assert before.stop == after.start
    for s in shards:
        # every shard starts on a batch boundary of the one-process run, so its batches are that run's
        assert s.start % batch_size == 0 or s.start == n
    sizes = [s.stop - s.start for s in shards]
    # full shards, then at most one short one, then empty ones (the layout gather_rows merges in place)
    nonempty = [size for size in sizes if size]
    assert sizes == nonempty + [0] * (ranks - len(nonempty))
    assert all(size == nonempty[0] for size in nonempty[:-1]) and nonempty[-1] <= nonempty[0]


def test_without_a_process_group_the_helpers_are_the_single_process_answer() -> None:
    part = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.gather_rows(part, 3) is part
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    assert distributed.join(torch.device("cpu")) == torch.device("cpu")


def _torchrun(ranks: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(ranks),
            *args,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_gather_rows_merges_uneven_and_empty_shards_in_rank_order(tmp_path: Path) -> None:
    """Three gloo ranks holding 4, 4 and 0 rows (and, in the middle, a short shard) of a 3-column array."""
    script = tmp_path / "gather.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import numpy as np
            from normprobe import distributed
            import torch

            distributed.join(torch.device("cpu"))
            me = distributed.rank()
            for sizes in ([4, 4, 0], [4, 1, 3]):
                start = sum(sizes[:me])
                part = np.arange(start, start + sizes[me], dtype=np.float32)[:, None] * [1, 10, 100]
                merged = distributed.gather_rows(part.astype(np.float32), sum(sizes))
                if me == 0:
                    expected = np.arange(sum(sizes), dtype=np.float32)[:, None] * [1, 10, 100]
                    assert np.array_equal(merged, expected), (sizes, merged)
                else:
                    assert merged is None
            print(f"rank {me} ok")
            torch.distributed.destroy_process_group()
            """
        )
    )
    done = _torchrun(3, str(script))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if line.endswith(" ok")) == [
        "rank 0 ok",
        "rank 1 ok",
        "rank 2 ok",
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ResNet-18 (width 8) checkpoint, a NaN-producing one, and the first 64 real CIFAR-10 test JPEGs."""
    root = tmp_path_factory.mktemp("ddp-embed")
    torch.manual_seed(0)
    encoder = build_encoder(SPEC)
    for name, state in (
        ("tiny.pt", encoder.state_dict()),
        # BatchNorm dividing by sqrt(negative variance): NaN z
        ("nan.pt", {k: -v if k == "projector.1.running_var" else v for k, v in encoder.state_dict().items()}),
    ):
        save_checkpoint(
            root / name, method="simclr", encoder_spec=SPEC, preprocess=Preprocess((32, 32)), state_dict=state
        )
    test = np.load(DATA_ROOT / "cifar10_test_jpeg.npz")
    offsets = test["offsets"][:65]
    np.savez(
        root / "c10first64.npz",
        jpeg=test["jpeg"][: offsets[-1]],
        offsets=offsets,
        labels=test["labels"][:64],
        classes=test["classes"],
    )
    return {"ckpt": root / "tiny.pt", "nan": root / "nan.pt", "npz": root / "c10first64.npz"}


def test_two_gloo_processes_embed_exactly_what_one_process_does(
    files: dict[str, Path], tmp_path: Path
) -> None:
    # batch 24 over 64 images: rank 0 embeds batches [0, 24) and [24, 48), rank 1 the short [48, 64)
    common = [
        "embed",
        str(files["ckpt"]),
        "--dataset",
        str(files["npz"]),
        "--batch-size",
        "24",
        "--no-progress",
    ]
    cache = tmp_path / "cache"
    two = _torchrun(
        2, "-m", "normprobe", *common, "--cache-dir", str(cache), "--out", str(tmp_path / "two.npz")
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "normprobe", *common, "--no-cache", "--out", str(tmp_path / "one.npz")],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    multi, single = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    for key in ("feats", "z", "index", "labels", "ids"):
        assert np.array_equal(multi[key], single[key]), key
    assert multi["feats"].shape == (64, 64) and multi["z"].shape == (64, 32)
    # rank 0 alone printed and wrote: one output file, one cache entry per head, each of all 64 rows
    assert two.stdout.count("wrote ") == 1 and "cpu x 2 processes" in two.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["one.npz", "two.npz"]
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 2 and all(np.load(e).shape[0] == 64 for e in entries)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".npy"]  # no temporary left

    # the cache two processes filled serves one process
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "normprobe",
            *common,
            "--cache-dir",
            str(cache),
            "--out",
            str(tmp_path / "c.npz"),
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0 and "served from the cache" in again.stdout, again.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "c.npz")["z"], single["z"])


def test_a_failure_on_one_rank_stops_every_rank_and_writes_nothing(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """NaN embeddings (the extraction's own check) on the ranks that have rows; the rank with none
    (three ranks, two batches) learns of it instead of waiting for the gather."""
    out = tmp_path / "never.npz"
    done = _torchrun(
        3,
        "-m",
        "normprobe",
        "embed",
        str(files["nan"]),
        "--dataset",
        str(files["npz"]),
        "--batch-size",
        "32",
        "--no-cache",
        "--no-progress",
        "--out",
        str(out),
    )
    assert done.returncode != 0
    assert "NaN or Inf" in done.stderr and "extraction failed on rank" in done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_analyze_refuses_to_run_under_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from normprobe.errors import NormprobeError
    from normprobe.pipeline import run_analysis

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(NormprobeError, match="not under torchrun"):
        run_analysis("no-such-checkpoint.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
