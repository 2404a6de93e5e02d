"""`normprobe rank` and `normprobe.rank`: a folder of mixed real images, two of them corrupt."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import normprobe
from normprobe import data
from normprobe.checkpoints import save_checkpoint
from normprobe.cli import main
from normprobe.errors import NormprobeError
from normprobe.models import build_encoder
from normprobe.models.heads import simclr_projector
from normprobe.preprocess import Preprocess

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
PER_SOURCE = 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init encoder and a folder of real images: CIFAR-10 (PNG), Tiny-ImageNet (its original
    JPEG files, 64x64), MNIST (greyscale PNG), plus a truncated JPEG and a text file named .png."""
    root = tmp_path_factory.mktemp("rank")
    torch.manual_seed(0)
    spec = {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
        "projector": simclr_projector(64, 64, 32),
    }
    save_checkpoint(
        root / "tiny.pt",
        method="simclr",
        encoder_spec=spec,
        preprocess=Preprocess(),
        state_dict=build_encoder(spec).state_dict(),
    )
    folder = root / "mixed"
    folder.mkdir()
    cifar = data.load("cifar10", "test", DATA_ROOT).images(np.arange(PER_SOURCE)).numpy()
    for i, image in enumerate(cifar):
        Image.fromarray(image).save(folder / f"cifar10_{i}.png")
    tiny = np.load(DATA_ROOT / "tinyimagenet_val_jpeg.npz")
    jpeg, offsets = tiny["jpeg"], tiny["offsets"]
    for i in range(PER_SOURCE):
        (folder / f"tinyimagenet_{i}.JPEG").write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
    mnist = np.load(DATA_ROOT / "mnist_test.npz")["images"][:PER_SOURCE]
    for i, image in enumerate(mnist):
        Image.fromarray(image, mode="L").save(folder / f"mnist_{i}.png")
    (folder / "broken.jpg").write_bytes(jpeg[offsets[0] : offsets[0] + 300].tobytes())
    (folder / "notes.png").write_bytes(b"not an image\n" * 20)
    return root


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One embedding cache for this module only: later tests reuse the folder's and the reference's embeddings."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("NORMPROBE_DATA", str(DATA_ROOT))
        yield


def test_rank_folder_lists_corrupt_files_and_orders_by_norm(workdir: Path) -> None:
    table = normprobe.rank(workdir / "tiny.pt", workdir / "mixed", progress=False)
    assert isinstance(table, pd.DataFrame)
    ok = table[table["status"] == "ok"]
    assert len(ok) == 3 * PER_SOURCE
    bad = table[table["status"] == "unreadable"]
    assert sorted(bad["id"]) == ["broken.jpg", "notes.png"]
    assert bad["reason"].str.len().gt(0).all() and bad["rank"].isna().all()
    assert table.tail(2)["status"].eq("unreadable").all()  # unreadable rows last
    # most unfamiliar first: rank 1..n, norms increasing
    assert ok["rank"].tolist() == list(range(1, len(ok) + 1))
    assert np.all(np.diff(ok["score_norm"].to_numpy()) >= 0)
    assert ok["label"].isna().all()  # a flat folder has no labels
    assert ok["score_knn"].isna().all()
    settings = table.attrs["normprobe"]
    assert settings["head"] == "z" and settings["by"] == "norm" and settings["data"]["unreadable"] == 2


def test_rank_with_reference_scores_knn_distance(workdir: Path) -> None:
    table = normprobe.rank(
        workdir / "tiny.pt",
        workdir / "mixed",
        reference="cifar10",
        reference_size=200,
        ood_k=10,
        by="knn",
        head="feats",
        progress=False,
    )
    ok = table[table["status"] == "ok"]
    assert (ok["score_knn"] <= 0).all() and (ok["score_knn"] >= -2).all()
    assert ok["rank"].tolist() == list(range(1, len(ok) + 1))
    assert np.all(np.diff(ok["score_knn"].to_numpy()) >= 0)
    assert sorted(ok["rank_norm"].tolist()) == list(range(1, len(ok) + 1))
    reference = table.attrs["normprobe"]["reference"]
    assert (reference["name"], reference["split"], reference["n"], reference["leave_one_out"]) == (
        "cifar10",
        "train",
        200,
        False,
    )


def test_is_unfamiliar_is_calibrated_on_the_reference(workdir: Path) -> None:
    """The threshold keeps ``retain`` of the reference familiar (the scorer's ``offset_``), and
    ``is_unfamiliar`` is exactly the ``by`` score below it."""
    from normprobe.scores import NormScorer

    options = {"reference": "cifar10", "reference_size": 200, "head": "feats", "progress": False}
    table = normprobe.rank(workdir / "tiny.pt", workdir / "mixed", retain=0.9, **options)
    record = table.attrs["normprobe"]
    ok = table[table["status"] == "ok"]
    assert record["threshold_of"] == "score_norm" and record["retain"] == 0.9
    assert (ok["is_unfamiliar"] == (ok["score_norm"] < record["threshold"])).all()
    assert table.loc[table["status"] != "ok", "is_unfamiliar"].isna().all()
    looser = normprobe.rank(workdir / "tiny.pt", workdir / "mixed", retain=0.5, **options)
    assert looser.attrs["normprobe"]["threshold"] > record["threshold"]
    # without a reference, the ranked set calibrates itself: about 1 - retain of it is flagged
    alone = normprobe.rank(workdir / "tiny.pt", workdir / "mixed", retain=0.9, progress=False)
    flagged = alone.loc[alone["status"] == "ok", "is_unfamiliar"].mean()
    assert 0.05 <= flagged <= 0.15
    assert NormScorer(retain=0.9).get_params() == {"retain": 0.9}


def test_rank_options_are_checked(workdir: Path) -> None:
    with pytest.raises(NormprobeError, match="unexpected keyword argument 'k'"):
        normprobe.rank(workdir / "tiny.pt", workdir / "mixed", k=3)
    with pytest.raises(NormprobeError, match="--retain"):
        normprobe.rank(workdir / "tiny.pt", workdir / "mixed", retain=0.0)


def test_same_set_as_reference_is_leave_one_out(workdir: Path) -> None:
    table = normprobe.rank(
        workdir / "tiny.pt", workdir / "mixed", reference=workdir / "mixed", ood_k=1, progress=False
    )
    ok = table[table["status"] == "ok"]
    assert table.attrs["normprobe"]["reference"]["leave_one_out"]
    assert (ok["score_knn"] < 0).all()  # no sample is its own nearest neighbour (distance 0)


def test_rank_npz_keeps_labels(workdir: Path, tmp_path: Path) -> None:
    npz = np.load(DATA_ROOT / "mnist_test.npz")
    np.savez(
        tmp_path / "digits.npz", images=npz["images"][:20], labels=npz["labels"][:20], classes=npz["classes"]
    )
    table = normprobe.rank(workdir / "tiny.pt", tmp_path / "digits.npz", progress=False)
    assert len(table) == 20 and (table["status"] == "ok").all()
    by_index = table.sort_values("index")
    assert by_index["label"].tolist() == npz["labels"][:20].tolist()
    assert by_index["label_name"].tolist() == [str(npz["classes"][c]) for c in npz["labels"][:20]]


def test_cli_writes_table_and_contact_sheets(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ranked.csv"
    code = main(
        [
            "rank",
            str(workdir / "tiny.pt"),
            str(workdir / "mixed"),
            "--out",
            str(out),
            "--top",
            "5",
            "--reference",
            "cifar10",
            "--reference-size",
            "200",
            "--ood-k",
            "5",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "notes.png" in captured.err
    table = pd.read_csv(out)
    assert len(table) == 3 * PER_SOURCE + 2
    assert set(table.loc[table["status"] == "unreadable", "id"]) == {"broken.jpg", "notes.png"}
    assert {"rank", "id", "score_norm", "score_knn", "rank_knn", "label", "reason"} <= set(table.columns)
    sheet = Image.open(tmp_path / "ranked.png")
    assert sheet.width > 5 * 64 and sheet.height > 2 * 64
    page = (tmp_path / "ranked.html").read_text()
    assert page.count("<figure>") == 10 and page.count("data:image/png;base64,") == 10
    assert "Unreadable files (2)" in page and "broken.jpg" in page and "http" not in page
    parquet = tmp_path / "ranked.parquet"
    assert (
        main(["rank", str(workdir / "tiny.pt"), str(workdir / "mixed"), "--out", str(parquet), "--no-sheet"])
        == 0
    )
    assert len(pd.read_parquet(parquet)) == 3 * PER_SOURCE + 2
    assert not (tmp_path / "ranked.parquet.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{ckpt}", "{folder}", "--out", "{tmp}/ranked.txt"], "must end in .csv or .parquet"),
        (
            ["{ckpt}", "{tmp}/nowhere", "--out", "{tmp}/r.csv"],
            "neither a folder, an .npz file nor a known dataset",
        ),
        (["{ckpt}", "{folder}", "--out", "{tmp}/r.csv", "--by", "knn"], "needs a reference set"),
        (["{tmp}/missing.pt", "{folder}", "--out", "{tmp}/r.csv"], "no such checkpoint file"),
        (["{ckpt}", "{folder}", "--out", "{tmp}/r.csv", "--head", "p"], "checkpoint has no head 'p'"),
        (
            ["{ckpt}", "{folder}", "--out", "{tmp}/r.csv", "--reference", "{folder}", "--ood-k", "500"],
            "lower --ood-k",
        ),
        (["{ckpt}", "{bad}", "--out", "{tmp}/r.csv"], "none of the 2 image files could be read"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(
    workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("broken.jpg", "notes.png"):
        (bad / name).write_bytes((workdir / "mixed" / name).read_bytes())
    values = {"ckpt": workdir / "tiny.pt", "folder": workdir / "mixed", "tmp": tmp_path, "bad": bad}
    code = main(["rank", *(a.format(**values) for a in args)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob(".r.*"))


def test_import_normprobe_stays_light() -> None:
    code = "import sys, normprobe; assert callable(normprobe.rank); print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
