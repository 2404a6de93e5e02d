"""`normprobe train ...`: train SimCLR, SimSiam, BYOL or MoCo v2/v3 encoders (``normprobe.training``).

Everything after ``train`` goes to the training command (``normprobe train --help``), which is
also ``python -m normprobe.training``: ``normprobe train --config simclr_cifar10 --set epochs=10``,
``normprobe train --resume RUN``, ``normprobe train compare RUN... --out DIR``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # listed in `normprobe --help` only: normprobe.cli hands `train ...` to forward() unparsed, so that
    # the training command's own parser reads every option, --help included
    subparsers.add_parser(
        "train",
        help="train an SSL encoder (SimCLR, SimSiam, BYOL, MoCo v2/v3) into normprobe checkpoints; "
        "`normprobe train --help`",
        add_help=False,
    )


def forward(arguments: list[str]) -> int:
    # imported here: building the CLI parser must not import torch (normprobe --help stays fast)
    from normprobe.training.__main__ import main

    return main(arguments)
