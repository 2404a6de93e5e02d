"""`normprobe analyze` without a checkpoint: from `normprobe embed` outputs (.npz and .parquet), from
plain .npz files made here, and refusing malformed files (one line, exit 2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analyze_helpers import (
    DATA_ROOT,
    SUBSET_SIZES,
    analyze_args,
    cli,
    cli_fails,
    image_subsets,
    tiny_checkpoint,
)

from normprobe.analyses.ood import METRIC_KEYS
from normprobe.data.hashing import file_sha256
from normprobe.pipeline.steps import NO_ID_DATASET_NOTE
from normprobe.report import NO_IMAGES
from normprobe.results import read_results

SUFFIXES = {"c10train": ".npz", "c10test": ".parquet", "c100": ".npz", "mnist": ".parquet"}
"""Both formats of `normprobe embed`, each for an ID set and an OOD set."""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint and `normprobe embed` outputs of the first 600 CIFAR-10 train and 200
    CIFAR-10 test, CIFAR-100 test and MNIST test images."""
    work = tmp_path_factory.mktemp("embedded")
    files = {"checkpoint": tiny_checkpoint(work / "tiny.pt"), "work": work}
    for name, images in image_subsets(work).items():
        files[name] = work / f"{name}{SUFFIXES[name]}"
        status, _, stderr = cli(
            "embed",
            str(files["checkpoint"]),
            "--dataset",
            str(images),
            "--out",
            str(files[name]),
            "--cache-dir",
            str(work / "cache"),
            "--no-progress",
        )
        assert status == 0, stderr
    return files


def _embedding_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "analyze",
        "--id-train",
        str(files["c10train"]),
        "--id-test",
        str(files["c10test"]),
        "--ood",
        str(files["c100"]),
        "--ood",
        str(files["mnist"]),
        "--data-root",
        str(DATA_ROOT),
        "--cache-dir",
        str(files["work"] / "cache"),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_embed_outputs_give_the_checkpoints_numbers(embedded: dict[str, Path], tmp_path: Path) -> None:
    argv = analyze_args(
        embedded["checkpoint"],
        tmp_path / "checkpoint",
        embedded["work"] / "cache",
        "--quiet",
        "--no-report",
        sizes=SUBSET_SIZES,
    )
    status, _, stderr = cli(*argv)
    assert status == 0, stderr
    # --id cifar10: the files hold CIFAR-10's first images in order, so its human label sets apply too
    status, stdout, stderr = cli(*_embedding_args(embedded, tmp_path / "embeddings", "--id", "cifar10"))
    assert status == 0, stderr
    direct, given = read_results(tmp_path / "checkpoint"), read_results(tmp_path / "embeddings")

    assert given.run.summary.knn_accuracy == direct.run.summary.knn_accuracy
    assert list(given.run.summary.ood) == ["c100_images/all", "mnist_images/all"]
    for ours, theirs in zip(given.run.summary.ood.values(), direct.run.summary.ood.values(), strict=True):
        assert list(ours) == list(theirs) == ["norm", "knn", "mahalanobis", "norm+knn", "norm@feats"]
        for scorer, metrics in ours.items():
            assert {k: metrics[k] for k in METRIC_KEYS} == {k: theirs[scorer][k] for k in METRIC_KEYS}
    same = ["index", "label", "norm_feats", "norm_z", "knn_pred", "knn_correct", "score_knn"]
    same += [c for c in direct.samples.columns if c.startswith("human_")]
    assert [c for c in same if c.startswith("human_c10")]  # CIFAR-10N and CIFAR-10H applied
    for column in same:
        assert given.samples[column].equals(direct.samples[column]), column
    assert given.run.summary.human == direct.run.summary.human
    # the exemplars are the same samples, listed by their index
    keys = ["role", "label", "extreme", "rank", "index"]
    assert given.table("exemplars")[keys].equals(direct.table("exemplars")[keys])

    # provenance: no checkpoint, each input file with its sha256, shapes and the checkpoint that embedded it
    assert given.run.checkpoint is None and given.run.settings.precision is None
    for entry, name in zip(given.run.inputs, SUFFIXES, strict=True):
        assert entry.path == str(embedded[name]) and entry.sha256 == file_sha256(embedded[name])
        assert entry.layout == "normprobe embed" and entry.format == SUFFIXES[name][1:]
        assert entry.embedded_with is not None and direct.run.checkpoint is not None
        assert entry.embedded_with["sha256"] == direct.run.checkpoint.sha256
    assert given.run.inputs[0].shapes == {"feats": [600, 64], "z": [600, 32]}
    assert not any(d.images for d in given.run.datasets)
    assert all(d.images for d in direct.run.datasets)
    assert (
        "embeddings: read from the inputs" in stdout and "normprobe analyze: embeddings of 4 sets" in stdout
    )

    html = (tmp_path / "embeddings" / "report.html").read_text()
    exemplars = html[html.index("<h2>Exemplars</h2>") :]
    assert exemplars.count(NO_IMAGES) == 4 and "data:image/png" not in exemplars
    assert "<h3>Embedding input</h3>" in html and file_sha256(embedded["c100"])[:16] in html


def _edited(path: Path, out: Path, part: str, key: str, value: str) -> Path:
    """A copy of a `normprobe embed` .npz whose config has ``config[part][key] = value``."""
    arrays = dict(np.load(path))
    config = json.loads(str(arrays["config"]))
    config[part][key] = value
    np.savez(out, **{**arrays, "config": np.array(json.dumps(config))})
    return out


def test_inputs_that_do_not_belong_together_are_refused(embedded: dict[str, Path], tmp_path: Path) -> None:
    other = _edited(embedded["c100"], tmp_path / "other.npz", "checkpoint", "sha256", "0" * 64)
    message = cli_fails(*_embedding_args({**embedded, "c100": other}, tmp_path / "out"))
    assert "were embedded with different checkpoints" in message and str(other) in message
    # --id names the dataset of the ID files; a file recording another dataset contradicts it
    c100 = _edited(embedded["c10train"], tmp_path / "c100.npz", "dataset", "name", "cifar100")
    message = cli_fails(*_embedding_args({**embedded, "c10train": c100}, tmp_path / "out", "--id", "cifar10"))
    assert message.endswith(f"{c100} holds cifar100 embeddings (its config), not --id cifar10")
    assert not (tmp_path / "out").exists()


def _clusters(rng: np.random.Generator, n: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """3 Gaussian classes in 16 dimensions, class c shifted along axis c."""
    labels = rng.integers(0, 3, n)
    embeddings = rng.normal(size=(n, 16))
    embeddings[np.arange(n), labels] += 4.0
    return embeddings * scale, labels


def _plain_files(folder: Path) -> dict[str, Path]:
    """Seeded plain inputs: .npz train and test with labels, an unlabelled .npz OOD set with small
    norms and a plain .parquet OOD set (an `embeddings` list column)."""
    rng = np.random.default_rng(0)
    files = {name: folder / f"{name}.npz" for name in ("train", "test", "small")}
    x, y = _clusters(rng, 300)
    np.savez(files["train"], embeddings=x, labels=y, classes=np.array(["a", "b", "c"]))
    x, y = _clusters(rng, 90)
    np.savez(files["test"], embeddings=x.astype(np.float32), labels=y.astype(np.int32))
    np.savez(files["small"], embeddings=_clusters(rng, 60, scale=0.3)[0])
    files["shifted"] = folder / "shifted.parquet"
    shifted = (rng.normal(size=(50, 16)) + 2.0).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(shifted.reshape(-1)), 16)
    pq.write_table(pa.table({"embeddings": column}), files["shifted"])
    return files


def _plain_args(files: dict[str, Path], out: Path) -> list[str]:
    return [
        "analyze",
        "--id-train",
        str(files["train"]),
        "--id-test",
        str(files["test"]),
        "--ood",
        f"{files['small']},{files['shifted']}",
        "--k",
        "20",
        "--ood-k",
        "10",
        "--min-bucket-count",
        "3",
        "--cache-dir",
        str(out.parent / "cache"),
        "--out",
        str(out),
        "--quiet",
    ]


def test_plain_npz_and_parquet_files(tmp_path: Path) -> None:
    files = _plain_files(tmp_path)
    status, stdout, stderr = cli(*_plain_args(files, tmp_path / "out"))
    assert status == 0, stderr
    results = read_results(tmp_path / "out")
    run = results.run
    assert run.checkpoint is None and run.heads == ("embeddings",) and run.primary_head == "embeddings"
    assert [(e.role, e.layout, e.shapes) for e in run.inputs] == [
        ("id-train", "plain", {"embeddings": [300, 16]}),
        ("id-test", "plain", {"embeddings": [90, 16]}),
        ("ood", "plain", {"embeddings": [60, 16]}),
        ("ood", "plain", {"embeddings": [50, 16]}),
    ]
    assert [e.sha256 for e in run.inputs] == [
        file_sha256(files[n]) for n in ("train", "test", "small", "shifted")
    ]
    # separated clusters: kNN is nearly always right; the small-norm set is flagged by the norm
    assert run.summary.knn_accuracy["id-test"] > 0.9
    assert run.summary.ood["small/all"]["norm"]["auroc"] > 0.99
    assert run.datasets[2].ood_group == "far"  # files are far-OOD unless told
    # no ID dataset named: no human labels, and a note saying how to get them
    assert NO_ID_DATASET_NOTE in run.notes and not any(
        c.startswith("human_") for c in results.samples.columns
    )
    assert set(results.samples.query("role == 'id-train'")["label_name"]) == {"a", "b", "c"}
    exemplars = results.table("exemplars")
    train = exemplars.query("role == 'id-train'")
    assert train.groupby("label").size().tolist() == [8, 8, 8]  # 4 highest + 4 lowest per class
    assert exemplars.query("role == 'ood'").groupby("dataset").size().to_dict() == {
        "shifted": 16,
        "small": 16,
    }
    norms = results.samples.query("role == 'id-train'").set_index("index")["norm_embeddings"]
    highest = train.query("label == 0 and extreme == 'highest'").sort_values("rank")
    assert highest["norm"].tolist() == pytest.approx(norms.loc[highest["index"]].tolist())
    assert (tmp_path / "out" / "report.html").read_text().count(NO_IMAGES) == 4
    # a second run is served from the kNN and score caches (keyed by the arrays and labels)
    status, _, stderr = cli(*_plain_args(files, tmp_path / "again"), "--no-report")
    assert status == 0, stderr
    again = read_results(tmp_path / "again")
    assert again.run.timings.knn_from_cache and again.run.timings.scores_from_cache
    assert again.samples.equals(results.samples)


def _with(**arrays: object) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


GOOD = np.random.default_rng(1).normal(size=(30, 4))
LABELS = np.arange(30) % 3
NAN = GOOD.copy()
NAN[4, 1] = np.nan


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            _with(embeddings=NAN, labels=LABELS),
            "'embeddings': 1 of 30 embeddings are NaN or Inf (first: row 4)",
        ),
        (_with(embeddings=GOOD * 1e300, labels=LABELS), "30 of 30 embeddings are NaN or Inf"),
        (_with(embeddings=GOOD, labels=LABELS.astype(float)), "'labels' must be 30 integers"),
        (_with(embeddings=GOOD, labels=LABELS[:29]), "'labels' must be 30 integers (one per embedding)"),
        (_with(embeddings=GOOD, labels=LABELS - 2), "'labels' holds -2; values must be >= -1"),
        (_with(embeddings=GOOD), "(id-train): 30 of 30 samples have no label"),
        (_with(embeddings=GOOD[:, 0], labels=LABELS), "'embeddings' must be a non-empty N×D float array"),
        (
            _with(embeddings=LABELS[:, None], labels=LABELS),
            "'embeddings' must be a non-empty N×D float array",
        ),
        (_with(embeddings=GOOD.astype(object), labels=LABELS), "'embeddings' cannot be read (ValueError"),
        (_with(embeddings=GOOD, labels=LABELS, extra=GOOD), "'extra' is neither 'embeddings' nor one of"),
        (_with(images=np.zeros((30, 8, 8, 3), np.uint8), labels=LABELS), "no 'embeddings' array"),
        (_with(embeddings=GOOD, labels=LABELS, config=np.array("{not json")), "config is not valid JSON"),
        (_with(embeddings=np.zeros((30, 5)), labels=LABELS), "head embeddings is 5-d, ID-train's is 4-d"),
        (lambda path: path.write_bytes(b"PK\x03\x04 not a zip"), "not a readable .npz file"),
    ],
)
def test_a_malformed_file_is_one_line_and_exit_2(
    tmp_path: Path, write: Callable[[Path], None], message: str
) -> None:
    good = {name: tmp_path / f"{name}.npz" for name in ("train", "test", "ood")}
    for path in good.values():
        np.savez(path, embeddings=GOOD, labels=LABELS)
    bad = tmp_path / "bad.npz"
    write(bad)
    # the bad file is ID-train, except for the wrong width, which only shows against ID-train
    train, test = (good["train"], bad) if "ID-train's" in message else (bad, good["test"])
    line = cli_fails(
        "analyze",
        "--id-train",
        str(train),
        "--id-test",
        str(test),
        "--ood",
        str(good["ood"]),
        "--out",
        str(tmp_path / "out"),
    )
    assert message in line and str(bad) in line
    assert not (tmp_path / "out").exists()


def test_bad_parquet_files_and_options(tmp_path: Path) -> None:
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    for path in (train, test):
        np.savez(path, embeddings=GOOD, labels=LABELS)

    def fails(*argv: str) -> str:
        return cli_fails("analyze", *argv, "--out", str(tmp_path / "out"))

    def with_ood(*ood: str) -> str:
        return fails(
            "--id-train", str(train), "--id-test", str(test), *(a for o in ood for a in ("--ood", o))
        )

    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 garbage")
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"embeddings": pa.array([[1.0, 2.0], [1.0]])}), ragged)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"embeddings": pa.array([[1.0, 2.0], None])}), nulls)
    no_column = tmp_path / "no_column.parquet"
    pq.write_table(pa.table({"label": pa.array([1, 2])}), no_column)
    for path, message in (
        (tmp_path / "garbage.parquet", "not a readable Parquet file"),
        (ragged, "embeddings of different lengths (1 to 2)"),
        (nulls, "1 rows have no embedding (null)"),
        (no_column, "no embedding column"),
    ):
        line = with_ood(str(path))
        assert message in line and str(path) in line
    assert "--ood absent.npz: no such file" in with_ood("absent.npz")
    assert "--ood cifar100: not an embeddings file (use .npz or .parquet)" in with_ood("cifar100")
    assert "name at least one OOD set" in with_ood()
    assert f"{train} (ood) and {train} (id-train) are both named train/all" in with_ood(str(train))
    assert "without a checkpoint, give the ID embeddings" in fails("--ood", str(test))
    assert "give both --id-train and --id-test" in fails("--id-train", str(train), "--ood", str(test))
    assert (
        "cifar10n describes cifar10 train images, but the in-distribution set is not a named dataset"
        in fails(
            "--id-train",
            str(train),
            "--id-test",
            str(test),
            "--ood",
            str(tmp_path / "garbage.parquet"),
            "--human",
            "cifar10n",
        )
    )
    assert not (tmp_path / "out").exists()
