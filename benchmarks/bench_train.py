"""Benchmark: training throughput (images/s, two views each) of ``training`` against a reference loop.

Reference ("research-style", like the paper's code): a ``Dataset`` whose ``__getitem__`` applies the
torchvision PIL pipeline per image (RandomResizedCrop, flip, ColorJitter with p=0.8, grayscale with
p=0.2, ToTensor) twice, a ``DataLoader`` (``--ref-workers`` processes), the model in default (NCHW)
memory format, fp32 (``--ref-precision bf16``: autocast), glibc's default allocator, two forward
passes per step; on a GPU (``--device cuda``) the batches are copied from pinned memory and every
step ends with a synchronize, as the ``loss.item()`` such loops log would.

Ours: the ``training`` loop's own step (:meth:`training.loop.Trainer._train_step`): data decoded once
into a uint8 tensor, batched per-sample augmentation on tensors, channels_last, the environment
``normprobe train`` re-executes itself with (glibc tunables, OpenMP threads that sleep while they
wait: :func:`normprobe.allocator.env_with_tunables`); ``--precision bf16`` adds autocast. The
reference runs with none of these variables set, as a script started by hand would.

Both sides train the same method module (same config, same seed) on the same real CIFAR-10 images
with the same SGD step. Every side of every method runs in its own subprocess (glibc reads its
tunables only at start-up), one after another, in one run of this script; each reports the median
seconds per step over ``--steps`` timed steps after one warm-up step, plus CPU seconds per step (the
steadier figure when other programs share the cores). Timings on a shared machine are noisy.
Nothing is asserted.

    NORMPROBE_DATA=/work/shared/data python benchmarks/bench_train.py [--width 16] [--steps 5] [--methods simclr simsiam]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from normprobe.allocator import TRAINING_ENV, env_with_tunables

METHOD_SETS = {
    "simclr": ["method_options.proj_hidden=512", "method_options.out_dim=128"],
    "simsiam": ["method_options.proj_dim=512", "method_options.pred_hidden=128", "accumulate=1"],
    "byol": ["method_options.proj_hidden=512", "method_options.out_dim=128"],
    "mocov2": ["method_options.proj_hidden=512", "method_options.out_dim=128"],
    "mocov3": [
        'backbone={name: "timm:vit_tiny_patch16_224", img_size: 32, patch_size: 4, depth: 6}',
        "method_options.mlp_hidden=512",
        "method_options.out_dim=128",
    ],
}


def _config(args: argparse.Namespace, method: str, out: str):
    from normprobe.training.config import load_config

    sets = [f"backbone.name=resnet{args.depth}", f"backbone.width={args.width}"] if method != "mocov3" else []
    sets += [
        *METHOD_SETS[method],
        f"batch_size={args.batch}",
        f"dataset.subset={args.batch * (args.steps + 1)}",
        "monitor.every=0",
        "progress=false",
        f"threads={args.threads}",
        f"precision={args.precision}",
        f"device={args.device}",
        f"out_dir={out}",
    ]
    return load_config(f"{method}_cifar10", sets)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device) -> None:  # noqa: ANN001 - a torch.device
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_ours(args: argparse.Namespace, method: str) -> dict:
    import tempfile

    import torch
    from normprobe.training.loop import Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(_config(args, method, out), log=lambda _: None)
        perm = torch.randperm(len(trainer.images), generator=trainer.data_generator)
        times, cpus = [], []
        for step in range(args.steps + 1):
            t0, c0 = time.perf_counter(), _cpu()
            trainer._train_step(perm, step)
            _sync(trainer.device)  # a no-op: the step's own loss read waited for the device
            times.append(time.perf_counter() - t0)
            cpus.append(_cpu() - c0)
    return {"s_per_step": statistics.median(times[1:]), "cpu_per_step": statistics.median(cpus[1:])}


class _TwoViews:
    """Research-style dataset: PIL image per item, the SimCLR pipeline applied twice."""

    def __init__(self, images, aug: dict) -> None:
        from torchvision import transforms as T

        self.images = images
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(32, scale=tuple(aug["crop_scale"])),
                T.RandomHorizontalFlip(aug["flip_p"]),
                T.RandomApply([T.ColorJitter(*aug["jitter"])], p=aug["jitter_p"]),
                T.RandomGrayscale(aug["gray_p"]),
                T.ToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.images[i])
        return self.transform(image), self.transform(image)


def worker_reference(args: argparse.Namespace, method: str) -> dict:
    import tempfile

    import torch
    from normprobe.training.loop import load_train_set
    from normprobe.training.methods import build_method

    with tempfile.TemporaryDirectory() as out:
        config = _config(args, method, out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_method(config).to(device)
    images = load_train_set(config).images().numpy()
    loader = torch.utils.data.DataLoader(
        _TwoViews(images, config["augment"]),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.ref_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-6)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.ref_precision == "bf16")
    times, cpus = [], []
    t0, c0 = time.perf_counter(), _cpu()
    for x1, x2 in loader:
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        with autocast:
            loss, _ = model(x1, x2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.after_step(0, 1)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
        t0, c0 = time.perf_counter(), _cpu()
    return {"s_per_step": statistics.median(times[1:]), "cpu_per_step": statistics.median(cpus[1:])}


def run_side(side: str, method: str, args: argparse.Namespace, timeout: float | None = None) -> dict:
    """One side (``ours`` or ``reference``) of one method in a fresh process (glibc reads its tunables
    at start-up): ours in the environment ``normprobe train`` re-executes itself with, the
    reference in none of it. ``args`` holds this script's options."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", *TRAINING_ENV)}
    if side == "ours":
        env = env_with_tunables(env, TRAINING_ENV)
    options = [
        "depth",
        "width",
        "batch",
        "steps",
        "threads",
        "ref_workers",
        "precision",
        "ref_precision",
        "device",
    ]
    passthrough = [
        item for name in options for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
    ]
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", side, "--method", method, *passthrough],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode:
        raise RuntimeError(f"{method}/{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SETS), choices=list(METHOD_SETS))
    parser.add_argument("--depth", type=int, default=18, choices=(18, 50))
    parser.add_argument("--width", type=int, default=16, help="ResNet width (64 in the papers)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument(
        "--ref-workers", type=int, default=0, help="DataLoader worker processes of the reference"
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="of ours")
    parser.add_argument("--ref-precision", default="fp32", choices=("fp32", "bf16"), help="of the reference")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (both sides)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_reference
        print(json.dumps(fn(args, args.method)))
        return

    results = []
    print(
        f"resnet{args.depth} width {args.width} (mocov3: ViT-tiny depth 6, patch 4), batch {args.batch} x 2 views, "
        f"{args.threads} thread(s), {args.steps} timed steps on {args.device}, ours {args.precision}, "
        f"reference {args.ref_precision}; shared machine: timings are noisy",
        file=sys.stderr,
    )
    header = f"{'method':8} {'ours img/s':>11} {'ref img/s':>10} {'ratio':>6} {'ours img/CPU-s':>15} {'ref img/CPU-s':>14} {'ratio':>6}"
    print(header)
    for method in args.methods:
        row = {"method": method}
        for side in ("reference", "ours"):
            try:
                row[side] = run_side(side, method, args)
            except RuntimeError as err:
                raise SystemExit(str(err)) from None
        ours, ref = row["ours"], row["reference"]
        rate = lambda r, k: args.batch / r[k]  # noqa: E731
        row["speedup_wall"] = ref["s_per_step"] / ours["s_per_step"]
        row["speedup_cpu"] = ref["cpu_per_step"] / ours["cpu_per_step"]
        results.append(row)
        print(
            f"{method:8} {rate(ours, 's_per_step'):11.1f} {rate(ref, 's_per_step'):10.1f} {row['speedup_wall']:5.2f}x "
            f"{rate(ours, 'cpu_per_step'):15.1f} {rate(ref, 'cpu_per_step'):14.1f} {row['speedup_cpu']:5.2f}x",
            flush=True,
        )
    if args.out:
        args.out.write_text(
            json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
