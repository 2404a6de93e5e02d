"""`normprobe embed CKPT --dataset NAME --out PATH`: raw embeddings of every requested head, in dataset order."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from normprobe.analyses.settings import comma_list
from normprobe.commands.options import add_trust_code
from normprobe.embedding_files import check_output_file, embed_config, write_embeddings
from normprobe.errors import NormprobeError
from normprobe.terminal import printable

if TYPE_CHECKING:  # torch is imported after the cheap checks
    import torch


DESCRIPTION = """\
Run a checkpoint's encoder over one dataset split and save the raw, un-normalised embedding of
every requested head (feats = backbone output, z = projector output, p = predictor output), one
row per image in dataset order.

Output, chosen by the suffix of --out (written atomically: a failed run leaves no file):
  .npz      one float32 N x D array per head (keys = head names) plus `index` (original position
            in the split), `labels` (-1 = unknown), `ids` (stable sample ids) and `config` (a JSON
            string: checkpoint, adapter, dataset fingerprint, preprocessing, precision).
            np.load(path)["z"] -- no pickle needed.
  .parquet  one row per image: dataset, split, index, id, label, then per head a fixed-size
            list<float32> column (e.g. `z`) and its L2 norm (`z_norm`); the config is in the schema
            metadata under b"normprobe". Written in row groups of 65,536 rows (one group in
            memory at a time). pandas: np.stack(pd.read_parquet(path)["z"]).

Embeddings are cached ($NORMPROBE_CACHE or --cache-dir) by checkpoint hash, dataset fingerprint,
head, preprocessing and precision: a second run is served from disk.

Under torchrun (several processes, e.g. one per GPU) each process embeds a contiguous shard of the
images (whole batches, so the result equals one process's); rank 0 gathers them in order and alone
writes PATH and the cache (gloo on CPUs, nccl on GPUs, each process on the GPU of its local rank).
"""

EPILOG = """\
examples:
  normprobe embed simclr.pt --dataset cifar10 --split test --out test.npz
  normprobe embed simclr.pt --dataset cifar100 --heads z --out c100.parquet     # partial mirror: 916 test images
  normprobe embed simclr.pt --dataset my_photos/ --out mine.npz                 # a folder (class sub-folders = labels)
  normprobe embed simclr.pt --dataset images.npz --precision bf16 --out e.npz   # bf16 autocast (faster on bf16 hardware)
  torchrun --nproc_per_node 4 -m normprobe embed simclr.pt --dataset my_images/ --out big.parquet  # 4 processes
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="save raw embeddings (feats, z, p) of a dataset to .npz or .parquet",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint file (any supported format) or zoo model name"
    )
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="DATA",
        help="dataset name (see `normprobe datasets list`; `cifar10:test` also names the split), an image folder or an .npz file",
    )
    parser.add_argument(
        "--split", default=None, help="split of a named dataset (default: test, or the dataset's only split)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="PATH", help="output file: .npz or .parquet"
    )
    parser.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    parser.add_argument(
        "--heads",
        default=None,
        metavar="H1,H2",
        help="comma-separated heads to save (default: all the encoder has)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default) or bf16 autocast: about 2x faster on GPUs and on CPUs with bf16 instructions "
        "(AVX512-BF16, AMX), slower on CPUs without them; features within ~0.5%% relative L2, mean norms within 0.1%%",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ... (default: auto)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        type=Path,
        help="folder with the dataset files (default: $NORMPROBE_DATA, else ~/.cache/normprobe/data)",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture for checkpoints that do not record it (e.g. resnet18, resnet50)",
    )
    parser.add_argument(
        "--adapter", default=None, help="force a checkpoint adapter instead of auto-detection"
    )
    add_trust_code(parser)
    parser.add_argument(
        "--no-cache", action="store_true", help="always recompute; neither read nor write the embedding cache"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        type=Path,
        help="embedding cache folder (default: $NORMPROBE_CACHE, else ~/.cache/normprobe/embeddings)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def _parse_heads(spec: str | None) -> tuple[str, ...] | None:
    if spec is None:
        return None
    heads = comma_list(spec)
    if not heads:
        raise NormprobeError(f"--heads {spec!r} names no head")
    return heads


def run(args: argparse.Namespace) -> int:
    from normprobe.zoo import resolve_checkpoint

    out = check_output_file(args.out, force=args.force)
    if args.batch_size < 1:
        raise NormprobeError(f"--batch-size must be >= 1, got {args.batch_size}")
    heads = _parse_heads(args.heads)
    checkpoint = resolve_checkpoint(args.checkpoint)

    # Imported after the cheap checks above, so that those fail at once (torch takes seconds to import).
    from normprobe import distributed
    from normprobe.device import pick_device

    # under torchrun each rank embeds its shard of the data; rank 0 alone prints, caches and writes --out
    ours = not distributed.is_distributed()
    device = distributed.join(pick_device(args.device))
    try:
        return _embed(args, out, heads, checkpoint, device)
    finally:
        if ours and distributed.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()


def _embed(
    args: argparse.Namespace, out: Path, heads: tuple[str, ...] | None, checkpoint: Path, device: torch.device
) -> int:
    from normprobe import data, distributed
    from normprobe.cache import Cache
    from normprobe.checkpoints import load_encoder
    from normprobe.device import bf16_is_native
    from normprobe.extraction import extract

    leader = distributed.rank() == 0

    def say(message: str) -> None:
        if leader:
            print(message)

    loaded = load_encoder(checkpoint, arch=args.arch, adapter=args.adapter, trust_code=args.trust_code)
    imageset = data.load_any(
        args.dataset, args.split, args.data_root, image_size=loaded.preprocess.input_size[0]
    )
    # paths, names and notes come from the user's files: printable() keeps escape sequences off the terminal
    say(
        printable(
            f"checkpoint: {loaded.path} (adapter {loaded.adapter}, method {loaded.method}, heads {', '.join(loaded.heads)})"
        )
    )
    say(printable(f"data: {imageset.name}/{imageset.split}, {len(imageset)} images from {imageset.source}"))
    for note in imageset.notes:
        say(printable(f"  note: {note}"))
    for file, reason in imageset.skipped[:5]:
        say(printable(f"  skipped: {file} ({reason})"))
    if args.precision == "bf16" and not bf16_is_native(device):
        say(
            f"  note: {device} has no native bf16 instructions; bf16 autocast will likely be slower than fp32 here"
        )

    cache = Cache(args.cache_dir, enabled=not args.no_cache)
    embeddings = extract(
        loaded,
        imageset,
        heads,
        batch_size=args.batch_size,
        device=device,
        precision=args.precision,
        cache=cache,
        progress=not args.no_progress,
    )
    if not embeddings.complete:  # another rank's shard: rank 0 has the merged arrays and writes them
        return 0
    config = embed_config(loaded, imageset, args.dataset, list(embeddings.heads), args.precision, device)
    if distributed.world_size() > 1:
        config["processes"] = distributed.world_size()
    write_embeddings(out, embeddings.heads, imageset, config)

    dims = ", ".join(
        f"{h} {v.shape[1]}-d (mean norm {float(embeddings.norms(h).mean()):.3f})"
        for h, v in embeddings.heads.items()
    )
    if embeddings.from_cache:
        say(f"embeddings: served from the cache in {embeddings.seconds:.2f} s ({dims})")
    else:
        rate = len(imageset) / max(embeddings.seconds, 1e-9)
        cached = printable(f"cached in {cache.root}") if cache.enabled else "not cached (--no-cache)"
        where = f"{device} x {distributed.world_size()} processes" if distributed.world_size() > 1 else device
        say(
            f"embeddings: computed on {where} ({args.precision}) at {rate:.0f} images/s, {embeddings.seconds:.1f} s; {cached} ({dims})"
        )
    say(printable(f"wrote {out}"))
    return 0
