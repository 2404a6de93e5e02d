"""Turn a training checkpoint into a zoo entry: fp16 weights, measured numbers, a model card.

    python -m normprobe.zoo.publish RUN/last.pt --name simclr-r18w16 --command "normprobe train ..."

The card's numbers are measured here, not copied from the training log: kNN accuracy (k=200,
T=0.1, cosine, weighted vote) of the full CIFAR-10 test set against the full train set, for the
backbone and the projector; mean embedding norms per head on train and test; and how much the fp16
weights change the embeddings (relative L2) so the card can state the cost of the smaller file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normprobe import data
from normprobe.analyses.accuracy import knn_accuracy_and_norms
from normprobe.cache import Cache
from normprobe.checkpoints import load_encoder
from normprobe.checkpoints.fileio import atomic_torch_save, read_torch_file
from normprobe.data.hashing import file_sha256
from normprobe.extraction import extract
from normprobe.zoo import ZOO_ROOT

KNN_K, KNN_T = 200, 0.1
SIZE_LIMIT_BYTES = 25 * 2**20


def fp16_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without resume state or target copies, floating weights stored as fp16."""
    slim = {k: v for k, v in payload.items() if k not in ("resume", "target_state_dict")}
    slim["state_dict"] = {
        k: v.half() if torch.is_floating_point(v) else v for k, v in payload["state_dict"].items()
    }
    return slim


def measure(checkpoint: Path, data_root: str | None, cache: Cache) -> dict[str, Any]:
    """kNN accuracy and mean norms per head on the full CIFAR-10 mirror, and the test embeddings."""
    loaded = load_encoder(checkpoint)
    train, test = data.load("cifar10", "train", data_root), data.load("cifar10", "test", data_root)
    emb_train = extract(loaded, train, cache=cache).heads
    emb_test = extract(loaded, test, cache=cache).heads
    summary = knn_accuracy_and_norms(
        emb_train, train.labels, emb_test, test.labels, k=KNN_K, temperature=KNN_T
    )
    result: dict[str, Any] = {
        "knn_accuracy": {h: s["knn"] for h, s in summary.items()},
        "mean_norms": {h: s["norm_train"] for h, s in summary.items()},
        "mean_norms_test": {h: s["norm_test"] for h, s in summary.items()},
    }
    result["embeddings_test"] = {h: np.asarray(v) for h, v in emb_test.items()}
    return result


def test_embeddings(checkpoint: Path, data_root: str | None, cache: Cache) -> dict[str, np.ndarray]:
    loaded = load_encoder(checkpoint)
    return {
        h: np.asarray(v)
        for h, v in extract(loaded, data.load("cifar10", "test", data_root), cache=cache).heads.items()
    }


def init_text(cut: float | None) -> str:
    """c = 1 divides by one: that is the default initialisation, not a cut."""
    return f"cut-initialisation c={cut:g}" if cut not in (None, 0, 1) else "default initialisation"


def _backbone_text(spec: dict[str, Any]) -> str:
    name = spec.get("name", "?").replace("resnet", "ResNet-")
    return f"{name}, {spec.get('stem', '?')} stem, width {spec.get('width', 64)}"


def render_card(card: dict[str, Any]) -> str:
    lines = [
        f"# {card['name']}",
        "",
        f"{card['method']} encoder trained with normprobe's `training` module on {_train_set_text(card)} "
        f"for {card['epochs']} epoch{'s' if card['epochs'] != 1 else ''}; {card['init']}"
        + (f", GradScale p={card['gradscale']:g}" if card.get("gradscale") else "")
        + ". kNN accuracy below uses the full CIFAR-10 train set as the bank, for every zoo model alike.",
        "",
        "| | feats (backbone) | z (projector) |" + (" p (predictor) |" if "p" in card["mean_norms"] else ""),
        "|---|---|---|" + ("---|" if "p" in card["mean_norms"] else ""),
    ]
    heads = list(card["mean_norms"])
    lines.append(
        "| kNN accuracy, CIFAR-10 test (k=200, T=0.1) | "
        + " | ".join(f"{100 * card['knn_accuracy'][h]:.2f}%" for h in heads)
        + " |"
    )
    lines.append("| mean norm, train | " + " | ".join(f"{card['mean_norms'][h]:.3f}" for h in heads) + " |")
    lines.append(
        "| mean norm, test | " + " | ".join(f"{card['mean_norms_test'][h]:.3f}" for h in heads) + " |"
    )
    lines += [
        "",
        f"- Backbone: {card['backbone']}; preprocessing: {card['preprocess']}",
        f"- Weights stored as fp16: embeddings change by {card['fp16_relative_l2']['feats']:.2e} (relative L2, backbone) and "
        f"{card['fp16_relative_l2'].get('z', float('nan')):.2e} (projector) against the fp32 training checkpoint.",
        f"- File: `{card['name']}.pt`, {card['size_bytes']:,} bytes, sha256 `{card['sha256']}`",
        "",
        "## Training command",
        "",
        "```bash",
        card["command"],
        "```",
        "",
        "## Per-epoch history (from the training log)",
        "",
        "| epoch | " + " | ".join(card["history_columns"]) + " |",
        "|---|" + "---|" * len(card["history_columns"]),
    ]
    for row in card["history"]:
        lines.append(
            f"| {row['epoch']} | " + " | ".join(_cell(row.get(c)) for c in card["history_columns"]) + " |"
        )
    analysis = card.get("analysis")
    if analysis:  # measured after publishing with `normprobe analyze` on the full data
        lines += [
            "",
            "## The paper's effects, measured with `normprobe analyze`",
            "",
            "```bash",
            analysis["command"],
            "```",
            "",
        ]
        lines += analysis["findings"]
    lines += [
        "",
        "## Resolved training config",
        "",
        "```json",
        json.dumps(card["config"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _train_set_text(card: dict[str, Any]) -> str:
    if card.get("config", {}).get("dataset", {}).get("imbalance"):
        return (
            f"the paper's class-imbalanced CIFAR-10 subset ({card['train_images']:,} images, "
            "n_i = 5000 / 1.5^i for class i)"
        )
    return f"the CIFAR-10 mirror ({card['train_images']:,} images)"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def publish(
    source: Path, name: str, command: str, data_root: str | None, dest: Path = ZOO_ROOT
) -> dict[str, Any]:
    payload = read_torch_file(source)
    training = payload.get("training", {})
    config = training.get("config", {})
    target = dest / f"{name}.pt"
    atomic_torch_save(fp16_payload(payload), target)
    if target.stat().st_size > SIZE_LIMIT_BYTES:
        raise SystemExit(f"{target} is {target.stat().st_size:,} bytes, over the 25 MB zoo limit")
    cache = Cache()
    half = measure(target, data_root, cache)
    full = test_embeddings(source, data_root, cache)
    rel_l2 = {
        h: float(np.linalg.norm(half["embeddings_test"][h] - full[h]) / np.linalg.norm(full[h])) for h in full
    }
    history = training.get("history", [])
    columns = [
        c
        for c in (
            "train_loss",
            "train_norm_z",
            "train_norm_p",
            "lr",
            "knn_feats",
            "knn_z",
            "norm_train_feats",
            "norm_train_z",
            "norm_train_p",
            "norm_test_z",
        )
        if any(c in r for r in history)
    ]
    card = {
        "name": name,
        "method": payload["method"],
        "backbone": _backbone_text(payload["encoder"]["backbone"]),
        "cut": config.get("cut"),
        "gradscale": config.get("gradscale"),
        "weight_decay": config.get("optimizer", {}).get("weight_decay", config.get("weight_decay")),
        "init": init_text(config.get("cut")),
        "epochs": training.get("epoch"),
        "train_images": training.get("train_images", 50000),
        "preprocess": load_encoder(target).preprocess.describe(),
        "knn_accuracy": half["knn_accuracy"],
        "mean_norms": half["mean_norms"],
        "mean_norms_test": half["mean_norms_test"],
        "fp16_relative_l2": rel_l2,
        "command": command,
        "config": config,
        "history_columns": columns,
        "history": history,
        "size_bytes": target.stat().st_size,
        "sha256": file_sha256(target),
        "source_sha256": file_sha256(source),
    }
    (dest / f"{name}.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    (dest / f"{name}.md").write_text(render_card(card))
    return card


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (Contract 1)")
    parser.add_argument("--name", required=True, help="zoo name, e.g. simclr-r18w16")
    parser.add_argument("--command", required=True, help="the exact training command, for the card")
    parser.add_argument(
        "--data-root", default=None, help="full data root with the CIFAR-10 mirror (default: $NORMPROBE_DATA)"
    )
    args = parser.parse_args()
    card = publish(args.checkpoint, args.name, args.command, args.data_root)
    print(
        json.dumps(
            {k: card[k] for k in ("name", "epochs", "knn_accuracy", "mean_norms", "size_bytes", "sha256")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
