"""Extraction: equals a manual forward, keeps the last batch, caches by what matters, refuses NaN."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from normprobe import data
from normprobe.cache import Cache
from normprobe.checkpoints import LoadedEncoder, load_encoder, save_checkpoint
from normprobe.errors import NormprobeError
from normprobe.extraction import cache_key, extract, extract_arrays
from normprobe.models import build_encoder
from normprobe.models.heads import simclr_projector
from normprobe.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
SPEC = {
    "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
    "projector": simclr_projector(64, 128, 32),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    encoder = build_encoder(SPEC)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in encoder.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        method="simclr",
        encoder_spec=SPEC,
        preprocess=Preprocess((32, 32), CIFAR10_MEAN, CIFAR10_STD),
        state_dict=encoder.state_dict(),
    )
    return path


@pytest.fixture()
def loaded(checkpoint: Path) -> LoadedEncoder:
    return load_encoder(checkpoint)


@pytest.fixture(scope="module")
def subset() -> data.ImageSet:
    return data.load("cifar10", "test", DATA_ROOT).subset(np.arange(120), "first120")


def _manual(loaded: LoadedEncoder, imageset: data.ImageSet) -> dict[str, np.ndarray]:
    x = imageset.images().permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    model = build_encoder(SPEC).eval()
    model.load_state_dict(torch.load(loaded.path, weights_only=True)["state_dict"])
    with torch.inference_mode():
        out = model(x)
    return {k: v.numpy() for k, v in out.items()}


def test_extraction_equals_a_manual_forward_and_keeps_the_last_batch(
    loaded: LoadedEncoder, subset: data.ImageSet
) -> None:
    expected = _manual(loaded, subset)
    for batch_size, prefetch in [(50, True), (120, False)]:  # 120 = 50 + 50 + 20: the last batch counts
        arrays = extract_arrays(
            loaded.encoder,
            loaded.preprocess,
            subset,
            ("feats", "z"),
            batch_size=batch_size,
            progress=False,
            prefetch=prefetch,
        )
        assert (
            set(arrays) == {"feats", "z"}
            and arrays["z"].shape == (120, 32)
            and arrays["z"].dtype == np.float32
        )
        for head in ("feats", "z"):
            np.testing.assert_allclose(arrays[head], expected[head], rtol=1e-4, atol=1e-5)
    assert not loaded.encoder.training


def test_bf16_is_close_to_fp32(loaded: LoadedEncoder, subset: data.ImageSet) -> None:
    small = subset.subset(np.arange(32), "first32")
    fp32 = extract_arrays(loaded.encoder, loaded.preprocess, small, ("feats",), progress=False)["feats"]
    bf16 = extract_arrays(
        loaded.encoder, loaded.preprocess, small, ("feats",), precision="bf16", progress=False
    )["feats"]
    assert bf16.dtype == np.float32
    assert 0 < np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32) < 0.03


def test_bad_requests_are_clear_errors(loaded: LoadedEncoder, subset: data.ImageSet) -> None:
    with pytest.raises(NormprobeError, match="checkpoint has no head 'p'"):
        extract(loaded, subset, ("z", "p"), progress=False)
    with pytest.raises(NormprobeError, match="precision must be one of"):
        extract_arrays(loaded.encoder, loaded.preprocess, subset, ("z",), precision="fp16", progress=False)
    with pytest.raises(NormprobeError, match="nothing to embed"):
        extract_arrays(
            loaded.encoder, loaded.preprocess, subset.subset(np.arange(0), "none"), ("z",), progress=False
        )


def test_cache_hits_and_misses(loaded: LoadedEncoder, subset: data.ImageSet, tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    small = subset.subset(np.arange(48), "first48")
    first = extract(loaded, small, ("feats", "z"), cache=cache, progress=False)
    assert not first.from_cache and len(list(tmp_path.rglob("*.npy"))) == 2
    # computed, then served memory-mapped from the cache files like a hit (nothing held twice)
    assert all(isinstance(v, np.memmap) and not v.flags.writeable for v in first.heads.values())
    second = extract(loaded, small, ("feats", "z"), cache=cache, progress=False)
    assert second.from_cache
    for head in ("feats", "z"):
        np.testing.assert_array_equal(second.heads[head], first.heads[head])
    np.testing.assert_allclose(second.norms("z"), np.linalg.norm(first.heads["z"], axis=1), rtol=1e-6)
    assert extract(
        loaded, small, ("z",), cache=cache, progress=False
    ).from_cache  # a subset of the cached heads

    keys = {cache_key(loaded, small, "z", "fp32")}
    for changed, imageset, precision in [
        ("precision", small, "bf16"),
        ("data", subset.subset(np.arange(1, 49), "rows1to48"), "fp32"),
    ]:
        result = extract(loaded, imageset, ("z",), precision=precision, cache=cache, progress=False)
        assert not result.from_cache, changed
        keys.add(cache_key(loaded, imageset, "z", precision))
    assert len(keys) == 3
    assert cache_key(loaded, small, "feats", "fp32") != cache_key(
        loaded, small, "z", "fp32"
    )  # the head is in the key

    uncached = extract(loaded, small, ("z",), cache=None, progress=False)  # --no-cache
    assert not uncached.from_cache and not isinstance(uncached.heads["z"], np.memmap)


def test_a_changed_checkpoint_misses(
    loaded: LoadedEncoder, subset: data.ImageSet, tmp_path: Path, checkpoint: Path
) -> None:
    cache = Cache(tmp_path / "cache")
    small = subset.subset(np.arange(16), "first16")
    extract(loaded, small, ("z",), cache=cache, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["projector.3.bias"] += 1.0
    save_checkpoint(
        tmp_path / "other.pt",
        method="simclr",
        encoder_spec=SPEC,
        preprocess=loaded.preprocess,
        state_dict=state["state_dict"],
    )
    other = extract(load_encoder(tmp_path / "other.pt"), small, ("z",), cache=cache, progress=False)
    assert not other.from_cache


def test_a_corrupt_cache_entry_is_recomputed(
    loaded: LoadedEncoder, subset: data.ImageSet, tmp_path: Path
) -> None:
    cache = Cache(tmp_path)
    small = subset.subset(np.arange(16), "first16")
    good = np.array(extract(loaded, small, ("z",), cache=cache, progress=False).heads["z"])  # not the map
    entry = next(tmp_path.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as after a full disk
    again = extract(loaded, small, ("z",), cache=cache, progress=False)
    assert not again.from_cache
    np.testing.assert_allclose(again.heads["z"], good, rtol=1e-5)
    assert extract(
        loaded, small, ("z",), cache=cache, progress=False
    ).from_cache  # overwritten with a good entry
    np.save(entry, np.zeros((3, 32), np.float32))  # readable but the wrong number of rows
    assert not extract(loaded, small, ("z",), cache=cache, progress=False).from_cache


def test_nan_embeddings_are_one_line_errors(loaded: LoadedEncoder, subset: data.ImageSet) -> None:
    with torch.no_grad():
        loaded.encoder.projector[3].bias[0] = float("nan")
    with pytest.raises(NormprobeError) as info:
        extract(loaded, subset.subset(np.arange(8), "first8"), ("feats", "z"), progress=False)
    message = str(info.value)
    assert "\n" not in message and "8 embedding(s) of head 'z'" in message and "NaN or Inf" in message
