"""`normprobe zoo list | show NAME`: the trained checkpoints shipped with normprobe."""

from __future__ import annotations

import argparse

from normprobe.zoo import DEFAULT_MODEL, zoo_entries, zoo_entry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="list the trained checkpoints shipped with normprobe",
        description="Checkpoints trained with normprobe's own `training` module on the CIFAR-10 mirror. "
        "Any CHECKPOINT argument (analyze, embed, rank) may be one of these names.",
    )
    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION", required=True)
    actions.add_parser("list", help="one line per model: method, backbone, epochs, kNN accuracy, mean norms")
    show = actions.add_parser("show", help="print a model's card")
    show.add_argument("name", help="zoo model name")
    parser.set_defaults(func=run)


def _row(name: str, card: dict) -> list[str]:
    norms = card.get("mean_norms", {})
    return [
        name + (" (default)" if name == DEFAULT_MODEL else ""),
        card.get("method", "?"),
        card.get("backbone", "?"),
        card.get("init", "?"),
        str(card.get("epochs", "?")),
        f"{100 * card['knn_accuracy']['feats']:.1f}%" if "knn_accuracy" in card else "?",
        f"{100 * card['knn_accuracy']['z']:.1f}%" if "knn_accuracy" in card else "?",
        " ".join(f"{h}={v:.2f}" for h, v in norms.items()),
        card.get("sha256", "")[:12],
    ]


def run(args: argparse.Namespace) -> int:
    if args.zoo_action == "show":
        print(zoo_entry(args.name).card_path.read_text())
        return 0
    header = [
        "name",
        "method",
        "backbone",
        "init",
        "epochs",
        "kNN feats",
        "kNN z",
        "mean norms (train)",
        "sha256",
    ]
    rows = [header] + [_row(e.name, e.card) for e in zoo_entries()]
    if len(rows) == 1:
        print("no zoo models installed")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
