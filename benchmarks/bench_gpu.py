"""Benchmark on one CUDA GPU, prepared to run in one call of at most five minutes.

Three measurements, each in fresh processes, made by the CPU benchmarks' own code:

* extraction: images/s of ``normprobe.extraction.extract_arrays`` (``bench_extract``'s model:
  ResNet-18 width 64 + SimCLR projector; the first ``--extract-images`` CIFAR-10 test images
  decoded, preprocessed and embedded end to end), fp32 and bf16, best of two passes;
* training: a SimCLR ResNet-18 (width 64) epoch of CIFAR-10 (50,000 images, batch 256 x 2 views,
  195 optimiser steps) in seconds, ours (``training.loop.Trainer._train_step``: data on the GPU,
  batched augmentation, channels_last) against the research-style reference loop (PIL pipeline
  per image in ``--ref-workers`` DataLoader processes, NCHW), both in fp32 and in bf16
  (``bench_train.run_side``). Epoch seconds = 195 x the median step of ``--train-steps`` timed
  steps after one warm-up step (the full epoch by default);
* kNN: ``normprobe.knn.KNNClassifier`` (k=200, T=0.1) with the bank on the GPU against faiss
  (``bench_knn.run_faiss``: ``IndexFlatIP``, on the CPU with every core; faiss on the GPU too
  when the installed faiss has GPU support), on ``bench_knn``'s seeded clusters, wall time from
  numpy arrays to predicted labels, best of two; agreement = fraction of equal predictions.

Sections that would start after ``--budget-s`` seconds are skipped (and listed as skipped), so
the call ends in time on a slower GPU. Prints a markdown table; ``--out`` writes JSON. Nothing
is asserted. Without a CUDA device it prints one line and exits 0; ``--dry-run`` runs every code
path on the CPU at toy sizes (a smoke test, its timings mean nothing).

    NORMPROBE_DATA=/path/to/data python benchmarks/bench_gpu.py [--out gpu.json] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import bench_extract
import bench_knn
import bench_train
import numpy as np
from fresh_process import run_fresh

EPOCH_IMAGES = 50_000  # CIFAR-10 train


def _knn_child(args: dict[str, Any], conn: Any) -> None:
    import torch

    from normprobe.knn import KNNClassifier

    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    bank, bank_y, queries, query_y = bench_knn.make_data(args["bank"], args["queries"], args["dim"], 0)

    def ours() -> np.ndarray:
        clf = KNNClassifier(k=bench_knn.K, temperature=bench_knn.TEMPERATURE)
        return clf.fit(torch.from_numpy(bank).to(device), bank_y).predict(
            torch.from_numpy(queries).to(device)
        )

    def faiss_gpu() -> np.ndarray:
        import faiss

        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, bank.shape[1])
        index.add(bank / np.linalg.norm(bank, axis=1, keepdims=True))
        sims, idx = index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), bench_knn.K)
        return bench_knn._vote(sims, idx, bank_y)

    methods = {"normprobe": ours, "faiss-cpu": lambda: bench_knn.run_faiss(bank, bank_y, queries)}
    try:
        import faiss

        faiss.omp_set_num_threads(args["threads"])
        if device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            methods["faiss-gpu"] = faiss_gpu
    except ImportError:
        del methods["faiss-cpu"]
    results: dict[str, Any] = {}
    for name, fn in methods.items():
        best, pred = float("inf"), None
        for _ in range(2):  # the first also pays for library start-up (cuBLAS, faiss GPU resources)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            pred = np.asarray(fn())
            best = min(best, time.perf_counter() - t0)
        results[name] = {"best_s": best, "pred": pred, "accuracy": float((pred == query_y).mean())}
    conn.send(results)
    conn.close()


def _section(name: str, began: float, budget: float, skipped: list[str]) -> float | None:
    """Seconds left for ``name``, or None (and noted) when the budget is spent."""
    left = budget - (time.perf_counter() - began)
    if left <= 0:
        skipped.append(name)
        print(f"bench_gpu: {name} skipped (budget of {budget:.0f} s spent)", file=sys.stderr, flush=True)
        return None
    return left


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=None, help="data root (default: $NORMPROBE_DATA)")
    parser.add_argument("--extract-images", type=int, default=10_000)
    parser.add_argument("--train-steps", type=int, default=194, help="timed steps per side (194: the epoch)")
    parser.add_argument("--ref-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--knn-bank", type=int, default=50_000)
    parser.add_argument("--knn-queries", type=int, default=10_000)
    parser.add_argument("--knn-dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no section after this")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: a smoke test")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    opts = parser.parse_args()

    import torch

    if not opts.dry_run and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured (--dry-run: a CPU smoke test)")
        return 0
    device = "cpu" if opts.dry_run else "cuda"
    threads = 1 if opts.dry_run else os.cpu_count() or 1
    if opts.dry_run:
        opts.extract_images, opts.train_steps, opts.ref_workers = 256, 2, 0
        opts.knn_bank, opts.knn_queries, opts.knn_dims = 2_000, 500, [128]
    width, batch = (8, 32) if opts.dry_run else (64, 256)
    steps_per_epoch = EPOCH_IMAGES // batch
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none (dry run on the CPU)"
    began, skipped = time.perf_counter(), []
    report: dict[str, Any] = {
        "device": gpu,
        "dry_run": opts.dry_run,
        "extraction": [],
        "training": [],
        "knn": [],
    }
    print(f"bench_gpu on {gpu}, budget {opts.budget_s:.0f} s", file=sys.stderr, flush=True)

    for precision in ("fp32", "bf16"):
        if _section(f"extraction {precision}", began, opts.budget_s, skipped) is None:
            continue
        params = {
            "data_root": opts.data_root,
            "images": opts.extract_images,
            "batch_size": 256,
            "repeats": 2,
            "threads": threads,
            "precision": precision,
            "prefetch": True,
            "device": device,
        }
        out = bench_extract.run_worker("normprobe", params, tuned=True)
        rate = out["images"] / min(out["seconds"])
        report["extraction"].append({"precision": precision, "images": out["images"], "images_per_s": rate})
        print(f"extraction {precision}: {rate:.0f} images/s", file=sys.stderr, flush=True)

    train_args = bench_train.build_parser().parse_args(
        [
            "--depth",
            "18",
            "--width",
            str(width),
            "--batch",
            str(batch),
            "--steps",
            str(opts.train_steps),
            "--threads",
            str(threads),
            "--ref-workers",
            str(opts.ref_workers),
            "--device",
            device,
        ]
    )
    for precision in ("fp32", "bf16"):
        row: dict[str, Any] = {"precision": precision}
        for side in ("reference", "ours"):
            left = _section(f"training {side} {precision}", began, opts.budget_s, skipped)
            if left is None:
                continue
            train_args.precision = train_args.ref_precision = precision
            try:
                result = bench_train.run_side(side, "simclr", train_args, timeout=left + 60)
            except Exception as err:  # noqa: BLE001 - a timeout or a failed side is reported, not fatal
                row[side] = {"error": str(err)[-500:]}
                continue
            row[side] = {**result, "epoch_s": steps_per_epoch * result["s_per_step"]}
            print(
                f"training {side} {precision}: {row[side]['epoch_s']:.1f} s/epoch",
                file=sys.stderr,
                flush=True,
            )
        report["training"].append(row)

    for dim in opts.knn_dims:
        if _section(f"knn D={dim}", began, opts.budget_s, skipped) is None:
            continue
        args = {
            "bank": opts.knn_bank,
            "queries": opts.knn_queries,
            "dim": dim,
            "threads": threads,
            "device": device,
        }
        res = run_fresh(_knn_child, args)
        base = res["normprobe"]["pred"]
        for name, r in res.items():
            report["knn"].append(
                {
                    "dim": dim,
                    "method": name,
                    "best_s": r["best_s"],
                    "accuracy": r["accuracy"],
                    "agreement_with_normprobe": float((r["pred"] == base).mean()),
                }
            )

    report["skipped"] = skipped
    report["seconds"] = time.perf_counter() - began
    _print_markdown(report, width, batch, steps_per_epoch)
    if opts.out:
        opts.out.write_text(json.dumps(report, indent=2))
    return 0


def _cell(side: dict[str, Any]) -> str:
    return f"{side['epoch_s']:.1f}" if "epoch_s" in side else str(side.get("error", "skipped"))[:60]


def _print_markdown(report: dict[str, Any], width: int, batch: int, steps: int) -> None:
    print(f"## bench_gpu on {report['device']} ({report['seconds']:.0f} s)\n")
    print("| extraction | images/s |\n|---|---|")
    for r in report["extraction"]:
        print(f"| normprobe {r['precision']} | {r['images_per_s']:.0f} |")
    print(
        f"\n| SimCLR ResNet-18 w{width} epoch ({steps} steps of {batch} x 2) | ours s | reference s | ratio |"
    )
    print("|---|---|---|---|")
    for r in report["training"]:
        ours, ref = r.get("ours", {}), r.get("reference", {})
        ratio = f"{ref['epoch_s'] / ours['epoch_s']:.2f}x" if "epoch_s" in ours and "epoch_s" in ref else "-"
        print(f"| {r['precision']} | {_cell(ours)} | {_cell(ref)} | {ratio} |")
    print("\n| kNN (k=200) | D | best s | accuracy | agreement with normprobe |\n|---|---|---|---|---|")
    for r in report["knn"]:
        print(
            f"| {r['method']} | {r['dim']} | {r['best_s']:.3f} | {r['accuracy']:.3f} | {r['agreement_with_normprobe']:.4f} |"
        )
    if report["skipped"]:
        print(f"\nskipped (time budget): {', '.join(report['skipped'])}")


if __name__ == "__main__":
    raise SystemExit(main())
