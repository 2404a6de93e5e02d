"""`normprobe analyze` end to end on a tiny encoder and small real-data subsets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analyze_helpers import DATA_ROOT, analyze_args, cli, cli_fails, shared_analysis, tiny_checkpoint

from normprobe.results import read_results


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    return shared_analysis(tmp_path_factory.getbasetemp())


def test_summary_table_is_printed(shared: tuple[Path, Path, Path, str]) -> None:
    _, out, _, stdout = shared
    lines = stdout.splitlines()
    run = json.loads((out / "run.json").read_text())
    header = next(line for line in lines if line.lstrip().startswith("set"))
    for column in (
        "norm / ID train (z)",
        "kNN accuracy",
        "best scorer",
        "AUROC",
        "95% CI",
        "FPR@95 (ID pos.)",
        "FPR@95 (OOD pos.)",
        "AUPR-in (trapezoid)",
    ):
        assert column in header
    train_row = next(line for line in lines if line.lstrip().startswith("CIFAR-10 (train)"))
    assert "1.000" in train_row and f"{run['summary']['knn_accuracy']['id-train-loo']:.3f}" in train_row
    verdict = run["summary"]["ood_verdicts"]["mnist/test"]
    mnist_row = next(line for line in lines if line.lstrip().startswith("MNIST (test)"))
    assert "far-OOD" in mnist_row and f"{verdict['auroc']:.3f}" in mnist_row
    assert "{:.3f}–{:.3f}".format(*verdict["auroc_ci"]) in mnist_row
    # the verdict comes first, one line per OOD set; then the AUROC of every scorer on every set
    assert lines[1].startswith("- CIFAR-100 (test), near-OOD: ") and lines[2].startswith(
        "- MNIST (test), far-OOD: "
    )
    knn_row = next(line for line in lines if line.lstrip().startswith("kNN distance"))
    assert f"{run['summary']['ood']['mnist/test']['knn']['auroc']:.3f}" in knn_row
    for label in ("embedding norm", "Mahalanobis distance", "norm + kNN", "embedding norm (head feats)"):
        assert any(line.lstrip().startswith(label) for line in lines)
    assert "note: cifar100/test: partial mirror: 916 of 10000 cifar100 test images" in stdout
    assert f"results: {out}" in stdout


def test_report_has_every_figure_and_is_self_contained(shared: tuple[Path, Path, Path, str]) -> None:
    _, out, _, _ = shared
    html = (out / "report.html").read_text()
    for fig_id in (
        "fig-auroc-heatmap",
        "fig-norm-bars",
        "fig-norm-hist-feats",
        "fig-norm-hist-z",
        "fig-buckets",
        "fig-roc",
    ):
        assert f'id="{fig_id}"' in html and f'Plotly.newPlot(                        "{fig_id}"' in html
    assert re.search(r'id="fig-human-\d+"', html)  # CIFAR-10N curves (ID-train has CIFAR-10N labels)
    # plotly.js is inlined exactly once; nothing is fetched from elsewhere
    head, body = html.split("</head>")
    assert html.count("plotly.js v") == 1 and head.count("<script") == 1
    assert "<script src=" not in body and "https://" not in body
    # exemplar grids: one embedded image per exemplar row (4 highest + 4 lowest per class, 8 + 8 per OOD set)
    exemplars = read_results(out).table("exemplars")
    assert body.count('src="data:image/png;base64,') == len(exemplars)
    assert (
        exemplars.query("dataset == 'cifar10' and split == 'train'").groupby("label").size().tolist()
        == [8] * 10
    )
    assert exemplars.query("dataset == 'mnist'").groupby("extreme").size().tolist() == [8, 8]
    sections = ("Verdict", "Run", "Embedding norms", "Norm buckets vs kNN accuracy", "OOD detection")
    positions = [html.index(f"<h2>{section}</h2>") for section in (*sections, "Exemplars", "Human labels")]
    assert positions == sorted(positions)  # the verdict opens the page
    assert "leave-one-out" in html and "voted for itself" in html
    # readable labels: dataset titles and scorer names, no raw column names, no None, no head=primary
    verdict = html[positions[0] : positions[1]]
    assert "CIFAR-100 (test), near-OOD: " in verdict and "MNIST (test), far-OOD: " in verdict
    assert "FPR@95 (OOD pos.)" in verdict and "Near- and far-OOD means" in verdict
    for raw in (
        "human_c10n",
        "aggre_correct",
        ">None<",
        "primary<",
        "<th>fpr@95tpr_id<",
        "<th>ood_set<",
        "score_norm",
    ):
        assert raw not in body, raw
    assert "CIFAR-10N consensus label is correct" in body


def test_report_verdict_explains_an_inverted_signal() -> None:
    from normprobe.record import AnalysedDataset, RecordedSettings, RunRecord, Summary, Timings
    from normprobe.report import summary_table, verdict_items

    ci = {"auroc_ci": [0.001, 0.007]}
    run = {
        "primary_head": "z",
        "datasets": [
            {"name": "cifar10", "title": "CIFAR-10", "split": "train", "role": "id-train"},
            {"name": "cifar10", "title": "CIFAR-10", "split": "test", "role": "id-test"},
            {"name": "mnist", "title": "MNIST", "split": "test", "role": "ood", "ood_group": "far"},
        ],
        "summary": {
            "knn_accuracy": {"id-test": 0.4, "id-train-loo": 0.5},
            "norms": {
                "cifar10/train": {"role": "id-train", "n": 10, "heads": {"z": {"mean_scaled": 1.0}}},
                "cifar10/test": {"role": "id-test", "n": 10, "heads": {"z": {"mean_scaled": 1.02}}},
                "mnist/test": {"role": "ood", "n": 10, "heads": {"z": {"mean_scaled": 1.9}}},
            },
            "ood": {
                "mnist/test": {
                    "norm": {"auroc": 0.003, **ci, "fpr@95tpr_id": 1.0},
                    "knn": {"auroc": 0.97, "auroc_ci": [0.95, 0.99], "fpr@95tpr_id": 0.1},
                    "mahalanobis": {"auroc": 0.95, "auroc_ci": [0.93, 0.97], "fpr@95tpr_id": 0.2},
                }
            },
            "ood_verdicts": {
                "mnist/test": {
                    "group": "far",
                    "best": "knn",
                    "auroc": 0.97,
                    "auroc_ci": [0.95, 0.99],
                    "detected": True,
                    "within_interval": ["mahalanobis"],
                    "inverted": ["norm"],
                }
            },
        },
    }
    for key in ("fpr@95tpr_ood", "aupr_in_trapz", "aupr_out_trapz"):
        for metrics in run["summary"]["ood"]["mnist/test"].values():
            metrics[key] = 0.5
    record = RunRecord(
        normprobe_version="test",
        created_utc="",
        command=(),
        checkpoint=None,
        id_dataset="cifar10",
        datasets=tuple(AnalysedDataset(n=10, fingerprint="", source="", **d) for d in run["datasets"]),
        heads=("z",),
        primary_head="z",
        settings=RecordedSettings(
            k=10,
            temperature=0.1,
            buckets=5,
            bucket_scaling="max",
            min_bucket_count=1,
            scorers=("norm", "knn"),
            seed=0,
            precision=None,
            batch_size=None,
            device="cpu",
        ),
        summary=Summary(spearman={}, **run["summary"]),
        timings=Timings(total_s=0.0, embeddings_from_cache={}),
    )
    (best, plain), (inverted, warning) = verdict_items(record)
    assert not plain and warning
    assert best == (
        "MNIST (test), far-OOD: best scorer kNN distance, AUROC 0.970 (95% CI 0.950–0.990); Mahalanobis "
        "distance lies within that interval, so the data do not rank them apart."
    )
    assert inverted.startswith(
        "Inverted signal on MNIST (test): embedding norm (AUROC 0.003, 95% CI 0.001–0.007)"
    )
    assert (
        "MNIST (test) gets larger norms than the in-distribution data (mean 1.90× the ID-train mean"
        in inverted
    )
    assert "the norm calls it more familiar" in inverted
    assert inverted.endswith("Use kNN distance (AUROC 0.970) or Mahalanobis distance (0.950) for this set.")
    table = summary_table(record).set_index("set")
    assert (
        table.loc["MNIST (test)", "best scorer"] == "kNN distance"
        and table.loc["MNIST (test)", "role"] == "far-OOD"
    )
    assert (
        table.loc["CIFAR-10 (test)", "kNN accuracy"] == 0.4
        and table.loc["CIFAR-10 (test)", "best scorer"] == ""
    )


def test_plotly_from_a_directory_or_the_cdn(shared: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    import plotly

    from normprobe.report import Section, plotly_js, render_report

    checkpoint, first_out, cache, _ = shared
    status, _, stderr = cli(
        *analyze_args(checkpoint, tmp_path / "d", cache, "--quiet", "--plotly", "directory")
    )
    assert status == 0, stderr
    html = (tmp_path / "d" / "report.html").read_text()
    assert '<script src="plotly.min.js"></script>' in html and "plotly.js v" not in html
    assert (tmp_path / "d" / "plotly.min.js").read_text() == plotly_js()
    assert len(html) < (first_out / "report.html").stat().st_size - 3_000_000  # the bundle is ~4.6 MB
    assert read_results(tmp_path / "d").run.settings.plotly == "directory"
    cdn = render_report("t", [Section("s")], [], plotly="cdn")
    assert f'src="https://cdn.plot.ly/plotly-{plotly.offline.get_plotlyjs_version()}.min.js"' in cdn
    assert 'integrity="sha256-' in cdn and "plotly.js v" not in cdn


def test_second_run_is_served_from_the_cache(shared: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    checkpoint, first_out, cache, _ = shared
    status, stdout, stderr = cli(
        *analyze_args(checkpoint, tmp_path / "again", cache, "--quiet", "--no-report")
    )
    assert status == 0, stderr
    again, first = read_results(tmp_path / "again"), read_results(first_out)
    assert all(again.run.timings.embeddings_from_cache.values())
    assert not any(first.run.timings.embeddings_from_cache.values())
    # the leave-one-out kNN and the scores are cached as well, keyed by the embeddings and settings
    assert again.run.timings.knn_from_cache and again.run.timings.scores_from_cache
    assert not first.run.timings.knn_from_cache and not first.run.timings.scores_from_cache
    assert "embeddings: 4 of 4 sets from the cache" in stdout
    pd.testing.assert_frame_equal(again.samples, first.samples)
    assert not (tmp_path / "again" / "report.html").exists()


def test_quantile_buckets_and_a_second_head(shared: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    checkpoint, _, cache, _ = shared
    status, _, stderr = cli(
        *analyze_args(
            checkpoint,
            tmp_path / "q",
            cache,
            "--quiet",
            "--no-report",
            "--bucket-scaling",
            "quantile",
            "--buckets",
            "4",
            "--head",
            "feats",
            "--scorers",
            "norm,knn",
            "--human",
            "none",
            "--far",
            "cifar100",
        )
    )
    assert status == 0, stderr
    results = read_results(tmp_path / "q")
    assert results.run.summary.ood_groups["far"]["ood_sets"] == ["cifar100/test", "mnist/test"]
    assert "near" not in results.run.summary.ood_groups and results.run.settings.far == ("cifar100",)
    assert results.run.primary_head == "feats" and results.run.settings.bucket_scaling == "quantile"
    assert results.scorers == ["norm", "knn", "norm@z"]
    assert not any(c.startswith("human_") for c in results.samples.columns)
    counts = results.table("buckets").query("role == 'id-test'")["count"].tolist()
    assert counts == [15, 15, 15, 15]  # equal-count buckets of the 60 ID-test samples
    np.testing.assert_allclose(
        results.samples["norm_scaled"].to_numpy(),
        results.samples["norm_feats"] / results.samples.query("role == 'id-train'")["norm_feats"].mean(),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ood", "nosuchset"], "--ood nosuchset: neither a folder, an .npz file nor a known dataset"),
        (["--ood", "cifar10"], "--ood cifar10 is cifar10 test, the same split as the ID-test set"),
        (["--ood", "cifar10:train"], "the same split as the ID-train set"),
        (["--id", "nosuch"], "unknown dataset 'nosuch'"),
        (["--id", "mnist"], "needs train and test splits"),
        (["--k", "500"], "--k 500 needs more than 500 ID-train samples"),
        (["--scorers", "norm,energy"], "unknown scorer 'energy'"),
        (["--max-per-split", "0"], "--max-per-split must be >= 1"),
        (["--near", "svhn"], "--near svhn: not one of the OOD sets (--ood cifar100, mnist)"),
        (["--near", "mnist", "--far", "mnist"], "mnist is given to both --near and --far"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    shared: tuple[Path, Path, Path, str], tmp_path: Path, extra: list[str], message: str
) -> None:
    checkpoint, _, cache, _ = shared
    assert message in cli_fails(*analyze_args(checkpoint, tmp_path / "out", cache, "--quiet"), *extra)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_empty_split_nan_embeddings_and_bad_output_paths(
    shared: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    checkpoint, results_dir, cache, _ = shared
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 32, 32, 3), np.uint8))
    assert "has no images" in cli_fails(
        *analyze_args(checkpoint, tmp_path / "o1", cache, "--quiet", "--ood", str(empty))
    )
    nan = tiny_checkpoint(tmp_path / "nan.pt", nan=True)
    assert "NaN or Inf" in cli_fails(*analyze_args(nan, tmp_path / "o2", tmp_path / "cache", "--quiet"))
    (tmp_path / "file.txt").write_text("not a folder")
    assert "is a file" in cli_fails(*analyze_args(checkpoint, tmp_path / "file.txt", cache, "--quiet"))
    assert "--force" in cli_fails(*analyze_args(checkpoint, results_dir, cache, "--quiet"))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folders left behind


def test_bad_human_label_set_fails_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    # the checkpoint does not exist: the --human error proves the label sets are checked first
    message = cli_fails(
        *analyze_args(
            tmp_path / "absent.pt", tmp_path / "out", tmp_path / "cache", "--quiet", "--human", "cifar100n"
        )
    )
    assert "describes cifar100 train images" in message
    assert not (tmp_path / "out").exists()


def test_help_explains_the_options() -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("analyze", "--help")
    assert exit_info.value.code == 0


def test_building_the_cli_imports_no_heavy_stack() -> None:
    # every command module is imported for `normprobe --help`; torch, pandas and scipy load in run()
    code = "import sys, normprobe.cli as c; c.build_parser(); print([m for m in ('torch', 'pandas', 'scipy') if m in sys.modules])"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )


def test_the_report_imports_no_analysis() -> None:
    # layers: analyses build on the report, never the other way round
    code = (
        "import sys, normprobe.report; print([m for m in sys.modules if m.startswith('normprobe.analyses')])"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )


def test_data_root_is_recorded(shared: tuple[Path, Path, Path, str]) -> None:
    _, out, _, _ = shared
    run = read_results(out).run
    assert {d.data_root for d in run.datasets} == {str(DATA_ROOT)}
