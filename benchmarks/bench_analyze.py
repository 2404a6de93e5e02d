"""Benchmark: a cold `normprobe analyze` against its embedding time alone (issue target: <= 1.15x).

Runs ``normprobe analyze CKPT --ood ...`` twice in fresh subprocesses (the CLI, with its allocator
settings), each time with an empty embedding cache, and reads the stages from the run's own
``run.json`` timings: embedding (every set through the encoder), the kNN classifier, the OOD
scorers, the analyses and the report. The ratio ``total / embedding`` is what the analysis costs
on top of the encoder's forward passes; the best of the repeats counts. A third run, with the
cache the second one left, gives the warm time (everything from the cache).

Default problem: the default zoo model on the full CIFAR-10 (50,000 train, 10,000 test) and four
OOD sets (CIFAR-100's 916 mirror images, Tiny-ImageNet val, MNIST test, Fashion-MNIST test), as
in the issue. Nothing is asserted: speed is reported as ratios measured in one run.

    NORMPROBE_DATA=../shared/data python benchmarks/bench_analyze.py [--checkpoint NAME] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OOD = ("cifar100", "tinyimagenet", "mnist", "fashion-mnist")


def analyze(checkpoint: str, ood: tuple[str, ...], cache: Path, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "normprobe", "analyze", checkpoint, "--out", str(out), "--quiet"]
    command += [arg for name in ood for arg in ("--ood", name)] + ["--cache-dir", str(cache), *extra]
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    timings = json.loads((out / "run.json").read_text())["timings"]
    embed = sum(timings["embed_s"].values())
    return {
        "wall_s": wall,
        "total_s": timings["total_s"],
        "embed_s": embed,
        "knn_s": timings["knn_s"],
        "scores_s": timings["scores_s"],
        "analyses_s": timings["analyses_s"],
        "report_s": timings.get("report_s", 0.0),
        "total_over_embed": timings["total_s"] / embed if embed else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="simclr-r18w16-e60", help="checkpoint file or zoo name")
    parser.add_argument("--ood", nargs="+", default=list(OOD))
    parser.add_argument("--repeats", type=int, default=2, help="cold runs (best counts)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more analyze options")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as work:
        root = Path(work)
        for repeat in range(args.repeats):
            cache = root / f"cache{repeat}"
            rows.append(
                {
                    "run": f"cold {repeat + 1}",
                    **analyze(args.checkpoint, tuple(args.ood), cache, root / f"out{repeat}", args.extra),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        warm = analyze(args.checkpoint, tuple(args.ood), cache, root / "warm", args.extra)
        rows.append({"run": "warm", **warm})
        print(json.dumps(rows[-1]), flush=True)
    best = min((r for r in rows if r["run"].startswith("cold")), key=lambda r: r["total_over_embed"])
    print(
        f"cold analyze: total {best['total_s']:.1f} s = {best['total_over_embed']:.2f}x its embedding time "
        f"({best['embed_s']:.1f} s; kNN {best['knn_s']:.1f} s, scorers {best['scores_s']:.1f} s, "
        f"analyses {best['analyses_s']:.1f} s, report {best['report_s']:.1f} s); warm: {warm['wall_s']:.1f} s wall"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
