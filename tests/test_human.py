"""Human-label analyses: per-sample fields, bucket curves, Spearman with bootstrap, label-set selection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normprobe import data
from normprobe.analyses import human
from normprobe.errors import NormprobeError
from normprobe.report import human_figures

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))


def test_entropy_and_majority_from_hand_computed_counts() -> None:
    counts = np.zeros((5, 10), np.int64)
    counts[0, 3] = 51  # unanimous: 0 bits
    counts[1, [0, 1]] = 25  # two-way tie: 1 bit
    counts[2, :4] = 13  # four-way tie: 2 bits
    counts[3, :] = 5  # uniform over 10 classes: log2(10) bits
    counts[4, [0, 1, 2]] = [10, 30, 10]  # p = (.2, .6, .2)
    labels = np.array([3, 0, 2, 7, 0])
    frame = human.human_columns({"cifar10h": {"counts": counts}}, np.arange(5), labels, "id-test")
    p = np.array([0.2, 0.6, 0.2])
    expected = [0.0, 1.0, 2.0, np.log2(10), -(p * np.log2(p)).sum()]  # the last is 1.37095 bits
    np.testing.assert_allclose(frame["human_c10h_entropy"], expected, rtol=1e-12)
    assert expected[-1] == pytest.approx(1.3709505944546687)
    # true class among the most-voted ones (ties included) -> agreement; label 7 has 5 votes of a tie -> agreement
    assert frame["human_c10h_majority_disagrees"].tolist() == [False, False, False, False, True]
    assert frame["human_c10h_majority_label"].tolist() == [3, 0, 0, 0, 1]
    assert frame["human_c10h_annotations"].tolist() == [51, 50, 52, 50, 50]
    # CIFAR-10H describes the test split: other roles get no columns
    assert human.human_columns(
        {"cifar10h": {"counts": counts}}, np.arange(5), labels, "id-train"
    ).columns.empty


def _cifar10n(aggre: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "clean_label": clean,
        "aggre_label": aggre,
        "worse_label": aggre,
        "random_label1": clean,
        "random_label2": clean,
        "random_label3": aggre,
    }


def test_bucket_accuracies_on_constructed_data() -> None:
    # 100 samples at norm 1.0 (top bucket), all human labels right; 100 at 0.5 (bucket 10), half right;
    # 20 at 0.02 (bucket 0), all wrong but fewer than 50 -> not shown.
    norms = np.r_[np.full(100, 1.0), np.full(100, 0.5), np.full(20, 0.02)]
    clean = np.arange(220) % 10
    aggre = clean.copy()
    aggre[100:150] = (clean[100:150] + 1) % 10
    aggre[200:] = (clean[200:] + 3) % 10
    frame = human.human_columns({"cifar10n": _cifar10n(aggre, clean)}, np.arange(220), clean, "id-train")
    assert list(frame.columns) == [
        "human_c10n_aggre_label",
        "human_c10n_aggre_correct",
        "human_c10n_worse_correct",
        "human_c10n_random1_correct",
        "human_c10n_random2_correct",
        "human_c10n_random3_correct",
    ]
    samples = pd.concat([frame, pd.DataFrame({"norm_z": norms})], axis=1)
    curves = human.human_curves(samples, "norm_z")
    aggre_curve = curves[curves["signal"] == "human_c10n_aggre_correct"].set_index("bucket")
    assert len(aggre_curve) == 20
    assert aggre_curve.loc[19, ["count", "mean", "shown"]].tolist() == [100, 1.0, True]
    assert aggre_curve.loc[10, ["count", "mean", "shown"]].tolist() == [100, 0.5, True]
    assert aggre_curve.loc[0, ["count", "mean", "shown"]].tolist() == [20, 0.0, False]
    assert aggre_curve.loc[5, "count"] == 0 and not aggre_curve.loc[5, "shown"]
    random1 = curves[curves["signal"] == "human_c10n_random1_correct"]
    assert (random1.loc[random1["count"] > 0, "mean"] == 1.0).all()
    # unknown dataset labels give missing fields, which are left out of counts
    unknown = human.human_columns(
        {"cifar10n": _cifar10n(aggre, clean)}, np.arange(3), np.array([-1, 1, 2]), "id-train"
    )
    assert unknown["human_c10n_aggre_correct"].isna().tolist() == [True, False, False]


def test_alignment_by_original_index_on_real_labels() -> None:
    label_sets = {"cifar10n": data.load_labels("cifar10n", DATA_ROOT)}
    train = data.load("cifar10", "train", DATA_ROOT)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), 500, replace=False)  # shuffled, not sorted
    shuffled = train.subset(picked, "test-shuffle")
    full = human.human_columns(label_sets, train.index, train.labels, "id-train")
    part = human.human_columns(label_sets, shuffled.index, shuffled.labels, "id-train")
    pd.testing.assert_frame_equal(part, full.iloc[picked].reset_index(drop=True))
    # the published noise rates come out of the real file
    assert 1 - full["human_c10n_aggre_correct"].mean() == pytest.approx(0.0901, abs=1e-4)
    assert 1 - full["human_c10n_worse_correct"].mean() == pytest.approx(0.4021, abs=1e-4)
    # labels that do not belong to these original indices are caught, not silently misaligned
    with pytest.raises(NormprobeError, match="does not line up"):
        human.human_columns(label_sets, shuffled.index, np.roll(shuffled.labels, 1), "id-train")
    with pytest.raises(NormprobeError, match="covers original indices"):
        human.human_columns(label_sets, np.array([50_000]), np.array([0]), "id-train")


def test_partial_mirror_aligns_by_original_index() -> None:
    train = data.load("cifar100", "train", DATA_ROOT)  # partial mirror: original indices 0..1116
    fields = data.load_labels("cifar100n", DATA_ROOT)
    frame = human.human_columns({"cifar100n": fields}, train.index, train.labels, "id-train")
    np.testing.assert_array_equal(frame["human_c100n_noisy_label"], fields["noisy_label"][train.index])
    assert list(frame.columns) == ["human_c100n_noisy_label", "human_c100n_noisy_correct"]


@pytest.mark.data_mirror
def test_select_label_sets_auto_explicit_and_missing(tmp_path: Path) -> None:
    auto, notes = human.select_label_sets("cifar10", "auto", DATA_ROOT)
    assert sorted(auto) == ["cifar10h", "cifar10n"] and notes == []
    assert human.select_label_sets("mnist", "auto", DATA_ROOT) == ({}, [])
    assert human.select_label_sets("cifar10", "none", DATA_ROOT) == ({}, [])
    explicit, _ = human.select_label_sets("cifar10", "cifar10h", DATA_ROOT)
    assert list(explicit) == ["cifar10h"]
    # automatic: a missing file is skipped with a note; explicit: a clear error
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    skipped, notes = human.select_label_sets("cifar10", "auto", empty_root)
    assert skipped == {} and len(notes) == 2 and all("skipped" in n and "not found" in n for n in notes)
    for check in (human.select_label_sets, human.check_label_sets):
        with pytest.raises(
            NormprobeError, match=r"label file for cifar10n not found: .*cifar10n_labels\.npz"
        ):
            check("cifar10", "cifar10n,cifar10h", empty_root)
    human.check_label_sets("cifar10", "auto", empty_root)  # automatic: nothing to complain about up front
    human.check_label_sets("cifar10", "cifar10n,cifar10h", DATA_ROOT)
    with pytest.raises(NormprobeError, match="unknown human label set 'cifar10x'"):
        human.select_label_sets("cifar10", "cifar10x", DATA_ROOT)
    with pytest.raises(
        NormprobeError, match="describes cifar100 train images, but the in-distribution set is cifar10"
    ):
        human.select_label_sets("cifar10", ["cifar100n"], DATA_ROOT)
    with pytest.raises(NormprobeError, match="describes cifar100 train images"):
        human.check_label_sets("cifar10", "cifar100n", DATA_ROOT)


def test_correlations_summary_and_figures() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    clean = rng.integers(0, 10, n)
    norms = rng.random(n)
    # humans are wrong more often at low norm
    wrong = rng.random(n) < 0.4 * (1 - norms)
    aggre = np.where(wrong, (clean + 1) % 10, clean)
    samples = pd.concat(
        [
            human.human_columns({"cifar10n": _cifar10n(aggre, clean)}, np.arange(n), clean, "id-train"),
            pd.DataFrame({"norm_z": norms}),
        ],
        axis=1,
    )
    corr = human.human_correlations(samples, "norm_z", n_boot=200, seed=0).set_index("signal")
    row = corr.loc["human_c10n_aggre_correct"]
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(norms, ~wrong).statistic)
    assert 0 < row["ci_low"] < row["spearman_rho"] < row["ci_high"]
    assert np.isnan(corr.loc["human_c10n_random1_correct", "spearman_rho"])  # always right: constant signal
    curves = human.human_curves(samples, "norm_z")
    summary = human.human_summary(curves, corr.reset_index())
    json.dumps(summary, allow_nan=False)
    assert summary["human_c10n_aggre_correct"]["ci"] == [row["ci_low"], row["ci_high"]]
    assert summary["human_c10n_aggre_correct"]["mean"] == pytest.approx(1 - wrong.mean())
    figures = human_figures(curves, corr.reset_index(), human.signal_label, unit=1.0)
    assert len(figures) == 1 and len(figures[0].data) == 5
    with pytest.raises(NormprobeError, match="no column 'norm_p'"):
        human.human_curves(samples, "norm_p")


def test_bucket_plots_share_the_histograms_x_axis() -> None:
    """Every bucket plot sits its buckets at norm / ID-train mean, the histograms' unit, whatever the
    bucket scheme, so the figures of one report line up."""
    import pandas as pd

    from normprobe.report import BUCKET_X_TITLE, bucket_figure, id_train_mean_norm, norm_histogram_figure

    samples = pd.DataFrame(
        {
            "dataset": ["c10"] * 4 + ["mnist"] * 2,
            "split": ["train"] * 2 + ["test"] * 2 + ["test"] * 2,
            "role": ["id-train"] * 2 + ["id-test"] * 2 + ["ood"] * 2,
            "norm_z": [2.0, 4.0, 3.0, 5.0, 1.0, 6.0],
        }
    )
    unit = id_train_mean_norm(samples, "z")
    curves = pd.DataFrame(
        {
            "series": ["s", "s"],
            "norm_lower": [0.0, 3.0],
            "norm_upper": [3.0, 6.0],
            "center": [0.25, 0.75],
            "mean": [0.5, 0.9],
            "sem": [0.1, 0.1],
            "count": [10, 20],
            "shown": [True, True],
        }
    )
    figure = bucket_figure(curves, title="t", y_title="y", unit=unit)
    assert unit == 3.0 and list(figure.data[0].x) == [0.5, 1.5]
    assert figure.layout.xaxis.title.text == BUCKET_X_TITLE
    assert "mean ‖embedding‖ on ID train" in norm_histogram_figure(samples, "z").layout.xaxis.title.text
