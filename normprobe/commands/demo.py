"""`normprobe demo`: the whole analysis on a shipped, really-trained encoder, offline, in minutes.

Without a data root it analyses the image sample bundled in the package (real CIFAR-10,
CIFAR-100, Tiny-ImageNet and MNIST images; see :mod:`normprobe.data.sample`). With a data root
(``--data-root`` or ``$NORMPROBE_DATA`` holding the CIFAR-10 mirror or torchvision's files) it
uses the full datasets instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from normprobe.data.manifest import load_manifest
from normprobe.data.root import DATA_ROOT_ENV
from normprobe.data.sample import SAMPLE_ROOT
from normprobe.zoo import DEFAULT_MODEL, zoo_entry

DEMO_OOD = ("cifar100", "tinyimagenet", "mnist")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="analyse the default zoo encoder on real images, offline (start here)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default="normprobe-demo",
        help="results folder to write (default: %(default)s; a previous demo there is replaced)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="zoo model to analyse (default: %(default)s; see `normprobe zoo list`)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"use the full datasets in this folder instead of the bundled sample (default: ${DATA_ROOT_ENV} if it holds CIFAR-10)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present, else CPU)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    parser.set_defaults(func=run)


def _has_cifar10(root: Path) -> bool:
    manifest = load_manifest("cifar10")
    return (root / manifest.mirror["train"]["file"]).is_file() or (
        root / manifest.upstream["folder"]
    ).is_dir()


def choose_data_root(explicit: str | None) -> tuple[Path, str]:
    """The data root the demo uses and a sentence saying why."""
    if explicit:
        return Path(explicit), "the full datasets in --data-root"
    env = os.environ.get(DATA_ROOT_ENV)
    if env and _has_cifar10(Path(env)):
        return Path(env), f"the full datasets in ${DATA_ROOT_ENV}"
    return (
        SAMPLE_ROOT,
        "the real image sample bundled with normprobe (5,000 images; set --data-root for the full datasets)",
    )


def run(args: argparse.Namespace) -> int:
    # The analysis stack (torch, pandas, scipy) is imported here, so `normprobe --help` stays fast.
    from normprobe.analyses.settings import AnalysisSettings
    from normprobe.commands.analyze import format_summary
    from normprobe.pipeline import run_analysis

    entry = zoo_entry(args.model)
    root, why = choose_data_root(args.data_root)
    if not args.quiet:
        print(
            f"normprobe demo: {entry.name} ({entry.card.get('method', '?')}, {entry.card.get('backbone', '?')}) on {why}",
            file=sys.stderr,
        )
    settings = AnalysisSettings(id_dataset="cifar10", ood=DEMO_OOD, data_root=str(root), device=args.device)
    results = run_analysis(
        entry.checkpoint,
        args.out,
        settings,
        force=True,
        command=["normprobe", *sys.argv[1:]],
        progress=not args.quiet,
    )
    print(format_summary(results))
    out = Path(args.out).resolve()
    print(f"\nOpen the report:   {out / 'report.html'}")
    print(f"Explore the results: normprobe explore {out}")
    return 0
