"""`normprobe analyze --knn-backend faiss-ivf|faiss-hnsw`: the approximate search serves the
classifier and the kNN scorers, its recall@k against the exact search is in run.json, and its
results are cached apart from the exact ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from analyze_helpers import DATA_ROOT, SMALL, cli, tiny_checkpoint

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ann")
    tiny_checkpoint(root / "tiny.pt")
    return root


def analyze(work: Path, name: str, *options: str) -> tuple[dict, pd.DataFrame]:
    args = [str(work / "tiny.pt"), "--ood", "cifar100", "--data-root", str(DATA_ROOT)]
    args += ["--cache-dir", str(work / "cache"), "--no-report", "--quiet", *SMALL]
    status, _, err = cli("analyze", *args, *options, "--out", str(work / name))
    assert status == 0, err
    return json.loads((work / name / "run.json").read_text()), pd.read_parquet(
        work / name / "samples.parquet"
    )


def test_exhaustive_ivf_equals_the_exact_search_and_reports_recall_one(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from normprobe import results

    monkeypatch.setattr(results, "ROW_GROUP_ROWS", 64)
    exact_run, exact = analyze(work, "exact")
    assert exact_run["knn_search"] is None
    # samples.parquet in row groups of at most ROW_GROUP_ROWS: 160 + 60 + 60 rows
    meta = pq.ParquetFile(work / "exact" / "samples.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [64, 64, 64, 64, 24]
    run, samples = analyze(work, "ivf-all", "--knn-backend", "faiss-ivf", "--nlist", "4", "--nprobe", "4")
    search = run["knn_search"]
    assert search["backend"] == "faiss-ivf" and search["approximate"] is True
    assert search["params"] == {"nlist": 4, "nprobe": 4, "seed": 0}
    assert search["recall_at_k"] == {"id-train-loo": {"5": 1.0, "10": 1.0}, "id-test": {"5": 1.0, "10": 1.0}}
    assert search["recall_queries"] == {"id-train-loo": 160, "id-test": 60}
    assert run["settings"]["knn_backend"] == "faiss-ivf"
    assert not run["timings"]["knn_from_cache"]  # its own cache entries, not the exact run's
    pd.testing.assert_series_equal(samples["knn_pred"], exact["knn_pred"])
    pd.testing.assert_series_equal(samples["score_knn"], exact["score_knn"], atol=1e-5)


def test_a_coarse_ivf_reports_its_recall_and_is_cached_apart_from_the_exact_search(work: Path) -> None:
    coarse = ("--knn-backend", "faiss-ivf", "--nlist", "16", "--nprobe", "1")
    run, _ = analyze(work, "ivf-1", *coarse)
    recall = run["knn_search"]["recall_at_k"]
    assert 0 < min(recall["id-test"].values()) < 1 and 0 < min(recall["id-train-loo"].values()) < 1
    again, _ = analyze(work, "ivf-1-again", *coarse)
    assert again["timings"]["knn_from_cache"] and again["timings"]["scores_from_cache"]
    assert again["knn_search"] == run["knn_search"]
    exact_run, _ = analyze(work, "exact-after", "--k", "10")
    assert exact_run["knn_search"] is None and exact_run["timings"]["knn_from_cache"]  # the exact run's entry
    hnsw, _ = analyze(work, "hnsw", "--knn-backend", "faiss-hnsw", "--hnsw-m", "8")
    assert hnsw["knn_search"]["params"] == {"hnsw_m": 8, "ef_construction": 80, "ef_search": "max(2k,128)"}
    assert min(hnsw["knn_search"]["recall_at_k"]["id-test"].values()) >= 0.95


def test_approximate_options_need_their_backend(work: Path) -> None:
    status, _, err = cli("analyze", str(work / "tiny.pt"), "--nprobe", "4", "--out", str(work / "never"))
    assert status != 0 and "--nprobe applies to --knn-backend faiss-ivf only" in err
    assert not (work / "never").exists()
