"""The analyses on hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normprobe.analyses.buckets import bucket_curve, bucket_index, scale_values
from normprobe.analyses.exemplars import describe_exemplars, norm_exemplars
from normprobe.analyses.norms import norm_summary
from normprobe.errors import NormprobeError

# ----------------------------------------------------------------------------- buckets


def test_max_scaling_buckets_follow_the_paper() -> None:
    # norm / max, buckets [0.05 i, 0.05 (i+1)): exact binary fractions avoid float edge effects
    values = np.array([0.0, 0.25, 0.5, 0.5625, 0.96875, 1.0]) * 8.0
    assert scale_values(values, "max").tolist() == [0.0, 0.25, 0.5, 0.5625, 0.96875, 1.0]
    assert bucket_index(scale_values(values, "max"), 20).tolist() == [
        0,
        5,
        10,
        11,
        19,
        19,
    ]  # the max joins the top bucket
    assert bucket_index(np.array([0.25, 0.5, 0.75]), 4).tolist() == [1, 2, 3]  # lower edges are inclusive


def test_minmax_and_quantile_scaling() -> None:
    values = np.array([2.0, 4.0, 6.0, 10.0])
    assert scale_values(values, "minmax").tolist() == [0.0, 0.25, 0.5, 1.0]
    # mid-rank empirical CDF: ties share one value; equal-count buckets
    assert scale_values(np.array([1.0, 2.0, 2.0, 3.0]), "quantile").tolist() == [0.125, 0.5, 0.5, 0.875]
    counts = bucket_curve(np.arange(100.0), np.ones(100), n_buckets=4, scaling="quantile", min_count=0)[
        "count"
    ]
    assert counts.tolist() == [25, 25, 25, 25]
    # a reference set fixes the scale for other values (outliers go to the end buckets)
    assert bucket_index(
        scale_values(np.array([-1.0, 5.0, 20.0]), "minmax", reference=np.array([0.0, 10.0])), 10
    ).tolist() == [0, 5, 9]


def test_bucket_curve_counts_means_and_hiding() -> None:
    values = np.array([0.1, 0.2, 0.3, 0.9, 0.95, 1.0, 1.0])  # max 1.0
    correct = np.array([0, 1, 1, 1, 1, 1, 0], dtype=float)
    curve = bucket_curve(values, correct, n_buckets=2, scaling="max", min_count=4)
    assert curve["count"].tolist() == [3, 4]
    assert curve["mean"].tolist() == pytest.approx([2 / 3, 3 / 4])
    assert curve["shown"].tolist() == [False, True]
    assert curve["lower"].tolist() == [0.0, 0.5] and curve["norm_upper"].tolist() == [0.5, 1.0]
    # standard error of the mean with the sample standard deviation
    assert curve["sem"].iloc[1] == pytest.approx(np.std([1, 1, 1, 0], ddof=1) / 2)


def test_bucket_curve_ignores_unknown_signal_and_keeps_empty_buckets() -> None:
    curve = bucket_curve(np.array([1.0, 2.0, 4.0]), np.array([1.0, np.nan, 0.0]), n_buckets=4, min_count=1)
    assert curve["count"].tolist() == [0, 1, 0, 1]
    assert curve["shown"].tolist() == [False, True, False, True]
    assert np.isnan(curve["mean"].iloc[0])


@pytest.mark.parametrize("bad", [dict(scaling="log"), dict(n_buckets=0), dict(min_count=-1)])
def test_bucket_curve_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(NormprobeError):
        bucket_curve(np.array([1.0, 2.0]), np.array([1.0, 0.0]), **bad)


def test_bucket_curve_rejects_nan_values() -> None:
    with pytest.raises(NormprobeError, match="NaN"):
        bucket_curve(np.array([1.0, np.nan]), np.array([1.0, 0.0]))


# ----------------------------------------------------------------------------- norms


def _samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["c10"] * 4 + ["c10"] * 2 + ["c100"] * 2,
            "split": ["train"] * 4 + ["test"] * 2 + ["test"] * 2,
            "role": ["id-train"] * 4 + ["id-test"] * 2 + ["ood"] * 2,
            "norm_z": [1.0, 2.0, 3.0, 6.0, 2.0, 4.0, 1.0, 2.0],
            "norm_feats": [10.0] * 4 + [5.0] * 2 + [2.5] * 2,
        }
    )


def test_norm_summary_values_and_train_normalisation() -> None:
    table = norm_summary(_samples(), ["z", "feats"])
    z = table[table["head"] == "z"].set_index("role")
    assert z.loc["id-train", "mean"] == 3.0 and z.loc["id-train", "mean_scaled"] == 1.0
    assert z.loc["id-test", "mean_scaled"] == pytest.approx(1.0)
    assert z.loc["ood", "mean_scaled"] == pytest.approx(0.5)
    assert z.loc["id-train", "median"] == 2.5 and z.loc["id-train", "median_scaled"] == pytest.approx(2.5 / 3)
    assert z.loc["id-train", "n"] == 4 and z.loc["id-train", "max"] == 6.0
    feats = table[table["head"] == "feats"].set_index("role")
    assert feats["mean_scaled"].tolist() == [1.0, 0.5, 0.25]


def test_norm_summary_needs_train_rows() -> None:
    with pytest.raises(NormprobeError, match="id-train"):
        norm_summary(_samples().query("role != 'id-train'"), ["z"])


# ----------------------------------------------------------------------------- exemplars


def test_exemplars_highest_and_lowest_per_class() -> None:
    norms = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 0.5])
    labels = np.array([0, 0, 0, 1, 1, 1])
    table = norm_exemplars(norms, labels, per_group=2, class_names=("cat", "dog"))
    top0 = table[(table["label"] == 0) & (table["extreme"] == "highest")]
    low1 = table[(table["label"] == 1) & (table["extreme"] == "lowest")]
    assert top0["position"].tolist() == [0, 2] and top0["label_name"].tolist() == ["cat", "cat"]
    assert low1["position"].tolist() == [5, 4] and low1["rank"].tolist() == [0, 1]
    whole = norm_exemplars(norms, labels, per_group=1, by_class=False)
    assert whole.set_index("extreme")["position"].to_dict() == {"highest": 3, "lowest": 5}
    described = describe_exemplars(
        whole,
        dataset="d",
        split="s",
        role="ood",
        index=np.arange(6) + 100,
        ids=np.array([f"id{i}" for i in range(6)]),
    )
    assert described.set_index("extreme")["index"].to_dict() == {"highest": 103, "lowest": 105}
    assert described["id"].tolist() == ["id3", "id5"]


# ----------------------------------------------------------------------------- kNN correctness


def test_train_points_are_classified_leave_one_out() -> None:
    from normprobe.analyses.accuracy import knn_predictions

    # Each training point's nearest *other* point has the other label: with k=1, leave-one-out gets
    # every training point wrong, while a classifier that let points vote for themselves would get
    # all of them right.
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 0])
    test = np.array([[1.0, 0.001], [0.001, 1.0]])
    train_pred, test_pred = knn_predictions(train, labels, test, k=1)
    assert train_pred.tolist() == [1, 0, 0, 1]
    assert test_pred.tolist() == [0, 1]  # test points see the whole training set
    with pytest.raises(NormprobeError, match="--k 4"):
        knn_predictions(train, labels, test, k=4)


# ----------------------------------------------------------------------------- OOD wiring


def _scored(id_scores: list[float], ood: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"dataset": "c10", "split": "test", "role": "id-test", "score_s": v} for v in id_scores]
    for name, values in ood.items():
        rows += [{"dataset": name, "split": "test", "role": "ood", "score_s": v} for v in values]
    rows += [{"dataset": "c10", "split": "train", "role": "id-train", "score_s": 100.0}]  # never used as ID
    return pd.DataFrame(rows)


def test_ood_metrics_on_a_case_with_known_answers() -> None:
    from normprobe.analyses.ood import evaluate_ood

    ids = [1.0, 2.0, 3.0, 4.0]
    samples = _scored(ids, {"far": [-2.0, -1.0], "mixed": [0.0, 2.5], "reversed": [10.0, 11.0]})
    table, roc = evaluate_ood(samples, ["s"], "z")
    table = table.set_index("ood_set")
    far = table.loc["far/test"]
    assert far["auroc"] == 1.0 and far["fpr@95tpr_id"] == 0.0 and far["fpr@95tpr_ood"] == 0.0
    assert far["aupr_in_ap"] == far["aupr_out_ap"] == far["aupr_in_trapz"] == far["aupr_out_trapz"] == 1.0
    # ID-test beats 0.0 four times and 2.5 twice: 6 of 8 pairs
    assert table.loc["mixed/test", "auroc"] == pytest.approx(0.75)
    # the threshold keeping 95% of ID-test is the lowest ID score (1.0): 2.5 passes, 0.0 does not
    assert table.loc["mixed/test", "fpr@95tpr_id"] == pytest.approx(0.5)
    # flagging 95% of the OOD set (both) takes every score <= 2.5: ID 1.0 and 2.0 are flagged too
    assert table.loc["mixed/test", "fpr@95tpr_ood"] == pytest.approx(0.5)
    reversed_ = table.loc["reversed/test"]
    assert (
        reversed_["auroc"] == 0.0 and reversed_["fpr@95tpr_id"] == 1.0 and reversed_["fpr@95tpr_ood"] == 1.0
    )
    assert (table["n_id"] == 4).all() and (table["head"] == "z").all()
    far = roc[roc["ood_set"] == "far/test"]
    assert far["tpr"].iloc[0] == 1.0 and far["fpr"].iloc[0] == 0.0  # perfect separation: TPR 1 at FPR 0
    assert np.all(np.diff(roc.loc[roc["ood_set"] == "mixed/test", "tpr"]) >= 0)


def test_ood_groups_and_their_means() -> None:
    from normprobe.analyses.ood import evaluate_ood, group_means, ood_group

    assert ood_group(("cifar100", "cifar100"), "near", (), ()) == "near"  # the manifest's group
    assert ood_group(("cifar100", "cifar100"), "near", (), ("cifar100",)) == "far"  # --far wins
    assert ood_group(("my_images/", "my_images"), None, (), ()) == "far"  # user folders
    assert ood_group(("my_images/", "my_images"), None, ("my_images/",), ()) == "near"
    with pytest.raises(NormprobeError, match="ood_group 'middle'"):
        ood_group(("x",), "middle", (), ())
    samples = _scored([1.0, 2.0, 3.0, 4.0], {"a": [-2.0, -1.0], "b": [0.0, 2.5], "c": [10.0, 11.0]})
    table, _ = evaluate_ood(samples, ["s"], "z", {"a/test": "near", "b/test": "far"})
    assert table.set_index("ood_set")["group"].to_dict() == {
        "a/test": "near",
        "b/test": "far",
        "c/test": "far",
    }
    means = group_means(table).set_index("group")
    assert means.loc["near", "auroc"] == 1.0 and means.loc["near", "n_sets"] == 1
    assert means.loc["far", "ood_sets"] == "b/test;c/test" and means.loc["far", "n_sets"] == 2
    assert means.loc["far", "auroc"] == pytest.approx((0.75 + 0.0) / 2)
    assert means.loc["far", "fpr@95tpr_ood"] == pytest.approx((0.5 + 1.0) / 2)
    assert list(means.index) == ["near", "far"]


def test_ood_verdicts_name_the_best_the_indistinguishable_and_the_inverted() -> None:
    from normprobe.analyses.ood import evaluate_ood, ood_verdicts

    rng = np.random.default_rng(0)
    ids = rng.normal(0.0, 1.0, 300)
    rows = [{"dataset": "c10", "split": "test", "role": "id-test"} for _ in ids]
    ood = rng.normal(-2.0, 1.0, 300)
    rows += [{"dataset": "far", "split": "test", "role": "ood"} for _ in ood]
    samples = pd.DataFrame(rows)
    # a clear signal, the same signal plus a little noise, and the first one inverted
    samples["score_a"] = np.r_[ids, ood]
    samples["score_b"] = np.r_[ids, ood] + rng.normal(0.0, 0.05, 600)
    samples["score_c"] = -np.r_[ids, ood]
    table, _ = evaluate_ood(samples, ["a", "b", "c"], "z", {"far/test": "far"}, n_boot=200)
    verdict = ood_verdicts(table)["far/test"]
    best = table.set_index("scorer").loc[verdict["best"]]
    assert verdict["best"] in ("a", "b") and verdict["detected"] and verdict["group"] == "far"
    assert verdict["auroc_ci"] == [best["auroc_ci_low"], best["auroc_ci_high"]]
    assert verdict["within_interval"] == [s for s in ("a", "b") if s != verdict["best"]]
    assert verdict["inverted"] == ["c"]
    # the intervals: seeded, and around the estimate
    again, _ = evaluate_ood(samples, ["a", "b", "c"], "z", n_boot=200)
    pd.testing.assert_series_equal(table["auroc_ci_low"], again["auroc_ci_low"])
    assert (table["auroc_ci_low"] < table["auroc"]).all() and (table["auroc"] < table["auroc_ci_high"]).all()


def test_report_options_are_checked() -> None:
    from normprobe.analyses.settings import AnalysisSettings

    with pytest.raises(NormprobeError, match="--plotly must be one of inline, cdn, directory"):
        AnalysisSettings(plotly="nowhere").check()


def test_human_signals_have_readable_names() -> None:
    from normprobe.analyses.human import signal_label

    assert signal_label("human_c10n_aggre_correct") == "CIFAR-10N consensus label is correct"
    assert signal_label("human_c10n_random2_correct") == "CIFAR-10N annotator 2's label is correct"
    assert signal_label("human_c10h_entropy") == "CIFAR-10H label entropy (bits)"
    assert (
        signal_label("human_c10h_majority_disagrees") == "CIFAR-10H majority disagrees with the dataset label"
    )


def test_scores_fit_on_train_and_leave_train_points_out() -> None:
    from normprobe.analyses.ood import fit_and_score

    rng = np.random.default_rng(0)
    train = {
        "z": rng.normal(size=(40, 8)).astype(np.float32),
        "feats": rng.normal(size=(40, 4)).astype(np.float32) + 3,
    }
    labels = np.repeat([0, 1], 20)
    other = {
        "z": train["z"][:5].copy(),
        "feats": train["feats"][:5].copy(),
    }  # the same points, queried as new data
    scores, _ = fit_and_score(
        train=train,
        train_labels=labels,
        others=[other],
        heads=("feats", "z"),
        primary="z",
        scorers=("norm", "knn", "mahalanobis"),
        ood_k=1,
    )
    assert set(scores) == {"norm", "knn", "mahalanobis", "norm@feats"}
    assert all(len(v) == 45 for v in scores.values())
    np.testing.assert_allclose(
        scores["norm"], np.linalg.norm(np.concatenate([train["z"], other["z"]]), axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(scores["norm@feats"][:40], np.linalg.norm(train["feats"], axis=1), rtol=1e-6)
    # queried as new data, a training point finds itself at distance 0 (the top score); as a
    # training row it is left out, so its nearest neighbour is another point
    assert np.allclose(scores["knn"][40:], 0.0, atol=1e-6)
    assert (scores["knn"][:5] < -1e-3).all()


def test_norm_correctness_spearman_per_role() -> None:
    from normprobe.analyses.ood import norm_correctness_spearman

    norms = np.arange(1.0, 21.0)
    samples = pd.DataFrame(
        {
            "role": ["id-test"] * 20 + ["id-train"] * 20,
            "norm_z": np.concatenate([norms, norms]),
            "knn_correct": pd.array([False] * 10 + [True] * 10 + [True] * 10 + [False] * 10, dtype="boolean"),
        }
    )
    table = norm_correctness_spearman(samples, "z", n_boot=50).set_index("role")
    assert table.loc["id-test", "rho"] > 0.8 and table.loc["id-train-loo", "rho"] < -0.8
    assert table.loc["id-test", "ci_low"] <= table.loc["id-test", "rho"] <= table.loc["id-test", "ci_high"]
    assert table.loc["id-test", "n"] == 20
