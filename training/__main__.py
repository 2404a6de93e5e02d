"""``normprobe train`` / ``normprobe train``: train an SSL encoder into normprobe checkpoints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from normprobe.allocator import TRAINING_ENV, reexec_with_tunables
from normprobe.errors import NormprobeError
from normprobe.terminal import command_status

EPILOG = """\
examples:
  normprobe train --config simclr_cifar10 --set epochs=20 backbone.width=16 out_dir=runs/simclr-w16
  normprobe train --config simsiam_cifar10 --set cut=3 out_dir=runs/simsiam-cut3
  normprobe train --config simclr_cifar10 --set gradscale=1 schedule.preset=gradscale
  normprobe train --resume runs/simclr-w16                # continue exactly where it stopped
  normprobe train --config simclr_cifar10 --set out_dir=runs/simclr-w16 --force   # start that run over
  torchrun --nproc_per_node 2 -m normprobe train --config simclr_cifar10   # DDP (gloo on CPU, nccl on GPU)

Interventions on the embedding norm (Draganov et al., ICML 2025): optimizer.weight_decay,
cut=C (divide every weight by C at initialisation), gradscale=P (backward scales each sample's
gradient by ||z||^P; with schedule.preset=gradscale: base LR / 6 and 100 warm-up epochs).
Outputs in out_dir: config.yaml/json, checkpoints/epoch_NNNN.pt (keep-last-N), final.pt,
metrics.csv/jsonl (kNN accuracy and mean norms per head), steps.jsonl (loss and LR per step).
A new run refuses an out_dir that holds a previous run's files unless --resume or --force.
Checkpoints are normprobe checkpoints: `normprobe analyze out_dir/final.pt`.

Compare finished or running runs (kNN and norms per head, curves per epoch; see compare --help):
  normprobe train compare runs/simclr-w16 runs/simsiam-cut3 --out runs/compared
"""


def build_parser() -> argparse.ArgumentParser:
    from normprobe.training.config import CONFIG_DIR

    bundled = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog="normprobe train",
        description="Train SimCLR, SimSiam, BYOL or MoCo v2/v3 and write normprobe checkpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML config file or bundled name ({bundled})")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config entries with dotted keys, values parsed as YAML (e.g. epochs=5 dataset.subset=512); "
        "repeated --set options add up",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="RUN_OR_CKPT",
        help="continue a run from its newest checkpoint (a run folder) or from a given checkpoint file; "
        "the config stored in the checkpoint is used, with --set applied on top",
    )
    start.add_argument(
        "--force",
        action="store_true",
        help="start a new run even if out_dir holds a previous one, deleting that run's files "
        "(checkpoints, final.pt, metrics, steps.jsonl, config); other files in out_dir are kept",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command line, not an in-process call (tests, notebooks)
        argv = sys.argv[1:]
        # glibc's malloc tuned (see normprobe.allocator): large activations stay in the heap
        # instead of being mapped and unmapped every step; OpenMP threads sleep while they wait
        reexec_with_tunables("normprobe.training", list(argv), TRAINING_ENV)
    if list(argv)[:1] == ["compare"]:  # the one subcommand; a bare command line trains
        from normprobe.training.compare import main as compare

        return compare(list(argv)[1:])
    args = build_parser().parse_args(list(argv))
    return command_status("normprobe train", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    import yaml
    from normprobe.training.config import apply_override, load_config, validate
    from normprobe.training.loop import train
    from normprobe.training.state import find_resume_file, read_resume

    resume = None
    if args.resume:
        resume = find_resume_file(args.resume)
        config = read_resume(resume)["training"]["config"]
        for item in args.set:
            apply_override(config, item)
        validate(config)
    elif args.config:
        config = load_config(args.config, args.set)
    else:
        raise NormprobeError("give --config FILE (or --resume RUN)")
    if args.print_config:
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    train(config, Path(resume) if resume else None, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
