"""``normprobe train compare RUN_DIR... --out DIR``: several training runs side by side.

Reads each run folder's ``config.json`` and ``metrics.jsonl`` (nothing is recomputed) and writes
into ``--out``:

- ``compare.csv`` and ``compare.md``: one row per run with its settings (method, cut, GradScale,
  weight decay, epochs), the final kNN accuracy of every head, the kNN accuracy near epochs 10, 25
  and 50, and the final mean train/test norm of every head;
- ``compare_classes.csv`` (with ``--per-class``): for runs on the class-imbalanced subset, the mean
  norm of each class's training images against the class's size, with the Spearman correlation
  per head in ``compare.csv``. The metrics do not hold per-class norms, so they are computed
  from the run's ``final.pt`` on its own training set;
- ``compare.html``: one self-contained page (plotly inlined, it works offline) with the kNN and
  mean-norm curves per epoch of every run.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normprobe.atomic import atomic_write
from normprobe.errors import NormprobeError
from normprobe.models import HEADS
from normprobe.terminal import command_status

TARGET_EPOCHS = (10, 25, 50)
OUTPUTS = ("compare.csv", "compare.md", "compare.html", "compare_classes.csv")
SPREADSHEET_FORMULA_START = ("=", "+", "-", "@")


@dataclass
class Run:
    """One run folder as written by ``normprobe train``."""

    name: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    classes: pd.DataFrame | None = None  # class, images, frequency, norm_<head> (``--per-class``)

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the monitor measured (``knn_<head>`` columns), in encoder order."""
        found = {key[len("knn_") :] for row in self.history for key in row if key.startswith("knn_")}
        return tuple(h for h in HEADS if h in found)

    @property
    def monitored(self) -> list[dict[str, Any]]:
        """The epochs with kNN measurements (``monitor.every``), oldest first."""
        return [row for row in self.history if any(key.startswith("knn_") for key in row)]

    @property
    def imbalanced(self) -> bool:
        return bool(self.config.get("dataset", {}).get("imbalance"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise NormprobeError(f"{path}: cannot read it as JSON ({err})") from err


def read_run(path: Path) -> Run:
    """A run folder's config and per-epoch metrics."""
    if not path.is_dir():
        raise NormprobeError(f"{path}: no such run folder")
    for name in ("config.json", "metrics.jsonl"):
        if not (path / name).is_file():
            raise NormprobeError(f"{path}: not a training run folder (it has no {name})")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise NormprobeError(f"{path / 'config.json'}: not a training config")
    history = []
    for number, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError as err:
            raise NormprobeError(f"{path / 'metrics.jsonl'}: line {number} is not JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise NormprobeError(f"{path / 'metrics.jsonl'}: line {number} is not an epoch record")
        history.append(row)
    return Run(path.resolve().name, path, config, history)


def nearest_monitored(run: Run, target: int) -> dict[str, Any] | None:
    """The monitored epoch nearest to ``target`` (the earlier one on a tie), or None when the run
    has none within one monitoring interval of it (it has not got there, or is not monitored)."""
    every = int(run.config.get("monitor", {}).get("every") or 1)
    rows = [row for row in run.monitored if abs(row["epoch"] - target) <= every]
    return min(rows, key=lambda row: (abs(row["epoch"] - target), row["epoch"])) if rows else None


def per_class_norms(run: Run, data_root: str | None, batch_size: int) -> pd.DataFrame:
    """Mean norm of every head over each class of the run's training set, from its ``final.pt``."""
    from normprobe.training.loop import load_train_set

    from normprobe.checkpoints import load_encoder
    from normprobe.device import pick_device
    from normprobe.extraction import extract_arrays

    final = run.path / "final.pt"
    if not final.is_file():
        raise NormprobeError(f"{run.path}: --per-class needs the run's final.pt (the run has not finished)")
    loaded = load_encoder(final)
    config = json.loads(json.dumps(run.config))  # a copy: the data root may be replaced
    if data_root is not None:
        config["dataset"]["data_root"] = data_root
    train_set = load_train_set(config)
    embeddings = extract_arrays(
        loaded.encoder,
        loaded.preprocess,
        train_set,
        loaded.heads,
        batch_size=batch_size,
        device=pick_device("auto"),
        progress=False,
    )
    counts = np.bincount(train_set.labels, minlength=len(train_set.classes))
    present = np.flatnonzero(counts)
    table = pd.DataFrame(
        {
            "class": [train_set.classes[c] for c in present],
            "images": counts[present],
            "frequency": counts[present] / counts.sum(),
        }
    )
    for head, values in embeddings.items():
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        table[f"norm_{head}"] = [float(norms[train_set.labels == c].mean()) for c in present]
    return table


def spearman(table: pd.DataFrame, head: str) -> float:
    """Rank correlation of class size and the class's mean norm (NaN for fewer than 3 classes)."""
    from scipy.stats import spearmanr

    if len(table) < 3:
        return float("nan")
    return float(spearmanr(table["images"], table[f"norm_{head}"]).statistic)


def _safe_cell(text: str) -> str:
    """A run name as a spreadsheet shows it: never read as a formula."""
    return f"'{text}" if text.startswith(SPREADSHEET_FORMULA_START) else text


def summary_table(runs: Sequence[Run]) -> pd.DataFrame:
    heads = [h for h in HEADS if any(h in run.heads for run in runs)]
    rows = []
    for run in runs:
        cfg, last = run.config, (run.monitored or [{}])[-1]
        backbone = cfg.get("backbone", {})
        row: dict[str, Any] = {
            "run": _safe_cell(run.name),
            "method": cfg.get("method"),
            "backbone": f"{backbone.get('name', '?')} w{backbone['width']}"
            if "width" in backbone
            else backbone.get("name"),
            "imbalanced": run.imbalanced,
            "cut": cfg.get("cut"),
            "gradscale": cfg.get("gradscale"),
            "weight_decay": cfg.get("optimizer", {}).get("weight_decay"),
            "epochs": cfg.get("epochs"),
            "epochs_done": run.history[-1]["epoch"] if run.history else 0,
            "final_epoch": last.get("epoch"),
        }
        row.update({f"knn_{h}": last.get(f"knn_{h}") for h in heads})
        for target in TARGET_EPOCHS:
            near = nearest_monitored(run, target) or {}
            row[f"epoch@{target}"] = near.get("epoch")
            row.update({f"knn_{h}@{target}": near.get(f"knn_{h}") for h in heads})
        for split in ("train", "test"):
            row.update({f"norm_{split}_{h}": last.get(f"norm_{split}_{h}") for h in heads})
        if run.classes is not None:
            row.update({f"spearman_{h}": spearman(run.classes, h) for h in heads if h in run.heads})
        rows.append(row)
    table = pd.DataFrame(rows)
    epochs = ["epochs", "epochs_done", "final_epoch", *(f"epoch@{t}" for t in TARGET_EPOCHS)]
    return table.astype({column: "Int64" for column in epochs})  # whole numbers, blank where none


def class_table(runs: Sequence[Run]) -> pd.DataFrame | None:
    parts = [run.classes.assign(run=_safe_cell(run.name)) for run in runs if run.classes is not None]
    if not parts:
        return None
    table = pd.concat(parts, ignore_index=True)
    return table[["run", *[c for c in table.columns if c != "run"]]]


def _markdown_value(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(_markdown_value, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    for record in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_value(v) for v in record) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(runs: Sequence[Run], summary: pd.DataFrame) -> str:
    parts = [
        "# Training runs compared\n",
        "kNN: weighted k-NN accuracy of the monitor (k and T of each run's config) on its test subset; "
        "`@N`: at the monitored epoch nearest to N (`epoch@N`), blank if the run has none within one "
        "monitoring interval. Norms: mean embedding norm on the monitor's train bank and test set "
        "at the last monitored epoch.\n",
        markdown_table(summary),
    ]
    for run in runs:
        if not run.imbalanced:
            continue
        parts.append(f"\n## {_markdown_value(run.name)}: mean norm per class (imbalanced training set)\n")
        if run.classes is None:
            parts.append(
                "Not computed: run `compare` with `--per-class` (embeds the training set with final.pt).\n"
            )
            continue
        rhos = ", ".join(f"{h} {spearman(run.classes, h):.3f}" for h in run.heads)
        parts.append(f"Spearman correlation of class size and mean norm: {rhos}.\n\n")
        parts.append(markdown_table(run.classes))
    return "\n".join(parts)


def curves_html(runs: Sequence[Run]) -> str:
    """One page: kNN accuracy and mean test norm per epoch, a row per head; the loss head's norm
    on the training batches (every epoch) dotted; and, for ``--per-class`` runs, norm vs class size."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    heads = [h for h in HEADS if any(h in run.heads for run in runs)] or ["z"]
    fig = make_subplots(
        rows=len(heads),
        cols=2,
        subplot_titles=[f"{title} ({h})" for h in heads for title in ("kNN accuracy", "mean test norm")],
        vertical_spacing=0.1,
    )
    palette = qualitative.Plotly
    for i, run in enumerate(runs):
        name, color = html.escape(run.name), palette[i % len(palette)]
        style = {"legendgroup": name, "line": {"color": color}}
        shown = False
        for row, head in enumerate(heads, 1):
            points = [r for r in run.monitored if f"knn_{head}" in r]
            epochs = [r["epoch"] for r in points]
            for col, key in ((1, f"knn_{head}"), (2, f"norm_test_{head}")):
                fig.add_trace(
                    go.Scatter(
                        x=epochs,
                        y=[r.get(key) for r in points],
                        mode="lines+markers",
                        name=name,
                        showlegend=not shown and bool(points),
                        **style,
                    ),
                    row=row,
                    col=col,
                )
                shown = shown or bool(points)
            train_key = f"train_norm_{head}"
            trained = [r for r in run.history if train_key in r]
            if trained:
                fig.add_trace(
                    go.Scatter(
                        x=[r["epoch"] for r in trained],
                        y=[r[train_key] for r in trained],
                        mode="lines",
                        name=f"{name} (training batches)",
                        legendgroup=name,
                        showlegend=False,
                        line={"color": color, "dash": "dot"},
                    ),
                    row=row,
                    col=2,
                )
    fig.update_xaxes(title_text="epoch", row=len(heads))
    fig.update_layout(
        height=320 * len(heads) + 120,
        title="kNN accuracy and mean norm per epoch (dotted: the loss head's norm on the training batches)",
        template="plotly_white",
    )
    figures = [pio.to_html(fig, include_plotlyjs=True, full_html=False)]
    with_classes = [(run, run.classes) for run in runs if run.classes is not None]
    if with_classes:
        classes = go.Figure()
        for i, (run, table) in enumerate(with_classes):
            for head in run.heads:
                classes.add_trace(
                    go.Scatter(
                        x=table["images"],
                        y=table[f"norm_{head}"],
                        mode="markers+lines",
                        name=f"{html.escape(run.name)} ({head})",
                        text=[html.escape(c) for c in table["class"]],
                        line={"color": palette[i % len(palette)]},
                    )
                )
        classes.update_layout(
            title="Mean norm per class against class size (imbalanced training sets)",
            xaxis={"title": "training images of the class", "type": "log"},
            yaxis={"title": "mean norm"},
            template="plotly_white",
        )
        figures.append(pio.to_html(classes, include_plotlyjs=False, full_html=False))
    body = "\n".join(figures)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Training runs compared</title></head>\n'
        f"<body>\n{body}\n</body></html>\n"
    )


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _check_out(out: Path, force: bool) -> None:
    """Before any work: the output folder can be written, and holds no earlier comparison unless ``force``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NormprobeError(f"{out}: cannot create the output folder ({err.strerror})") from err
    if not os.access(out, os.W_OK):
        raise NormprobeError(f"{out}: the output folder is not writable")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise NormprobeError(f"{out} already holds {', '.join(existing)}: pass --force to replace them")


def compare(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    per_class: bool = False,
    data_root: str | None = None,
    batch_size: int = 512,
    force: bool = False,
    log: Any = None,
) -> list[Path]:
    """Write the comparison of ``run_dirs`` into ``out``; returns the files written."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if batch_size < 1:
        raise NormprobeError(f"--batch-size must be >= 1, got {batch_size}")
    runs = [read_run(Path(p)) for p in run_dirs]
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:  # two folders of the same name: tell them apart by their path
            run.name = str(run.path)
    _check_out(out, force)
    if per_class:
        for run in runs:
            if run.imbalanced:
                log(f"{run.name}: mean norm per class of the training set, from final.pt")
                run.classes = per_class_norms(run, data_root, batch_size)
    summary = summary_table(runs)
    outputs: list[tuple[str, str]] = [
        ("compare.csv", summary.to_csv(index=False)),
        ("compare.md", markdown_report(runs, summary)),
        ("compare.html", curves_html(runs)),
    ]
    classes = class_table(runs)
    if classes is not None:
        outputs.append(("compare_classes.csv", classes.to_csv(index=False)))
    for name, text in outputs:
        _write_text(out / name, text)
    return [out / name for name, _ in outputs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normprobe train compare",
        description="Compare training runs: final and early kNN accuracy and mean norms per head, "
        "per-class norms of imbalanced runs, and their curves per epoch.",
        epilog="example:\n  normprobe train compare runs/study-* --out study --per-class",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders (out_dir of a run)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for compare.csv/.md/.html")
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="for runs on the imbalanced subset, embed their training set with final.pt and report the "
        "mean norm per class against the class size (Spearman)",
    )
    parser.add_argument("--data-root", help="where the datasets are, instead of each run's dataset.data_root")
    parser.add_argument("--batch-size", type=int, default=512, help="images per forward pass for --per-class")
    parser.add_argument("--force", action="store_true", help="replace an earlier comparison in --out")
    return parser


def _run(args: argparse.Namespace) -> int:
    written = compare(
        args.runs,
        args.out,
        per_class=args.per_class,
        data_root=args.data_root,
        batch_size=args.batch_size,
        force=args.force,
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    return command_status("normprobe train compare", lambda: _run(args))
