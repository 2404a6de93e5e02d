"""Benchmark: embedding extraction speed on the real CIFAR-10 mirror, against research-style code.

Model: ResNet-18 with the CIFAR stem (width 64) + SimCLR projector (512-2048-256, BN + ReLU),
random weights (speed does not depend on them), ~1.11 GFLOP per 32x32 image,
counted from the model with ``torch.utils.flop_counter.FlopCounterMode``. Data: the first
``--images`` images of the CIFAR-10 test mirror (JPEG bytes), decoded, preprocessed and embedded
end to end.

Every configuration runs in its own subprocess, because glibc reads its tunables only at start-up:

* ``ceiling``: this machine's own ceiling for this workload: the model's 3x3 convolutions, each run
  alone on a pre-allocated channels_last batch through oneDNN (total FLOP / total best time), measured
  at the start and at the end of the run (the larger is used). ``torch.mm`` fp32 is printed beside it.
* ``research``: what research code does: a ``Dataset`` decoding one JPEG per ``__getitem__`` with
  Pillow + ``transforms.ToTensor()``, a ``DataLoader`` (``--workers`` processes), the model in
  default (contiguous) memory format under ``torch.no_grad()``, glibc's default allocator.
* ``normprobe fp32``: ``normprobe.extraction.extract_arrays`` (batched torchvision JPEG decode of whole
  batches, overlapped with the forward pass, channels_last, inference_mode) in the environment the
  CLI arranges (glibc ``mmap_max=0``, huge ``trim_threshold``; see ``normprobe/allocator.py``).
  Variants isolate the effects: the same with glibc's default allocator, and without prefetching.
* ``normprobe bf16``: the same with bf16 autocast; features compared with fp32 (relative L2, mean
  norm change, leave-one-out weighted kNN accuracy with ``normprobe.knn`` when present).
* ``decode``: the whole CIFAR-10 train split (50,000 JPEGs) decoded by Pillow in a thread pool vs
  ``normprobe``'s batched torchvision decode, with a bit-identity check.

Throughput is best-of ``--repeats`` passes per configuration (each pass end to end over all
images). Timings on a shared machine are noisy; ratios are measured in one run. Beside wall-clock
rates, every configuration reports images per CPU-second (the process's threads plus its reaped
DataLoader workers) and its fraction of the ceiling's GFLOP per CPU-second: when other programs
compete for the cores, this is the steadier measure of how efficiently the work itself runs.
Minor page faults per pass show the allocator effect directly. Nothing here is asserted.

    NORMPROBE_DATA=../shared/data python benchmarks/bench_extract.py [--images 10000] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TUNED_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736",
    "NORMPROBE_NO_REEXEC": "1",
}


def model_spec() -> dict[str, Any]:
    from normprobe.models.heads import simclr_projector

    return {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 64},
        "projector": simclr_projector(512),
    }


def build_model():  # noqa: ANN201 - a torch module
    import torch

    from normprobe.models import build_encoder

    torch.manual_seed(0)
    return build_encoder(model_spec()).eval()


def model_gflop_per_image() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() / 1e9


def test_images(data_root: str | None, n: int):  # noqa: ANN201 - an ImageSet
    from normprobe import data

    imageset = data.load("cifar10", "test", data_root)
    n = min(n, len(imageset))
    return imageset.subset(np.arange(n), f"first{n}") if n < len(imageset) else imageset


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ----------------------------------------------------------------------------------- workers


def worker_ceiling(params: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s of the model's 3x3 convolutions alone (oneDNN, channels_last) and of fp32 torch.mm."""
    import torch
    from torch import nn

    model = build_model().to(memory_format=torch.channels_last)
    shapes: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: shapes.append((mod, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    batch = params["batch_size"]
    with torch.inference_mode():
        model(torch.zeros(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    total_flop = total_time = total_cpu = 0.0
    with torch.inference_mode():
        for conv, shape in shapes:
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            out = conv(x)
            flop = 2.0 * out.numel() * conv.in_channels * 9 / conv.groups
            runs = [_timed(lambda conv=conv, x=x: conv(x)) for _ in range(params["conv_repeats"])]
            total_flop += flop
            total_time += min(wall for wall, _ in runs)
            total_cpu += min(cpu for _, cpu in runs)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        mm_best = min(_timed(lambda: torch.mm(a, b))[0] for _ in range(5))
    return {
        "conv3x3_gflops": total_flop / total_time / 1e9,
        "conv3x3_gflop_per_cpu_s": total_flop / total_cpu / 1e9,
        "conv3x3_share_of_model_flop": total_flop / batch / 1e9 / model_gflop_per_image(),
        "mm_fp32_gflops": 2 * 2048**3 / mm_best / 1e9,
    }


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def worker_research(params: dict[str, Any]) -> dict[str, Any]:
    """A per-image Dataset + DataLoader + Pillow + ToTensor pipeline, as research code writes it."""
    import io

    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    imageset = test_images(params["data_root"], params["images"])
    reader = imageset.reader
    jpegs = [bytes(reader._bytes(int(r))) for r in imageset.rows]  # the same JPEG files, one per item

    class JpegDataset(Dataset):
        def __init__(self) -> None:
            self.to_tensor = transforms.ToTensor()

        def __len__(self) -> int:
            return len(jpegs)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            image = Image.open(io.BytesIO(jpegs[i])).convert("RGB")
            return self.to_tensor(image), int(imageset.labels[i])

    model = build_model()
    with torch.no_grad():
        model(torch.zeros(params["batch_size"], 3, 32, 32))  # warm-up, as for every configuration

    def one_pass() -> None:
        loader = DataLoader(
            JpegDataset(), batch_size=params["batch_size"], shuffle=False, num_workers=params["workers"]
        )
        feats, zs = [], []
        with torch.no_grad():
            for x, _y in loader:
                out = model(x)
                feats.append(out["feats"].numpy())
                zs.append(out["z"].numpy())
        np.concatenate(feats), np.concatenate(zs)

    runs = [_timed(one_pass) for _ in range(params["repeats"])]
    return {
        "seconds": [w for w, _ in runs],
        "cpu_seconds": [c for _, c in runs],
        "images": len(jpegs),
        "threads": torch.get_num_threads(),
    }


def worker_normprobe(params: dict[str, Any]) -> dict[str, Any]:
    """``normprobe.extraction.extract_arrays`` end to end on the same images."""
    import torch

    from normprobe.extraction import extract_arrays
    from normprobe.preprocess import Preprocess

    imageset = test_images(params["data_root"], params["images"])
    device = torch.device(params.get("device", "cpu"))
    model = build_model().to(device, memory_format=torch.channels_last)
    with torch.inference_mode():
        warm = torch.zeros(params["batch_size"], 3, 32, 32, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=params["precision"] == "bf16"):
            model(warm.contiguous(memory_format=torch.channels_last))
    times, cpu_times, faults = [], [], []
    arrays: dict[str, np.ndarray] = {}
    for _ in range(params["repeats"]):
        faults_before, cpu_before = _minflt(), _cpu_seconds()
        start = time.perf_counter()
        arrays = extract_arrays(
            model,
            Preprocess((32, 32)),
            imageset,
            ("feats", "z"),
            batch_size=params["batch_size"],
            device=device,
            precision=params["precision"],
            progress=False,
            prefetch=params["prefetch"],
        )
        times.append(time.perf_counter() - start)
        cpu_times.append(_cpu_seconds() - cpu_before)
        faults.append(_minflt() - faults_before)
    if params.get("save"):
        for head, values in arrays.items():
            np.save(Path(params["save"]) / f"{head}.npy", values)
        np.save(Path(params["save"]) / "labels.npy", imageset.labels)
    return {
        "seconds": times,
        "cpu_seconds": cpu_times,
        "images": len(imageset),
        "page_faults_per_pass": faults,
        "threads": torch.get_num_threads(),
    }


def worker_decode(params: dict[str, Any]) -> dict[str, Any]:
    """Decode all CIFAR-10 train JPEGs: Pillow in a thread pool vs normprobe's batched reader."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from normprobe import data
    from normprobe.data.convert import decode_image_bytes
    from normprobe.data.readers import _decode_threads

    imageset = data.load("cifar10", "train", params["data_root"])
    reader = imageset.reader
    rows = imageset.rows
    pillow_times, ours_times = [], []
    pil = ours = None
    for _ in range(params["repeats"]):
        start = time.perf_counter()
        pil = np.empty((len(rows), 32, 32, 3), np.uint8)
        with ThreadPoolExecutor(_decode_threads()) as pool:
            for i, image in enumerate(
                pool.map(lambda r: decode_image_bytes(reader._bytes(int(r)).tobytes()), rows, chunksize=256)
            ):
                pil[i] = image
        pillow_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = np.concatenate(
            [
                reader.read(rows[i : i + params["batch_size"]])
                for i in range(0, len(rows), params["batch_size"])
            ]
        )
        ours_times.append(time.perf_counter() - start)
    return {
        "images": len(rows),
        "pillow_threadpool_s": min(pillow_times),
        "normprobe_batched_s": min(ours_times),
        "bit_identical": bool(np.array_equal(pil, ours)),
        "pixels_sha256": hashlib.sha256(np.ascontiguousarray(ours).tobytes()).hexdigest(),
    }


WORKERS = {
    "ceiling": worker_ceiling,
    "research": worker_research,
    "normprobe": worker_normprobe,
    "decode": worker_decode,
}


# ----------------------------------------------------------------------------------- driver


def run_worker(kind: str, params: dict[str, Any], tuned: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["NORMPROBE_NO_REEXEC"] = "1"
    if tuned:
        env.update(TUNED_ENV)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--params", json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def feature_quality(fp32_dir: Path, bf16_dir: Path) -> dict[str, Any]:
    """bf16 vs fp32: relative L2 of the features, mean-norm change, kNN accuracy (if normprobe.knn exists)."""
    labels = np.load(fp32_dir / "labels.npy")
    result: dict[str, Any] = {}
    for head in ("feats", "z"):
        a, b = np.load(fp32_dir / f"{head}.npy"), np.load(bf16_dir / f"{head}.npy")
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        entry = {
            "relative_l2": float(np.linalg.norm(b - a) / np.linalg.norm(a)),
            "median_per_sample_relative_l2": float(np.median(np.linalg.norm(b - a, axis=1) / na)),
            "mean_norm_fp32": float(na.mean()),
            "mean_norm_change": float(nb.mean() / na.mean() - 1),
            "norm_rank_spearman": float(_spearman(na, nb)),
        }
        try:
            from normprobe.knn import KNNClassifier
        except ImportError:
            entry["knn"] = "normprobe.knn not available"
        else:
            k = min(200, len(a) - 1)
            pa = KNNClassifier(k=k, temperature=0.1).fit(a, labels).predict()
            pb = KNNClassifier(k=k, temperature=0.1).fit(b, labels).predict()
            entry["knn_loo_k"] = k
            entry["knn_loo_accuracy_fp32"] = float((pa == labels).mean())
            entry["knn_loo_accuracy_bf16"] = float((pb == labels).mean())
            entry["knn_prediction_agreement"] = float((pa == pb).mean())
        result[head] = entry
    return result


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=None, help="data root (default: $NORMPROBE_DATA)")
    parser.add_argument(
        "--images", type=int, default=10000, help="first N CIFAR-10 test images (default: all 10,000)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=2, help="passes per configuration; the best is reported"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers of the research pipeline",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every configuration (default: torch's, one per core); 1 gives steady ratios when other "
        "programs load the machine, since idle OpenMP threads then spin at barriers",
    )
    parser.add_argument("--skip-decode", action="store_true", help="skip the 50k-image decode comparison")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        params = json.loads(args.params)
        if params.get("threads"):
            import torch

            torch.set_num_threads(params["threads"])
        print(json.dumps(WORKERS[args.worker](params)))
        return

    import torch

    from normprobe.device import bf16_is_native

    common = {
        "data_root": args.data_root,
        "images": args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
    }
    gflop = model_gflop_per_image()
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract-"))
    (tmp / "fp32").mkdir()
    (tmp / "bf16").mkdir()
    log = lambda msg: print(f"[{time.perf_counter() - began:7.1f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    log("ceiling (start)")
    ceilings = [run_worker("ceiling", {**common, "conv_repeats": 3}, tuned=True)]
    configs = [
        ("research (DataLoader + PIL, fp32, glibc default)", "research", {"workers": args.workers}, False),
        (
            "normprobe fp32",
            "normprobe",
            {"precision": "fp32", "prefetch": True, "save": str(tmp / "fp32")},
            True,
        ),
        (
            "normprobe fp32, glibc default allocator",
            "normprobe",
            {"precision": "fp32", "prefetch": True},
            False,
        ),
        ("normprobe fp32, no decode prefetch", "normprobe", {"precision": "fp32", "prefetch": False}, True),
        (
            "normprobe bf16",
            "normprobe",
            {"precision": "bf16", "prefetch": True, "save": str(tmp / "bf16")},
            True,
        ),
    ]
    rows: list[dict[str, Any]] = []
    for label, kind, extra, tuned in configs:
        log(label)
        result = run_worker(kind, {**common, **extra}, tuned)
        best = min(result["seconds"])
        rows.append(
            {
                "config": label,
                **result,
                "best_seconds": best,
                "images_per_s": result["images"] / best,
                "images_per_cpu_s": result["images"] / min(result["cpu_seconds"]),
            }
        )
    log("ceiling (end)")
    ceilings.append(run_worker("ceiling", {**common, "conv_repeats": 3}, tuned=True))
    ceiling = max(c["conv3x3_gflops"] for c in ceilings)
    ceiling_cpu = max(c["conv3x3_gflop_per_cpu_s"] for c in ceilings)
    for row in rows:
        row["gflops"] = row["images_per_s"] * gflop
        row["fraction_of_ceiling"] = row["gflops"] / ceiling
        row["fraction_of_ceiling_cpu_time"] = row["images_per_cpu_s"] * gflop / ceiling_cpu
    by = {row["config"]: row for row in rows}
    research, fp32, bf16 = by[configs[0][0]], by["normprobe fp32"], by["normprobe bf16"]
    decode = None
    if not args.skip_decode:
        log("decode (50,000 train JPEGs)")
        decode = run_worker("decode", {**common, "repeats": 1}, tuned=True)
    quality = feature_quality(tmp / "fp32", tmp / "bf16")

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": args.threads or torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": bf16_is_native(torch.device("cpu")),
            "load_average_at_end": os.getloadavg(),
        },
        "model": {
            "spec": "resnet18 cifar stem width 64 + simclr projector (random weights)",
            "gflop_per_image": gflop,
        },
        "data": f"cifar10 test mirror (JPEG), first {research['images']} images",
        "ceiling": {"runs": ceilings, "conv3x3_gflops": ceiling, "conv3x3_gflop_per_cpu_s": ceiling_cpu},
        "configs": rows,
        "ratios": {
            "normprobe_fp32_vs_research": fp32["images_per_s"] / research["images_per_s"],
            "bf16_vs_fp32": bf16["images_per_s"] / fp32["images_per_s"],
            "tuned_allocator_vs_glibc_default": fp32["images_per_s"]
            / by["normprobe fp32, glibc default allocator"]["images_per_s"],
            "prefetch_vs_none": fp32["images_per_s"]
            / by["normprobe fp32, no decode prefetch"]["images_per_s"],
        },
        "bf16_quality": quality,
        "decode": decode,
        "wall_seconds": time.perf_counter() - began,
    }

    print(
        f"\nmodel: ResNet-18 CIFAR stem w64 + SimCLR projector, {gflop:.3f} GFLOP/image; data: {report['data']}"
    )
    print(
        f"machine: {report['machine']['cores']} cores, {report['machine']['cpu_capability']}, native bf16: "
        f"{report['machine']['native_bf16']}, torch {torch.__version__} ({report['machine']['torch_threads']} threads)"
    )
    print(
        f"ceiling: model's 3x3 convs alone {ceiling:.1f} GFLOP/s (start {ceilings[0]['conv3x3_gflops']:.1f}, "
        f"end {ceilings[1]['conv3x3_gflops']:.1f}), {ceiling_cpu:.1f} GFLOP per CPU-second; "
        f"torch.mm fp32 {max(c['mm_fp32_gflops'] for c in ceilings):.1f} GFLOP/s\n"
    )
    header = (
        f"{'configuration':<48} {'img/s':>8} {'GFLOP/s':>8} {'of ceiling':>10} {'vs research':>11} "
        f"{'img/CPU-s':>10} {'of ceiling (CPU-s)':>18} {'faults/pass':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        faults = min(row["page_faults_per_pass"]) if "page_faults_per_pass" in row else None
        print(
            f"{row['config']:<48} {row['images_per_s']:8.1f} {row['gflops']:8.1f} {row['fraction_of_ceiling']:10.2f} "
            f"{row['images_per_s'] / research['images_per_s']:10.2f}x {row['images_per_cpu_s']:10.1f} "
            f"{row['fraction_of_ceiling_cpu_time']:18.2f} {faults if faults is not None else '-':>12}"
        )
    print()
    for head, q in quality.items():
        knn = (
            (
                f"kNN LOO acc fp32 {q['knn_loo_accuracy_fp32']:.4f} / bf16 {q['knn_loo_accuracy_bf16']:.4f} "
                f"(agreement {q['knn_prediction_agreement']:.4f})"
            )
            if "knn_loo_k" in q
            else q["knn"]
        )
        print(
            f"bf16 vs fp32, {head}: relative L2 {q['relative_l2']:.4%}, mean norm change {q['mean_norm_change']:+.4%}, "
            f"norm rank corr {q['norm_rank_spearman']:.5f}; {knn}"
        )
    if decode:
        print(
            f"\ndecode {decode['images']} train JPEGs: Pillow thread pool {decode['pillow_threadpool_s']:.2f} s, "
            f"normprobe batched (torchvision) {decode['normprobe_batched_s']:.2f} s "
            f"({decode['pillow_threadpool_s'] / decode['normprobe_batched_s']:.1f}x), bit-identical: {decode['bit_identical']}"
        )
    print(
        f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (shared machine: timings are noisy)"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
