"""Section 4.2 of the paper: what supervised InfoNCE training does to the embedding norms.

Appendix B.2: "We train the InfoNCE loss via a 2-layer feedforward neural network with the ReLU
activation function in the hidden layer. The network's output dimensionality is [the latent
dimensionality] so that, after normalization, it can reconstruct the original latent classes. We train
the network using the supervised InfoNCE loss with a batch size of 128. Each data point's positive pair
is simply another data point from the same latent class."

Two findings are reproduced. Figure 2(b): "embeddings in dense regions of the embedding space tend to
have higher norm", with the distance to the nearest neighbour under the cosine metric as the proxy for
inverse density. Figure 2(c): with class probabilities ~1/16, 1/8, 1/4, 1/2, "over the course of
training, the mean embedding norms for frequent classes grow to higher values than those for sparse
classes". One run's class norms also depend on where its random centers and map happen to put each
class, so the simulation repeats everything ``repeats`` times and trains a balanced and an imbalanced
network on each repeat's geometry from the same initial weights: the imbalance is then the only
difference between the two runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from normprobe.simulate.configs import LatentClassesConfig
from normprobe.simulate.latent_data import LatentGeometry, class_probabilities, sample_dataset
from normprobe.simulate.stacked_mlp import StackedMLP


@dataclass(frozen=True)
class LatentClassesResult:
    """``samples``: one row per embedding of each balanced run (Figure 2b); ``epochs``: the mean norm per
    class after every epoch (epoch 0 is the initialisation) of every balanced and imbalanced run (Figure 2c)."""

    samples: pd.DataFrame
    epochs: pd.DataFrame


def supervised_infonce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over the 2B embeddings of a batch, for each of M models: (M, B, D) twice -> (M,) losses.

    Row i of ``anchors`` and of ``positives`` form the positive pair; every other embedding of the
    model's batch is a negative (the SimCLR / NT-Xent form).
    """
    embeddings = nn.functional.normalize(torch.cat([anchors, positives], dim=1), dim=-1)
    logits = embeddings @ embeddings.transpose(1, 2) / temperature
    models, size = anchors.shape[0], anchors.shape[1]
    logits = logits.masked_fill(torch.eye(2 * size, dtype=torch.bool, device=logits.device), float("-inf"))
    partner = torch.cat([torch.arange(size, 2 * size), torch.arange(size)]).to(logits.device)
    losses = nn.functional.cross_entropy(
        logits.reshape(models * 2 * size, 2 * size), partner.repeat(models), reduction="none"
    )
    return losses.reshape(models, 2 * size).mean(dim=1)


def _class_mean_norms(network: StackedMLP, inputs: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
    """(models, classes) mean embedding norm of each class, for every model."""
    with torch.no_grad():
        norms = network(inputs).norm(dim=-1)
    return (norms[:, :, None] * one_hot).sum(dim=1) / one_hot.sum(dim=1)


def train_encoders(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    network: StackedMLP,
    config: LatentClassesConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Train M networks at once, network m with supervised InfoNCE on ``inputs[m]`` (M, N, input_dim)
    with ``labels[m]`` (M, N); returns the mean norm per class after every epoch, (epochs + 1, M, classes).

    Every model draws its own batch order and positives; the draws come from ``generator`` on the CPU,
    so a seed gives the same run on any device.
    """
    device = inputs.device
    models, size = labels.shape
    optimizer = torch.optim.SGD(network.parameters(), lr=config.learning_rate)
    labels_cpu = labels.cpu()
    # Each model's members of every class side by side, so positives are drawn with gathers.
    by_class = torch.argsort(labels_cpu, dim=1, stable=True)
    counts = nn.functional.one_hot(labels_cpu, config.classes).sum(dim=1)
    starts = torch.cumsum(counts, dim=1) - counts
    one_hot = nn.functional.one_hot(labels, config.classes).to(inputs.dtype)
    model_index = torch.arange(models)[:, None]
    history = [_class_mean_norms(network, inputs, one_hot)]
    for _ in range(config.epochs):
        order = torch.argsort(torch.rand(models, size, generator=generator), dim=1)
        for batch in order.split(config.batch_size, dim=1):
            batch_labels = labels_cpu.gather(1, batch)
            offsets = (torch.rand(batch.shape, generator=generator) * counts.gather(1, batch_labels)).long()
            positives = by_class.gather(1, starts.gather(1, batch_labels) + offsets)
            chosen = torch.cat([batch, positives], dim=1)
            embeddings = network(inputs[model_index.to(device), chosen.to(device)])
            anchor_embeddings, positive_embeddings = embeddings.split(batch.shape[1], dim=1)
            loss = supervised_infonce(anchor_embeddings, positive_embeddings, config.temperature).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(_class_mean_norms(network, inputs, one_hot))
    return torch.stack(history).cpu()


def nearest_neighbour_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine distance from every embedding to its nearest other embedding: the paper's inverse density."""
    unit = nn.functional.normalize(embeddings, dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return 1.0 - similarity.max(dim=1).values


def simulate_latent_classes(
    config: LatentClassesConfig, device: torch.device | str = "cpu"
) -> LatentClassesResult:
    """Train a balanced and an imbalanced network on each of ``repeats`` random latent geometries, all at once."""
    size = config.classes * config.samples_per_class
    settings = {
        "balanced": class_probabilities(config.classes, 1.0),
        "imbalanced": class_probabilities(config.classes, config.imbalance_ratio),
    }
    generator = torch.Generator().manual_seed(config.seed)
    geometries = [
        LatentGeometry.draw(config.classes, config.latent_dim, config.input_dim, generator)
        for _ in range(config.repeats)
    ]
    # Model index = setting * repeats + repeat: the balanced networks first, then the imbalanced ones.
    datasets = [
        sample_dataset(geometry, probabilities, size, config.spread, generator)
        for probabilities in settings.values()
        for geometry in geometries
    ]
    inputs = torch.stack([dataset.inputs for dataset in datasets]).to(device)
    labels = torch.stack([dataset.labels for dataset in datasets]).to(device)
    network = StackedMLP(len(datasets), config.input_dim, config.hidden_dim, config.latent_dim, generator)
    network.share_initialisation(len(settings))  # both settings of a repeat start from the same weights
    history = train_encoders(inputs, labels, network.to(device), config, generator)

    # history is (epoch, model, class) with model = setting * repeats + repeat, hence this product order.
    index = pd.MultiIndex.from_product(
        [range(config.epochs + 1), list(settings), range(config.repeats), range(config.classes)],
        names=["epoch", "setting", "repeat", "class"],
    )
    epochs = pd.DataFrame({"mean_norm": history.reshape(-1).double().numpy()}, index=index).reset_index()
    probabilities = pd.DataFrame(
        [
            (setting, label, float(p))
            for setting, values in settings.items()
            for label, p in enumerate(values)
        ],
        columns=["setting", "class", "probability"],
    )
    epochs = epochs.merge(probabilities, on=["setting", "class"])[
        ["repeat", "setting", "epoch", "class", "probability", "mean_norm"]
    ]
    with torch.no_grad():
        balanced = network(inputs)[: config.repeats]
    samples = pd.concat(
        [
            pd.DataFrame(
                {
                    "repeat": repeat,
                    "class": labels[repeat].cpu().numpy(),
                    "norm": balanced[repeat].norm(dim=-1).cpu().numpy(),
                    "nearest_neighbour_distance": nearest_neighbour_distances(balanced[repeat]).cpu().numpy(),
                }
            )
            for repeat in range(config.repeats)
        ],
        ignore_index=True,
    )
    return LatentClassesResult(samples=samples, epochs=epochs)


def density_summary(samples: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    """Figure 2(b) as a table: mean norm per nearest-neighbour-distance quantile, densest first.

    Quantiles are taken within each repeat and then averaged; ``spearman`` is the rank correlation of
    norm and nearest-neighbour distance over each repeat's samples, averaged (negative: denser, larger).
    """
    ranked = samples.assign(
        density_bin=samples.groupby("repeat")["nearest_neighbour_distance"].transform(
            lambda distance: pd.qcut(distance, bins, labels=False)
        )
        + 1
    )
    table = (
        ranked.groupby("density_bin")
        .agg(
            mean_nearest_neighbour_distance=("nearest_neighbour_distance", "mean"), mean_norm=("norm", "mean")
        )
        .reset_index()
    )
    table["spearman_norm_vs_distance"] = (
        samples.groupby("repeat")
        .apply(
            lambda run: run["norm"].corr(run["nearest_neighbour_distance"], method="spearman"),
            include_groups=False,
        )
        .mean()
    )
    return table


def class_norm_summary(epochs: pd.DataFrame) -> pd.DataFrame:
    """Figure 2(c)'s end point: final mean norm per class, imbalanced vs balanced, averaged over repeats.

    ``norm_ratio`` divides each class's final norm under imbalance by the same class's final norm in the
    balanced run on the same geometry, so it isolates the effect of how often the class is seen.
    """
    final = epochs[epochs["epoch"] == epochs["epoch"].max()]
    wide = final.pivot_table(index=["repeat", "class"], columns="setting", values="mean_norm").reset_index()
    probability = final[final["setting"] == "imbalanced"].set_index(["repeat", "class"])["probability"]
    wide = wide.join(probability, on=["repeat", "class"]).assign(
        norm_ratio=lambda table: table["imbalanced"] / table["balanced"]
    )
    table = wide.groupby("class").agg(
        probability=("probability", "mean"),
        final_norm_imbalanced=("imbalanced", "mean"),
        final_norm_balanced=("balanced", "mean"),
        norm_ratio=("norm_ratio", "mean"),
    )
    return table.reset_index()


def class_norm_trajectory(epochs: pd.DataFrame) -> pd.DataFrame:
    """Figure 2(c) as a table: mean norm per class (columns, with their probability) after every epoch of
    the imbalanced runs, averaged over repeats."""
    imbalanced = epochs[epochs["setting"] == "imbalanced"]
    table = imbalanced.pivot_table(index="epoch", columns="class", values="mean_norm", aggfunc="mean")
    probabilities = imbalanced.groupby("class")["probability"].mean()
    table.columns = [f"class {label} (p={probabilities[label]:.3f})" for label in table.columns]
    return table.reset_index()
