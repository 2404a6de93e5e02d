"""Unit tests of the training pieces: GradScale, cut-initialisation, the LR schedule, augmentation, config."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from normprobe.training.augment import BatchAugment, _jitter_op
from normprobe.training.config import load_config
from normprobe.training.losses import grad_scale, info_nce, negative_cosine
from normprobe.training.methods import METHODS, build_method
from normprobe.training.schedule import WarmupCosine, cosine_increase, warmup_cosine

from normprobe.errors import NormprobeError

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
TINY = {
    "simclr": ["method_options.proj_hidden=16", "method_options.out_dim=8"],
    "simsiam": ["method_options.proj_dim=16", "method_options.pred_hidden=4"],
    "byol": ["method_options.proj_hidden=16", "method_options.out_dim=8"],
    "mocov2": ["method_options.proj_hidden=16", "method_options.out_dim=8", "method_options.queue_size=64"],
    "mocov3": ["method_options.mlp_hidden=16", "method_options.out_dim=8"],
}
TINY_RESNET = ["backbone.name=resnet18", "backbone.width=8"]
TINY_VIT = [
    'backbone={name: "timm:vit_tiny_patch16_224", img_size: 32, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}'
]


def tiny(method: str, *extra: str) -> dict:
    return load_config(
        f"{method}_cifar10", [*(TINY_VIT if method == "mocov3" else TINY_RESNET), *TINY[method], *extra]
    )


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_gradscale_backward_is_norm_power_times_plain_gradient(power: float) -> None:
    torch.manual_seed(0)
    z = (torch.randn(6, 5) * torch.tensor([0.1, 1, 3, 10, 0.5, 2]).view(6, 1)).double()
    target = torch.randn(6, 5).double()
    plain = z.clone().requires_grad_(True)
    scaled = z.clone().requires_grad_(True)
    F.cosine_similarity(plain, target).sum().backward()
    out = grad_scale(scaled, power)
    assert torch.equal(out, scaled)  # identity forward
    F.cosine_similarity(out, target).sum().backward()
    expected = z.norm(dim=1, keepdim=True) ** power * plain.grad
    torch.testing.assert_close(scaled.grad, expected)
    assert not torch.allclose(scaled.grad, plain.grad)


def test_gradscale_power_zero_is_default_training() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    assert grad_scale(z, 0) is z


def test_info_nce_matches_a_direct_formula() -> None:
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 4).double(), torch.randn(5, 4).double()
    z = F.normalize(torch.cat((z1, z2)), dim=1)
    sim = z @ z.T / 0.5
    losses = []
    for i in range(10):
        j = (i + 5) % 10
        others = torch.cat((sim[i, :i], sim[i, i + 1 :]))
        losses.append(-sim[i, j] + torch.logsumexp(others, 0))
    torch.testing.assert_close(
        info_nce(z1, z2, 0.5).double(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6
    )
    # the norm does not enter the value, only the gradient
    torch.testing.assert_close(info_nce(3 * z1, 0.2 * z2, 0.5), info_nce(z1, z2, 0.5))


def test_negative_cosine_stops_the_gradient_on_the_target() -> None:
    p, z = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and z.grad is None


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cut_initialisation_divides_every_weight(method: str) -> None:
    torch.manual_seed(0)
    plain = build_method(tiny(method, "cut=1"))
    torch.manual_seed(0)
    cut = build_method(tiny(method, "cut=3"))
    names = [n for n, _ in plain.encoder.named_parameters()]
    assert len(names) > 5
    for (name, a), (_, b) in zip(
        plain.encoder.named_parameters(), cut.encoder.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b, a / 3, msg=name)
    for (name, a), (_, b) in zip(plain.encoder.named_buffers(), cut.encoder.named_buffers(), strict=True):
        assert torch.equal(a, b), name  # BatchNorm statistics are not weights
    target = cut.target_state_dict()
    if target is not None:  # momentum copies start from the cut network
        online = cut.encoder.state_dict()
        for name, value in target.items():
            assert torch.equal(value, online[name]), name


def test_warmup_cosine_values() -> None:
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0) == pytest.approx(0.0)
    assert cosine_increase(0, 10, 0.996) == pytest.approx(0.996)
    assert cosine_increase(10, 10, 0.996) == pytest.approx(1.0)


def test_scheduler_keeps_fixed_lr_groups_and_resumes() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "fixed_lr": True}], lr=1.0)
    sched = WarmupCosine(opt, 0.4, total_steps=20, warmup_steps=4)
    for _ in range(12):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert opt.param_groups[1]["lr"] == 0.4
    opt2 = torch.optim.SGD([{"params": [a]}, {"params": [b], "fixed_lr": True}], lr=1.0)
    again = WarmupCosine(opt2, 0.4, total_steps=20, warmup_steps=4)
    again.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_augment_is_vectorised_per_sample_and_reproducible() -> None:
    aug = BatchAugment()
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    p1 = aug.sample(64, torch.Generator().manual_seed(0), (32, 32))
    p2 = aug.sample(64, torch.Generator().manual_seed(0), (32, 32))
    out = aug(images, p1)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, aug(images, p2))
    # every sample draws its own crop, jitter and order
    assert len(torch.unique(p1.theta.flatten(1), dim=0)) > 50 and len(torch.unique(p1.jitter[:, 0])) == 64
    assert 0.6 < p1.apply_jitter.float().mean() < 0.95 and p1.gray.any()
    # the rows of a sub-batch equal the same rows of the whole batch (what DDP ranks rely on)
    torch.testing.assert_close(aug(images[16:32], p1.rows(16, 32)), out[16:32])


def test_augment_jitter_gathered_or_masked_gives_the_same_views() -> None:
    # The CPU gathers the rows each jitter operation applies to; accelerators compute it on the whole
    # batch and keep it where drawn (no data-dependent shapes, so no wait for the device).
    aug = BatchAugment()
    images = torch.randint(
        0, 256, (64, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    params = aug.sample(64, torch.Generator().manual_seed(4), (32, 32))
    gathered = aug(images, params, gather=True)
    assert torch.equal(gathered, aug(images, params))  # the CPU default
    assert torch.equal(gathered, aug(images, params, gather=False))


def test_augment_identity_and_jitter_match_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    x = images.permute(0, 3, 1, 2).float() / 255
    ident = BatchAugment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    torch.testing.assert_close(ident(images, ident.sample(8, torch.Generator(), (32, 32))), x)
    flip = BatchAugment(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=1, jitter_p=0, gray_p=0)
    torch.testing.assert_close(flip(images, flip.sample(8, torch.Generator(), (32, 32))), x.flip(-1))
    refs = [
        (tvf.adjust_brightness, 1.3),
        (tvf.adjust_contrast, 0.7),
        (tvf.adjust_saturation, 1.4),
        (tvf.adjust_hue, -0.07),
    ]
    for op, (fn, factor) in enumerate(refs):
        ours = _jitter_op(x.clone(), op, torch.full((8,), factor))
        torch.testing.assert_close(ours, torch.stack([fn(im, factor) for im in x]), atol=1e-4, rtol=0)


def test_config_overrides_and_errors() -> None:
    cfg = load_config(
        "simclr_cifar10", ["epochs=3", "cut=3", "gradscale=1", "dataset.subset=100", "dataset.imbalance=true"]
    )
    assert (
        cfg["epochs"],
        cfg["cut"],
        cfg["gradscale"],
        cfg["dataset"]["subset"],
        cfg["dataset"]["imbalance"],
    ) == (3, 3, 1, 100, True)
    # the paper's defaults (Appendix C.1)
    assert cfg["optimizer"]["weight_decay"] == 1e-6 and cfg["method_options"]["out_dim"] == 256
    simsiam = load_config("simsiam_cifar10")
    assert (
        simsiam["optimizer"]["weight_decay"] == 5e-4 and simsiam["batch_size"] * simsiam["accumulate"] == 1024
    )
    with pytest.raises(NormprobeError, match="unknown key"):
        load_config("simclr_cifar10", ["epoch=3"])
    with pytest.raises(NormprobeError, match="key=value"):
        load_config("simclr_cifar10", ["epochs"])
    with pytest.raises(NormprobeError, match="no such config"):
        load_config("nope_cifar10")


@pytest.mark.skipif(
    not (DATA_ROOT / "cifar10_train_jpeg.npz").is_file(), reason="CIFAR-10 mirror not present"
)
def test_imbalanced_training_set_has_the_papers_class_sizes() -> None:
    from normprobe.training.loop import load_train_set

    cfg = load_config("simclr_cifar10", ["dataset.imbalance=true", f"dataset.data_root={DATA_ROOT}"])
    imageset = load_train_set(cfg)
    counts = np.bincount(imageset.labels, minlength=10)
    np.testing.assert_array_equal(counts, np.floor(5000 / 1.5 ** np.arange(10)).astype(int))


def test_lars_step_uses_the_trust_ratio_and_skips_excluded_groups() -> None:
    from normprobe.training.optim import LARS, build_optimizer

    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS(
        [{"params": [w]}, {"params": [b], "lars_exclude": True}],
        lr=0.1,
        momentum=0.9,
        weight_decay=0.5,
        eta=0.01,
    )
    w.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([2.0])
    opt.step()
    update = torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([3.0, 4.0])  # g + wd * w
    ratio = 0.01 * 5.0 / update.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * ratio * update)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))  # plain SGD, no decay
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    groups = build_optimizer(
        {"name": "lars", "weight_decay": 1e-6, "exclude_bias_norm": True},
        [{"name": "all", "params": list(model.parameters())}],
        model,
        0.1,
    ).param_groups
    assert (
        [len(g["params"]) for g in groups] == [1, 3]
        and groups[1]["weight_decay"] == 0
        and groups[1]["lars_exclude"]
    )


def test_repeated_set_options_accumulate(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    from normprobe.training.__main__ import main

    argv = ["--config", "simclr_cifar10", "--set", "epochs=1", "--set", "cut=3", "backbone.width=16"]
    assert main([*argv, "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["epochs"], cfg["cut"], cfg["backbone"]["width"]) == (1, 3, 16)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-0.1", "optimizer.lr must be a number > 0"),
        ("optimizer.lr=fast", "optimizer.lr must be a number > 0 (got 'fast')"),
        ("optimizer.lr=.nan", "optimizer.lr must be a number > 0"),
        ("backbone.width=-8", "backbone.width must be an integer >= 1"),
        ("backbone.width=0", "backbone.width must be an integer >= 1"),
        ("checkpoint.every=0", "checkpoint.every must be an integer >= 1"),
        ("monitor.k=0", "monitor.k must be an integer >= 1"),
        ("augment.crop_scale=[0.9,0.2]", "augment.crop_scale must be [lower, upper] with lower <= upper"),
        ("augment.crop_scale=[0,1]", "augment.crop_scale must be a list of 2 numbers in (0, 1]"),
        ("augment.flip_p=2", "augment.flip_p must be a number in [0, 1]"),
        ("dataset=cifar10", "dataset must be a mapping of keys (got 'cifar10')"),
        ("optimizer=[sgd]", "optimizer must be a mapping of keys"),
        ("epochs=1.5", "epochs must be an integer >= 1"),
        ("epochs=true", "epochs must be an integer >= 1"),
        ("cut=0", "cut must be a number > 0"),
        ("gradscale=-1", "gradscale must be a number >= 0"),
        ("dataset.subset=1", "dataset.subset must be an integer >= 2"),
        ("dataset.imbalance=maybe", "dataset.imbalance must be true or false"),
        ("method=dino", "method must be one of simclr"),
        ("method_options.out_dim=0", "method_options.out_dim must be an integer >= 1"),
        ("method_options.head_norm=gn", "method_options.head_norm must be one of bn, ln, none"),
        ("optimizer.momentum=1", "optimizer.momentum must be a number in [0, 1)"),
        ("out_dir=''", "out_dir must be a non-empty string"),
        ("preprocess.std=[0.2,0,0.2]", "preprocess.std must be a list of 3 numbers > 0"),
    ],
)
def test_invalid_config_values_are_rejected_up_front(override: str, message: str) -> None:
    with pytest.raises(NormprobeError, match=f"^config: {re.escape(message)}"):
        load_config("simclr_cifar10", [override])


def test_numbers_yaml_reads_as_strings_are_taken_as_numbers() -> None:
    # YAML 1.1 reads 1e-3 (no dot) as a string: it means the number, and is stored as one
    cfg = load_config("simclr_cifar10", ["optimizer.lr=1e-3", "optimizer.weight_decay=5e-4"])
    assert (cfg["optimizer"]["lr"], cfg["optimizer"]["weight_decay"]) == (0.001, 0.0005)


def test_step_log_truncation_drops_a_torn_tail_but_not_a_broken_middle(tmp_path: Path) -> None:
    from normprobe.training.loop import _truncate_steps

    log = tmp_path / "steps.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    _truncate_steps(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(NormprobeError, match="line 2 is not a step record"):
        _truncate_steps(log, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["steps.jsonl"]  # no temporary left behind


def test_training_command_reexecs_itself_with_the_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from normprobe.training.__main__ import main

    from normprobe import allocator

    calls: list[list[str]] = []

    def execve(path: str, args: list[str], env: dict[str, str]) -> None:
        assert env[allocator.NO_REEXEC_ENV] == "1" and allocator.has_tunables(env)
        assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # OpenMP threads sleep while they wait
        calls.append(args)
        raise OSError("stop here")  # a failed execve goes on in this process

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(allocator.os, "execve", execve)
    monkeypatch.setattr(allocator, "should_reexec", lambda env=None: True)
    monkeypatch.setattr(sys, "argv", ["normprobe train", "--config", "simclr_cifar10", "--print-config"])
    assert main() == 0
    assert calls == [
        [sys.executable, "-m", "normprobe.training", "--config", "simclr_cifar10", "--print-config"]
    ]
    assert main(["--config", "simclr_cifar10", "--print-config"]) == 0  # in-process: no re-exec
    assert len(calls) == 1


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "resnet18", "stem": "cifar", "width": 8},
        {"name": "resnet34", "width": 16},
        {"name": "resnet50", "stem": "cifar", "width": 4},
        {"name": "resnet18"},
        {
            "name": "timm:vit_tiny_patch16_224",
            "img_size": 32,
            "patch_size": 8,
            "depth": 1,
            "embed_dim": 16,
            "num_heads": 2,
        },
    ],
)
def test_backbone_dim_equals_the_built_backbones_width(spec: dict) -> None:
    from normprobe.training.methods.base import backbone_dim

    from normprobe.models import build_backbone

    assert backbone_dim(spec) == build_backbone(spec).num_features


def test_training_launch_environment_keeps_what_the_user_set() -> None:
    from normprobe import allocator

    env = allocator.env_with_tunables({"HOME": "/h"}, allocator.TRAINING_ENV)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["HOME"] == "/h" and allocator.has_tunables(env)
    assert (
        allocator.env_with_tunables({"OMP_WAIT_POLICY": "ACTIVE"}, allocator.TRAINING_ENV)["OMP_WAIT_POLICY"]
        == "ACTIVE"
    )
    assert "OMP_WAIT_POLICY" not in allocator.env_with_tunables({"HOME": "/h"})  # other commands: unchanged
