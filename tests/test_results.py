"""The results folder (Contract 2): schema of a real analysis, atomic writes, validated reads."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analyze_helpers import shared_analysis

from normprobe.errors import NormprobeError
from normprobe.record import RUN_FORMAT, RunRecord, read_run
from normprobe.results import (
    Results,
    check_output_dir,
    read_results,
    write_results,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    return read_results(shared_analysis(tmp_path_factory.getbasetemp())[1])


def test_run_json_has_every_key(results: Results) -> None:
    raw = json.loads((results.path / "run.json").read_text())
    # the file holds every field of the record and reads back to the same record
    assert raw["format"] == RUN_FORMAT and {f.name for f in fields(RunRecord)} <= set(raw)
    assert read_run(raw, "run.json") == results.run
    run = results.run
    assert run.notes and run.checkpoint is not None
    assert [(d.name, d.split, d.role) for d in run.datasets] == [
        ("cifar10", "train", "id-train"),
        ("cifar10", "test", "id-test"),
        ("cifar100", "test", "ood"),
        ("mnist", "test", "ood"),
    ]
    assert run.heads == ("feats", "z") and run.primary_head == "z"
    assert run.checkpoint.adapter == "normprobe" and len(run.checkpoint.sha256) == 64
    assert run.settings.k == 10 and run.settings.max_train == 160 and run.settings.bucket_scaling == "max"
    # human-label curves hide buckets under the paper's 50 samples; the kNN bucket curves keep --min-bucket-count
    assert run.settings.human_min_bucket_count == 50 and run.settings.min_bucket_count == 3  # as given
    human_curves = results.table("human_curves")
    assert (human_curves["shown"].astype(bool) == (human_curves["count"] >= 50)).all()
    assert set(run.summary.knn_accuracy) == {"id-test", "id-train-loo"}
    assert set(run.summary.ood) == {"cifar100/test", "mnist/test"}
    for per_scorer in run.summary.ood.values():
        assert set(per_scorer) == {"norm", "knn", "mahalanobis", "norm+knn", "norm@feats"}
        for m in per_scorer.values():
            assert list(m) == [
                "auroc",
                "fpr@95tpr_id",
                "fpr@95tpr_ood",
                "aupr_in_ap",
                "aupr_out_ap",
                "aupr_in_trapz",
                "aupr_out_trapz",
                "auroc_ci",
            ]
            assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    verdicts = run.summary.ood_verdicts
    assert list(verdicts) == ["cifar100/test", "mnist/test"]
    for ood_set, verdict in verdicts.items():
        per_scorer = run.summary.ood[ood_set]
        best = per_scorer[verdict["best"]]
        assert verdict["auroc"] == max(m["auroc"] for m in per_scorer.values()) == best["auroc"]
        assert verdict["auroc_ci"] == best["auroc_ci"]
        assert verdict["inverted"] == [s for s, m in per_scorer.items() if m["auroc_ci"][1] < 0.5]
    assert [d.title for d in run.datasets] == ["CIFAR-10", "CIFAR-10", "CIFAR-100", "MNIST"]
    assert any("partial mirror: 916 of 10000" in note for note in run.datasets[2].notes)
    # OpenOOD's near-/far-OOD means: CIFAR-100 near, MNIST far (the manifests' ood_group)
    assert [d.ood_group for d in run.datasets] == [None, None, "near", "far"]
    groups = run.summary.ood_groups
    assert {g: groups[g]["ood_sets"] for g in groups} == {"near": ["cifar100/test"], "far": ["mnist/test"]}
    mnist_knn = run.summary.ood["mnist/test"]["knn"]
    assert groups["far"]["scorers"]["knn"] == {k: v for k, v in mnist_knn.items() if k != "auroc_ci"}


def test_samples_have_every_column_with_the_right_types(results: Results) -> None:
    s = results.samples
    expected = [
        "dataset",
        "split",
        "index",
        "id",
        "role",
        "label",
        "label_name",
        "norm_feats",
        "norm_z",
        "norm_scaled",
        "knn_pred",
        "knn_correct",
        "score_norm",
        "score_knn",
        "score_mahalanobis",
        "score_norm+knn",
        "score_norm@feats",
    ]
    assert list(s.columns[: len(expected)]) == expected
    assert all(c.startswith("human_") for c in s.columns[len(expected) :])
    assert any(c.startswith("human_c10n_") for c in s.columns)  # CIFAR-10N describes the train split
    assert s.groupby("role", sort=False).size().to_dict() == {"id-train": 160, "id-test": 60, "ood": 120}
    assert str(s["knn_pred"].dtype) == "Int64" and str(s["knn_correct"].dtype) == "boolean"
    ood = s["role"] == "ood"
    assert s.loc[ood, "knn_correct"].isna().all() and s.loc[~ood, "knn_correct"].notna().all()
    assert (s.loc[~ood, "knn_correct"] == (s.loc[~ood, "knn_pred"] == s.loc[~ood, "label"])).all()
    assert s["index"].dtype == np.int64 and s.loc[s["dataset"] == "cifar10", "index"].tolist()[:3] == [
        0,
        1,
        2,
    ]
    assert s.loc[s["dataset"] == "cifar10", "label_name"].iloc[0] == "frog"  # CIFAR-10 train image 0
    train = s["role"] == "id-train"
    assert s.loc[train, "norm_scaled"].mean() == pytest.approx(1.0)
    np.testing.assert_allclose(s["norm_scaled"], s["norm_z"] / s.loc[train, "norm_z"].mean())
    np.testing.assert_allclose(s["score_norm"], s["norm_z"]) and np.testing.assert_allclose(
        s["score_norm@feats"], s["norm_feats"]
    )


def test_summary_values_agree_with_the_samples(results: Results) -> None:
    from sklearn.metrics import roc_auc_score

    s, summary = results.samples, results.run.summary
    test = s[s["role"] == "id-test"]
    assert summary.knn_accuracy["id-test"] == pytest.approx(test["knn_correct"].astype(float).mean())
    assert summary.knn_accuracy["id-train-loo"] == pytest.approx(
        s.loc[s["role"] == "id-train", "knn_correct"].astype(float).mean()
    )
    mnist = s[s["dataset"] == "mnist"]
    for scorer in ("norm", "knn", "mahalanobis"):
        y = np.r_[np.ones(len(test)), np.zeros(len(mnist))]
        expected = roc_auc_score(y, np.r_[test[f"score_{scorer}"], mnist[f"score_{scorer}"]])
        assert summary.ood["mnist/test"][scorer]["auroc"] == pytest.approx(expected)
    norms = summary.norms
    assert norms["cifar10/train"]["heads"]["z"]["mean_scaled"] == pytest.approx(1.0)
    assert norms["mnist/test"]["heads"]["feats"]["mean"] == pytest.approx(mnist["norm_feats"].mean())
    assert set(summary.spearman) == {"id-test", "id-train-loo"}


def test_tables_are_written(results: Results) -> None:
    names = {p.stem for p in (results.path / "tables").glob("*.csv")}
    assert {"norms", "buckets", "ood", "ood_groups", "spearman", "exemplars"} <= names
    buckets = results.table("buckets")
    assert set(buckets["role"]) == {"id-test", "id-train"} and len(buckets) == 2 * 20
    assert buckets.groupby("role")["count"].sum().to_dict() == {"id-test": 60, "id-train": 160}
    ood = results.table("ood")
    assert len(ood) == 2 * 5 and set(ood["head"]) == {"z", "feats"}
    assert {"fpr@95tpr_id", "fpr@95tpr_ood", "aupr_in_trapz", "auroc_ci_low", "auroc_ci_high"} <= set(
        ood.columns
    )
    assert (ood["auroc_ci_low"] <= ood["auroc"]).all() and (ood["auroc"] <= ood["auroc_ci_high"]).all()
    groups = results.table("ood_groups")
    assert groups[["group", "scorer"]].drop_duplicates().shape[0] == len(groups) == 2 * 5
    exemplars = results.table("exemplars")
    assert set(exemplars["extreme"]) == {"highest", "lowest"}
    with pytest.raises(NormprobeError, match="no such table"):
        results.table("nope")


# ----------------------------------------------------------------------------- writing and reading


def test_read_rejects_missing_and_malformed_folders(results: Results, tmp_path: Path) -> None:
    with pytest.raises(NormprobeError, match="no such results folder"):
        read_results(tmp_path / "absent")
    with pytest.raises(NormprobeError, match="run.json is missing"):
        read_results(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(results.path, broken)
    (broken / "run.json").write_text("{not json")
    with pytest.raises(NormprobeError, match="not valid JSON"):
        read_results(broken)
    run = json.loads((results.path / "run.json").read_text())
    del run["settings"]
    (broken / "run.json").write_text(json.dumps(run))
    with pytest.raises(NormprobeError, match="'run' lacks settings"):
        read_results(broken)
    run["settings"] = {**json.loads((results.path / "run.json").read_text())["settings"], "k": "ten"}
    (broken / "run.json").write_text(json.dumps(run))
    with pytest.raises(NormprobeError, match="'settings.k' must be int, got str"):
        read_results(broken)
    shutil.copy(results.path / "run.json", broken / "run.json")
    results.samples.drop(columns=["knn_pred"]).to_parquet(broken / "samples.parquet")
    with pytest.raises(NormprobeError, match="missing column.*knn_pred"):
        read_results(broken)
    (broken / "samples.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(NormprobeError, match="not a readable Parquet"):
        read_results(broken)


def test_output_folder_rules(results: Results, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NormprobeError, match="is a file"):
        check_output_dir(tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(NormprobeError, match="not a normprobe results folder"):
        check_output_dir(tmp_path / "busy", force=True)
    with pytest.raises(NormprobeError, match="--force"):
        check_output_dir(results.path)
    assert check_output_dir(results.path, force=True) == results.path
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == tmp_path / "empty"


def test_write_is_atomic_and_force_replaces(
    results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "res"
    previous_umask = os.umask(0o022)
    try:
        write_results(out, results.run, results.samples, {"t": pd.DataFrame({"a": [1]})}, "<html></html>")
    finally:
        os.umask(previous_umask)
    assert read_results(out).samples.equals(results.samples)
    assert (out / "tables" / "t.csv").is_file() and (out / "report.html").is_file()
    # under umask 022 others can read the results: the folders are 0755, the files 0644 (not mkdtemp's 0700)
    for path in (out, out / "tables"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in (out / "run.json", out / "samples.parquet", out / "tables" / "t.csv", out / "report.html"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_csv", disk_full)
        with pytest.raises(
            NormprobeError, match=r"cannot write the results folder .*No space left on device"
        ):
            write_results(
                out, results.run, results.samples.head(3), {"t": pd.DataFrame({"a": [2]})}, force=True
            )
    # the failed write left the previous folder untouched and no staging folder behind
    assert len(read_results(out).samples) == len(results.samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    write_results(out, results.run, results.samples.head(3), {}, force=True)
    assert len(read_results(out).samples) == 3 and not (out / "report.html").exists()
    bad = replace(results.run, primary_head="p")
    with pytest.raises(NormprobeError, match="primary_head"):
        write_results(tmp_path / "other", bad, results.samples, {})


def test_a_run_from_embeddings_has_inputs_instead_of_a_checkpoint(tmp_path: Path) -> None:
    from analyze_helpers import cli

    rng = np.random.default_rng(0)
    for name in ("train", "test", "ood"):
        np.savez(tmp_path / f"{name}.npz", embeddings=rng.normal(size=(40, 6)), labels=np.arange(40) % 2)
    files = [str(tmp_path / f"{name}.npz") for name in ("train", "test", "ood")]
    status, _, stderr = cli(
        "analyze",
        *("--id-train", files[0], "--id-test", files[1], "--ood", files[2], "--k", "5", "--ood-k", "5"),
        *("--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet", "--no-report"),
    )
    assert status == 0, stderr
    run = read_results(tmp_path / "out").run
    assert run.checkpoint is None and [e.path for e in run.inputs] == files
    assert all(e.sha256 and e.shapes == {"embeddings": [40, 6]} for e in run.inputs)

    broken = tmp_path / "broken"
    for change, message in (
        (lambda r: r.pop("inputs"), "'checkpoint' is null, so 'inputs' must be a non-empty list"),
        (lambda r: r["inputs"][1].pop("sha256"), "an 'inputs' entry lacks sha256"),
        (lambda r: r.update(checkpoint={"path": "x"}), "'checkpoint' lacks sha256"),
    ):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(tmp_path / "out", broken)
        damaged = json.loads((broken / "run.json").read_text())
        change(damaged)
        (broken / "run.json").write_text(json.dumps(damaged))
        with pytest.raises(NormprobeError, match=message):
            read_results(broken)


LEGACY_FOLDERS = Path(__file__).parent / "data" / "results-v1"
"""Results folders written by normprobe 0.1 (run.json without ``format``): one analysis of a tiny
checkpoint on CIFAR-10 / MNIST subsets, one of embedding files (their report.html left out of the
repository: the report is rendered at analysis time and read by nothing)."""


@pytest.mark.parametrize("kind", ["checkpoint", "embeddings"])
def test_a_results_folder_from_normprobe_0_1_still_opens(kind: str) -> None:
    from normprobe.record import LEGACY_RUN_FORMAT
    from normprobe.report import analysis_report, summary_table, verdict_lines

    results = read_results(LEGACY_FOLDERS / kind)
    run = results.run
    assert run.format == LEGACY_RUN_FORMAT and run.files and "run.json" in run.files
    assert (run.checkpoint is None) == (kind == "embeddings") and len(run.inputs) == (
        3 if kind == "embeddings" else 0
    )
    assert set(run.summary.knn_accuracy) == {"id-test", "id-train-loo"} and run.summary.ood
    assert verdict_lines(run) and len(summary_table(run)) == len(run.datasets)
    assert "Verdict" in analysis_report(run, [], plotly="cdn")
