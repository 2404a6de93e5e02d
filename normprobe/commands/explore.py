"""`normprobe explore RESULTS`: open a results folder in the Streamlit explorer, on this machine only.

The server binds to 127.0.0.1 unless ``--address`` names another interface: results hold sample
indices, file names and data paths that are nobody else's business, so exposing them on the
network is the user's explicit choice, never a default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 8501


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explore",
        help="open a results folder in the interactive explorer (Streamlit, localhost)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", help="a results folder written by `normprobe analyze --out DIR`")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--address",
        default=LOCALHOST,
        help="interface to listen on (default: %(default)s, this machine only; 0.0.0.0 exposes the "
        "results to the network)",
    )
    parser.set_defaults(func=run)


def app_script() -> Path:
    from normprobe import app

    return Path(app.__file__).resolve().parent / "main.py"


def streamlit_command(results: Path, port: int, address: str) -> list[str]:
    """The ``streamlit run`` command line: every server setting explicit, so no user or project
    ``config.toml`` can widen the interface or turn on telemetry behind the user's back."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_script()),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--results",
        str(results),
    ]


def run(args: argparse.Namespace) -> int:
    from normprobe.errors import NormprobeError
    from normprobe.results import read_results

    results = Path(args.results).expanduser().resolve()
    read_results(results)  # a NormprobeError (one line, exit 2) before any server starts
    if not 0 < args.port < 65536:
        raise NormprobeError(f"--port {args.port}: not a TCP port")
    if args.address != LOCALHOST:
        print(
            f"normprobe explore: warning: listening on {args.address}: other machines can read these results",
            file=sys.stderr,
        )
    print(f"normprobe explore: http://{args.address}:{args.port}  (Ctrl-C stops the server)", flush=True)
    sys.stderr.flush()
    # Become the server (no child left behind when this process is stopped or killed).
    command = streamlit_command(results, args.port, args.address)
    os.execv(command[0], command)
    return 0  # not reached
