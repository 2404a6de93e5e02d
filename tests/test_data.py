"""Every data source on real data: mirror files (JPEG and array npz, partial, greyscale, 64x64),
torchvision's on-disk formats written in their real layout, image folders, user .npz files,
checksums, missing data and the paper's imbalanced subsets."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normprobe import data
from normprobe.cli import main
from normprobe.data.convert import decode_image_bytes
from normprobe.data.subsets import imbalanced_class_sizes
from normprobe.errors import NormprobeError

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))


@pytest.fixture(scope="module")
def cifar10_test() -> data.ImageSet:
    return data.load("cifar10", "test", DATA_ROOT)


def test_cifar10_jpeg_mirror_matches_pillow_decode(cifar10_test: data.ImageSet) -> None:
    assert len(cifar10_test) == 10000 and cifar10_test.source == "mirror:cifar10_test_jpeg.npz"
    assert cifar10_test.classes[:3] == ("airplane", "automobile", "bird") and cifar10_test.notes == ()
    rows = np.arange(0, 10000, 10)
    images = cifar10_test.images(rows)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (1000, 32, 32, 3)
    # The batched libjpeg-turbo decode must be bit-identical to Pillow's (the data README's pixel
    # hashes are Pillow's; `benchmarks/bench_extract.py` checks the whole train split).
    reader = cifar10_test.reader
    pillow = np.stack([decode_image_bytes(reader._bytes(i).tobytes()) for i in rows])
    np.testing.assert_array_equal(images.numpy(), pillow)
    assert cifar10_test.ids[5] == "cifar10/test/5"
    assert np.bincount(cifar10_test.labels).tolist() == [1000] * 10


def test_positions_decode_only_those_rows(cifar10_test: data.ImageSet) -> None:
    rows = np.array([9999, 3, 512])
    picked = cifar10_test.images(rows)
    np.testing.assert_array_equal(picked[1].numpy(), cifar10_test.images(slice(3, 4))[0].numpy())
    sub = cifar10_test.subset(rows, "three")
    np.testing.assert_array_equal(sub.index, rows)
    np.testing.assert_array_equal(sub.images().numpy(), picked.numpy())
    assert sub.fingerprint != cifar10_test.fingerprint
    assert sub.fingerprint != cifar10_test.subset(rows[::-1], "three").fingerprint


def test_cifar100_partial_mirror_keeps_original_indices_and_says_so() -> None:
    test = data.load("cifar100", "test", DATA_ROOT)
    assert len(test) == 916
    np.testing.assert_array_equal(test.index, np.arange(916))
    assert any("partial mirror: 916 of 10000" in note for note in test.notes)
    assert len(test.classes) == 100 and test.classes[0] == "apple"
    labels = np.load(DATA_ROOT / "cifar100_labels.npz")["test_fine"][:916]
    np.testing.assert_array_equal(test.labels, labels)
    train = data.load("cifar100", "train", DATA_ROOT)
    assert len(train) == 1117 and any("1117 of 50000" in n for n in train.notes)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_greyscale_sets_become_rgb(name: str) -> None:
    imageset = data.load_any(name, None, DATA_ROOT)
    assert imageset.split == "test" and len(imageset) == 10000 and imageset.image_size == (28, 28)
    images = imageset.images(slice(0, 50)).numpy()
    assert images.shape == (50, 28, 28, 3)
    raw = np.load(DATA_ROOT / f"{name.replace('-', '_')}_test.npz")["images"][:50]
    for channel in range(3):
        np.testing.assert_array_equal(images[..., channel], raw)
    assert any("greyscale" in note for note in imageset.notes)


def test_tinyimagenet_val_is_64x64_with_greyscale_jpegs_as_rgb() -> None:
    val = data.load("tinyimagenet", "val", DATA_ROOT)
    assert len(val) == 10000 and val.image_size == (64, 64) and len(val.classes) == 200
    images = val.images(slice(0, 300)).numpy()
    assert images.shape == (300, 64, 64, 3)
    grey = [
        i
        for i in range(300)
        if (images[i, ..., 0] == images[i, ..., 1]).all() and (images[i, ..., 1] == images[i, ..., 2]).all()
    ]
    assert grey, "the first 300 val images include single-channel JPEGs"
    reader = val.reader
    for i in grey[:2] + [0, 1]:
        np.testing.assert_array_equal(images[i], decode_image_bytes(reader._bytes(i).tobytes()))


def _write_cifar10_batches_py(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """torchvision's `cifar-10-batches-py` layout: one pickled dict per batch (the original Python 2 str
    keys read back as str with torchvision's ``encoding="latin1"``), ``data`` = rows of 1024 R, G, B bytes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]:
        batch = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": rows,
            "filenames": [f"{i}.png" for i in range(len(rows))],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "label_names": list(data.load_manifest("cifar10").raw["classes"]),
        "num_vis": 3072,
        "num_cases_per_batch": 10000,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_torchvision_cifar10_layout(
    tmp_path: Path, cifar10_test: data.ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.cifar as tv_cifar

    images, labels = cifar10_test.images(slice(0, 40)).numpy(), cifar10_test.labels[:40]
    _write_cifar10_batches_py(tmp_path, images, labels)
    # These files hold 40 real images, not the published ones, so torchvision's md5 check refuses them:
    with pytest.raises(NormprobeError, match="torchvision could not read"):
        data.load("cifar10", "test", tmp_path)
    # ...and with the md5 check bypassed, torchvision's own parser reads our files through normprobe.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    loaded = data.load("cifar10", "test", tmp_path)
    assert loaded.source == "torchvision:CIFAR10" and len(loaded) == 40
    np.testing.assert_array_equal(loaded.images().numpy(), images)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert len(data.load("cifar10", "train", tmp_path)) == 200  # five train batches


def test_torchvision_mnist_idx_layout(tmp_path: Path) -> None:
    raw = np.load(DATA_ROOT / "mnist_test.npz")
    images, labels = raw["images"][:30], raw["labels"][:30].astype(np.uint8)
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 30, 28, 28) + images.tobytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 30) + labels.tobytes())
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).write_bytes((folder / name.replace("train", "t10k")).read_bytes())
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:  # torchvision also keeps the archives
        fh.write((folder / "t10k-images-idx3-ubyte").read_bytes())
    loaded = data.load("mnist", "test", tmp_path)
    assert loaded.source == "torchvision:MNIST" and len(loaded) == 30
    rgb = loaded.images().numpy()
    assert rgb.shape == (30, 28, 28, 3)
    np.testing.assert_array_equal(rgb[..., 2], images)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert any("greyscale" in note for note in loaded.notes)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_folder_with_class_subfolders(tmp_path: Path, cifar10_test: data.ImageSet) -> None:
    images = cifar10_test.images(slice(0, 6)).numpy()
    for i, image in enumerate(images):
        cls = cifar10_test.classes[cifar10_test.labels[i]]
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / f"{i}.png").write_bytes(_png(image))
    big = np.asarray(Image.fromarray(images[0]).resize((96, 64), Image.Resampling.BICUBIC))
    (tmp_path / cifar10_test.classes[cifar10_test.labels[0]] / "big.png").write_bytes(_png(big))
    folder = data.load_any(str(tmp_path), None, image_size=32)
    assert len(folder) == 7 and folder.skipped == () and folder.split == "folder"
    assert folder.classes == tuple(sorted({cifar10_test.classes[c] for c in cifar10_test.labels[:6]}))
    by_id = dict(zip(folder.ids.tolist(), range(len(folder)), strict=True))
    for i in range(6):
        cls = cifar10_test.classes[cifar10_test.labels[i]]
        row = by_id[f"{cls}/{i}.png"]
        assert folder.classes[folder.labels[row]] == cls
        np.testing.assert_array_equal(
            folder.images(np.array([row]))[0].numpy(), images[i]
        )  # PNG: lossless, 32x32 kept
    resized = folder.images(np.array([by_id[f"{cifar10_test.classes[cifar10_test.labels[0]]}/big.png"]]))
    assert tuple(resized.shape) == (1, 32, 32, 3)


def test_flat_image_folder_skips_a_corrupt_file(tmp_path: Path, cifar10_test: data.ImageSet) -> None:
    for i, image in enumerate(cifar10_test.images(slice(0, 3)).numpy()):
        (tmp_path / f"img{i}.png").write_bytes(_png(image))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    folder = data.load_any(str(tmp_path), None, image_size=32)
    assert len(folder) == 3 and (folder.labels == -1).all() and folder.classes == ()
    assert [name for name, _ in folder.skipped] == ["broken.jpg"]
    assert any("1 unreadable file(s) skipped" in note for note in folder.notes)
    (tmp_path / "img0.png").unlink()
    (tmp_path / "img1.png").unlink()
    (tmp_path / "img2.png").unlink()
    with pytest.raises(NormprobeError, match="none of the 1 image files could be read"):
        data.load_any(str(tmp_path), None)


def test_user_npz_arrays_grey_and_jpeg(tmp_path: Path, cifar10_test: data.ImageSet) -> None:
    images = cifar10_test.images(slice(0, 20)).numpy()
    np.savez(
        tmp_path / "rgb.npz",
        images=images,
        labels=cifar10_test.labels[:20],
        classes=np.array(cifar10_test.classes),
    )
    rgb = data.load_any(str(tmp_path / "rgb.npz"), None)
    assert (rgb.name, rgb.split, len(rgb)) == ("rgb", "all", 20) and rgb.classes == cifar10_test.classes
    np.testing.assert_array_equal(rgb.images().numpy(), images)

    mnist = np.load(DATA_ROOT / "mnist_test.npz")["images"][:10]
    np.savez(tmp_path / "grey.npz", images=mnist)
    grey = data.load_any(str(tmp_path / "grey.npz"), None)
    assert (grey.labels == -1).all() and grey.images().shape == (10, 28, 28, 3)

    reader = cifar10_test.reader
    offsets = reader._offsets[:21] - reader._offsets[0]
    np.savez(
        tmp_path / "jpeg.npz", jpeg=reader._data[reader._offsets[0] : reader._offsets[20]], offsets=offsets
    )
    np.testing.assert_array_equal(data.load_any(str(tmp_path / "jpeg.npz"), None).images().numpy(), images)

    np.savez(
        tmp_path / "png.npz",
        jpeg=np.frombuffer(b"".join(_png(im) for im in images[:3]), np.uint8),
        offsets=np.cumsum([0] + [len(_png(im)) for im in images[:3]]),
    )
    np.testing.assert_array_equal(data.load_any(str(tmp_path / "png.npz"), None).images().numpy(), images[:3])

    np.savez(tmp_path / "floats.npz", images=images.astype(np.float32))
    with pytest.raises(NormprobeError, match="must be uint8"):
        data.load_any(str(tmp_path / "floats.npz"), None)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NormprobeError, match="not a readable .npz"):
        data.load_any(str(tmp_path / "junk.npz"), None)


def test_missing_and_unknown_datasets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        NormprobeError, match=r"cifar10 test not found in data root .*cifar10_test_jpeg\.npz.*NORMPROBE_DATA"
    ):
        data.load("cifar10", "test", tmp_path)
    with pytest.raises(NormprobeError, match="unknown dataset 'svhn'"):
        data.load("svhn", "test", DATA_ROOT)
    with pytest.raises(NormprobeError, match="no split 'val'"):
        data.load("cifar10", "val", DATA_ROOT)
    with pytest.raises(NormprobeError, match="neither a folder, an .npz file nor a known dataset"):
        data.load_any("no_such_thing", None, DATA_ROOT)
    with pytest.raises(NormprobeError, match="no such file"):
        data.load_any(str(tmp_path / "absent.npz"), None)


def test_label_sets_align_with_images() -> None:
    c10n = data.load_labels("cifar10n", DATA_ROOT)
    train_labels = np.load(DATA_ROOT / "cifar10_train_jpeg.npz")["labels"]
    np.testing.assert_array_equal(c10n["clean_label"], train_labels)
    assert 0.08 < (c10n["aggre_label"] != c10n["clean_label"]).mean() < 0.10
    with pytest.raises(NormprobeError, match="label set, not an image dataset"):
        data.load("cifar10h", "test", DATA_ROOT)


def test_imbalanced_subsets_follow_the_paper() -> None:
    labels = np.load(DATA_ROOT / "cifar10_train_jpeg.npz")["labels"]
    picked = data.imbalanced_indices("cifar10", labels)
    counts = np.bincount(labels[picked], minlength=10)
    np.testing.assert_array_equal(counts, np.floor(5000 / 1.5 ** np.arange(10)).astype(int))
    np.testing.assert_array_equal(counts[:4], [5000, 3333, 2222, 1481])
    assert (np.diff(picked) > 0).all()
    for cls in (3, 9):  # the first n_i images of each class, in dataset order
        np.testing.assert_array_equal(
            picked[labels[picked] == cls], np.flatnonzero(labels == cls)[: counts[cls]]
        )

    fine = np.load(DATA_ROOT / "cifar100_labels.npz")["train_fine"]
    picked100 = data.imbalanced_indices("cifar100", fine)
    sizes = imbalanced_class_sizes("cifar100", 100)
    np.testing.assert_array_equal(np.bincount(fine[picked100], minlength=100), sizes)
    assert sizes[0] == 500 and sizes[99] == int(500 / 1.034**99)
    with pytest.raises(NormprobeError, match="no imbalanced split"):
        data.imbalanced_indices("mnist", labels)


def test_datasets_verify_detects_a_modified_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("cifar10h.npz", "mnist_test.npz"):
        shutil.copyfile(DATA_ROOT / name, tmp_path / name)
    assert (
        main(["datasets", "verify", "--data-root", str(tmp_path)]) == 0
    )  # missing files are reported, not fatal
    out = capsys.readouterr().out
    assert re.search(r"^ok\s+cifar10h\.npz", out, re.M) and re.search(
        r"^missing\s+cifar10_test_jpeg\.npz", out, re.M
    )
    assert "2 ok, 0 mismatched, 8 missing" in out
    assert main(["datasets", "verify", "--data-root", str(tmp_path), "--strict"]) == 2
    assert "missing from" in capsys.readouterr().err

    modified = bytearray((tmp_path / "cifar10h.npz").read_bytes())
    modified[len(modified) // 2] ^= 0xFF
    (tmp_path / "cifar10h.npz").write_bytes(bytes(modified))
    assert main(["datasets", "verify", "--data-root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert re.search(r"^MISMATCH\s+cifar10h\.npz", captured.out, re.M)
    error_lines = captured.err.strip().splitlines()
    assert len(error_lines) == 1 and "do not match the manifest sha256: cifar10h.npz" in error_lines[0]
    rows = {file: status for file, status, _ in data.verify(tmp_path)}
    assert (
        rows["cifar10h.npz"] == "MISMATCH"
        and rows["mnist_test.npz"] == "ok"
        and rows["cifar10_test_jpeg.npz"] == "missing"
    )


@pytest.mark.data_mirror
def test_datasets_list_counts_what_is_really_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datasets", "list", "--data-root", str(DATA_ROOT)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("cifar100 ") and " test " in line)
    assert "916/10000 (partial)" in row and "cifar100_exact_subset.npz (present)" in row and "mirror:" in row
    assert any(line.startswith("cifar10 ") and "50000/50000" in line for line in lines)
    assert any(line.startswith("cifar10h ") and "labels" in line for line in lines)
    assert main(["datasets", "list", "--data-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("tinyimagenet "))
    assert "0/10000" in row and "(missing)" in row and "none:" in row
