"""The `normprobe` command line.

Each subcommand lives in its own module under :mod:`normprobe.commands` and exposes
``register(subparsers)``; the module adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning the exit status. User mistakes raise :class:`NormprobeError`,
which becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from normprobe import __version__
from normprobe.allocator import TRAINING_ENV, reexec_with_tunables
from normprobe.terminal import command_status

# Order here is the order in `normprobe --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "analyze",
    "rank",
    "embed",
    "explore",
    "train",
    "datasets",
    "zoo",
    "simulate",
)

EPILOG = """\
The norm of an SSL embedding before normalisation encodes the encoder's confidence: samples it has
seen often get large norms; novel, out-of-distribution, misclassified and human-ambiguous samples get
small ones (Draganov et al., "On the Importance of Embedding Norms in Self-Supervised Learning",
ICML 2025). Start with `normprobe demo`, then `normprobe analyze CKPT --ood cifar100`.
Data root: --data-root or $NORMPROBE_DATA.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normprobe",
        description="Probe a self-supervised image encoder's confidence through its embedding norms.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"normprobe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"normprobe.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a real command line, not an in-process call: fix the allocator first
        training = sys.argv[1:2] == ["train"]  # which also sets its OpenMP waits (allocator.TRAINING_ENV)
        reexec_with_tunables("normprobe", sys.argv[1:], TRAINING_ENV if training else None)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["train"]:
        # the training command parses its own command line (options, --help and `compare`)
        from normprobe.commands.train import forward

        return forward(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    return command_status("normprobe", lambda: int(args.func(args) or 0))


if __name__ == "__main__":
    sys.exit(main())
