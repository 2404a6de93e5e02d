"""The Python API: normprobe.analyze / embed / rank return what the CLI writes, and take
torch Datasets of images wherever a dataset name goes."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from analyze_helpers import cli, image_subsets, tiny_checkpoint
from PIL import Image

import normprobe
from normprobe.analyses.ood import METRIC_KEYS
from normprobe.data.torch_dataset import from_torch_dataset
from normprobe.embedding_files import read_embeddings
from normprobe.errors import NormprobeError
from normprobe.results import Results, read_results


class Images(torch.utils.data.Dataset):
    """Images of an .npz written by image_subsets, served as ``form``: PIL images with int labels,
    CHW float tensors in [0, 1] with 0-d tensor labels, or bare HW(C) uint8 tensors without labels."""

    def __init__(self, path: Path, form: str, changed: int | None = None) -> None:
        arrays = np.load(path)
        self.images, self.labels, self.form = arrays["images"].copy(), arrays["labels"], form
        if changed is not None:
            self.images[changed].flat[0] ^= 1  # one pixel of one image differs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        image = self.images[i]
        if self.form == "pil":
            return Image.fromarray(image), int(self.labels[i])
        if self.form == "chw":
            return torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.tensor(self.labels[i])
        return torch.from_numpy(image)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A tiny checkpoint, image .npz files of small real subsets, and one embedding cache for this
    module (also the default one, which normprobe.rank uses)."""
    work = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMPROBE_CACHE", str(work / "cache"))
        yield {
            "checkpoint": tiny_checkpoint(work / "tiny.pt"),
            "cache": work / "cache",
            **image_subsets(work),
        }


def _same_numbers(a: Results, b: Results) -> None:
    assert a.run.summary.knn_accuracy == b.run.summary.knn_accuracy
    for ours, theirs in zip(a.run.summary.ood.values(), b.run.summary.ood.values(), strict=True):
        assert {s: {k: m[k] for k in METRIC_KEYS} for s, m in ours.items()} == {
            s: {k: m[k] for k in METRIC_KEYS} for s, m in theirs.items()
        }


def test_analyze_takes_torch_datasets_and_caches_them_by_content(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    # the CLI with the same images as files: --id-train / --id-test take image sets with a checkpoint
    status, _, stderr = cli(
        "analyze",
        str(workspace["checkpoint"]),
        *("--id-train", str(workspace["c10train"]), "--id-test", str(workspace["c10test"])),
        *("--ood", str(workspace["mnist"]), "--cache-dir", str(workspace["cache"])),
        *("--out", str(tmp_path / "files"), "--quiet", "--no-report"),
    )
    assert status == 0, stderr

    def analyze(out: str, **changed: int) -> Results:
        return normprobe.analyze(
            workspace["checkpoint"],
            id_train=Images(workspace["c10train"], "pil", changed.get("train")),
            id_test=Images(workspace["c10test"], "chw"),
            ood={"digits": Images(workspace["mnist"], "bare")},
            cache_dir=str(workspace["cache"]),
            out=tmp_path / out,
        )

    results = analyze("datasets")
    assert isinstance(results, Results) and results.path == tmp_path / "datasets"
    _same_numbers(results, read_results(tmp_path / "files"))
    assert [(d.name, d.split, d.images) for d in results.run.datasets] == [
        ("images", "train", False),
        ("images", "test", False),
        ("digits", "all", False),
    ]
    assert results.run.command[0].startswith(
        f"normprobe.analyze('{workspace['checkpoint']}', id_train=<Images>"
    )
    # the images of a Python dataset are in the report (the explorer cannot reopen them)
    body = (tmp_path / "datasets" / "report.html").read_text().split("</head>")[1]
    assert body.count('src="data:image/png;base64,') == len(results.table("exemplars"))

    # new objects with the same content are served from the cache; one changed pixel is not
    again = analyze("again").run.timings.embeddings_from_cache
    assert again == {"images/train": True, "images/test": True, "digits/all": True}
    changed = analyze("changed", train=5).run.timings.embeddings_from_cache
    assert changed == {"images/train": False, "images/test": True, "digits/all": True}


def test_embed_returns_what_the_cli_writes(workspace: dict[str, Path], tmp_path: Path) -> None:
    status, _, stderr = cli(
        "embed",
        str(workspace["checkpoint"]),
        *("--dataset", str(workspace["c10test"]), "--out", str(tmp_path / "cli.npz")),
        *("--cache-dir", str(workspace["cache"]), "--no-progress"),
    )
    assert status == 0, stderr
    written = read_embeddings(tmp_path / "cli.npz")
    embedded = normprobe.embed(workspace["checkpoint"], workspace["c10test"], cache_dir=workspace["cache"])
    saved = normprobe.embed(
        workspace["checkpoint"], workspace["c10test"], out=tmp_path / "api.parquet", use_cache=False
    )
    from_dataset = normprobe.embed(workspace["checkpoint"], Images(workspace["c10test"], "pil"), heads="z")
    assert saved.record["path"] == str(tmp_path / "api.parquet") and saved.record["format"] == "parquet"
    for other in (embedded, saved):
        assert list(other.heads) == list(written.heads) == ["feats", "z"]
        for head in written.heads:
            np.testing.assert_array_equal(other.heads[head], written.heads[head])
        for part in ("labels", "index", "ids"):
            np.testing.assert_array_equal(getattr(other, part), getattr(written, part))
        assert other.config["checkpoint"] == written.config["checkpoint"]
    assert list(from_dataset.heads) == ["z"]
    np.testing.assert_array_equal(from_dataset.heads["z"], written.heads["z"])
    np.testing.assert_array_equal(from_dataset.labels, written.labels)

    # importing the extraction module (as the analysis does) leaves normprobe.embed the API's function
    importlib.import_module("normprobe.extraction")
    assert normprobe.embed is importlib.import_module("normprobe.api").embed


def test_analyze_from_embed_results_and_from_arrays(workspace: dict[str, Path], tmp_path: Path) -> None:
    def embed(name: str) -> Any:
        return normprobe.embed(workspace["checkpoint"], workspace[name], cache_dir=workspace["cache"])

    train, test, digits = embed("c10train"), embed("c10test"), embed("mnist")
    sets = normprobe.analyze(
        id_train=train, id_test=test, ood=[digits], id_dataset="cifar10", out=tmp_path / "sets"
    )
    status, _, stderr = cli(
        "analyze",
        str(workspace["checkpoint"]),
        *("--ood", "mnist", "--max-train", "600", "--max-per-split", "200"),
        *(
            "--cache-dir",
            str(workspace["cache"]),
            "--out",
            str(tmp_path / "checkpoint"),
            "--quiet",
            "--no-report",
        ),
    )
    assert status == 0, stderr
    direct = read_results(tmp_path / "checkpoint")
    _same_numbers(sets, direct)
    assert sets.run.summary.human == direct.run.summary.human  # id_dataset: its label sets apply
    assert sets.run.checkpoint is None and [e.format for e in sets.run.inputs] == ["arrays"] * 3

    # bare arrays: (embeddings, labels) pairs and an unlabelled array, the head "embeddings"
    arrays = normprobe.analyze(
        id_train=(train.heads["z"], train.labels),
        id_test=(test.heads["z"], test.labels),
        ood={"digits": digits.heads["z"]},
        scorers="norm,knn,mahalanobis",
        out=tmp_path / "arrays",
        report=False,
    )
    assert arrays.run.heads == ("embeddings",) and arrays.run.settings.scorers == (
        "norm",
        "knn",
        "mahalanobis",
    )
    assert arrays.run.summary.knn_accuracy == direct.run.summary.knn_accuracy
    for scorer in ("norm", "knn", "mahalanobis"):  # the same z arrays give the same scores
        assert arrays.run.summary.ood["digits/all"][scorer] == direct.run.summary.ood["mnist/test"][scorer]
    assert [d.name for d in arrays.run.datasets] == ["id-train", "id-test", "digits"]


def test_api_mistakes(workspace: dict[str, Path], tmp_path: Path) -> None:
    x, y = np.zeros((10, 4)), np.zeros(10, np.int64)
    with pytest.raises(TypeError, match="unexpected keyword argument.*knn_k.*settings: .*max_train"):
        normprobe.analyze(id_train=(x, y), id_test=(x, y), ood=[x], knn_k=5)
    with pytest.raises(NormprobeError, match="without a checkpoint a set is embeddings.*not Images"):
        normprobe.analyze(id_train=Images(workspace["c10test"], "pil"), id_test=(x, y), ood=[x])
    with pytest.raises(NormprobeError, match="with a checkpoint a set is images.*not tuple"):
        normprobe.analyze(workspace["checkpoint"], id_train=(x, y), id_test=(x, y))
    with pytest.raises(NormprobeError, match="a set given by name or path is named by it"):
        normprobe.analyze(workspace["checkpoint"], ood={"c100": "cifar100"})
    with pytest.raises(NormprobeError, match="two sets are named id-train/all"):
        normprobe.analyze(id_train=(x, y), id_test=(x, y), ood={"id-train": x}, out=tmp_path / "out")
    with pytest.raises(
        NormprobeError, match="arrays id-test: 'embeddings' must be a non-empty N×D float array"
    ):
        normprobe.analyze(id_train=(x, y), id_test=(y, y), ood=[x], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rank_takes_datasets(workspace: dict[str, Path]) -> None:
    def rank(data: Any, reference: Any) -> Any:
        return normprobe.rank(workspace["checkpoint"], data, reference=reference, ood_k=10, progress=False)

    files = rank(workspace["mnist"], workspace["c10train"]).set_index("index")
    datasets = rank(Images(workspace["mnist"], "bare"), Images(workspace["c10train"], "chw")).set_index(
        "index"
    )
    for column in ("score_norm", "score_knn", "rank"):
        assert datasets[column].sort_index().equals(files[column].sort_index()), column


class Listed(torch.utils.data.Dataset):
    def __init__(self, items: list[Any], classes: list[str] | None = None) -> None:
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def test_torch_datasets_become_image_sets() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    as_rgb = [
        (Image.fromarray(rgb), 0),
        (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, np.int64(1)),
        (torch.from_numpy(rgb), torch.tensor(2)),
        (rgb.transpose(2, 0, 1).copy(), 0),
    ]
    as_grey = [(Image.fromarray(grey), 1), (torch.from_numpy(grey)[None], 1), (grey, 1), (grey[..., None], 1)]
    images = from_torch_dataset(Listed([*as_rgb, *as_grey], ["cat", "dog", "eel"]), "mine", "all", 32)
    assert len(images) == 8 and images.image_size == (6, 5) and images.classes == ("cat", "dog", "eel")
    assert images.labels.tolist() == [0, 1, 2, 0, 1, 1, 1, 1] and images.source == "python:Listed"
    pixels = images.images().numpy()
    assert (pixels[:4] == rgb).all() and (pixels[4:] == np.repeat(grey[..., None], 3, axis=-1)).all()

    # the fingerprint is the content's: the same pixels in another form match, one changed pixel does not
    same = from_torch_dataset(Listed([(Image.fromarray(rgb), 0)]), "other", "x", 32)
    first = from_torch_dataset(Listed([as_rgb[1]]), "mine", "all", 32)
    assert same.fingerprint != first.fingerprint  # labels are content too: 0 vs 1
    assert from_torch_dataset(Listed([(rgb, 1)]), "b", "b", 32).fingerprint == first.fingerprint
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert from_torch_dataset(Listed([(changed, 1)]), "b", "b", 32).fingerprint != first.fingerprint
    unlabelled = from_torch_dataset(Listed([rgb, rgb]), "u", "all", 32)
    assert unlabelled.labels.tolist() == [-1, -1]

    # images of several sizes are resized and centre-cropped to the encoder's input size, as folders are
    mixed = from_torch_dataset(
        Listed([(rgb, 0), (rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), 0)]), "m", "all", 4
    )
    assert (
        mixed.image_size == (4, 4)
        and mixed.images().shape == (2, 4, 4, 3)
        and "centre-cropped" in mixed.notes[1]
    )

    for item, message in (
        ((torch.full((3, 4, 4), 2.0), 0), "float images must hold values in \\[0, 1\\]"),
        ((np.zeros((4, 4, 4), np.uint8), 0), "1 or 3 channels"),
        ((rgb, "cat"), "the label must be an integer, got str"),
        (("photo.png", 0), "expected a PIL image, a tensor or an array, got str"),
    ):
        with pytest.raises(NormprobeError, match=f"bad \\(Listed\\) item 0.*{message}"):
            from_torch_dataset(Listed([item]), "bad", "all", 32)


def test_import_normprobe_binds_the_api_and_stays_light() -> None:
    code = (
        "import sys, normprobe; light = not {'torch', 'pandas', 'scipy'} & set(sys.modules); "
        "print(light, callable(normprobe.analyze), callable(normprobe.rank), callable(normprobe.embed))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True", "True"]
