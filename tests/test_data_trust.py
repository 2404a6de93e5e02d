"""Data files as untrusted input (issue 14): every malformed .npz, damaged mirror or odd file name
ends in one line on stderr and exit status 2 (or, for file names, a normal run), and the user's
files are left as they were."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from analyze_helpers import tiny_checkpoint

from normprobe import data
from normprobe.cli import main
from normprobe.data import npz as npz_module
from normprobe.errors import NormprobeError

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", hidden=64)


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    """The first 10 MNIST test images and the first 10 CIFAR-10 test JPEGs (their bytes and offsets)."""
    mnist = np.load(DATA_ROOT / "mnist_test.npz")
    cifar = np.load(DATA_ROOT / "cifar10_test_jpeg.npz")
    offsets = cifar["offsets"][:11]
    return {
        "images": mnist["images"][:10],
        "labels": mnist["labels"][:10],
        "jpeg": cifar["jpeg"][: offsets[-1]],
        "offsets": offsets - offsets[0],
    }


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("normprobe: error: "), err
    return err[0]


def _embed_fails(checkpoint: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`normprobe embed` on ``dataset``: exit 2, one line; the dataset file is unchanged and no output exists."""
    before = dataset.read_bytes()
    out = tmp_path / "out" / "e.npz"
    message = _fails(
        [
            "embed",
            str(checkpoint),
            "--dataset",
            str(dataset),
            "--out",
            str(out),
            "--no-cache",
            "--no-progress",
        ],
        capsys,
    )
    assert dataset.read_bytes() == before and not out.exists()
    return message


def _npy(array: np.ndarray | None = None, *, header: dict | None = None, body: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    if header is None:
        np.lib.format.write_array(buffer, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buffer, header)
        buffer.write(body or b"")
    return buffer.getvalue()


def _zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name some cases write on purpose
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, payload in members:
                archive.writestr(name, payload)
    return path


def _patch_central_directory(path: Path, member: int, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of the ``member``-th central directory entry (``offset`` bytes into it)."""
    raw = bytearray(path.read_bytes())
    at = -1
    for _ in range(member + 1):
        at = raw.index(b"PK\x01\x02", at + 1)
    struct.pack_into(fmt, raw, at + offset, value)
    path.write_bytes(bytes(raw))


def _sof_patched(jpeg: bytes, height: int, width: int) -> bytes:
    """A JPEG whose frame header (SOF0) declares another size: a few bytes claiming a huge image."""
    raw = bytearray(jpeg)
    at = raw.index(b"\xff\xc0")
    struct.pack_into(">HH", raw, at + 5, height, width)
    return bytes(raw)


def _encoded(jpegs: list[bytes]) -> dict[str, np.ndarray]:
    return {
        "jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
        "offsets": np.cumsum([0] + [len(j) for j in jpegs]),
    }


def _case(name: str, real: dict[str, np.ndarray], tmp: Path) -> Path:
    """Write the malformed .npz called ``name`` into ``tmp``."""
    images, labels = real["images"], real["labels"]
    path = tmp / f"{name}.npz"
    jpegs = [
        real["jpeg"][a:b].tobytes() for a, b in zip(real["offsets"][:-1], real["offsets"][1:], strict=True)
    ]
    arrays: dict[str, Callable[[], dict[str, np.ndarray]]] = {
        "string-labels": lambda: {"images": images, "labels": np.array(["seven"] * 10)},
        "2d-labels": lambda: {"images": images, "labels": np.zeros((10, 2), np.int64)},
        "nan-labels": lambda: {"images": images, "labels": np.r_[np.nan, np.zeros(9)]},
        "fractional-labels": lambda: {"images": images, "labels": np.full(10, 0.5)},
        "negative-labels": lambda: {"images": images, "labels": np.full(10, -7)},
        "float-images": lambda: {"images": images.astype(np.float32)},
        "negative-offsets": lambda: {"jpeg": real["jpeg"], "offsets": real["offsets"] - 5},
        "float-offsets": lambda: {"jpeg": real["jpeg"], "offsets": real["offsets"].astype(np.float64)},
        "non-monotonic-offsets": lambda: {
            "jpeg": real["jpeg"],
            "offsets": real["offsets"][[0, 2, 1, *range(3, 11)]],
        },
        "garbage-jpeg": lambda: _encoded([b"this is not an image" * 5] * 3),
        "garbage-after-soi": lambda: _encoded([b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20] * 3),
        "jpeg-claims-huge": lambda: _encoded([jpegs[0], _sof_patched(jpegs[1], 9000, 9000), jpegs[2]]),
        "first-jpeg-claims-huge": lambda: _encoded([_sof_patched(jpegs[0], 9000, 9000), jpegs[1]]),
    }
    if name in arrays:
        np.savez(path, **arrays[name]())
    elif name == "object-array":
        _zip(path, [("images.npy", _npy(np.array([images[0], "x"], dtype=object)))])
    elif name == "header-claims-1e9-images":
        header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
        _zip(path, [("images.npy", _npy(header=header, body=images.tobytes()))])
    elif name == "labels-claim-1e9":
        header = {"descr": "<i8", "fortran_order": False, "shape": (10**9,)}
        _zip(path, [("images.npy", _npy(images)), ("labels.npy", _npy(header=header, body=labels.tobytes()))])
    elif name == "archive-bomb":
        # 100 MiB of zeros deflate to about 100 kB: far beyond any real image file's ratio
        header = {"descr": "|u1", "fortran_order": False, "shape": (100 * 2**20 // 784, 28, 28)}
        body = bytes(100 * 2**20 // 784 * 784)
        _zip(path, [("images.npy", _npy(header=header, body=body))], zipfile.ZIP_DEFLATED)
    elif name == "duplicate-members":
        _zip(path, [("images.npy", _npy(images)), ("images.npy", _npy(images[:2]))])
    elif name == "overlapping-members":
        _zip(path, [("images.npy", _npy(images)), ("labels.npy", _npy(labels))])
        _patch_central_directory(path, 1, 42, "<I", 0)  # labels.npy's data "starts" at images.npy's
    elif name == "encrypted-member":
        _zip(path, [("images.npy", _npy(images))])
        _patch_central_directory(path, 0, 8, "<H", 1)
    elif name == "flipped-byte":
        np.savez_compressed(path, images=images)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif name == "truncated":
        np.savez(path, images=images)
        path.write_bytes(path.read_bytes()[:-100])
    else:
        raise AssertionError(name)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("object-array", "holds Python objects, which only pickle can read"),
        ("string-labels", "'labels' must be a 1-D array of integer class indices"),
        ("2d-labels", "'labels' must be a 1-D array of integer class indices"),
        ("nan-labels", "holds NaN, infinite or fractional values"),
        ("fractional-labels", "holds NaN, infinite or fractional values"),
        ("negative-labels", "class indices >= 0, or -1 for unknown"),
        ("float-images", "must be uint8"),
        ("negative-offsets", "'offsets' does not describe the 'jpeg' byte array"),
        ("float-offsets", "'offsets' must be a 1-D integer array"),
        ("non-monotonic-offsets", "'offsets' does not describe the 'jpeg' byte array"),
        ("garbage-jpeg", "encoded image 0 cannot be decoded (UnidentifiedImageError"),
        ("garbage-after-soi", "encoded image 0 cannot be decoded"),
        ("jpeg-claims-huge", "encoded image 1 is 9000x9000, the others 32x32"),
        ("first-jpeg-claims-huge", "images of 9000x9000 are larger than"),
        ("header-claims-1e9-images", "declares shape (1000000000, 28, 28)"),
        ("labels-claim-1e9", "array 'labels' declares shape (1000000000,)"),
        ("archive-bomb", "refused as an archive bomb"),
        ("duplicate-members", "two members named 'images.npy'"),
        ("overlapping-members", "members overlap inside the archive"),
        ("encrypted-member", "is encrypted"),
        ("flipped-byte", ""),
        ("truncated", "not a readable .npz file"),
    ],
)
def test_malformed_npz_is_one_line_and_exit_2(
    case: str,
    message: str,
    checkpoint: Path,
    real: dict[str, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _case(case, real, tmp_path)
    assert message in _embed_fails(checkpoint, path, tmp_path, capsys)


def test_npz_size_cap_is_checked_before_reading(
    real: dict[str, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.savez(tmp_path / "big.npz", images=np.repeat(real["images"], 200, axis=0))  # 1.5 MB of arrays
    monkeypatch.setattr(npz_module, "MAX_BYTES", 1 << 20)
    with pytest.raises(NormprobeError, match="more than the 1,048,576 normprobe reads from one .npz"):
        data.load_any(str(tmp_path / "big.npz"), None)


@pytest.mark.parametrize("compressed", [False, True])
def test_only_the_rows_asked_for_are_inflated(
    compressed: bool, real: dict[str, np.ndarray], tmp_path: Path
) -> None:
    images = np.repeat(real["images"], 2000, axis=0)  # 20,000 images, 15.7 MB
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "many.npz", images=images, labels=np.repeat(real["labels"], 2000))
    imageset = data.load_any(str(tmp_path / "many.npz"), None)
    first = imageset.subset(np.arange(200), "first 200")
    np.testing.assert_array_equal(first.images().numpy()[..., 0], images[:200])
    loaded = len(imageset.reader._images._loaded)  # the prefix inflated so far
    assert 200 <= loaded < len(images) // 2
    np.testing.assert_array_equal(imageset.images(np.array([19999, 5])).numpy()[..., 1], images[[19999, 5]])


# ----------------------------------------------------------------------------- mirror files


@pytest.fixture()
def mirror_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding a copy of the real MNIST test mirror; a private cache folder for the memo."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(DATA_ROOT / "mnist_test.npz", root / "mnist_test.npz")
    monkeypatch.setenv("NORMPROBE_CACHE", str(tmp_path / "cache"))
    return root


def _flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage", ["flipped-byte-in-data", "flipped-byte-in-directory", "valid-zip-other-images"]
)
def test_a_damaged_or_replaced_mirror_is_refused_by_name(
    damage: str, mirror_root: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = mirror_root / "mnist_test.npz"
    if damage == "flipped-byte-in-data":
        _flip_byte(mirror, mirror.stat().st_size // 2)
    elif damage == "flipped-byte-in-directory":
        _flip_byte(mirror, mirror.stat().st_size - 30)
    else:  # a perfectly valid .npz in the mirror's layout, holding other images
        real = np.load(DATA_ROOT / "mnist_test.npz")
        np.savez_compressed(
            mirror, images=255 - real["images"], labels=real["labels"], classes=real["classes"]
        )
    out = tmp_path / "e.npz"
    argv = [
        "embed",
        str(checkpoint),
        "--dataset",
        "mnist",
        "--data-root",
        str(mirror_root),
        "--out",
        str(out),
    ]
    message = _fails([*argv, "--no-cache", "--no-progress"], capsys)
    assert f"{mirror}: sha256 " in message and "does not match the mnist manifest" in message
    assert "`normprobe datasets verify`" in message and not out.exists()


def test_a_verified_mirror_is_hashed_once_then_again_when_it_changes(
    mirror_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normprobe.data import integrity

    hashed: list[Path] = []

    def counting_sha256(path: Path) -> str:
        hashed.append(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    monkeypatch.setattr(integrity, "file_sha256", counting_sha256)
    mirror = mirror_root / "mnist_test.npz"
    assert len(data.load("mnist", "test", mirror_root)) == 10000 and hashed == [mirror]
    memo = json.loads((tmp_path / "cache" / integrity.MEMO_FILE).read_text())
    assert list(memo["files"]) == [str(mirror.resolve())]
    data.load("mnist", "test", mirror_root)
    assert hashed == [mirror]  # the memo in the cache folder answered (a new process would read it too)

    # Rewritten in place, same size, mtime set back: the inode's ctime still tells.
    stat = mirror.stat()
    _flip_byte(mirror, stat.st_size // 2)
    os.utime(mirror, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(NormprobeError, match="does not match the mnist manifest"):
        data.load("mnist", "test", mirror_root)
    assert hashed == [mirror, mirror]


def test_an_unwritable_memo_is_a_warning(
    mirror_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    monkeypatch.setenv("NORMPROBE_CACHE", str(tmp_path / "not-a-folder"))
    assert len(data.load("mnist", "test", mirror_root)) == 10000
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "normprobe: warning: could not record verified mirror checksums"
    )


def test_the_bundled_sample_checks_against_its_own_sums(capsys: pytest.CaptureFixture[str]) -> None:
    from normprobe.data.root import SAMPLE_ROOT

    assert len(data.load("cifar10", "test", SAMPLE_ROOT)) == 1000
    assert main(["datasets", "verify", "--data-root", str(SAMPLE_ROOT)]) == 0
    assert "8 ok, 0 mismatched, 2 missing" in capsys.readouterr().out


# ----------------------------------------------------------------------------- file names


def _odd_folder(root: Path) -> Path:
    """Real MNIST images under a Latin-1 file name (bytes that are not UTF-8), a name holding terminal
    escape sequences and a newline, and an unreadable file with an escape sequence in its name."""
    from PIL import Image

    folder = root / "odd"
    folder.mkdir()
    images = np.load(DATA_ROOT / "mnist_test.npz")["images"][:3]
    names = [b"caf\xe9.png", b"\x1b]0;owned\x07\x1b[2Jred.png", b"two\nlines.png"]
    for name, image in zip(names, images, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(buffer.getvalue())
    with open(os.path.join(os.fsencode(folder), b"\x1b[31mbroken\xff.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8 not a jpeg")
    return folder


def _no_raw_control_characters(text: str) -> None:
    for line in text.splitlines():
        assert not any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in line), repr(line)


def test_rank_a_folder_with_non_utf8_and_escape_file_names(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    monkeypatch.setenv("NORMPROBE_CACHE", str(tmp_path / "cache"))
    folder = _odd_folder(tmp_path)
    out = tmp_path / "ranked.csv"
    assert main(["rank", str(checkpoint), str(folder), "--out", str(out), "--top", "2"]) == 0
    captured = capsys.readouterr()
    _no_raw_control_characters(captured.out)
    _no_raw_control_characters(captured.err)
    assert captured.err.strip().splitlines()[-1] == (  # after the progress bar
        "unreadable, skipped: \\x1b[31mbroken\\xff.jpg: UnidentifiedImageError: cannot identify image file"
    )
    table = pd.read_csv(out)
    assert set(table["id"]) == {
        "caf\\xe9.png",
        "\x1b]0;owned\x07\x1b[2Jred.png",
        "two\nlines.png",
        "\x1b[31mbroken\\xff.jpg",
    }  # the table keeps the names; only the undecodable bytes are escaped
    assert (tmp_path / "ranked.html").is_file() and (tmp_path / "ranked.png").is_file()
    parquet = tmp_path / "ranked.parquet"
    assert main(["rank", str(checkpoint), str(folder), "--out", str(parquet), "--no-sheet"]) == 0
    assert "caf\\xe9.png" in set(pd.read_parquet(parquet)["id"])


def test_analyze_an_ood_folder_with_non_utf8_file_and_folder_names(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from analyze_helpers import analyze_args, cli, shared_analysis

    from normprobe.results import read_results

    checkpoint, _, cache, _ = shared_analysis(tmp_path_factory.getbasetemp())
    folder = _odd_folder(tmp_path)
    latin_folder = os.fsdecode(os.fsencode(tmp_path) + b"/dossier_\xe9t\xe9")
    shutil.copytree(folder, latin_folder)
    status, stdout, stderr = cli(
        *analyze_args(
            checkpoint, tmp_path / "res", cache, "--ood", str(folder), "--ood", latin_folder, "--quiet"
        )
    )
    assert status == 0, stderr
    _no_raw_control_characters(stdout)
    assert "dossier_\\xe9t\\xe9/folder" in stdout
    results = read_results(tmp_path / "res")
    ids = set(results.samples.loc[results.samples["dataset"] == "odd", "id"])
    assert ids == {"caf\\xe9.png", "\x1b]0;owned\x07\x1b[2Jred.png", "two\nlines.png"}
    assert (tmp_path / "res" / "report.html").is_file()


def test_an_error_naming_an_odd_file_is_still_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/two\nlines\x1b[2J\xe9.npz")
    message = _fails(
        ["embed", str(checkpoint), "--dataset", missing, "--out", str(tmp_path / "e.npz")], capsys
    )
    assert message.endswith("two\\x0alines\\x1b[2J\\xe9.npz: no such file")


def test_seeded_fuzz_of_npz_files_always_ends_in_a_normprobe_error_or_images(
    real: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """1,000 mutations (flipped bytes, truncations, overwritten runs) of four real .npz files, stored and
    deflated, arrays and JPEG bytes: each one loads and decodes, or is refused with a NormprobeError."""
    rng = np.random.default_rng(14)
    bases = []
    for save in (np.savez, np.savez_compressed):
        for arrays in (
            {"images": real["images"], "labels": real["labels"]},
            {"jpeg": real["jpeg"], "offsets": real["offsets"], "labels": real["labels"]},
        ):
            buffer = io.BytesIO()
            save(buffer, **arrays)
            bases.append(buffer.getvalue())
    path = tmp_path / "mutant.npz"
    outcomes = {"images": 0, "refused": 0}
    for i in range(1000):
        raw = bytearray(bases[i % len(bases)])
        kind = i % 3
        if kind == 0:
            for at in rng.integers(0, len(raw), rng.integers(1, 8)):
                raw[at] = rng.integers(256)
        elif kind == 1:
            raw = raw[: rng.integers(len(raw))]
        else:
            at = int(rng.integers(len(raw)))
            raw[at : at + 32] = rng.bytes(32)
        path.write_bytes(bytes(raw))
        try:
            imageset = data.load_any(str(path), None)
            assert imageset.images().shape[1:] in ((28, 28, 3), (32, 32, 3))
            outcomes["images"] += 1
        except NormprobeError:
            outcomes["refused"] += 1
    assert sum(outcomes.values()) == 1000 and outcomes["refused"] > 900
