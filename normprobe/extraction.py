"""Batched extraction of every head in one forward pass, with an on-disk cache.

Embeddings are the raw, un-normalised outputs (``feats``, ``z``, ``p``) in dataset order, float32.
Preprocessing is the checkpoint's, applied to whole uint8 batches as tensors; eval mode,
``torch.inference_mode``, and the last (smaller) batch is kept.

Under ``torchrun`` (``WORLD_SIZE`` > 1), :func:`extract` splits the work: each rank embeds a
contiguous shard of whole batches (:func:`normprobe.distributed.shard`), rank 0 gathers the shards
in order and alone reads and writes the cache; the other ranks get no arrays back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from normprobe import distributed
from normprobe.cache import Cache
from normprobe.checkpoints import LoadedEncoder
from normprobe.data import ImageSet
from normprobe.device import pick_device
from normprobe.errors import NormprobeError
from normprobe.preprocess import Preprocess

PRECISIONS = ("fp32", "bf16")


def prefetched(batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield ``batches``, decoding batch i+1 in a background thread while batch i is in the encoder.

    JPEG decoding and the forward pass then overlap (the decoder and torch's kernels release the GIL).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="normprobe-decode") as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


@dataclass(frozen=True)
class Embeddings:
    """Per-head float32 ``N×D`` arrays of one ImageSet, in its order.

    ``complete`` is False on the ranks other than 0 of a ``torchrun`` extraction: their ``heads``
    is empty, rank 0 holds the merged arrays.
    """

    heads: dict[str, np.ndarray]
    from_cache: bool
    seconds: float
    keys: dict[str, str]
    """Each head's cache key (:func:`cache_key`): what identifies these embeddings, also in the keys
    of what is computed from them."""
    complete: bool = True

    def norms(self, head: str) -> np.ndarray:
        from normprobe.analyses.norms import embedding_norms

        return embedding_norms(self.heads[head], np.float32)


def extract_arrays(
    encoder: nn.Module,
    preprocess: Preprocess,
    imageset: ImageSet,
    heads: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    progress: bool = True,
    prefetch: bool = True,
) -> dict[str, np.ndarray]:
    """Run ``encoder`` over ``imageset`` once and return the requested heads (no cache).

    ``prefetch`` decodes the next batch in a background thread during the forward pass.
    """
    if precision not in PRECISIONS:
        raise NormprobeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch_size < 1:
        raise NormprobeError(f"batch size must be >= 1, got {batch_size}")
    if len(imageset) == 0:
        raise NormprobeError(f"nothing to embed: {imageset.name}/{imageset.split} has no images")
    device = pick_device(device) if not isinstance(device, torch.device) else device
    was_training = encoder.training
    encoder.eval().to(device).to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    outputs: dict[str, np.ndarray] = {}
    bar = tqdm(
        total=len(imageset),
        unit="img",
        desc=f"embed {imageset.name}/{imageset.split}",
        disable=not progress,
        leave=False,
    )
    start = 0
    try:
        with torch.inference_mode(), autocast:
            batches = imageset.batches(batch_size)
            for batch in prefetched(batches) if prefetch else batches:
                out = encoder(preprocess(batch, device))
                missing = [h for h in heads if h not in out]
                if missing:
                    raise NormprobeError(f"encoder has no head {missing[0]!r} (it has: {', '.join(out)})")
                for head in heads:
                    values = out[head].float().flatten(1).cpu().numpy()
                    if head not in outputs:
                        outputs[head] = np.empty((len(imageset), values.shape[1]), np.float32)
                    outputs[head][start : start + len(values)] = values
                start += len(batch)
                bar.update(len(batch))
    finally:
        bar.close()
        encoder.train(was_training)
    for head, values in outputs.items():
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).any(axis=1).sum())
            raise NormprobeError(
                f"{bad} embedding(s) of head {head!r} on {imageset.name}/{imageset.split} are NaN or Inf"
            )
    return outputs


def cache_key(loaded: LoadedEncoder, imageset: ImageSet, head: str, precision: str) -> str:
    """What the embeddings depend on: checkpoint bytes, adapter, the module built from them (``--arch``
    can build different ones from the same file, e.g. another stem padding), data, head, preprocessing
    and precision."""
    return Cache.key(
        "embed/2",
        loaded.sha256,
        loaded.adapter,
        repr(loaded.encoder),
        imageset.fingerprint,
        head,
        loaded.preprocess.describe(),
        precision,
    )


def extract(
    loaded: LoadedEncoder,
    imageset: ImageSet,
    heads: Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    cache: Cache | None = None,
    progress: bool = True,
) -> Embeddings:
    """Embeddings of ``imageset`` for ``heads`` (default: all of the encoder's), served from ``cache`` when present.

    With a cache, the arrays returned are read-only memory maps of its files (also right after
    computing them); without one, in-memory arrays.

    Pass ``cache=None`` or a disabled cache (``Cache(enabled=False)``, ``--no-cache``) to always recompute.
    """
    heads = tuple(heads or loaded.heads)
    unknown = [h for h in heads if h not in loaded.heads]
    if unknown:
        raise NormprobeError(f"checkpoint has no head {unknown[0]!r} (heads: {', '.join(loaded.heads)})")
    began = time.perf_counter()
    device = pick_device(device) if not isinstance(device, torch.device) else device
    device = distributed.join(device)
    keys = {head: cache_key(loaded, imageset, head, precision) for head in heads}
    # rank 0 alone reads the cache and tells the others whether it answered
    leader = distributed.rank() == 0
    cached = {head: cache.get(key) for head, key in keys.items()} if cache is not None and leader else {}
    hit = (
        cache is not None
        and leader
        and all(v is not None and v.ndim == 2 and len(v) == len(imageset) for v in cached.values())
    )
    if distributed.broadcast_object(hit):
        arrays = {h: v for h, v in cached.items() if v is not None} if leader else {}
        return Embeddings(arrays, True, time.perf_counter() - began, keys, complete=leader)
    if distributed.world_size() > 1:
        merged = _extract_sharded(
            loaded,
            imageset,
            heads,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress and leader,
        )
    else:
        merged = extract_arrays(
            loaded.encoder,
            loaded.preprocess,
            imageset,
            heads,
            batch_size=batch_size,
            device=device,
            precision=precision,
            progress=progress,
        )
    if merged is None:
        return Embeddings({}, False, time.perf_counter() - began, keys, complete=False)
    if cache is not None:
        for head, key in keys.items():
            cache.put(key, merged[head])
            # served from now on memory-mapped, as a cache hit would be: the pages are the OS's to
            # drop and re-read, not this process's (the in-memory array is freed with the caller's)
            stored = cache.get(key)
            if stored is not None and stored.shape == merged[head].shape:
                merged[head] = stored
    return Embeddings(merged, False, time.perf_counter() - began, keys)


def _extract_sharded(
    loaded: LoadedEncoder,
    imageset: ImageSet,
    heads: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    progress: bool,
) -> dict[str, np.ndarray] | None:
    """This rank's shard through :func:`extract_arrays`; rank 0 gets every head merged in
    dataset order, the others None.

    A failure on any rank (bad input, NaN, out of memory) is raised on every rank, so no rank
    waits for a gather that will not come.
    """
    if batch_size < 1:
        raise NormprobeError(f"batch size must be >= 1, got {batch_size}")
    if len(imageset) == 0:
        raise NormprobeError(f"nothing to embed: {imageset.name}/{imageset.split} has no images")
    rows = distributed.shard(len(imageset), batch_size)
    part: dict[str, np.ndarray] | None = None
    failure: BaseException | None = None
    if rows.stop > rows.start:
        try:
            part = extract_arrays(
                loaded.encoder,
                loaded.preprocess,
                imageset.subset(np.arange(rows.start, rows.stop), f"rows {rows.start}:{rows.stop}"),
                heads,
                batch_size=batch_size,
                device=device,
                precision=precision,
                progress=progress,
            )
        except Exception as err:  # reported to every rank below, then re-raised here
            failure = err
    me = distributed.rank()
    reports = distributed.all_gather_object(
        (str(failure) if failure is not None else None, {h: v.shape[1] for h, v in (part or {}).items()})
    )
    if failure is not None:
        raise failure
    for other, (message, _) in enumerate(reports):
        if message is not None:
            raise NormprobeError(f"extraction failed on rank {other}: {message}")
    dims = next(d for _, d in reports if d)  # rank 0's shard is never empty
    merged = {}
    for head in heads:
        values = part[head] if part is not None else np.empty((0, dims[head]), np.float32)
        merged[head] = distributed.gather_rows(values, len(imageset))
    if me != 0:
        return None
    return {head: values for head, values in merged.items() if values is not None}
