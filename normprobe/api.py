"""The Python API: ``normprobe.analyze`` and ``normprobe.embed`` (with ``normprobe.rank``), returning
what the CLI writes.

    import normprobe
    results = normprobe.analyze("simclr.pt", ood=["cifar100", "mnist"], max_train=2000, out="results/")
    results.run.summary.ood["cifar100/test"]["norm"]["auroc"]     # Results: run is a typed RunRecord

    train = normprobe.embed("simclr.pt", "cifar10:train")               # EmbeddingSet: heads, labels, ...
    test = normprobe.embed("simclr.pt", "cifar10:test", out="test.npz") # ... also written, as the CLI does
    normprobe.analyze(id_train=train, id_test=test, ood={"c100": "c100.npz"}, out="from-embeddings/")
    normprobe.analyze(id_train=(x_train, y_train), id_test=(x_test, y_test), ood=[x_ood], out="arrays/")
    normprobe.analyze("simclr.pt", id_train=torch_train, id_test=torch_test, ood=[torch_ood], out="mine/")

A set is named as on the command line (a dataset name, a folder, a file) or given as an object:
with a checkpoint, an :class:`~normprobe.data.ImageSet` or a map-style ``torch.utils.data.Dataset``
of images (see :mod:`normprobe.data.torch_dataset`); without one, an
:class:`~normprobe.embedding_files.EmbeddingSet`, an ``N×D`` array (no labels) or a pair
``(embeddings, labels)``. ``ood`` takes one set, a list of sets, or ``{name: object}`` to name
sets given as objects (which are otherwise named after their class, or ``ood1``, ``ood2``, ...).
Every other keyword argument is a field of :class:`~normprobe.analyses.settings.AnalysisSettings`,
named like the CLI option (``max_train`` for ``--max-train``).

Light to import: the analysis stack is imported when a function is called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normprobe.errors import NormprobeError

if TYPE_CHECKING:
    from normprobe.analyses.settings import AnalysisSettings
    from normprobe.checkpoints import LoadedEncoder
    from normprobe.data import ImageSet
    from normprobe.embedding_files import EmbeddingSet
    from normprobe.results import Results

SET_ARGUMENTS = ("id_train", "id_test", "ood")
"""Settings given as :func:`analyze`'s own arguments, since they may be objects."""
LIST_SETTINGS = ("near", "far", "heads", "scorers")
"""Settings that are lists: a comma string (as on the command line) or a sequence."""
PYTHON_SPLITS = {"id-train": "train", "id-test": "test", "ood": "all"}
"""The split name of a set given as a Python object, by its role."""


def _describe(value: Any) -> str:
    """A short text for a value in the recorded call (no array contents)."""
    if isinstance(value, str | Path | int | float | bool) or value is None:
        return repr(str(value) if isinstance(value, Path) else value)
    if isinstance(value, np.ndarray):
        return f"<array {'×'.join(map(str, value.shape))}>"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_describe, value)) + "]"
    name = getattr(value, "name", None)
    return f"<{type(value).__name__} {name}>" if isinstance(name, str) else f"<{type(value).__name__}>"


def _call_text(function: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """The call as run.json's ``command``: ``["normprobe.analyze('simclr.pt', ood=['cifar100'])"]``."""
    parts = [*map(_describe, args), *(f"{k}={_describe(v)}" for k, v in kwargs.items() if v is not None)]
    return [f"normprobe.{function}({', '.join(parts)})"]


def _settings(options: Mapping[str, Any]) -> AnalysisSettings:
    """AnalysisSettings from keyword arguments named like its fields (see :data:`LIST_SETTINGS`)."""
    from normprobe.analyses.settings import AnalysisSettings, split_ood_specs

    settable = sorted({f.name for f in fields(AnalysisSettings)} - set(SET_ARGUMENTS))
    unknown = sorted(set(options) - set(settable))
    if unknown:
        raise TypeError(
            f"analyze() got unexpected keyword argument(s) {', '.join(unknown)} (settings: {', '.join(settable)})"
        )
    values = dict(options)
    for name in LIST_SETTINGS:
        if values.get(name) is not None:
            value = values[name]
            values[name] = split_ood_specs([value] if isinstance(value, str) else list(map(str, value)))
    return AnalysisSettings(**values)


def _python_set(
    value: Any, role: str, name: str | None, position: int, images: bool, image_size: int
) -> ImageSet | EmbeddingSet:
    """A set given as a Python object, as the pipeline takes it (``name`` overrides its own)."""
    from normprobe.data import ImageSet
    from normprobe.data.torch_dataset import is_map_dataset, python_imageset
    from normprobe.embedding_files import EmbeddingSet, from_arrays

    default = role if role != "ood" else f"ood{position + 1}"
    if images:
        if isinstance(value, ImageSet) or is_map_dataset(value):
            return python_imageset(value, PYTHON_SPLITS[role], image_size, name)
        raise NormprobeError(
            f"{role}: with a checkpoint a set is images (a name, folder, file, ImageSet or Dataset), "
            f"not {type(value).__name__}; for embeddings leave the checkpoint out"
        )
    if isinstance(value, EmbeddingSet):
        return value if name is None else replace(value, name=name)
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return from_arrays(np.asarray(value), name=name or default)
    if isinstance(value, tuple) and len(value) == 2:
        return from_arrays(np.asarray(value[0]), np.asarray(value[1]), name=name or default)
    raise NormprobeError(
        f"{role}: without a checkpoint a set is embeddings (a file, an EmbeddingSet, an N×D array or "
        f"(embeddings, labels)), not {type(value).__name__}; to embed images pass a checkpoint"
    )


def _ood_items(ood: Any) -> list[tuple[str | None, Any]]:
    """(name or None, set) for each OOD set of the ``ood`` argument."""
    if isinstance(ood, Mapping):
        named = [value for value in ood.values() if isinstance(value, str | Path)]
        if named:
            raise NormprobeError(
                f"ood={{...: {str(named[0])!r}}}: a set given by name or path is named by it; the names of "
                "ood={name: set} are for Python objects (list names and paths instead: ood=[...])"
            )
        return [(str(name), value) for name, value in ood.items()]
    if isinstance(ood, list | tuple):
        return [(None, value) for value in ood]
    return [(None, ood)]


def analyze(
    checkpoint: str | Path | LoadedEncoder | None = None,
    *,
    id_train: Any = None,
    id_test: Any = None,
    ood: Any = None,
    out: str | Path = "normprobe-results",
    force: bool = False,
    progress: bool = False,
    **options: Any,
) -> Results:
    """Run `normprobe analyze` and return its results folder, read back (:class:`~normprobe.results.Results`).

    ``checkpoint``: a file, a zoo model name or a loaded encoder; None to analyse embeddings.
    ``id_train`` / ``id_test``: the ID sets (default: the train and test splits of ``id_dataset``,
    cifar10 unless named; without a checkpoint they are required). ``ood``: one set, a list, or
    ``{name: set}`` (default with a checkpoint: cifar100). See the module docstring for what a set
    may be. ``out``, ``force``: the results folder and whether a previous one may be replaced.
    ``options``: :class:`~normprobe.analyses.settings.AnalysisSettings` fields (``k=50``,
    ``max_train=2000``, ``id_dataset="cifar10"``, ``human="none"``, ``report=False``, ...).
    """
    from normprobe.analyses.settings import AnalysisSettings, split_ood_specs
    from normprobe.checkpoints import LoadedEncoder, load_encoder
    from normprobe.pipeline import run_analysis
    from normprobe.zoo import resolve_checkpoint

    command = _call_text(
        "analyze",
        [checkpoint] if checkpoint is not None else [],
        {"id_train": id_train, "id_test": id_test, "ood": ood, "out": out, **options},
    )
    settings = _settings(options)
    images = checkpoint is not None
    if ood is None:
        ood = list(AnalysisSettings().ood) if images else []
    sets: list[tuple[str, str | None, Any]] = [("id-train", None, id_train), ("id-test", None, id_test)]
    sets += [("ood", name, value) for name, value in _ood_items(ood)]
    if checkpoint is not None and any(not isinstance(v, str | Path) and v is not None for _, _, v in sets):
        # a Dataset whose images differ in size is cropped to the encoder's input size: load it once here
        checkpoint = (
            checkpoint
            if isinstance(checkpoint, LoadedEncoder)
            else load_encoder(
                resolve_checkpoint(checkpoint), arch=settings.arch, trust_code=settings.trust_code
            )
        )
    # only Python image sets use it, and they have made the checkpoint a LoadedEncoder above
    image_size = int(checkpoint.preprocess.input_size[0]) if isinstance(checkpoint, LoadedEncoder) else 0
    given: dict[str, Any] = {}
    specs: list[str | None] = []
    for position, (role, name, value) in enumerate(sets):
        if value is None or isinstance(value, str | Path):
            specs.append(None if value is None else str(value))
            continue
        made = _python_set(value, role, name, position - 2, images, image_size)
        spec = f"{made.name}:{made.split}"
        if spec in given:
            raise NormprobeError(
                f"two sets are named {made.name}/{made.split}; name the OOD sets with ood={{name: set}}"
            )
        given[spec] = made
        specs.append(spec)
    settings = replace(
        settings, id_train=specs[0], id_test=specs[1], ood=split_ood_specs([s for s in specs[2:] if s])
    )
    return run_analysis(
        checkpoint, out, settings, given=given, force=force, command=command, progress=progress
    )


def embed(
    checkpoint: str | Path | LoadedEncoder,
    data: Any,
    *,
    split: str | None = None,
    heads: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    precision: str = "fp32",
    batch_size: int = 256,
    device: str | None = None,
    data_root: str | Path | None = None,
    arch: str | None = None,
    adapter: str | None = None,
    use_cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    trust_code: bool = False,
    force: bool = False,
) -> EmbeddingSet:
    """Run `normprobe embed`: the raw embeddings of every head (default: all) of one set, in its order.

    ``data``: a dataset name (``cifar10:test``, or ``split``), an image folder, an .npz of images,
    an :class:`~normprobe.data.ImageSet` or a map-style ``torch.utils.data.Dataset`` of images.
    With ``out`` (``.npz`` or ``.parquet``) the file `normprobe embed --out` writes is written too
    (over an existing file only with ``force``) and read back. Returns an :class:`~normprobe.embedding_files.EmbeddingSet` (``.heads["z"]``,
    ``.labels``, ``.index``, ``.ids``, ``.config``), which :func:`analyze` takes as a set.
    """
    from normprobe import data as datasets
    from normprobe.analyses.settings import comma_list
    from normprobe.cache import Cache
    from normprobe.checkpoints import LoadedEncoder, load_encoder
    from normprobe.data.torch_dataset import python_imageset
    from normprobe.device import pick_device
    from normprobe.embedding_files import (
        check_output_file,
        embed_config,
        from_arrays,
        read_embeddings,
        write_embeddings,
    )
    from normprobe.extraction import PRECISIONS, extract
    from normprobe.zoo import resolve_checkpoint

    target = check_output_file(out, force=force) if out is not None else None
    if precision not in PRECISIONS:
        raise NormprobeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    loaded = (
        checkpoint
        if isinstance(checkpoint, LoadedEncoder)
        else load_encoder(resolve_checkpoint(checkpoint), arch=arch, adapter=adapter, trust_code=trust_code)
    )
    image_size = int(loaded.preprocess.input_size[0])
    imageset = (
        datasets.load_any(str(data), split, data_root, image_size=image_size)
        if isinstance(data, str | Path)
        else python_imageset(data, "all", image_size)
    )
    wanted = comma_list(heads) if isinstance(heads, str) else heads
    device_used = pick_device(device)
    result = extract(
        loaded,
        imageset,
        wanted,
        batch_size=batch_size,
        device=device_used,
        precision=precision,
        cache=Cache(cache_dir, enabled=use_cache),
        progress=progress,
    )
    spec = str(data) if isinstance(data, str | Path) else f"python:{type(data).__name__}"
    config = embed_config(loaded, imageset, spec, list(result.heads), precision, device_used)
    if target is not None:
        write_embeddings(target, result.heads, imageset, config)
        return read_embeddings(target)
    return from_arrays(
        result.heads,
        imageset.labels,
        name=imageset.name,
        index=imageset.index,
        ids=imageset.ids,
        classes=imageset.classes,
        config=config,
    )
