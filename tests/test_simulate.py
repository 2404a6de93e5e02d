"""The paper's simulations (Section 4, Appendix B): the trends they must show, on grids small enough for CI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from normprobe.errors import NormprobeError
from normprobe.simulate.angles import AnglesConfig, steps_versus_angle
from normprobe.simulate.bound import BoundConfig, check_bound, summarise_bound
from normprobe.simulate.descent import cosine_ascent_direction
from normprobe.simulate.latent_classes import (
    LatentClassesConfig,
    class_norm_summary,
    density_summary,
    simulate_latent_classes,
    supervised_infonce,
)
from normprobe.simulate.norms import (
    NormsConfig,
    steps_versus_norm,
    steps_versus_weight_decay,
    weight_decay_table,
)
from normprobe.simulate.sphere import mean_angle, random_positive_pairs, steer_partners


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: threads only add overhead, and the CI machine is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_closed_form_gradient_is_autograds():
    generator = torch.Generator().manual_seed(1)
    first, second = (3.0 * points for points in random_positive_pairs(64, 20, generator))
    decay = torch.tensor(0.3, dtype=torch.float64)
    first_gradient, second_gradient, cosine = cosine_ascent_direction(first, second, decay)

    first_leaf, second_leaf = first.clone().requires_grad_(True), second.clone().requires_grad_(True)
    objective = torch.nn.functional.cosine_similarity(first_leaf, second_leaf, dim=-1) - decay * (
        first_leaf.pow(2).sum(-1) + second_leaf.pow(2).sum(-1)
    )
    expected_first, expected_second = torch.autograd.grad(objective.sum(), (first_leaf, second_leaf))

    torch.testing.assert_close(first_gradient, expected_first)
    torch.testing.assert_close(second_gradient, expected_second)
    torch.testing.assert_close(
        cosine.squeeze(-1), torch.nn.functional.cosine_similarity(first, second, dim=-1)
    )


def test_steering_sets_the_mean_angle():
    anchors, partners = random_positive_pairs(500, 20, torch.Generator().manual_seed(0))
    angles = [mean_angle(anchors, steer_partners(anchors, partners, t)) for t in (-0.9, -0.5, 0.0, 0.5, 0.9)]
    assert angles == sorted(angles)
    assert angles[0] < 0.2 and abs(angles[2] - math.pi / 2) < 0.1 and angles[-1] > math.pi - 0.2


def test_steps_grow_quadratically_with_the_norm():
    steps = steps_versus_norm(NormsConfig(pairs=100, norms=(0.5, 1.0, 2.0, 4.0)))
    assert steps["converged"].all()
    assert steps["steps"].is_monotonic_increasing
    # Theorem 3.4: steps ~ c r^2, so steps / r^2 is flat across an eightfold range of norms.
    per_norm_squared = steps["steps_per_norm_squared"]
    assert per_norm_squared.max() / per_norm_squared.min() < 1.1
    # Gradient ascent on the cosine similarity only grows the norm (Corollary 3.3).
    assert (steps["final_mean_norm"] >= steps["initial_norm"]).all()


def test_moderate_weight_decay_speeds_up_and_too_much_collapses():
    config = NormsConfig(pairs=100, initial_norms=(1.0, 4.0), weight_decays=(0.0, 0.01, 0.1, 10.0))
    runs = steps_versus_weight_decay(config).set_index(["initial_norm", "weight_decay"])
    for norm in config.initial_norms:
        none, light, moderate = (runs.loc[(norm, decay), "steps"] for decay in (0.0, 0.01, 0.1))
        assert moderate < light < none  # stronger (but not too strong) decay converges faster
        collapsed = runs.loc[(norm, 10.0)]
        assert not collapsed["converged"]
        assert collapsed["final_mean_norm"] < 0.2 * norm  # shrunk towards the origin
        assert collapsed["final_mean_cosine"] < 0.9
    # Table 1: the norm still slows convergence under moderate decay.
    assert runs.loc[(4.0, 0.1), "steps"] > runs.loc[(1.0, 0.1), "steps"]
    table = weight_decay_table(runs.reset_index())
    assert list(table["lambda=10"]) == ["divergence", "divergence"]


def test_steps_grow_with_the_angle_but_far_less_than_with_the_norm():
    config = AnglesConfig(pairs=100, interpolation_count=9, max_interpolation=0.96)
    steps = steps_versus_angle(config)
    assert steps["mean_initial_angle"].is_monotonic_increasing
    assert steps["steps"].is_monotonic_increasing
    at_right_angle = steps.loc[(steps["mean_initial_angle"] - math.pi / 2).abs().idxmin(), "steps"]
    near_antipodal = steps["steps"].iloc[-1]
    # The opposite-halves effect: slower near pi, but by a bounded factor, unlike the norm's r^2.
    assert 1.3 * at_right_angle < near_antipodal < 4 * at_right_angle


def test_bound_holds_wherever_the_derivation_says_and_only_there():
    checks = check_bound(BoundConfig())
    assert np.allclose(checks["measured_change"], checks["exact_change"], atol=1e-12)
    acute = checks["angle"] <= math.pi / 2
    assert checks.loc[acute, "bound_holds"].all()  # for every step size, overshoot included
    assert (checks["bound_holds"] == checks["should_hold"]).all()
    # It does fail at obtuse angles with small steps (tan alpha < |cot phi|): the second-order term
    # changes sign there.
    obtuse_small = (
        (checks["angle"] >= 0.6 * math.pi) & (checks["learning_rate"] <= 1e-2) & (checks["norm"] >= 1)
    )
    assert obtuse_small.sum() > 20 and not checks.loc[obtuse_small, "bound_holds"].any()
    # To first order the bound is attained: small steps at acute angles sit just below it.
    small = acute & (checks["learning_rate"] == 1e-3) & (checks["norm"] >= 1)
    assert ((checks.loc[small, "measured_change"] / checks.loc[small, "bound"]).between(0.99, 1.0)).all()
    summary = summarise_bound(checks).set_index(["angle_regime", "step_regime"])
    assert summary["derivation_agrees"].min() == 1.0
    assert summary.loc[("acute (phi <= pi/2)", "overshoot (2 alpha > phi)"), "bound_holds"] == 1.0


def test_bad_parameters_are_user_errors():
    with pytest.raises(NormprobeError):
        NormsConfig(pairs=0)
    with pytest.raises(NormprobeError):
        AnglesConfig(max_interpolation=1.0)
    with pytest.raises(NormprobeError):
        BoundConfig(learning_rates=(0.1, -1.0))
    with pytest.raises(NormprobeError):
        LatentClassesConfig(imbalance_ratio=0.0)


@pytest.fixture(scope="module")
def latent_classes():
    config = LatentClassesConfig(repeats=8, epochs=6, samples_per_class=500)
    return config, simulate_latent_classes(config)


def test_denser_embeddings_have_larger_norms(latent_classes):
    _, result = latent_classes
    density = density_summary(result.samples)
    assert density["spearman_norm_vs_distance"].iloc[0] < -0.5
    assert density["mean_norm"].is_monotonic_decreasing  # densest quintile first


def test_frequent_classes_end_with_larger_norms(latent_classes):
    config, result = latent_classes
    classes = class_norm_summary(result.epochs).sort_values("probability")
    assert classes["probability"].is_monotonic_increasing and classes["probability"].iloc[-1] > 0.5
    final = classes["final_norm_imbalanced"].to_numpy()
    ratio = classes["norm_ratio"].to_numpy()
    assert final.argmin() == 0  # the rarest class ends with the smallest norm
    assert final[2:].mean() > final[:2].mean() * 1.1
    assert classes["final_norm_imbalanced"].corr(classes["probability"], method="spearman") > 0
    # Against the balanced run on the same geometry and initial weights: rare shrinks, frequent grows.
    assert ratio[0] < 0.9 and ratio[2:].mean() > ratio[:2].mean()
    # Training grows every class's norm from its initialisation (Corollary 3.3).
    start = result.epochs[result.epochs["epoch"] == 0]["mean_norm"].max()
    assert final.min() > 2 * start


def test_stacked_loss_equals_separate_losses():
    generator = torch.Generator().manual_seed(0)
    anchors, positives = (
        torch.randn(3, 16, 5, generator=generator),
        torch.randn(3, 16, 5, generator=generator),
    )
    stacked = supervised_infonce(anchors, positives, 0.5)
    separate = torch.stack(
        [supervised_infonce(anchors[m : m + 1], positives[m : m + 1], 0.5)[0] for m in range(3)]
    )
    torch.testing.assert_close(stacked, separate)


def _cli(argv: list[str]) -> int:
    from normprobe.commands import simulate

    parser = argparse.ArgumentParser(prog="normprobe")
    simulate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_tables_figure_and_config(tmp_path, capsys):
    assert (
        _cli(
            [
                "simulate",
                "bound",
                "--norms",
                "1",
                "2",
                "--angle-count",
                "8",
                "--seed",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "acute (phi <= pi/2)" in printed and "bound_holds" in printed
    names = {path.name for path in tmp_path.iterdir()}
    assert names == {"bound_checks.csv", "bound_summary.csv", "bound.html", "bound_config.json"}
    record = json.loads((tmp_path / "bound_config.json").read_text())
    assert record["command"] == "normprobe simulate bound"
    assert (
        record["config"]["norms"] == [1.0, 2.0]
        and record["config"]["seed"] == 3
        and record["config"]["angle_count"] == 8
    )
    page = (tmp_path / "bound.html").read_text()
    assert (
        '<script src="https://cdn.plot.ly' not in page and len(page) > 1_000_000
    )  # plotly.js inlined: opens offline


def test_cli_norms_prints_table_one(capsys):
    argv = [
        "simulate",
        "norms",
        "--pairs",
        "50",
        "--norms",
        "1",
        "2",
        "--initial-norms",
        "1",
        "--weight-decays",
        "0",
        "10",
    ]
    assert _cli(argv) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "divergence" in printed


def test_cli_user_mistakes_exit_2(capsys):
    from normprobe.cli import main

    assert main(["simulate", "angles", "--max-interpolation", "1.5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("normprobe: error: max_interpolation")
