"""Bad checkpoint files: each one is refused with a one-line NormprobeError, and none runs code."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
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


# Advice that runs a refused file's code when followed: no message may give it.
UNSAFE_ADVICE = re.compile(r"weights_only\W*(set to\W*)?False|safe_globals|add_safe_globals", re.IGNORECASE)


def _refused(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(NormprobeError, match=match) as info:
        load_encoder(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert not UNSAFE_ADVICE.search(message), message
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
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
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
            ):  # torch.export.load unpickles this member without the weights-only unpickler
                data = buffer.getvalue()
            bad.writestr(item, data)
    _refused(tmp_path / "evil.pt2", "needs code execution", trust_code=True)
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
    assert "torch.load" not in message  # the advice never loads the refused file: any load runs its objects


def test_no_source_file_suggests_unpickling_without_the_weights_only_unpickler():
    root = Path(__file__).resolve().parents[1]
    unsafe = re.compile(r"weights_only\s*=\s*False")
    folders = ("normprobe", "training", "app", "tests", "benchmarks", "data_manifests")
    offenders = [
        str(path.relative_to(root))
        for folder in folders
        for path in sorted((root / folder).rglob("*.py"))
        if unsafe.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []


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
    _refused(tmp_path / "mlp.pt", "fails on a \\(2, 3, 32, 32\\) input.*--arch input_size", trust_code=True)
    assert load_encoder(tmp_path / "mlp.pt", arch="input_size=64", trust_code=True).heads == ("feats",)
    _refused(tmp_path / "mlp.pt", "carries its own", arch="resnet18", trust_code=True)


# --- programs: TorchScript and torch.export run code, so they load only with --trust-code ---------


class Writer(nn.Module):
    """A TorchScript module whose forward writes a file: ``torch.save`` compiles to ``aten::save``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.target)
        return x.mean((2, 3))


def test_torchscript_is_refused_by_default_and_runs_only_with_trust_code(tmp_path, capsys):
    marker = tmp_path / "written-by-forward"
    torch.jit.save(torch.jit.script(Writer(str(marker))), tmp_path / "writer.pt")
    message = _refused(tmp_path / "writer.pt", "TorchScript file is a program.*--trust-code")
    assert "trust" in message and not marker.exists()
    capsys.readouterr()
    loaded = load_encoder(
        tmp_path / "writer.pt", trust_code=True
    )  # the opt-in: its code runs, with a warning
    assert loaded.adapter == "torchscript" and marker.exists()
    warning = capsys.readouterr().err.splitlines()
    assert (
        len(warning) == 1 and warning[0].startswith("normprobe: warning: ") and "--trust-code" in warning[0]
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real torch.export archive with a dynamic batch, so that its JSON holds a symbolic shape."""
    path = tmp_path_factory.mktemp("export") / "good.pt2"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(model, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), path
    )
    return path


def _prefix_shape_expressions(node, payload: str) -> int:
    """Prefix every ``expr_str`` (a sympy expression torch.export.load evaluates) with ``payload``; returns the count."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str" and isinstance(value, str):
                node[key], count = payload + value, count + 1
            else:
                count += _prefix_shape_expressions(value, payload)
    elif isinstance(node, list):
        count += sum(_prefix_shape_expressions(value, payload) for value in node)
    return count


def _shape_payload_archive(good: Path, bad: Path, marker: Path) -> Path:
    """``good`` with a Python expression that creates ``marker`` in every symbolic shape of its models/*.json."""
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or "
    planted = 0
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if re.search(r"/models/[^/]+\.json$", item.filename):
                program = json.loads(data)
                planted += _prefix_shape_expressions(program, payload)
                data = json.dumps(program).encode()
            target.writestr(item, data)
    assert planted > 0
    return bad


def test_torch_export_shape_payload_is_refused_and_never_runs(tmp_path, exported):
    marker = tmp_path / "pwned"
    evil = _shape_payload_archive(exported, tmp_path / "evil.pt2", marker)
    torch.export.load(evil)  # the payload is armed: torch's own loader runs it
    assert marker.exists()
    marker.unlink()
    renamed = tmp_path / "evil.pt"
    renamed.write_bytes(evil.read_bytes())
    for path in (evil, renamed):
        _refused(path, "torch.export file is a program.*--trust-code")
        _refused(path, "torch.export file is a program", adapter="torch.export")
        _refused(path, "torch.export file is a program", adapter="torchvision")
    assert not marker.exists()


def _argv(command: str, checkpoint: Path, work: Path) -> list[str]:
    """The shortest command line that loads ``checkpoint`` before any other work of note."""
    if command == "embed":
        return ["embed", str(checkpoint), "--dataset", "cifar10", "--out", str(work / "e.npz"), "--no-cache"]
    if command == "rank":
        return ["rank", str(checkpoint), str(work), "--out", str(work / "r.csv"), "--no-cache"]
    return ["analyze", str(checkpoint), "--ood", "cifar100", "--out", str(work / "res"), "--quiet"]


@pytest.mark.parametrize("command", ["analyze", "rank", "embed"])
def test_cli_refuses_a_program_in_one_line(command, tmp_path, exported, capsys):
    from normprobe.cli import main

    marker = tmp_path / "pwned"
    evil = _shape_payload_archive(exported, tmp_path / "model.pt", marker)
    assert main(_argv(command, evil, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("normprobe: error: ") and "--trust-code" in err[0], err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["analyze", "rank", "embed"])
def test_trust_code_flag_reaches_load_encoder(command, tmp_path, monkeypatch, capsys):
    from normprobe.cli import main

    seen: list[bool] = []

    def stop(path, *args, trust_code=False, **kwargs):
        seen.append(trust_code)
        raise NormprobeError("stopped before loading")

    monkeypatch.setattr("normprobe.checkpoints.load_encoder", stop)
    monkeypatch.setattr("normprobe.pipeline.context.load_encoder", stop)
    (tmp_path / "model.pt2").write_bytes(b"not read")
    for flags, work in (([], tmp_path / "plain"), (["--trust-code"], tmp_path / "trusted")):
        work.mkdir()
        assert main([*_argv(command, tmp_path / "model.pt2", work), *flags]) == 2
    assert seen == [False, True]


def test_a_real_process_refuses_a_program_without_a_traceback(tmp_path, exported):
    marker = tmp_path / "pwned"
    evil = _shape_payload_archive(exported, tmp_path / "model.pt", marker)
    done = subprocess.run(
        [sys.executable, "-m", "normprobe", *_argv("embed", evil, tmp_path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trust-code" in lines[0] and "Traceback" not in done.stderr
    assert not marker.exists()


# --- zip archives that torch and Python would read differently, and zip bombs -----------------------


def _rewrite(source: Path, target: Path, extra: list[tuple[str, bytes]], first: bool = False) -> Path:
    """A copy of the zip ``source`` with members ``extra`` added (before the others when ``first``)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        items = [(item.filename, src.read(item)) for item in src.infolist()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: writing one is the point
            for name, data in (extra + items) if first else (items + extra):
                dst.writestr(name, data)
    return target


def _member(path: Path, inner: str) -> str:
    with zipfile.ZipFile(path) as archive:
        return next(n for n in archive.namelist() if n.split("/", 1)[1] == inner)


def test_duplicate_member_names_are_refused_before_any_read(tmp_path, exported):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    with zipfile.ZipFile(buffer) as evil:
        evil_pickle = evil.read(next(n for n in evil.namelist() if n.endswith("data.pkl")))
    good = _backbone_file(tmp_path / "good.pt")
    pkl = _member(good, "data.pkl")
    for first in (True, False):
        dup = _rewrite(good, tmp_path / f"dup-{first}.pt", [(pkl, evil_pickle)], first=first)
        _refused(dup, "two members named")
    _refused(_rewrite(good, tmp_path / "case.pt", [(pkl.upper(), evil_pickle)]), "two members named")

    # torch.export: a first weights config that says "unpickle this member", a clean last one for Python.
    config = _member(exported, "data/weights/model_weights_config.json")
    with zipfile.ZipFile(exported) as archive:
        clean = json.loads(archive.read(config))
    poisoned = {"config": {k: {**v, "use_pickle": True} for k, v in clean["config"].items()}}
    dup = _rewrite(exported, tmp_path / "dup.pt2", [(config, json.dumps(poisoned).encode())], first=True)
    _refused(dup, "two members named", trust_code=True)  # even trusted code does not get two readings
    assert not marker.exists()


def test_archives_outside_one_folder_or_with_unreadable_methods_are_refused(tmp_path):
    good = _backbone_file(tmp_path / "good.pt")
    _refused(
        _rewrite(good, tmp_path / "stray.pt", [("other/data.pkl", b"x")]), "outside the archive's folder"
    )
    with zipfile.ZipFile(tmp_path / "bz2.pt", "w", compression=zipfile.ZIP_BZIP2) as archive:
        archive.writestr("a/data.pkl", pickle.dumps({"w": 1}))
    _refused(tmp_path / "bz2.pt", "compression method 12")
    prefixed = tmp_path / "prefixed.pt"
    prefixed.write_bytes(good.read_bytes()[:4] + good.read_bytes())  # a local-header magic, then the archive
    _refused(prefixed, "does not start the file")


def test_flipped_byte_in_a_weight_fails_its_crc(tmp_path):
    sd = {"conv1.weight": torch.arange(1000, dtype=torch.float32)}
    torch.save(sd, tmp_path / "w.pt")
    data = bytearray((tmp_path / "w.pt").read_bytes())
    offset = bytes(data).find(sd["conv1.weight"].numpy().tobytes()[:64])
    data[offset + 100] ^= 0xFF  # torch itself would load this as a different weight
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    _refused(tmp_path / "flipped.pt", "damaged zip archive.*CRC")


def _forbid_torch_load(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load ran on an archive that should have been refused first")

    monkeypatch.setattr(torch, "load", forbidden)


def test_zip_bomb_is_refused_from_its_central_directory(tmp_path, monkeypatch):
    from normprobe.checkpoints import archive

    _forbid_torch_load(monkeypatch)
    # A real bomb, scaled down (16 MiB of zeros in ~16 KiB) with the ratio floor scaled down alike.
    monkeypatch.setattr(archive, "RATIO_FLOOR", 1 << 20)
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("bomb/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        bomb.writestr("bomb/data/0", bytes(16 << 20))
    _refused(tmp_path / "bomb.pt", "inflate to 16.0 MiB.*zip bomb")
    monkeypatch.undo()
    _forbid_torch_load(monkeypatch)

    # A central directory that claims 3 GiB for a tiny member: refused on the claim, nothing inflated.
    with zipfile.ZipFile(tmp_path / "claim.pt", "w", compression=zipfile.ZIP_DEFLATED) as claim:
        claim.writestr("claim/data.pkl", pickle.dumps({"w": 1}, protocol=2))
    data = bytearray((tmp_path / "claim.pt").read_bytes())
    central = bytes(data).index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 3 << 30)  # uncompressed size of the central directory entry
    (tmp_path / "claim.pt").write_bytes(bytes(data))
    _refused(tmp_path / "claim.pt", "inflate to 3.0 GiB.*zip bomb")

    # More than the memory budget, even uncompressed.
    monkeypatch.setattr(archive, "memory_budget", lambda: 1 << 20)
    torch.save({"w": torch.zeros(1 << 19)}, tmp_path / "big.pt")  # 2 MiB, stored as torch.save stores it
    _refused(tmp_path / "big.pt", "inflate to 2.0 MiB, more than this machine's budget of 1.0 MiB")


# --- malformed checkpoints: one line each, never a traceback ---------------------------------------

TINY_SPEC = {
    "backbone": {"name": "resnet18", "stem": "cifar", "width": 2},
    "projector": [{"type": "linear", "in": 16, "out": 8, "bias": True}, {"type": "bn", "dim": 8}],
}


def _native(path: Path, **override) -> Path:
    """A normprobe checkpoint of a tiny encoder, written by hand so that any field can be made wrong."""
    from normprobe.models import build_encoder

    torch.manual_seed(0)
    payload = {
        "format": "normprobe.checkpoint/1",
        "method": "simclr",
        "encoder": TINY_SPEC,
        "preprocess": {"input_size": [32, 32], "mean": None, "std": None},
        "state_dict": build_encoder(TINY_SPEC).state_dict(),
        "training": {},
    }
    torch.save({**payload, **override}, path)
    return path


def test_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("model trained on 2024-05-01\n")
    (tmp_path / "link.pt").symlink_to(tmp_path / "notes.txt")
    _refused(tmp_path / "link.pt", "not a readable PyTorch checkpoint")
    (tmp_path / "one.pt").write_bytes(b"\x80")  # a pickle's first opcode, then nothing
    _refused(tmp_path / "one.pt", "not a readable PyTorch checkpoint")
    rng = np.random.default_rng(1)
    for i in range(200):
        (tmp_path / f"r{i}.pt").write_bytes(rng.bytes(int(rng.integers(1, 64))))
        with pytest.raises(NormprobeError):
            load_encoder(tmp_path / f"r{i}.pt")


def test_malformed_native_checkpoints(tmp_path):
    good = _native(tmp_path / "good.pt")
    assert load_encoder(good).heads == ("feats", "z")
    sd = torch.load(good, weights_only=True)["state_dict"]
    linear = {"type": "linear", "in": 16, "out": 8}
    cases = {
        "missing-key": (
            {"encoder": {**TINY_SPEC, "projector": [{"type": "linear", "in": 16}]}},
            "lacks 'out'",
        ),
        "bad-size": ({"encoder": {**TINY_SPEC, "projector": [{**linear, "out": -3}]}}, "out=-3"),
        "not-a-layer": ({"encoder": {**TINY_SPEC, "projector": ["linear"]}}, "layer 0 is a str"),
        "list-state-dict": ({"state_dict": list(sd.values())}, "state_dict is a list"),
        "non-tensor": ({"state_dict": {**sd, "projector.0.weight": "weights"}}, "is a str, not a tensor"),
        "complex": (
            {"state_dict": {**sd, "projector.0.bias": torch.zeros(8, dtype=torch.complex64)}},
            "real",
        ),
        "huge-layer": ({"encoder": {**TINY_SPEC, "projector": [{**linear, "out": 2**34}]}}, "budget"),
        "huge-width": (
            {"encoder": {**TINY_SPEC, "backbone": {"name": "resnet50", "width": 2**20}}},
            "budget",
        ),
        "bad-width": ({"encoder": {**TINY_SPEC, "backbone": {"name": "resnet18", "width": -8}}}, "width"),
        "bad-stem": ({"encoder": {**TINY_SPEC, "backbone": {"name": "resnet18", "stem": "vgg"}}}, "stem"),
        "wrong-in": ({"encoder": {**TINY_SPEC, "projector": [{**linear, "in": 100}]}}, "takes 100 features"),
        "spec-list": ({"encoder": [TINY_SPEC]}, "'encoder' entry is a list"),
        "huge-input": ({"preprocess": {"input_size": 10**6, "mean": None, "std": None}}, "input_size"),
        "zero-std": ({"preprocess": {"input_size": 32, "mean": [0, 0, 0], "std": [1, 0, 1]}}, "positive std"),
        "timm-loads": (
            {"encoder": {"backbone": {"name": "timm:vit_tiny_patch16_224", "checkpoint_path": str(good)}}},
            "checkpoint_path would load weights from elsewhere",
        ),
        "timm-hub": ({"encoder": {"backbone": {"name": "timm:hf-hub:someone/model"}}}, "timm has no model"),
    }
    for name, (override, match) in cases.items():
        message = _refused(_native(tmp_path / f"{name}.pt", **override), match)
        assert message.startswith(str(tmp_path)), message
    torch.save({"state_dict": [torch.zeros(3)]}, tmp_path / "lightning-list.ckpt")
    _refused(tmp_path / "lightning-list.ckpt", "not a checkpoint format normprobe knows")


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    mutated = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        mutated[int(rng.integers(len(mutated)))] ^= int(rng.integers(1, 256))
    return bytes(mutated)


def test_fuzzed_checkpoints_end_in_a_normprobe_error(tmp_path):
    """Seeded: random bytes, byte flips and truncations of real small files, through the library loader.

    Every input ends in a NormprobeError or loads. Only a flip can load, and only one in bytes that
    nothing reads (a zip timestamp, the alignment padding): a loaded file has the original weights.
    """
    from safetensors.torch import save_file

    rng = np.random.default_rng(20240514)
    real = _native(tmp_path / "real.pt").read_bytes()
    weights = load_encoder(tmp_path / "real.pt").encoder.state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "real.safetensors")
    tensors = (tmp_path / "real.safetensors").read_bytes()
    inputs: list[tuple[str, str, bytes]] = []
    for _ in range(300):
        inputs.append(("random", ".pt", rng.bytes(int(rng.integers(1, 2 ** int(rng.integers(1, 13)))))))
    for prefix in (b"PK\x03\x04", b"\x80\x02"):  # a zip's and a pickle's first bytes, then garbage
        inputs += [("random", ".pt", prefix + rng.bytes(int(rng.integers(0, 512)))) for _ in range(100)]
    inputs += [("flip", ".pt", _flip(real, rng)) for _ in range(300)]
    inputs += [("truncated", ".pt", real[: int(rng.integers(1, len(real)))]) for _ in range(200)]
    inputs += [
        ("truncated", ".safetensors", tensors[: int(rng.integers(1, len(tensors)))]) for _ in range(50)
    ]
    inputs += [("random", ".safetensors", rng.bytes(int(rng.integers(1, 256)))) for _ in range(50)]
    assert len(inputs) >= 1000
    outcomes: dict[tuple[str, str], int] = {}
    for i, (kind, suffix, data) in enumerate(inputs):
        path = tmp_path / f"fuzz{i}{suffix}"
        path.write_bytes(data)
        try:
            loaded = load_encoder(path)
        except NormprobeError as err:
            assert "\n" not in str(err)
            outcome = "refused"
        else:
            assert kind == "flip", (kind, suffix, i)
            got = loaded.encoder.state_dict()
            assert all(torch.equal(got[k], v) for k, v in weights.items()), i
            outcome = "loaded"
        outcomes[kind, outcome] = outcomes.get((kind, outcome), 0) + 1
        path.unlink()
    assert outcomes["flip", "refused"] > 0.8 * 300, outcomes
