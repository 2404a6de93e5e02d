"""Options that several commands share, defined once so that they read the same everywhere."""

from __future__ import annotations

import argparse

TRUST_CODE_HELP = (
    "load TorchScript and torch.export files, which are programs whose code runs with your rights "
    "(refused without this flag; weights files, .pt state_dicts and .safetensors, never need it)"
)


def add_trust_code(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--trust-code``: the explicit opt-in to checkpoints that run code (see ``load_encoder``)."""
    parser.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
