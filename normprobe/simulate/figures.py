"""Plotly figures of the simulations, one figure per subcommand, mirroring the paper's Figure 2."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def norms_figure(steps: pd.DataFrame, weight_decay: pd.DataFrame) -> go.Figure:
    """Left: steps vs initial norm with the quadratic c * r^2 fitted through the median steps / r^2
    (Figure 2a). Right: steps vs initial norm per weight decay (Table 1); diverged runs have no marker."""
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Steps to align vs embedding norm", "With weight decay lambda ||z||^2"),
    )
    figure.add_trace(
        go.Scatter(x=steps["initial_norm"], y=steps["steps"], mode="lines+markers", name="measured"),
        row=1,
        col=1,
    )
    constant = steps["steps_per_norm_squared"].median()
    figure.add_trace(
        go.Scatter(
            x=steps["initial_norm"],
            y=constant * steps["initial_norm"] ** 2,
            mode="lines",
            line={"dash": "dash"},
            name=f"{constant:.1f} r^2",
        ),
        row=1,
        col=1,
    )
    for decay, runs in weight_decay.groupby("weight_decay"):
        label = f"lambda={decay:g}" + ("" if runs["converged"].all() else " (divergence)")
        figure.add_trace(
            go.Scatter(x=runs["initial_norm"], y=runs["steps"], mode="lines+markers", name=label),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="initial embedding norm r")
    figure.update_yaxes(title_text="steps until mean cosine similarity > 1 - tolerance")
    return figure


def angles_figure(steps: pd.DataFrame) -> go.Figure:
    """Steps vs mean initial angle between positives (Figure 2a's angle axis, Appendix C.2)."""
    figure = go.Figure(
        go.Scatter(x=steps["mean_initial_angle"], y=steps["steps"], mode="lines+markers", name="measured")
    )
    figure.update_layout(title="Steps to align vs mean initial angle between positives")
    figure.update_xaxes(title_text="mean initial angle (radians)", range=[0, math.pi])
    figure.update_yaxes(title_text="steps until mean cosine similarity > 1 - tolerance")
    return figure


def bound_figure(checks: pd.DataFrame) -> go.Figure:
    """Measured one-step change / bound vs angle, per learning rate: above the line y = 1 the bound fails."""
    figure = go.Figure()
    for learning_rate, rows in checks.groupby("learning_rate"):
        figure.add_trace(
            go.Scatter(
                x=rows["angle"],
                y=rows["measured_change"] / rows["bound"],
                mode="markers",
                name=f"gamma={learning_rate:g}",
                customdata=rows[["norm", "measured_change", "bound"]],
                hovertemplate="phi=%{x:.3f}<br>rho=%{customdata[0]}<br>change=%{customdata[1]:.3g}<br>bound=%{customdata[2]:.3g}",
            )
        )
    figure.add_hline(y=1.0, line_dash="dash", annotation_text="bound 2 gamma sin^2(phi) / rho^2")
    figure.add_vline(x=math.pi / 2, line_dash="dot", annotation_text="pi/2")
    figure.update_layout(
        title="Theorem 3.4: measured change of cosine similarity after one step, relative to the bound"
    )
    figure.update_xaxes(title_text="angle phi between the pair (radians)")
    figure.update_yaxes(title_text="measured change / bound")
    return figure


def latent_classes_figure(samples: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure:
    """Left: norm vs nearest-neighbour distance of the first repeat's balanced run (Figure 2b).
    Right: mean norm per class over epochs under imbalance, averaged over repeats (Figure 2c)."""
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "Norm vs nearest-neighbour distance (balanced)",
            "Mean norm per class over training (imbalanced)",
        ),
    )
    first = samples[samples["repeat"] == samples["repeat"].min()]
    figure.add_trace(
        go.Scatter(
            x=first["nearest_neighbour_distance"],
            y=first["norm"],
            mode="markers",
            marker={"color": first["class"], "size": 4, "opacity": 0.6},
            name="embeddings",
        ),
        row=1,
        col=1,
    )
    imbalanced = (
        epochs[epochs["setting"] == "imbalanced"]
        .groupby(["class", "epoch"], as_index=False)
        .agg(mean_norm=("mean_norm", "mean"), probability=("probability", "mean"))
    )
    for label, rows in imbalanced.groupby("class"):
        figure.add_trace(
            go.Scatter(
                x=rows["epoch"],
                y=rows["mean_norm"],
                mode="lines",
                name=f"class {label} (p={rows['probability'].iloc[0]:.3f})",
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="cosine distance to nearest neighbour", type="log", row=1, col=1)
    figure.update_yaxes(title_text="embedding norm", row=1, col=1)
    figure.update_xaxes(title_text="epoch", row=1, col=2)
    figure.update_yaxes(title_text="mean embedding norm", row=1, col=2)
    return figure
