"""`normprobe embed` end to end (in-process and one real subprocess), its outputs, bad input, and the
allocator re-exec the CLI performs before anything else.

Bad input is checked in-process (exit status and stderr through ``main``), to keep the suite fast:
every real ``normprobe`` process pays for importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from normprobe import allocator, data
from normprobe.checkpoints import load_encoder, save_checkpoint
from normprobe.cli import main
from normprobe.extraction import extract_arrays
from normprobe.models import build_encoder
from normprobe.models.heads import simclr_projector
from normprobe.preprocess import Preprocess

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
SPEC = {
    "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
    "projector": simclr_projector(64, 128, 32),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint and a user .npz holding the first 100 real CIFAR-10 test JPEGs."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    encoder = build_encoder(SPEC)
    save_checkpoint(
        root / "tiny.pt",
        method="simclr",
        encoder_spec=SPEC,
        preprocess=Preprocess((32, 32)),
        state_dict=encoder.state_dict(),
    )
    # Finite weights (the loader accepts them) whose BatchNorm divides by sqrt(negative variance): NaN z.
    broken = {k: -v if k == "projector.1.running_var" else v for k, v in encoder.state_dict().items()}
    save_checkpoint(
        root / "nan.pt",
        method="simclr",
        encoder_spec=SPEC,
        preprocess=Preprocess((32, 32)),
        state_dict=broken,
    )
    test = np.load(DATA_ROOT / "cifar10_test_jpeg.npz")
    offsets = test["offsets"][:101]
    np.savez(
        root / "c10first100.npz",
        jpeg=test["jpeg"][: offsets[-1]],
        offsets=offsets,
        labels=test["labels"][:100],
        classes=test["classes"],
    )
    (root / "garbage.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    return {
        "ckpt": root / "tiny.pt",
        "nan": root / "nan.pt",
        "npz": root / "c10first100.npz",
        "garbage": root / "garbage.pt",
    }


def test_embed_writes_npz_then_serves_parquet_from_the_cache(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    common = [
        "embed",
        str(files["ckpt"]),
        "--dataset",
        str(files["npz"]),
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--batch-size",
        "64",
    ]
    assert main([*common, "--out", str(tmp_path / "e.npz")]) == 0
    out = capsys.readouterr().out
    assert "adapter normprobe" in out and "100 images from npz:" in out
    assert "images/s" in out and f"cached in {cache}" in out

    saved = np.load(tmp_path / "e.npz", allow_pickle=False)
    assert set(saved.files) == {"feats", "z", "index", "labels", "ids", "config"}
    assert (
        saved["feats"].shape == (100, 64) and saved["z"].shape == (100, 32) and saved["z"].dtype == np.float32
    )
    np.testing.assert_array_equal(saved["index"], np.arange(100))
    np.testing.assert_array_equal(
        saved["labels"], np.load(DATA_ROOT / "cifar10_test_jpeg.npz")["labels"][:100]
    )
    assert saved["ids"][3] == "c10first100/all/3"
    config = json.loads(str(saved["config"]))
    assert (
        config["checkpoint"]["adapter"] == "normprobe"
        and config["precision"] == "fp32"
        and config["dataset"]["n"] == 100
    )
    loaded = load_encoder(files["ckpt"])
    direct = extract_arrays(
        loaded.encoder,
        loaded.preprocess,
        data.load_any(str(files["npz"]), None),
        ("feats", "z"),
        progress=False,
    )
    np.testing.assert_allclose(saved["z"], direct["z"], rtol=1e-5, atol=1e-6)

    assert main([*common, "--heads", "z", "--out", str(tmp_path / "e.parquet")]) == 0
    assert "served from the cache" in capsys.readouterr().out
    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert list(frame.columns) == ["dataset", "split", "index", "id", "label", "z", "z_norm"]
    z = np.stack(frame["z"].to_numpy())
    np.testing.assert_array_equal(z, saved["z"])
    np.testing.assert_allclose(frame["z_norm"], np.linalg.norm(saved["z"], axis=1), rtol=1e-6)
    meta = json.loads(pq.read_schema(tmp_path / "e.parquet").metadata[b"normprobe"])
    assert meta["heads"] == ["z"] and meta["dataset"]["fingerprint"] == config["dataset"]["fingerprint"]

    assert main([*common, "--heads", "z", "--no-cache", "--out", str(tmp_path / "again.npz")]) == 0
    assert "not cached (--no-cache)" in capsys.readouterr().out


def test_embed_reports_a_partial_mirror(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sample shipped in the package is a partial data root: 500 of the 916 mirrored CIFAR-100 test images.
    sample_root = Path(data.__file__).resolve().parents[1] / "sample"
    args = [
        "embed",
        str(files["ckpt"]),
        "--dataset",
        "cifar100:test",
        "--data-root",
        str(sample_root),
        "--heads",
        "feats",
        "--no-cache",
        "--no-progress",
        "--out",
        str(tmp_path / "c100.npz"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cifar100/test, 500 images from mirror:cifar100_exact_subset.npz" in out
    assert (
        "note: partial mirror: 500 of 10000 cifar100 test images exist locally (original indices 0..499)"
        in out
    )
    saved = np.load(tmp_path / "c100.npz")
    assert saved["feats"].shape == (500, 64) and saved["ids"][499] == "cifar100/test/499"
    np.testing.assert_array_equal(
        saved["labels"], np.load(DATA_ROOT / "cifar100_labels.npz")["test_fine"][:500]
    )


def test_embed_an_image_folder(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    for cls in ("cats", "dogs"):
        (folder / cls).mkdir(parents=True)
    images = data.load_any(str(files["npz"]), None).images(slice(0, 4)).numpy()
    for i, image in enumerate(images):
        Image.fromarray(image).resize((48, 40)).save(folder / ("cats" if i < 2 else "dogs") / f"{i}.jpg")
    (folder / "dogs" / "bad.png").write_bytes(b"\x89PNG broken")
    assert (
        main(
            [
                "embed",
                str(files["ckpt"]),
                "--dataset",
                str(folder),
                "--no-cache",
                "--no-progress",
                "--out",
                str(tmp_path / "f.npz"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "skipped: dogs/bad.png" in out and "centre-cropped to 32x32" in out
    saved = np.load(tmp_path / "f.npz")
    assert saved["ids"].tolist() == ["cats/0.jpg", "cats/1.jpg", "dogs/2.jpg", "dogs/3.jpg"]
    assert saved["labels"].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing-checkpoint", "no such checkpoint file"),
        ("garbage-checkpoint", "not a readable PyTorch checkpoint"),
        ("unknown-dataset", "neither a folder, an .npz file nor a known dataset"),
        ("missing-data", "cifar10 test not found in data root"),
        ("bad-suffix", "unknown output format '.csv'"),
        ("unknown-head", "checkpoint has no head 'p'"),
        ("bad-batch-size", "--batch-size must be >= 1"),
        ("nan-embeddings", "100 embedding(s) of head 'z' on c10first100/all are NaN or Inf"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str, match: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous result")  # a failed run must leave it as it was
    ckpt, dataset, extra = str(files["ckpt"]), str(files["npz"]), []
    if case == "missing-checkpoint":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "garbage-checkpoint":
        ckpt = str(files["garbage"])
    elif case == "unknown-dataset":
        dataset = "svhn"
    elif case == "missing-data":
        dataset, extra = "cifar10", ["--data-root", str(tmp_path / "empty")]
    elif case == "bad-suffix":
        out = tmp_path / "out.csv"
    elif case == "unknown-head":
        extra = ["--heads", "z,p"]
    elif case == "bad-batch-size":
        extra = ["--batch-size", "0"]
    elif case == "nan-embeddings":
        ckpt = str(files["nan"])
    code = main(  # --force: the existing out.npz may be replaced, so each case reaches its own check
        [
            "embed",
            ckpt,
            "--dataset",
            dataset,
            "--out",
            str(out),
            "--force",
            "--no-cache",
            "--no-progress",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("normprobe: error: ") and match in err[0]
    assert (tmp_path / "out.npz").read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["out.npz"]  # no temporary file left behind


def test_real_subprocess_reexecs_once_with_the_allocator_settings(
    files: dict[str, Path], tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    log = tmp_path / "processes.log"
    # Every Python process started from here logs its GLIBC_TUNABLES: the parent has none, its one re-exec has ours.
    (probe / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(os.environ.get('GLIBC_TUNABLES', '<none>') + '\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.NO_REEXEC_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(probe), env.get("PYTHONPATH", "")])
    out = tmp_path / "sub.parquet"
    cmd = [
        sys.executable,
        "-m",
        "normprobe",
        "embed",
        str(files["ckpt"]),
        "--dataset",
        str(files["npz"]),
        "--out",
        str(out),
        "--no-cache",
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warnings leak from the libraries
    assert "wrote" in done.stdout and len(pd.read_parquet(out)) == 100
    lines = log.read_text().splitlines()
    expected = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
    if allocator._is_glibc():
        assert lines == ["<none>", expected]
    else:
        assert lines == ["<none>"]


def test_allocator_settings_merge_and_never_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    merged = allocator.env_with_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert merged["HOME"] == "/h" and merged[allocator.NO_REEXEC_ENV] == "1"
    assert merged["GLIBC_TUNABLES"].startswith("glibc.malloc.arena_max=2:") and allocator.has_tunables(merged)
    assert not allocator.has_tunables({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    assert not allocator.should_reexec(merged)  # the child never re-executes again
    plain = {"PATH": "/usr/bin"}
    assert allocator.should_reexec(plain) == allocator._is_glibc()
    assert not allocator.should_reexec({**plain, allocator.NO_REEXEC_ENV: "1"})
    assert not allocator.should_reexec({**plain, "GLIBC_TUNABLES": merged["GLIBC_TUNABLES"]})

    def refuse(*args: object) -> None:
        raise AssertionError("in-process main(argv) must not re-execute")

    monkeypatch.setattr(os, "execve", refuse)
    monkeypatch.delenv(allocator.NO_REEXEC_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0


@pytest.mark.parametrize(
    ("n", "rows", "groups"), [(100, 16, [16] * 6 + [4]), (70_000, None, [65_536, 4_464])]
)
def test_parquet_is_written_in_bounded_row_groups_from_memory_maps(
    tmp_path: Path, n: int, rows: int | None, groups: list[int]
) -> None:
    from normprobe.embedding_files import write_parquet

    rng = np.random.default_rng(0)
    np.save(tmp_path / "z.npy", rng.standard_normal((n, 4)).astype(np.float32))
    z = np.load(tmp_path / "z.npy", mmap_mode="r")  # as the cache serves it
    config = {"dataset": {"name": "synthetic", "split": "all"}}
    out = tmp_path / "e.parquet"
    write_parquet(
        out,
        {"z": z},
        np.arange(n),
        rng.integers(0, 3, n),
        np.arange(n).astype(str),
        config,
        row_group_rows=rows,
    )
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == groups
    frame = pd.read_parquet(out)
    np.testing.assert_array_equal(np.stack(frame["z"]), z)
    np.testing.assert_array_equal(frame["z_norm"].to_numpy(), np.linalg.norm(np.asarray(z), axis=1))
    np.testing.assert_array_equal(frame["index"].to_numpy(), np.arange(n))
    assert json.loads(pq.read_schema(out).metadata[b"normprobe"]) == config
    assert [p.name for p in tmp_path.iterdir()] == sorted(["z.npy", "e.parquet"]) or len(
        list(tmp_path.iterdir())
    ) == 2
