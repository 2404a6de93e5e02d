"""`normprobe analyze CKPT --ood SET ... --out DIR`: the main analysis of a checkpoint (or of embedding files)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from normprobe.analyses.settings import (
    DEFAULT_ID_DATASET,
    DEFAULT_SCORERS,
    KNN_BACKENDS,
    AnalysisSettings,
    comma_list,
    split_ood_specs,
)
from normprobe.commands.options import add_trust_code

if TYPE_CHECKING:
    import pandas as pd

    from normprobe.results import Results

DESCRIPTION = """\
Embed the in-distribution (ID) train and test splits and every OOD set with the checkpoint (through the
embedding cache), then: norm summaries per split (paper Fig. 3), norm buckets vs kNN accuracy (Fig. 4 left;
ID-train by leave-one-out), OOD detection metrics of every scorer (ID-test is the positive class; larger
score = more familiar), per-class exemplars and, where label sets exist, human-label curves (Fig. 4 middle
and right). Writes DIR/run.json, DIR/samples.parquet, DIR/tables/*.csv and DIR/report.html, and prints
a summary table.

Without CKPT, the sets are embeddings you already have: --id-train, --id-test and each --ood name an
.npz or .parquet file written by `normprobe embed`, or a plain .npz with an `embeddings` array (N x D
float) and `labels` (N integers, -1 = unknown; required for the ID files), optionally `index` (the
samples' original positions) and `classes`. Every analysis that needs no images runs; exemplars are
listed by index. Human labels need --id naming the dataset the ID files hold (in its original order).
"""

EXAMPLES = """\
examples:
  normprobe analyze simclr.pt --ood cifar100
  normprobe analyze simclr.pt --ood cifar100,tinyimagenet --ood mnist --head z --out results/simclr
  normprobe analyze simclr.pt --ood cifar100 --max-train 2000 --max-per-split 500 --out quick/   # a quick look
  normprobe analyze simclr.pt --ood my_images/ --ood extra.npz --out results/mine               # folders, .npz
  normprobe analyze --id-train train.npz --id-test test.npz --ood c100.npz --ood mnist.parquet --out results/emb
  normprobe analyze --id-train train.npz --id-test test.npz --ood c100.npz --id cifar10   # + CIFAR-10N/10H labels
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    d = AnalysisSettings()
    parser = subparsers.add_parser(
        "analyze",
        help="norms, norm buckets vs kNN accuracy, OOD metrics, exemplars and a report for one checkpoint",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        nargs="?",
        help="checkpoint file (any supported format) or zoo model name; omit it to analyse embedding files",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--id",
        dest="id_dataset",
        default=None,
        metavar="NAME",
        help=f"in-distribution dataset (a manifest with train and test splits; default: {DEFAULT_ID_DATASET}); "
        "with --id-train/--id-test only the dataset whose human label sets apply (default: none)",
    )
    data.add_argument(
        "--id-train",
        default=None,
        metavar="SET",
        help="the ID-train set instead of --id's train split: an embeddings file (.npz or .parquet) without "
        "CKPT, an image folder, .npz or dataset:split with it",
    )
    data.add_argument(
        "--id-test",
        default=None,
        metavar="SET",
        help="the ID-test set instead of --id's test split (as --id-train)",
    )
    data.add_argument(
        "--ood",
        action="append",
        metavar="SET",
        help="OOD set: a dataset name (cifar100, cifar100:train, tinyimagenet, mnist, ...), an image folder "
        "or an .npz file; without CKPT an embeddings file; repeat or give a comma list (default with CKPT: cifar100)",
    )
    data.add_argument(
        "--near",
        action="append",
        metavar="SET",
        help="count these OOD sets (--ood values or dataset names) as near-OOD in the group means "
        "(default: each manifest's ood_group: cifar100, tinyimagenet near; mnist, fashion-mnist far)",
    )
    data.add_argument(
        "--far",
        action="append",
        metavar="SET",
        help="count these OOD sets as far-OOD (default for folders and .npz files)",
    )
    data.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="data root (default: $NORMPROBE_DATA, else ~/.cache/normprobe/data)",
    )
    data.add_argument(
        "--max-train",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N ID-train samples (deterministic; recorded; default: all)",
    )
    data.add_argument(
        "--max-per-split",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N samples of ID-test and of each OOD set (default: all)",
    )
    data.add_argument(
        "--human",
        default=d.human,
        metavar="SETS",
        help="human label sets: auto (those describing the ID dataset that exist), none, or a comma list "
        "(cifar10n,cifar10h) (default: auto)",
    )
    model = parser.add_argument_group("model and embedding")
    model.add_argument(
        "--head",
        default=None,
        help="primary head for kNN, scorers and buckets (default: z when present, else feats)",
    )
    model.add_argument(
        "--heads",
        default=None,
        metavar="H1,H2",
        help="heads to embed, comma list (default: every head of the checkpoint)",
    )
    model.add_argument(
        "--arch",
        default=None,
        help="architecture for checkpoint formats that do not record it (e.g. resnet18)",
    )
    add_trust_code(model)
    model.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when available, else CPU)"
    )
    model.add_argument(
        "--precision", default=d.precision, help=f"embedding precision: fp32 or bf16 (default: {d.precision})"
    )
    model.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"embedding batch size (default: {d.batch_size})"
    )
    model.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="embedding cache (default: $NORMPROBE_CACHE, else ~/.cache/normprobe/embeddings)",
    )
    model.add_argument(
        "--no-cache", action="store_true", help="always run the encoder; neither read nor write the cache"
    )
    analysis = parser.add_argument_group("analysis")
    analysis.add_argument(
        "--k", type=int, default=d.k, help=f"neighbours of the weighted kNN classifier (default: {d.k})"
    )
    analysis.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help=f"kNN vote weight exp(sim / T) (default: {d.temperature})",
    )
    analysis.add_argument(
        "--ood-k",
        type=int,
        default=d.ood_k,
        help=f"k of the kNN OOD score (Sun et al. 2022; default: {d.ood_k})",
    )
    analysis.add_argument(
        "--buckets", type=int, default=d.buckets, help=f"number of norm buckets (default: {d.buckets})"
    )
    analysis.add_argument(
        "--bucket-scaling",
        choices=("max", "minmax", "quantile"),
        default=d.bucket_scaling,
        help="norm scaling before bucketing: max (paper: norm / max), minmax, or quantile "
        f"(equal-count buckets) (default: {d.bucket_scaling})",
    )
    analysis.add_argument(
        "--min-bucket-count",
        type=int,
        default=d.min_bucket_count,
        help=f"hide kNN-accuracy buckets with fewer samples (default: {d.min_bucket_count})",
    )
    analysis.add_argument(
        "--human-min-bucket-count",
        type=int,
        default=d.human_min_bucket_count,
        help="hide human-label buckets with fewer samples (paper Fig. 4: 50; "
        f"default: {d.human_min_bucket_count})",
    )
    analysis.add_argument(
        "--scorers",
        default=",".join(d.scorers),
        metavar="LIST",
        help=f"OOD scorers, comma list (default: {','.join(DEFAULT_SCORERS)})",
    )
    analysis.add_argument(
        "--knn-backend",
        choices=KNN_BACKENDS,
        default=d.knn_backend,
        help="search behind the kNN classifier and kNN scorers: torch (exact, default), faiss (exact, "
        "IndexFlatIP; needs faiss-cpu), or approximate faiss-ivf / faiss-hnsw for large banks "
        "(their recall@k against the exact search is measured and written to run.json)",
    )
    analysis.add_argument(
        "--nlist", type=int, default=None, help="faiss-ivf: k-means cells (default: about 4 sqrt(N))"
    )
    analysis.add_argument(
        "--nprobe", type=int, default=None, help="faiss-ivf: cells searched per query (default: 32)"
    )
    analysis.add_argument(
        "--hnsw-m", type=int, default=None, help="faiss-hnsw: links per point (default: 32)"
    )
    analysis.add_argument(
        "--ef-search", type=int, default=None, help="faiss-hnsw: candidates per query (default: max(2k, 128))"
    )
    analysis.add_argument(
        "--recall-sample",
        type=int,
        default=d.recall_sample,
        help=f"queries (seeded) on which an approximate search's recall is measured (default: {d.recall_sample})",
    )
    analysis.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the bootstrap intervals (default: {d.seed})"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default="normprobe-results",
        metavar="DIR",
        help="results folder (default: normprobe-results)",
    )
    output.add_argument(
        "--force", action="store_true", help="overwrite DIR if it holds a previous results folder"
    )
    output.add_argument("--no-report", action="store_true", help="skip report.html")
    output.add_argument(
        "--plotly",
        choices=("inline", "cdn", "directory"),
        default=d.plotly,
        help="where report.html gets plotly.js: inline (works offline, ~5 MB), cdn (needs the internet), "
        f"or directory (a plotly.min.js written beside it) (default: {d.plotly})",
    )
    output.add_argument(
        "--quiet", action="store_true", help="no progress bars or log lines (the summary is still printed)"
    )
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> AnalysisSettings:
    return AnalysisSettings(
        id_dataset=args.id_dataset,
        id_train=args.id_train,
        id_test=args.id_test,
        ood=split_ood_specs(args.ood or ([] if args.checkpoint is None else ["cifar100"])),
        near=split_ood_specs(args.near or []),
        far=split_ood_specs(args.far or []),
        head=args.head,
        heads=comma_list(args.heads) if args.heads else None,
        k=args.k,
        temperature=args.temperature,
        ood_k=args.ood_k,
        buckets=args.buckets,
        bucket_scaling=args.bucket_scaling,
        min_bucket_count=args.min_bucket_count,
        human_min_bucket_count=args.human_min_bucket_count,
        scorers=comma_list(args.scorers),
        human=args.human,
        max_train=args.max_train,
        max_per_split=args.max_per_split,
        seed=args.seed,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
        data_root=args.data_root,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        arch=args.arch,
        trust_code=args.trust_code,
        report=not args.no_report,
        plotly=args.plotly,
        knn_backend=args.knn_backend,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        recall_sample=args.recall_sample,
    )


def format_summary(results: Results) -> str:
    """The terminal summary: the verdict, the per-set table, the AUROC of every scorer, the dataset
    notes and where the results are."""
    from normprobe.report import auroc_table, summary_table, verdict_lines
    from normprobe.results import REPORT_FILE
    from normprobe.terminal import printable

    run = results.run
    checkpoint = run.checkpoint

    def table(frame: pd.DataFrame) -> str:
        return frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.3f}")

    source = (
        f"{checkpoint.path} ({checkpoint.adapter}, {checkpoint.method})"
        if checkpoint
        else f"embeddings of {len(run.inputs)} sets (ID-train {run.inputs[0].path or 'arrays'})"
    )
    lines = [
        f"normprobe analyze: {source}; "
        f"primary head {run.primary_head}; kNN k={run.settings.k} T={run.settings.temperature}",
        *verdict_lines(run),
        table(summary_table(run)),
        "norm / ID train: mean norm / ID-train mean; kNN accuracy: ID train by leave-one-out; larger score = more "
        "familiar; AUROC with its 95% bootstrap interval; FPR@95 (ID pos.): OOD accepted at 95% ID retained, "
        "(OOD pos.): ID flagged at 95% OOD detected (OpenOOD); AUPR: trapezoid (OpenOOD)",
        "AUROC per scorer and OOD set:",
        table(auroc_table(run)),
    ]
    for entry in run.datasets:
        for note in entry.notes:
            lines.append(f"note: {entry.key}: {note}")
    cached = sum(run.timings.embeddings_from_cache.values())
    origin = f"{cached} of {len(run.datasets)} sets from the cache" if checkpoint else "read from the inputs"
    lines.append(f"embeddings: {origin}; total {run.timings.total_s:.1f}s")
    report = results.path / REPORT_FILE
    lines.append(f"results: {results.path}" + (f"  (report: {report})" if report.is_file() else ""))
    # names and paths come from the user's files: no escape sequence reaches the terminal
    return "\n".join(printable(line) for line in "\n".join(lines).splitlines())


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from normprobe.data.sources import as_text
    from normprobe.pipeline import run_analysis

    settings = settings_from_args(args)
    argv = ["normprobe", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("normprobe") else sys.argv
    command = [as_text(arg) for arg in argv]  # recorded and shown as text: a path's odd bytes escaped
    results = run_analysis(
        args.checkpoint, args.out, settings, force=args.force, command=command, progress=not args.quiet
    )
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(format_summary(results))
    return 0
