"""The training loop: data on the device, batched augmentation, accumulation, bf16 autocast, DDP,
kNN/norm monitoring, checkpoints with exact resume, and a stop on a NaN/Inf loss.

Data order and augmentation parameters come from two explicit generators advanced once per epoch /
per batch and saved in every checkpoint, so a resumed run repeats the uninterrupted one step for
step, and ``torchrun`` ranks share the global batch a single process would see (each rank takes
its rows of it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from normprobe.training import distributed
from normprobe.training.augment import BatchAugment
from normprobe.training.config import save_config
from normprobe.training.methods import Method, build_method
from normprobe.training.monitor import evaluate, in_memory, pick_subset
from normprobe.training.optim import build_optimizer
from normprobe.training.schedule import WarmupCosine
from normprobe.training.state import (
    clear_previous_run,
    copy_atomic,
    epoch_checkpoints,
    keep_last,
    read_resume,
    rng_state,
    set_rng_state,
)
from tqdm.auto import tqdm

from normprobe import data
from normprobe.atomic import atomic_write
from normprobe.checkpoints import save_checkpoint
from normprobe.device import pick_device
from normprobe.errors import NormprobeError
from normprobe.preprocess import Preprocess

GRADSCALE_LR_DIVISOR = 6.0
GRADSCALE_WARMUP_EPOCHS = 100


class TrainingDiverged(NormprobeError):
    """The loss became NaN or Inf; nothing was written for the broken step."""


def load_train_set(config: dict[str, Any]) -> data.ImageSet:
    """The training split, then the paper's imbalanced subset, then the first ``subset`` images."""
    ds = config["dataset"]
    imageset = data.load(ds["name"], ds["split"], ds["data_root"])
    if ds["imbalance"]:
        imageset = imageset.subset(data.imbalanced_indices(ds["name"], imageset.labels), "imbalanced")
    if ds["subset"] is not None:
        imageset = imageset.subset(np.arange(min(int(ds["subset"]), len(imageset))), f"first{ds['subset']}")
    return imageset


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def _truncate_steps(path: Path, last_step: int) -> None:
    """Drop step-log lines written after the checkpoint a run resumes from.

    A kill in the middle of an append leaves a torn last line (no newline at its end). Its step
    came after the newest checkpoint (an epoch's steps are logged before its checkpoint is
    written), so it is dropped with the others; any other line that is not a record is an error.
    """
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise NormprobeError(
                f"{path}: line {number} is not a step record ({err}); remove it to resume"
            ) from err
        if step <= last_step:
            kept.append(line + "\n")
    atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))


def _write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out_dir / "metrics.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    atomic_write(
        out_dir / "metrics.jsonl", lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    )


def start_processes(config: dict[str, Any]) -> tuple[torch.device, int, int]:
    """The device, this process's rank and the number of processes (``torchrun`` sets up DDP; each
    rank then takes the GPU of its local rank)."""
    device = pick_device(config["device"])
    distributed.init_from_env(config["distributed"]["backend"], device)
    if distributed.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    return device, distributed.rank(), distributed.world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_layout(config: dict[str, Any], world: int) -> tuple[int, int]:
    """Images per forward pass (the global batch, split across processes) and passes per step."""
    batch, accumulate = int(config["batch_size"]), int(config["accumulate"])
    if batch % world:
        raise NormprobeError(f"batch_size {batch} is not divisible by the {world} processes")
    return batch, accumulate


def optimiser_steps_per_epoch(images: int, batch: int, accumulate: int) -> int:
    steps = images // (batch * accumulate)
    if steps == 0:
        raise NormprobeError(
            f"{images} training images make no optimiser step of {batch} x {accumulate} images; "
            "lower batch_size or accumulate"
        )
    return steps


def build_augment(options: dict[str, Any], size: int) -> BatchAugment:
    return BatchAugment(
        size=size,
        crop_scale=(float(options["crop_scale"][0]), float(options["crop_scale"][1])),
        flip_p=options["flip_p"],
        jitter=tuple(options["jitter"]),
        jitter_p=options["jitter_p"],
        gray_p=options["gray_p"],
    )


def build_model(
    config: dict[str, Any], device: torch.device, memory_format: torch.memory_format, world: int
) -> Method:
    """The method on its device, with SyncBatchNorm across processes when asked for."""
    method = build_method(config).to(device).to(memory_format=memory_format)
    if world > 1 and config["distributed"]["sync_bn"]:
        if device.type != "cuda":
            raise NormprobeError(
                "distributed.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel)"
            )
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return method


def peak_lr_and_warmup(config: dict[str, Any], effective_batch: int) -> tuple[float, float]:
    """The peak learning rate (base LR x batch / 256 unless ``optimizer.scale_lr`` is off) and the
    warm-up epochs; ``schedule.preset=gradscale`` is the GradScale setting of the paper's runs:
    base LR / 6 and 100 warm-up epochs."""
    opt, schedule = config["optimizer"], config["schedule"]
    base_lr, warmup_epochs = float(opt["lr"]), float(schedule["warmup_epochs"])
    if schedule["preset"] == "gradscale":
        base_lr, warmup_epochs = base_lr / GRADSCALE_LR_DIVISOR, GRADSCALE_WARMUP_EPOCHS
    lr = base_lr * effective_batch / 256 if opt.get("scale_lr", True) else base_lr
    return lr, warmup_epochs


def wrap_for_processes(method: Method, device: torch.device, world: int) -> torch.nn.Module:
    """What the training step calls: the method, or its DDP wrapper when there are several processes."""
    if world == 1:
        return method
    return torch.nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None
    )


@dataclass(frozen=True)
class MonitorSets:
    """What rank 0 evaluates on: the kNN bank (training images), the test subset, the whole test split."""

    bank: data.ImageSet
    test: data.ImageSet
    full_test: data.ImageSet


def build_monitor_sets(config: dict[str, Any], train_set: data.ImageSet, images: torch.Tensor) -> MonitorSets:
    mon, ds, seed = config["monitor"], config["dataset"], int(config["seed"])
    bank_pos = pick_subset(len(images), mon["train_subset"], seed)
    bank = in_memory(
        train_set.subset(bank_pos, "monitor-bank"),
        images[torch.from_numpy(bank_pos).to(images.device)],
        "decoded",
    )
    full_test = data.load(ds["name"], ds["test_split"], ds["data_root"])
    test = full_test.subset(pick_subset(len(full_test), mon["subset"], seed), "monitor-test")
    return MonitorSets(bank, in_memory(test, test.images(), "decoded"), full_test)


class Trainer:
    """Builds everything from a resolved config; ``run()`` trains and returns the final checkpoint."""

    def __init__(self, config: dict[str, Any], resume: Path | None = None, log: Any = None) -> None:
        self.config = config
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.device, self.rank, self.world = start_processes(config)
        seed_everything(int(config["seed"]))
        self.out_dir = Path(config["out_dir"])
        self.ckpt_dir = self.out_dir / "checkpoints"

        self.batch, self.accumulate = batch_layout(config, self.world)
        self.effective_batch = self.batch * self.accumulate
        self.train_set = load_train_set(config)
        self.images = self.train_set.images().to(self.device)  # decoded once, uint8 N×H×W×3
        self.steps_per_epoch = optimiser_steps_per_epoch(len(self.images), self.batch, self.accumulate)
        self.total_steps = int(config["epochs"]) * self.steps_per_epoch
        # The paper's models take [0, 1] inputs (mean/std null); the checkpoint records whichever was used.
        self.preprocess = Preprocess.from_dict(
            {"input_size": list(self.images.shape[1:3]), **config["preprocess"]}
        )
        self.augment = build_augment(config["augment"], int(self.images.shape[1]))

        self.memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
        self.method = build_model(config, self.device, self.memory_format, self.world)
        self.lr, warmup_epochs = peak_lr_and_warmup(config, self.effective_batch)
        self.optimizer = build_optimizer(
            config["optimizer"], self.method.param_groups(), self.method, self.lr
        )
        warmup_steps = min(self.total_steps, round(warmup_epochs * self.steps_per_epoch))
        self.scheduler = WarmupCosine(
            self.optimizer, self.lr, self.total_steps, warmup_steps, float(config["schedule"]["min_lr"])
        )
        self.data_generator = torch.Generator().manual_seed(int(config["seed"]) + 1)
        self.augment_generator = torch.Generator().manual_seed(int(config["seed"]) + 2)

        self.epoch, self.step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        if resume is not None:
            self._restore(resume)
        self.model = wrap_for_processes(self.method, self.device, self.world)
        monitored = self.rank == 0 and bool(config["monitor"]["every"])
        self.monitor = build_monitor_sets(config, self.train_set, self.images) if monitored else None

    def _evaluate(self, sets: MonitorSets, full: bool = False) -> dict[str, float]:
        mon = self.config["monitor"]
        kw: dict[str, Any] = {
            "k": int(mon["k"]),
            "temperature": float(mon["temperature"]),
            "batch_size": int(mon["batch_size"]),
            "device": self.device,
            "precision": self.config["precision"],
            "progress": bool(self.config["progress"]),
        }
        if not full:
            return evaluate(self.method.encoder, self.preprocess, sets.bank, sets.test, **kw)
        bank = in_memory(self.train_set, self.images, "decoded")
        test = in_memory(sets.full_test, sets.full_test.images(), "decoded")
        return evaluate(self.method.encoder, self.preprocess, bank, test, prefix="full_", **kw)

    # ---- checkpoints ------------------------------------------------------------------------
    def _training_entry(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "effective_batch": self.effective_batch,
            "peak_lr": self.lr,
            "world_size": self.world,
            "train_images": len(self.images),
            "history": self.history,
        }

    def _save(self, path: Path) -> None:
        resume = {
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data_generator": self.data_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }
        extra: dict[str, Any] = {"resume": resume}
        target = self.method.target_state_dict()
        if target is not None:
            extra["target_state_dict"] = {k: v.detach().cpu() for k, v in target.items()}
        save_checkpoint(
            path,
            method=self.method.name,
            encoder_spec=self.method.encoder_spec,
            preprocess=self.preprocess,
            state_dict=self.method.encoder.state_dict(),
            training=self._training_entry(),
            extra=extra,
        )

    def _restore(self, path: Path) -> None:
        payload = read_resume(path)
        resume, training = payload["resume"], payload["training"]
        if (
            int(training.get("world_size", 1)) != self.world
            or int(training["steps_per_epoch"]) != self.steps_per_epoch
        ):
            raise NormprobeError(
                f"{path}: was written by a run with another data/process layout; cannot resume exactly"
            )
        self.method.load_state_dict(resume["method_state"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        self.data_generator.set_state(resume["data_generator"])
        self.augment_generator.set_state(resume["augment_generator"])
        self.epoch, self.step, self.history = (
            int(training["epoch"]),
            int(training["step"]),
            list(training["history"]),
        )
        self.last_checkpoint = path
        if self.rank == 0:
            _truncate_steps(self.out_dir / "steps.jsonl", self.step)
        self.log(f"resumed from {path} at epoch {self.epoch}, step {self.step}")

    # ---- one optimiser step -----------------------------------------------------------------
    def _views(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, size = len(rows), (int(self.images.shape[1]), int(self.images.shape[2]))
        p1 = self.augment.sample(n, self.augment_generator, size)
        p2 = self.augment.sample(n, self.augment_generator, size)
        local = n // self.world
        lo, hi = self.rank * local, (self.rank + 1) * local
        images = self.images[rows[lo:hi].to(self.images.device)].to(self.device, non_blocking=True)
        views = []
        for params in (p1, p2):
            x = self.augment(images, params.rows(lo, hi))
            if self.preprocess.mean is not None and self.preprocess.std is not None:
                x = (x - torch.tensor(self.preprocess.mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(
                    self.preprocess.std, device=x.device
                ).view(1, 3, 1, 1)
            views.append(x.contiguous(memory_format=self.memory_format))
        return views[0], views[1]

    def _global_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def _train_step(self, perm: torch.Tensor, step_in_epoch: int) -> dict[str, Any]:
        """One optimiser step. Its one device-to-host copy is the step's mean loss and head norm,
        read after the backward passes and checked before the optimiser changes anything: on an
        accelerator the host queues the whole forward and backward without waiting for either."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.config["precision"] == "bf16"
            else nullcontext()
        )
        head = self.method.loss_head
        totals = torch.zeros(2, device=self.device)
        for micro in range(self.accumulate):
            first = (step_in_epoch * self.accumulate + micro) * self.batch
            x1, x2 = self._views(perm[first : first + self.batch])
            last = micro == self.accumulate - 1
            # With several processes self.model is the DDP wrapper (wrap_for_processes).
            sync = (
                nullcontext()
                if last or self.world == 1
                else cast(torch.nn.parallel.DistributedDataParallel, self.model).no_sync()
            )
            with sync:
                with autocast:
                    loss, out = self.model(x1, x2)
                stats = self._global_mean(
                    torch.stack(
                        (
                            loss.detach().float(),
                            torch.stack(
                                [
                                    torch.linalg.vector_norm(v.detach().float(), dim=1).mean()
                                    for k, v in out.items()
                                    if k.startswith(head)
                                ]
                            ).mean(),
                        )
                    )
                )
                (loss / self.accumulate).backward()
            totals += stats / self.accumulate
        # A NaN/Inf loss of any micro-batch makes the mean non-finite; every rank holds the same
        # global mean, so all of them stop here, before the step is applied.
        loss_value, norm_value = totals.tolist()
        if not math.isfinite(loss_value):
            where = self.last_checkpoint or "none (no epoch finished)"
            raise TrainingDiverged(
                f"loss is {loss_value} at epoch {self.epoch + 1}, optimiser step {self.step + 1}: training "
                f"stopped; last good checkpoint: {where} (lower the learning rate, or resume from it)"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.method.after_step(self.step, self.total_steps)
        self.step += 1
        return {
            "epoch": self.epoch + 1,
            "step": self.step,
            "loss": loss_value,
            "lr": lr,
            f"norm_{head}": norm_value,
        }

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.config
        if self.rank == 0:
            save_config(cfg, self.out_dir)
            self.log(
                f"{self.method.name}: {len(self.images)} images, {self.steps_per_epoch} optimiser steps/epoch of "
                f"{self.batch}x{self.accumulate} images, peak lr {self.lr:.4g}, {cfg['epochs']} epochs, "
                f"{self.world} process(es) on {self.device}, out {self.out_dir}"
            )
        epochs = int(cfg["epochs"])
        steps_log = self.out_dir / "steps.jsonl"
        final = self.out_dir / "final.pt"
        while self.epoch < epochs:
            perm = torch.randperm(len(self.images), generator=self.data_generator)
            began = time.perf_counter()
            self.method.train()
            bar = tqdm(
                range(self.steps_per_epoch),
                desc=f"epoch {self.epoch + 1}/{epochs}",
                unit="step",
                disable=self.rank != 0 or not cfg["progress"],
                leave=False,
                file=sys.stderr,
            )
            rows = []
            for step_in_epoch in bar:
                row = self._train_step(perm, step_in_epoch)
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}")
            bar.close()
            seconds = time.perf_counter() - began
            self.epoch += 1
            record: dict[str, Any] = {
                "epoch": self.epoch,
                "step": self.step,
                "train_loss": float(np.mean([r["loss"] for r in rows])),
                f"train_norm_{self.method.loss_head}": float(
                    np.mean([r[f"norm_{self.method.loss_head}"] for r in rows])
                ),
                "lr": rows[-1]["lr"],
                "seconds": round(seconds, 2),
                "images_per_s": round(self.steps_per_epoch * self.effective_batch / seconds, 1),
            }
            every = int(cfg["monitor"]["every"])
            if self.rank == 0:
                _append_jsonl(steps_log, rows)
                if self.monitor is not None and (self.epoch % every == 0 or self.epoch == epochs):
                    record.update(self._evaluate(self.monitor))
                if self.monitor is not None and self.epoch == epochs and cfg["monitor"]["final_full"]:
                    record.update(self._evaluate(self.monitor, full=True))
                self.history.append(record)
                _write_history(self.out_dir, self.history)
                self.log(
                    " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                    )
                )
                ck = cfg["checkpoint"]
                if self.epoch % int(ck["every"]) == 0 or self.epoch == epochs:
                    path = self.ckpt_dir / f"epoch_{self.epoch:04d}.pt"
                    self._save(path)
                    self.last_checkpoint = path
                    keep_last(self.ckpt_dir, int(ck["keep_last"]))
            if self.world > 1:
                dist.barrier()
        if self.rank == 0:
            last = epoch_checkpoints(self.ckpt_dir)
            if last and last[-1][0] == epochs:
                copy_atomic(last[-1][1], final)
            else:
                self._save(final)
            self.log(f"done: {final}")
        if self.world > 1:
            dist.barrier()
        return final


def train(config: dict[str, Any], resume: Path | None = None, force: bool = False) -> Path:
    """Train ``config`` (continuing from the checkpoint ``resume``) and return ``final.pt``.

    A new run does not start in a folder that holds a previous run's files unless ``force`` says
    to delete them: mixing two runs' checkpoints and step logs would make both unreadable.
    """
    if resume is None:
        clear_previous_run(Path(config["out_dir"]), force)
    trainer = Trainer(config, resume)
    try:
        return trainer.run()
    finally:
        if distributed.is_distributed():
            dist.destroy_process_group()


__all__ = ["Trainer", "TrainingDiverged", "train"]
