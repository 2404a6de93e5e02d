"""`normprobe analyze` as a function: open the run, take the steps, write the results folder.

    from normprobe.pipeline import AnalysisSettings, run_analysis
    results = run_analysis("simclr.pt", "results/", AnalysisSettings(ood=("cifar100", "mnist")))
    results.run.summary.ood["cifar100/test"]["norm"]["auroc"]

    # without a checkpoint: embeddings written by `normprobe embed`, or plain .npz files
    settings = AnalysisSettings(id_train="train.npz", id_test="test.npz", ood=("c100.parquet",))
    results = run_analysis(None, "results/", settings)

The CLI, the demo command, :func:`normprobe.analyze` and notebooks all call :func:`run_analysis`.
Embedding input has no images: the exemplars are listed by index, and the report and the
explorer say there are no images to show.

The kNN predictions and the per-set scores are cached too (same cache, keyed by the embeddings'
cache keys and the settings that shape them), because on a 50,000-image training set the
leave-one-out searches cost minutes while everything else costs seconds: a re-run, or a run
that only adds an OOD set, recomputes just what changed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from normprobe import __version__, data
from normprobe.analyses import human
from normprobe.analyses.buckets import SELF_VOTE_NOTE
from normprobe.analyses.settings import AnalysisSettings
from normprobe.checkpoints import LoadedEncoder
from normprobe.pipeline import steps
from normprobe.pipeline.context import Run, open_run
from normprobe.pipeline.sets import AnalysedSet, GivenSets
from normprobe.record import (
    RUN_FORMAT,
    AnalysedDataset,
    CheckpointInfo,
    DatasetInfo,
    EmbeddingInput,
    RecordedSettings,
    RunRecord,
    Summary,
    Timings,
    from_json,
)
from normprobe.report import PLOTLY_FILE, analysis_report, plotly_js
from normprobe.results import Results, read_results, sample_columns, write_results


def run_analysis(
    checkpoint: str | Path | LoadedEncoder | None,
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    given: GivenSets | None = None,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> Results:
    """Run every analysis and write the results folder ``out`` (Contract 2).

    ``checkpoint`` is a file, a zoo model name or a loaded encoder that embeds the image sets; None means
    the sets are embeddings (``settings.id_train`` / ``id_test`` / ``ood`` name ``.npz`` or
    ``.parquet`` files, see :mod:`normprobe.embedding_files`). ``given`` holds sets made in Python
    (ImageSets with a checkpoint, EmbeddingSets without) under the names the settings use for them.
    ``force`` overwrites a previous results folder (never anything else). ``command`` is recorded
    in run.json (default: ``sys.argv``). Returns the folder as read back by
    :func:`normprobe.results.read_results`. Raises :class:`NormprobeError` for bad input, before
    any expensive work where possible.
    """
    began = time.perf_counter()
    settings = settings or AnalysisSettings()
    run = open_run(checkpoint, out, settings, given=given or {}, force=force, progress=progress)

    samples = steps.samples_frame(run)
    neighbours = steps.Neighbours(run)
    steps.classify(run, samples, neighbours)
    score_columns = steps.score(run, samples, neighbours)
    knn_search = steps.search_recall(run, neighbours)
    with run.timed("analyses_s"):
        analyses = [
            steps.norms(run, samples),
            steps.buckets(run, samples),
            steps.ood(run, samples, score_columns),
            steps.exemplars(run, samples),
            steps.human_labels(run, samples),
        ]

    record = _record(run, analyses, knn_search, list(sys.argv if command is None else command))
    report_html, report_files = None, {}
    if settings.report:
        with run.timed("report_s"):
            sections = [a.section(record) for a in analyses if a.section is not None]
            report_html = analysis_report(record, sections, plotly=settings.plotly)
            if settings.plotly == "directory":
                report_files[PLOTLY_FILE] = plotly_js()
    run.timings["total_s"] = time.perf_counter() - began
    record = replace(record, timings=Timings(**run.timings))
    columns = sample_columns(run.heads, score_columns) + [
        c for c in samples.columns if c.startswith(human.PREFIX)
    ]
    tables = {name: table for a in analyses for name, table in a.tables.items()}
    write_results(
        run.out, record, samples[columns], tables, report_html, force=force, report_files=report_files
    )
    run.log(f"wrote {run.out}")
    return read_results(run.out)


def _record(
    run: Run, analyses: list[steps.Analysis], knn_search: dict[str, Any] | None, command: list[str]
) -> RunRecord:
    """run.json of ``run`` (timings as they stand: the report's and the total are added after)."""
    settings = run.settings
    summary: dict[str, Any] = {}
    for analysis in analyses:
        summary.update(analysis.summary)
    options = asdict(settings)
    if run.encoder is None:  # embedding input: no encoder ran, so its settings do not apply
        options.update(precision=None, batch_size=None)
    recorded = {
        **{key: options[key] for key in RecordedSettings.__dataclass_fields__ if key in options},
        "device": str(run.device),
        "knn": "cosine, weighted vote exp(sim/T); ID-train by leave-one-out",
        "cache": settings.cache_dir or ("default" if settings.use_cache else "off"),
    }
    return RunRecord(
        format=RUN_FORMAT,
        normprobe_version=__version__,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=tuple(map(str, command)),
        checkpoint=CheckpointInfo.of(run.encoder) if run.encoder is not None else None,
        inputs=tuple(
            from_json(EmbeddingInput, {"role": s.role, "spec": s.spec, **s.input_record}, "inputs")
            for s in run.sets
            if s.input_record is not None
        ),
        id_dataset=settings.named_id_dataset,
        datasets=tuple(_dataset(run, s, run.ood_groups.get(s.key)) for s in run.sets),
        heads=run.heads,
        primary_head=run.primary,
        settings=RecordedSettings(**recorded),
        summary=Summary(**summary),
        notes=tuple(note for a in analyses for note in a.notes) + (SELF_VOTE_NOTE,),
        timings=Timings(**{"total_s": 0.0, **run.timings}),
        knn_search=knn_search,
    )


def _dataset(run: Run, s: AnalysedSet, ood_group: str | None) -> AnalysedDataset:
    title = str(data.load_manifest(s.manifest).raw.get("title", s.manifest)) if s.manifest else s.name
    return AnalysedDataset(
        **asdict(DatasetInfo.of(s)),
        role=s.role,
        title=title,
        spec=s.spec,
        data_root=str(data.resolve_data_root(run.settings.data_root)),
        image_size=tuple(s.imageset.image_size) if s.imageset is not None else None,  # type: ignore[arg-type]
        images=s.reopenable,
        embeddings_from_cache=s.from_cache,
        ood_group=ood_group,
    )
