"""Tiny real training runs: every method for an epoch on a few hundred CIFAR-10 images, the LR
schedule under accumulation, NaN stop, kill-and-resume, checkpoints read back by load_encoder."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from normprobe.training.config import load_config
from normprobe.training.loop import Trainer, TrainingDiverged

from normprobe.checkpoints import load_encoder

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
pytestmark = pytest.mark.skipif(
    not (DATA_ROOT / "cifar10_train_jpeg.npz").is_file(), reason="CIFAR-10 mirror not present"
)
REPO = Path(__file__).resolve().parents[1]

HEADS = {
    "simclr": ["method_options.proj_hidden=16", "method_options.out_dim=8"],
    "simsiam": ["method_options.proj_dim=16", "method_options.pred_hidden=4"],
    "byol": ["method_options.proj_hidden=16", "method_options.out_dim=8"],
    "mocov2": ["method_options.proj_hidden=16", "method_options.out_dim=8", "method_options.queue_size=64"],
    "mocov3": ["method_options.mlp_hidden=16", "method_options.out_dim=8"],
}
RESNET = ["backbone.name=resnet18", "backbone.width=8"]
VIT = [
    'backbone={name: "timm:vit_tiny_patch16_224", img_size: 32, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}'
]


def overrides(method: str, out: Path, *extra: str) -> list[str]:
    return [
        *(VIT if method == "mocov3" else RESNET),
        *HEADS[method],
        f"out_dir={out}",
        f"dataset.data_root={DATA_ROOT}",
        "dataset.subset=128",
        "batch_size=64",
        "accumulate=1",
        "epochs=1",
        "schedule.warmup_epochs=1",
        "monitor.subset=64",
        "monitor.k=20",
        "progress=false",
        "threads=1",
        *extra,
    ]


def steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["simclr", "simsiam", "byol", "mocov2", "mocov3"])
def test_every_method_trains_an_epoch_and_writes_a_loadable_checkpoint(method: str, tmp_path: Path) -> None:
    cfg = load_config(f"{method}_cifar10", overrides(method, tmp_path, "cut=3", "gradscale=1"))
    trainer = Trainer(cfg, log=lambda _: None)
    final = trainer.run()
    rows = steps(tmp_path)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    heads = trainer.method.encoder.heads
    for head in heads:
        assert 0 <= metrics[f"knn_{head}"] <= 1 and metrics[f"norm_test_{head}"] > 0
    assert (tmp_path / "config.yaml").is_file() and json.loads((tmp_path / "config.json").read_text())[
        "cut"
    ] == 3
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,")

    loaded = load_encoder(final)
    assert loaded.method == method and loaded.heads == heads
    assert loaded.meta["training"]["history"][-1]["epoch"] == 1
    assert trainer.monitor is not None
    x = loaded.preprocess(trainer.monitor.test.images(slice(0, 16)))
    trainer.method.encoder.eval()
    with torch.no_grad():
        ours, theirs = trainer.method.encoder(x), loaded.encoder(x)
    for head in heads:
        torch.testing.assert_close(theirs[head], ours[head])
    payload = torch.load(final, weights_only=True)
    assert set(payload["resume"]) >= {"optimizer", "scheduler", "rng", "data_generator", "augment_generator"}
    if method in ("byol", "mocov2", "mocov3"):
        assert "target_state_dict" in payload


def test_lr_schedule_counts_optimiser_steps_under_accumulation(tmp_path: Path) -> None:
    # 192 images, 32 per forward, 2 accumulated: 3 optimiser steps per epoch, 2 epochs = 6 steps,
    # 1 warm-up epoch = 3 steps; peak = 0.3 x (32 x 2) / 256 = 0.075 (not 0.3 x 32 / 256, not squared).
    cfg = load_config(
        "simclr_cifar10",
        overrides(
            "simclr",
            tmp_path,
            "dataset.subset=192",
            "batch_size=32",
            "accumulate=2",
            "epochs=2",
            "monitor.every=0",
        ),
    )
    trainer = Trainer(cfg, log=lambda _: None)
    assert (trainer.steps_per_epoch, trainer.total_steps, trainer.lr) == (3, 6, pytest.approx(0.075))
    trainer.run()
    lrs = [r["lr"] for r in steps(tmp_path)]
    expected = [
        0.025,
        0.05,
        0.075,
        0.075,
        0.075 * 0.5 * (1 + math.cos(math.pi / 3)),
        0.075 * 0.5 * (1 + math.cos(2 * math.pi / 3)),
    ]
    assert lrs == pytest.approx(expected)
    assert [r["step"] for r in steps(tmp_path)] == [1, 2, 3, 4, 5, 6]
    gs = Trainer(
        load_config(
            "simclr_cifar10",
            overrides("simclr", tmp_path / "gs", "schedule.preset=gradscale", "monitor.every=0"),
        ),
        log=lambda _: None,
    )
    assert gs.lr == pytest.approx(0.3 * 64 / 256 / 6)
    assert gs.scheduler.warmup_steps == gs.total_steps  # 100 warm-up epochs cover this 1-epoch run


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config("simclr_cifar10", overrides("simclr", tmp_path, "epochs=3", "monitor.every=0"))
    trainer = Trainer(cfg, log=lambda _: None)
    forward = trainer.method.forward
    calls = {"n": 0}
    before: dict[str, torch.Tensor] = {}

    def poisoned(x1: torch.Tensor, x2: torch.Tensor):  # the 3rd batch (2nd epoch of 2 steps) diverges
        calls["n"] += 1
        loss, out = forward(x1, x2)
        if calls["n"] == 3:
            before.update({k: v.detach().clone() for k, v in trainer.method.state_dict().items()})
        return (loss * float("nan") if calls["n"] == 3 else loss), out

    trainer.method.forward = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, optimiser step 3.*epoch_0001\.pt"):
        trainer.run()
    # the broken step changed nothing after its forward pass (its backward ran, the optimiser step did not)
    after = trainer.method.state_dict()
    assert before and all(torch.equal(after[k], v) for k, v in before.items())
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert ckpts == ["epoch_0001.pt"] and not (tmp_path / "final.pt").exists()
    assert load_encoder(tmp_path / "checkpoints" / "epoch_0001.pt").meta["training"]["epoch"] == 1


def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    from normprobe.training.__main__ import main

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    sets = overrides(
        "simsiam", tmp_path, "epochs=3", "dataset.subset=128", "monitor.every=0", "checkpoint.keep_last=1"
    )
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "normprobe.training",
            "--config",
            "simsiam_cifar10",
            "--set",
            *sets,
            f"out_dir={killed}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "epoch_0001.pt").exists():
        assert run.poll() is None and time.time() < deadline, run.communicate()[0]
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL and not (killed / "final.pt").exists()

    assert main(["--config", "simsiam_cifar10", "--set", *sets, f"out_dir={straight}"]) == 0
    assert main(["--resume", str(killed)]) == 0
    assert [r["loss"] for r in steps(killed)] == [r["loss"] for r in steps(straight)]
    assert [r["step"] for r in steps(killed)] == list(range(1, 7))
    a, b = (
        torch.load(killed / "final.pt", weights_only=True),
        torch.load(straight / "final.pt", weights_only=True),
    )
    assert [h["train_loss"] for h in a["training"]["history"]] == [
        h["train_loss"] for h in b["training"]["history"]
    ]
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def test_new_run_refuses_a_previous_runs_folder_and_force_deletes_only_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normprobe.training.__main__ import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "NOTES.md").write_text("my notes")  # a folder with only the user's files is fine
    sets = ["--config", "simclr_cifar10", "--set", *overrides("simclr", out, "monitor.every=0")]
    assert main([*sets, "--set", "epochs=2"]) == 0
    (out / "checkpoints" / "README.txt").write_text("mine too")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert main(sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a previous run" in err[0] and "--resume" in err[0] and "--force" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    assert main([*sets, "--force"]) == 0
    assert (out / "NOTES.md").read_text() == "my notes"
    assert (out / "checkpoints" / "README.txt").read_text() == "mine too"
    # nothing of the 2-epoch run is left for --resume to pick up or for the logs to mix with
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["epoch_0001.pt"]
    assert [r["step"] for r in steps(out)] == [1, 2]
    assert load_encoder(out / "final.pt").meta["training"]["epoch"] == 1


def test_resume_repairs_a_torn_last_line_of_the_step_log(tmp_path: Path) -> None:
    from normprobe.training.__main__ import main

    sets = overrides("simclr", tmp_path, "epochs=2", "monitor.every=0")
    assert main(["--config", "simclr_cifar10", "--set", *sets]) == 0
    whole = steps(tmp_path)
    with (tmp_path / "steps.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "step": 3, "lo')  # a kill in the middle of an append
    assert main(["--resume", str(tmp_path / "checkpoints" / "epoch_0001.pt")]) == 0
    assert steps(tmp_path) == whole  # the torn line is gone and epoch 2 is logged once, as before


ZOO_METRICS = (
    Path(__file__).parent / "data" / "simclr-r18w16-e60"
)  # config.json + metrics.jsonl of the zoo candidate


@pytest.fixture(scope="module")
def compared_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny real runs (one on the imbalanced subset, with cut-initialisation) and a copy of the
    60-epoch zoo candidate's metrics, as ``compare`` finds run folders."""
    from normprobe.training.__main__ import main

    root = tmp_path_factory.mktemp("compare")
    runs = {"plain": root / "plain", "imbalanced": root / "imbalanced-cut3", "zoo": root / ZOO_METRICS.name}
    assert main(["--config", "simclr_cifar10", "--set", *overrides("simclr", runs["plain"], "epochs=2")]) == 0
    imbalanced = overrides(
        "simclr", runs["imbalanced"], "epochs=2", "dataset.imbalance=true", "dataset.subset=256"
    )
    assert main(["--config", "simclr_cifar10", "--set", *imbalanced, "cut=3"]) == 0
    runs["zoo"].mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (runs["zoo"] / name).write_bytes((ZOO_METRICS / name).read_bytes())
    return runs


def test_compare_tabulates_knn_and_norms_of_real_runs(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    import pandas as pd
    from normprobe.training.__main__ import main

    out = tmp_path / "cmp"
    assert main(["compare", *map(str, compared_runs.values()), "--out", str(out)]) == 0
    table = pd.read_csv(out / "compare.csv").set_index("run")
    assert list(table.index) == ["plain", "imbalanced-cut3", "simclr-r18w16-e60"]

    zoo = table.loc["simclr-r18w16-e60"]
    rows = [json.loads(line) for line in (ZOO_METRICS / "metrics.jsonl").read_text().splitlines()]
    by_epoch = {r["epoch"]: r for r in rows}
    assert (zoo["method"], zoo["epochs"], zoo["epochs_done"], zoo["final_epoch"]) == ("simclr", 60, 60, 60)
    assert zoo["knn_feats"] == by_epoch[60]["knn_feats"] == 0.6371 and zoo["knn_z"] == by_epoch[60]["knn_z"]
    assert zoo["norm_test_z"] == pytest.approx(by_epoch[60]["norm_test_z"])
    assert zoo["norm_train_feats"] == pytest.approx(by_epoch[60]["norm_train_feats"])
    # monitored every 10 epochs: 10 -> 10, 25 -> 20 (a tie goes to the earlier epoch), 50 -> 50
    assert (zoo["epoch@10"], zoo["epoch@25"], zoo["epoch@50"]) == (10, 20, 50)
    assert zoo["knn_z@25"] == by_epoch[20]["knn_z"] and zoo["knn_feats@50"] == by_epoch[50]["knn_feats"]

    tiny = table.loc["imbalanced-cut3"]
    last = json.loads((compared_runs["imbalanced"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert (tiny["cut"], bool(tiny["imbalanced"]), tiny["weight_decay"]) == (3, True, 1e-6)
    assert tiny["knn_z"] == pytest.approx(last["knn_z"]) and tiny["norm_test_feats"] == pytest.approx(
        last["norm_test_feats"]
    )
    assert table.loc[["plain", "imbalanced-cut3"], ["epoch@10", "knn_z@10", "epoch@50"]].isna().all().all()
    assert "spearman_z" not in table.columns and not (out / "compare_classes.csv").exists()

    md = (out / "compare.md").read_text()
    assert "| simclr-r18w16-e60 | simclr |" in md and "0.6371" in md and "--per-class" in md
    page = (out / "compare.html").read_text()
    assert "<script src" not in page and len(page) > 1_000_000  # plotly.js is inline: it opens offline
    assert all(name in page for name in table.index)

    assert (
        main(["compare", str(compared_runs["plain"]), "--out", str(out)]) == 2
    )  # not replaced without --force
    assert main(["compare", str(compared_runs["plain"]), "--out", str(out), "--force"]) == 0
    assert list(pd.read_csv(out / "compare.csv")["run"]) == ["plain"]


def test_compare_per_class_norms_of_an_imbalanced_run(compared_runs: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    from normprobe.training.__main__ import main
    from normprobe.training.loop import load_train_set
    from scipy.stats import spearmanr

    out = tmp_path / "cmp"
    runs = [str(compared_runs["plain"]), str(compared_runs["imbalanced"])]
    assert main(["compare", *runs, "--out", str(out), "--per-class"]) == 0
    classes = pd.read_csv(out / "compare_classes.csv")
    assert set(classes["run"]) == {"imbalanced-cut3"}  # only imbalanced runs have a per-class table
    config = json.loads((compared_runs["imbalanced"] / "config.json").read_text())
    labels = load_train_set(config).labels
    counts = np.bincount(labels)
    assert list(classes["images"]) == [int(c) for c in counts if c] and classes["images"].sum() == 256
    assert classes["frequency"].sum() == pytest.approx(1.0)
    assert (classes[["norm_feats", "norm_z"]] > 0).all().all()

    table = pd.read_csv(out / "compare.csv").set_index("run")
    rho = table.loc["imbalanced-cut3", "spearman_z"]
    assert rho == pytest.approx(spearmanr(classes["images"], classes["norm_z"]).statistic)
    assert np.isnan(table.loc["plain", "spearman_z"])
    md = (out / "compare.md").read_text()
    assert "Spearman correlation of class size and mean norm: feats" in md and "| airplane |" in md


def test_compare_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from normprobe.training.__main__ import main

    (tmp_path / "notes").mkdir()
    assert main(["compare", str(tmp_path / "notes"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run folder (it has no config.json)" in err[0]
    assert not (tmp_path / "cmp").exists()  # nothing written before the inputs are read
