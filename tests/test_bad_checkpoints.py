"""Bad checkpoint files: each one is refused with a one-line NormprobeError, and none runs code."""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from normprobe.checkpoints import load_encoder
from normprobe.errors import NormprobeError
from normprobe.models.resnet import ResNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread beats two OpenMP threads spinning on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _refused(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(NormprobeError, match=match) as info:
        load_encoder(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _backbone_file(path: Path) -> Path:
    """A bare torchvision-named resnet18 (width 8) state_dict with its classifier, as torchvision saves it."""
    sd = ResNet("resnet18", stem="cifar", width=8).state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 64), torch.zeros(10)
    torch.save(sd, path)
    return path


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_missing_empty_random_truncated_and_json(tmp_path):
    _refused(tmp_path / "nope.pt", "no such checkpoint file")
    (tmp_path / "empty.pt").write_bytes(b"")
    _refused(tmp_path / "empty.pt", "empty file")
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    _refused(tmp_path / "random.pt", "not a readable PyTorch checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    _refused(tmp_path / "text.pt", "not a readable PyTorch checkpoint")
    data = _backbone_file(tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "truncated.pt", "corrupt or truncated")
    (tmp_path / "config.json").write_text(json.dumps({"state_dict": {"conv1.weight": [1, 2, 3]}}))
    _refused(tmp_path / "config.json", "not a readable PyTorch checkpoint")


def test_unknown_layouts(tmp_path):
    torch.save(
        {"encoder_q.0.weight": torch.zeros(4, 3, 3, 3), "encoder_q.1.weight": torch.zeros(4)},
        tmp_path / "moco.pth",
    )
    message = _refused(tmp_path / "moco.pth", "not a checkpoint format normprobe knows")
    assert "encoder_q.0.weight" in message
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    _refused(tmp_path / "list.pt", "a list")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    _refused(tmp_path / "tensor.pt", "not a checkpoint format")


def test_wrong_arch_names_missing_and_unexpected_keys(tmp_path):
    path = _backbone_file(tmp_path / "resnet18.pth")
    message = _refused(path, "do not fit", arch="resnet50")
    assert "missing" in message and "layer1.0.conv3.weight" in message and "wrong shape" in message
    message = _refused(path, "wrong shape", arch="resnet18:width=16")
    assert "backbone.conv1.weight (8, 3, 3, 3) vs (16, 3, 3, 3)" in message
    torch.save(ResNet("resnet50", width=8).state_dict(), tmp_path / "resnet50.pth")
    message = _refused(tmp_path / "resnet50.pth", "do not fit", arch="resnet18")
    assert "unexpected" in message and "conv3" in message
    _refused(path, "unknown architecture 'resnet9000'", arch="resnet9000")
    _refused(path, "timm has no model", arch="timm:vit_nonexistent")


def test_nan_weights(tmp_path):
    sd = ResNet("resnet18", stem="cifar", width=8).state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    _refused(tmp_path / "nan.pth", r"NaN or Inf in weights \(backbone.layer2.0.conv1.weight\)")


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"state_dict": Payload(marker)}, protocol=2)  # torch.save's protocol
    pickle.loads(raw)  # the payload is armed: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    (tmp_path / "evil.pkl").write_bytes(raw)
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "evil.pt")
    torch.save(
        {"pytorch-lightning_version": "2.1.0", "state_dict": {}, "hyper_parameters": Payload(marker)},
        tmp_path / "evil.ckpt",
    )
    (tmp_path / "evil4.pkl").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    for name in ("evil.pkl", "evil.pt", "evil.ckpt", "evil4.pkl"):
        message = _refused(tmp_path / name, "would run code|will not unpickle")
        assert "system" in message
    assert not marker.exists()


def test_malicious_payload_inside_torchscript_and_export_archives(tmp_path):
    """Archives that look like TorchScript / torch.export but carry a code-running pickle."""
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    with zipfile.ZipFile(buffer) as evil:
        evil_pickle = evil.read(next(n for n in evil.namelist() if n.endswith("data.pkl")))
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as archive:
        archive.writestr("m/code/__torch__.py", "")
        archive.writestr("m/constants.pkl", evil_pickle)
        archive.writestr("m/data.pkl", evil_pickle)
        archive.writestr("m/version", "3\n")
    _refused(tmp_path / "script.pt", "TorchScript")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 16, 16),)), tmp_path / "good.pt2")
    with zipfile.ZipFile(tmp_path / "good.pt2") as good, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as bad:
        for item in good.infolist():
            data = good.read(item)
            if item.filename.endswith(
                "sample_inputs/model.pt"
            ):  # torch.export.load falls back to weights_only=False here
                data = buffer.getvalue()
            bad.writestr(item, data)
    _refused(tmp_path / "evil.pt2", "needs code execution")
    assert not marker.exists()


def test_lightning_checkpoint_with_python_objects_gets_export_hint(tmp_path):
    import argparse

    sd = {f"backbone.{k}": v for k, v in ResNet("resnet18", width=8).state_dict().items()}
    torch.save(
        {
            "pytorch-lightning_version": "1.5.10",
            "state_dict": sd,
            "hyper_parameters": argparse.Namespace(method="simclr"),
        },
        tmp_path / "run.ckpt",
    )
    message = _refused(tmp_path / "run.ckpt", "Lightning checkpoint holding Python objects")
    assert "argparse.Namespace" in message and "run.weights.ckpt" in message


def test_paper_copies_that_disagree(tmp_path):
    """The paper stores each module twice (backbone / enc.0, projector / enc.1); copies must match."""
    backbone = ResNet("resnet18", width=8).state_dict()
    head = {"layer1.weight": torch.randn(16, 64), "layer1.bias": torch.zeros(16)}
    sd = {
        **{f"backbone.{k}": v.clone() for k, v in backbone.items()},
        **{f"enc.0.{k}": v for k, v in backbone.items()},
        **{f"projector.{k}": v for k, v in head.items()},
        **{f"enc.1.{k}": v for k, v in head.items()},
    }
    sd["backbone.layer1.0.conv1.weight"] += 1
    torch.save(sd, tmp_path / "simclr.pt")
    _refused(
        tmp_path / "simclr.pt",
        "backbone.layer1.0.conv1.weight and enc.0.layer1.0.conv1.weight should be the same tensor",
    )


def test_solo_learn_with_keys_it_should_not_have(tmp_path):
    sd = {f"backbone.{k}": v for k, v in ResNet("resnet18", width=8, stem_padding=2).state_dict().items()}
    sd.update(
        {
            "projector.0.weight": torch.zeros(16, 64),
            "projector.0.bias": torch.zeros(16),
            "decoder.0.weight": torch.zeros(3, 3),
        }
    )
    torch.save({"pytorch-lightning_version": "2.0.0", "state_dict": sd}, tmp_path / "x.ckpt")
    _refused(tmp_path / "x.ckpt", "should not have: decoder.0.weight")


def test_foreign_model_with_the_wrong_input_size(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 8)).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(2, 3, 64, 64)), tmp_path / "mlp.pt")
    _refused(tmp_path / "mlp.pt", "fails on a \\(2, 3, 32, 32\\) input.*--arch input_size")
    assert load_encoder(tmp_path / "mlp.pt", arch="input_size=64").heads == ("feats",)
    _refused(tmp_path / "mlp.pt", "carries its own", arch="resnet18")
