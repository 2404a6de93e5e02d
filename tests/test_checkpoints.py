"""Every checkpoint adapter against a module built here in the real key layout of its source.

Each test builds the original module the way the source project does (torchvision / timm models,
the same attribute names and nn.Sequential orders), randomises BatchNorm statistics so that eval
mode matters, saves it in the project's file format, loads it with ``load_encoder`` and checks
that every head normprobe returns equals the original module's output. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from normprobe.checkpoints import load_encoder
from normprobe.checkpoints.arch import CIFAR100_MEAN, parse_arch
from normprobe.errors import NormprobeError
from normprobe.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread beats two OpenMP threads spinning on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (zero_init_residual would zero some), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=generator) - 0.5)
    return module.eval()


def _images(size: int = 32, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_heads(loaded, expected: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    with torch.no_grad():
        out = loaded.encoder(x)
    assert loaded.heads == tuple(expected)
    for head, want in expected.items():
        assert out[head].shape == want.shape, head
        assert torch.allclose(out[head], want, atol=1e-5, rtol=1e-4), head


class NarrowResNet(torchvision.models.resnet.ResNet):
    """torchvision's own ResNet code and key names at 1/``divisor`` of the width, to keep the tests fast."""

    def __init__(self, name: str, divisor: int = 8, zero_init_residual: bool = False) -> None:
        block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}[name]
        self.divisor, self.narrowed = divisor, False
        super().__init__(block, layers, zero_init_residual=zero_init_residual)
        width = 64 // divisor
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if not self.narrowed:  # the first stage starts from the (narrowed) stem
            self.inplanes, self.narrowed = self.inplanes // self.divisor, True
        return super()._make_layer(block, planes // self.divisor, blocks, stride, dilate)


def _torchvision_resnet(
    name: str = "resnet18", cifar_padding: int | None = 1, zero_init_residual: bool = False
) -> nn.Module:
    """A width-8 torchvision ResNet without classifier; ``cifar_padding`` swaps in the CIFAR stem as the projects do
    (``Conv2d(3, 64, 3, 1, padding)`` at full width, no max-pool); ``None`` keeps the ImageNet stem."""
    model = NarrowResNet(name, zero_init_residual=zero_init_residual)
    if cifar_padding is not None:
        model.conv1 = nn.Conv2d(
            3, model.bn1.num_features, kernel_size=3, stride=1, padding=cifar_padding, bias=False
        )
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def test_native_checkpoint_still_first_and_arch_only_sets_preprocessing(tmp_path):
    from normprobe.checkpoints import save_checkpoint
    from normprobe.models import build_encoder
    from normprobe.models.heads import simclr_projector
    from normprobe.preprocess import Preprocess

    spec = {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
        "projector": simclr_projector(64, 32, 16),
        "predictor": None,
    }
    encoder = _randomise(build_encoder(spec))
    save_checkpoint(
        tmp_path / "np.pt",
        method="simclr",
        encoder_spec=spec,
        preprocess=Preprocess((32, 32)),
        state_dict=encoder.state_dict(),
    )
    loaded = load_encoder(tmp_path / "np.pt")
    assert (loaded.adapter, loaded.method, loaded.meta["notes"]) == ("normprobe", "simclr", [])
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, encoder(x), x)
    assert load_encoder(tmp_path / "np.pt", arch="input_size=64").preprocess.input_size == (64, 64)
    with pytest.raises(NormprobeError, match="describes its own architecture"):
        load_encoder(tmp_path / "np.pt", arch="resnet50")


# --- the paper (Andrew-Draganov/SSLEmbeddingNorms, CLA/training/models.py) -------------------------


class PaperProjector(nn.Module):
    """Named layers ``layerK``/``layerK_bn`` and the same modules again in ``layers``, as the paper's Projector."""

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool = True, n_layers: int = 3) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        sequence: list[nn.Module] = []
        for k in range(1, n_layers + 1):
            setattr(self, f"layer{k}", nn.Linear(in_dim if k == 1 else out_dim, out_dim))
            setattr(self, f"layer{k}_bn", nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity())
            sequence += ([self.relu] if k > 1 else []) + [
                getattr(self, f"layer{k}"),
                getattr(self, f"layer{k}_bn"),
            ]
        self.layers = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PaperPredictor(nn.Module):
    def __init__(self, dim: int, funnel: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, funnel)
        self.relu = nn.ReLU(inplace=True)
        self.layer1_bn = nn.BatchNorm1d(funnel) if batch_norm else nn.Identity()
        self.layer2 = nn.Linear(funnel, dim)
        self.layers = nn.Sequential(self.layer1, self.layer1_bn, self.relu, self.layer2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PaperModel(nn.Module):
    """SimCLR (``projector`` + ``enc``), SimSiam (``enc`` + ``predictor``) or BYOL (+ ``target_encoder``)."""

    def __init__(
        self, method: str, backbone: nn.Module, feat_dim: int, dim: int = 32, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if method == "simclr":
            self.projector = PaperProjector(feat_dim, dim, batch_norm, n_layers=2)
            self.enc = nn.Sequential(self.backbone, self.projector)
        else:
            self.enc = nn.Sequential(self.backbone, PaperProjector(feat_dim, dim, batch_norm))
            if method == "byol":
                self.target_encoder = copy.deepcopy(self.enc)
            self.predictor = PaperPredictor(dim, dim // 4, batch_norm)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"feats": self.backbone(x), "z": self.enc(x)}
        if hasattr(self, "predictor"):
            out["p"] = self.predictor(out["z"])
        return out


@pytest.mark.parametrize("method,batch_norm", [("simclr", True), ("simsiam", False), ("byol", True)])
def test_paper_state_dict(tmp_path, method, batch_norm):
    model = _randomise(
        PaperModel(method, _torchvision_resnet(zero_init_residual=True), 64, batch_norm=batch_norm)
    )
    sd = model.state_dict()
    assert "backbone.conv1.weight" in sd and "enc.0.conv1.weight" in sd  # the real duplicated layout
    torch.save(sd, tmp_path / f"{method}_epoch512.pt")
    loaded = load_encoder(tmp_path / f"{method}_epoch512.pt")
    assert (loaded.adapter, loaded.method) == ("paper", method)
    assert loaded.preprocess.input_size == (32, 32) and loaded.preprocess.mean is None
    assert loaded.meta["encoder"]["backbone"] == {
        "name": "resnet18",
        "stem": "cifar",
        "width": 8,
        "stem_padding": 1,
    }
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, model.heads(x), x)
    assert any("checked identical" in n for n in loaded.meta["notes"])
    assert any("target_encoder" in n for n in loaded.meta["notes"]) == (method == "byol")


def test_paper_resnet50_imagenet_stem(tmp_path):
    """resnet50 is told from resnet18 by its bottleneck keys; a non-CIFAR run uses 128x128 input."""
    model = _randomise(PaperModel("simclr", _torchvision_resnet("resnet50", cifar_padding=None), 256, dim=16))
    torch.save(model.state_dict(), tmp_path / "simclr.pt")
    loaded = load_encoder(tmp_path / "simclr.pt")
    assert loaded.meta["encoder"]["backbone"] == {"name": "resnet50", "stem": "imagenet", "width": 8}
    assert loaded.preprocess.input_size == (128, 128)
    x = _images(64)
    with torch.no_grad():
        _assert_heads(loaded, model.heads(x), x)


# --- solo-learn (vturrisi/solo-learn, solo/methods/base.py, byol.py, mocov3.py) ---------------------


def _lightning(state_dict: dict, **extra) -> dict:
    """What ``Trainer.save_checkpoint`` writes (without optimiser tensors, which are irrelevant here)."""
    return {
        "epoch": 399,
        "global_step": 78000,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 399}}}},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        **extra,
    }


class SoloBYOL(nn.Module):
    """BaseMomentumMethod + BYOL: backbone, classifier, momentum copies, projector, predictor (solo-learn names)."""

    def __init__(self, backbone: nn.Module, feat_dim: int = 64, hidden: int = 48, out: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feat_dim, 10)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
        self.momentum_projector = copy.deepcopy(self.projector)
        self.predictor = nn.Sequential(
            nn.Linear(out, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        z = self.projector(feats)
        return {"feats": feats, "z": z, "p": self.predictor(z)}


def test_solo_learn_byol_cifar_with_args_json(tmp_path):
    model = _randomise(SoloBYOL(_torchvision_resnet(cifar_padding=2)))
    run = tmp_path / "trained_models" / "byol" / "3k2j1x"
    run.mkdir(parents=True)
    torch.save(_lightning(model.state_dict()), run / "byol-cifar10-3k2j1x-ep=399.ckpt")
    (run / "args.json").write_text(
        json.dumps(
            {
                "method": "byol",
                "backbone": {"name": "resnet18", "kwargs": {}},
                "data": {"dataset": "cifar10"},
                "method_kwargs": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
            }
        )
    )
    loaded = load_encoder(run / "byol-cifar10-3k2j1x-ep=399.ckpt")
    assert (loaded.adapter, loaded.method) == ("solo-learn", "byol")
    assert loaded.meta["encoder"]["backbone"]["stem_padding"] == 2
    assert loaded.preprocess.input_size == (32, 32)
    assert loaded.preprocess.mean == CIFAR10_MEAN and loaded.preprocess.std == CIFAR10_STD
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, model.heads(x), x)
    assert any("momentum_" in n for n in loaded.meta["notes"])


def _mocov3_mlp(layers: int, d_in: int, hidden: int, out: int, last_bn: bool = True) -> nn.Sequential:
    """solo-learn MoCoV3._build_mlp: bias-free Linears, BN + ReLU between, a last BN without affine."""
    mlp: list[nn.Module] = []
    for i in range(layers):
        mlp.append(nn.Linear(d_in if i == 0 else hidden, out if i == layers - 1 else hidden, bias=False))
        if i < layers - 1:
            mlp += [nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        elif last_bn:
            mlp.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mlp)


def test_solo_learn_mocov3_imagenet_without_args_json(tmp_path):
    model = SoloBYOL(_torchvision_resnet(cifar_padding=None))
    model.projector = _mocov3_mlp(2, 64, 48, 32)
    model.momentum_projector = copy.deepcopy(model.projector)
    model.predictor = _mocov3_mlp(2, 32, 64, 32, last_bn=False)
    _randomise(model)
    torch.save(_lightning(model.state_dict()), tmp_path / "mocov3.ckpt")
    loaded = load_encoder(tmp_path / "mocov3.ckpt")
    assert (loaded.adapter, loaded.method) == (
        "solo-learn",
        "mocov3",
    )  # bias-free projector + predictor + momentum
    assert loaded.preprocess.input_size == (224, 224) and loaded.preprocess.mean == IMAGENET_MEAN
    x = _images(64)
    with torch.no_grad():
        _assert_heads(loaded, model.heads(x), x)


def test_solo_learn_old_encoder_prefix_and_flat_args(tmp_path):
    """solo-learn < 1.0 named the backbone ``encoder`` and saved flat argparse args; MoCo v2+ keeps a queue."""
    model = SoloBYOL(_torchvision_resnet(cifar_padding=2))
    model.encoder = model.backbone
    del model.backbone, model.predictor
    model.projector = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    model.register_buffer("queue", torch.randn(2, 32, 16))
    model.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    _randomise(model)
    torch.save(_lightning(model.state_dict()), tmp_path / "mocov2plus.ckpt")
    (tmp_path / "args.json").write_text(
        json.dumps({"method": "mocov2plus", "encoder": "resnet18", "dataset": "cifar100", "cifar": True})
    )
    loaded = load_encoder(tmp_path / "mocov2plus.ckpt")
    assert (loaded.adapter, loaded.method) == ("solo-learn", "mocov2plus")
    assert loaded.preprocess.mean == CIFAR100_MEAN
    x = _images()
    with torch.no_grad():
        feats = model.encoder(x)
        _assert_heads(
            loaded, {"feats": feats, "z": model.projector(feats)}, x
        )  # raw z: solo-learn normalises it in forward


def test_solo_learn_vit_mocov3(tmp_path):
    """solo-learn's ViTs are timm VisionTransformers (num_classes=0); MoCo v3 gives them a 3-layer projector."""
    model = nn.Module()
    model.backbone = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=1, num_classes=0
    )
    model.classifier = nn.Linear(384, 100)
    model.projector = _mocov3_mlp(3, 384, 48, 32)
    model.predictor = _mocov3_mlp(2, 32, 48, 32)
    model.momentum_backbone = copy.deepcopy(model.backbone)
    _randomise(model)
    torch.save(_lightning(model.state_dict()), tmp_path / "mocov3-vit.ckpt")
    (tmp_path / "args.json").write_text(
        json.dumps(
            {
                "method": "mocov3",
                "backbone": {"name": "vit_small", "kwargs": {"patch_size": 4, "img_size": 32}},
                "data": {"dataset": "cifar100"},
            }
        )
    )
    loaded = load_encoder(tmp_path / "mocov3-vit.ckpt")
    assert (loaded.adapter, loaded.method, loaded.preprocess.mean) == ("solo-learn", "mocov3", CIFAR100_MEAN)
    x = _images()
    with torch.no_grad():
        feats = model.backbone(x)
        z = model.projector(feats)
        _assert_heads(loaded, {"feats": feats, "z": z, "p": model.predictor(z)}, x)


# --- lightly (lightly-ai/lightly, examples/pytorch_lightning/*.py, lightly/models/modules/heads.py) ---


class LightlyHead(nn.Module):
    """lightly's ProjectionHead: blocks of Linear (bias only without BN) [+ BN] [+ non-linearity] in ``layers``."""

    def __init__(self, blocks: list[tuple[int, int, bool, bool]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out, batch_norm, relu in blocks:
            layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            layers += [nn.BatchNorm1d(d_out)] if batch_norm else []
            layers += [nn.ReLU()] if relu else []
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LightlyBYOL(nn.Module):
    """examples/pytorch_lightning/byol.py: backbone = nn.Sequential(*resnet.children()[:-1]) + heads + momentum copies."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(NarrowResNet("resnet18").children())[:-1])
        self.projection_head = LightlyHead([(64, 64, True, True), (64, 32, False, False)])
        self.prediction_head = LightlyHead([(32, 64, True, True), (64, 32, False, False)])
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(feats)
        return {"feats": feats, "z": z, "p": self.prediction_head(z)}


def test_lightly_byol_sequential_backbone(tmp_path):
    model = _randomise(LightlyBYOL())
    assert "backbone.4.0.conv1.weight" in model.state_dict()
    torch.save(_lightning(model.state_dict()), tmp_path / "epoch=9-step=1950.ckpt")
    loaded = load_encoder(tmp_path / "epoch=9-step=1950.ckpt", arch="input_size=32")
    assert (loaded.adapter, loaded.method) == ("lightly", "byol")
    assert loaded.preprocess.input_size == (32, 32) and loaded.preprocess.std == IMAGENET_STD
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, model.heads(x), x)


def test_lightly_simclr_torchvision_backbone_with_memory_bank(tmp_path):
    """lightly's benchmarks keep torchvision names (``backbone.fc = Identity``); a loss may store a memory bank."""
    model = nn.Module()
    model.backbone = _torchvision_resnet(cifar_padding=1)
    model.projection_head = LightlyHead([(64, 64, True, True), (64, 32, True, False)])
    model.criterion = nn.Module()
    model.criterion.register_buffer("bank", torch.randn(32, 128))
    _randomise(model)
    torch.save(_lightning(model.state_dict()), tmp_path / "simclr.ckpt")
    loaded = load_encoder(tmp_path / "simclr.ckpt")
    assert loaded.adapter == "lightly" and loaded.preprocess.input_size == (32, 32)
    x = _images()
    with torch.no_grad():
        feats = model.backbone(x)
        _assert_heads(loaded, {"feats": feats, "z": model.projection_head(feats)}, x)


# --- bare torchvision / timm backbones ----------------------------------------------------------


@pytest.mark.parametrize("cifar", [True, False])
def test_torchvision_resnet18_state_dict(tmp_path, cifar):
    model = torchvision.models.resnet18()
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    _randomise(model)
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    loaded = load_encoder(tmp_path / "resnet18.pth")
    assert loaded.adapter == "torchvision" and loaded.heads == ("feats",)
    assert loaded.preprocess.input_size == ((32, 32) if cifar else (224, 224))
    assert loaded.preprocess.mean == IMAGENET_MEAN
    assert any("classifier" in n for n in loaded.meta["notes"])
    model.fc = nn.Identity()
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, {"feats": model(x)}, x)


def test_timm_vit_tiny_state_dict(tmp_path):
    model = _randomise(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=4)
    )
    torch.save(model.state_dict(), tmp_path / "vit_tiny.pth")
    loaded = load_encoder(tmp_path / "vit_tiny.pth")
    assert loaded.adapter == "timm" and loaded.preprocess.input_size == (32, 32)
    backbone = loaded.meta["encoder"]["backbone"]
    assert (backbone["name"], backbone["img_size"], backbone["patch_size"], backbone["depth"]) == (
        "timm:vit_tiny_patch16_224",
        32,
        4,
        4,
    )
    x = _images()
    with torch.no_grad():
        _assert_heads(loaded, {"feats": model.forward_head(model.forward_features(x), pre_logits=True)}, x)
    # naming the model outright gives the same encoder
    named = load_encoder(
        tmp_path / "vit_tiny.pth", arch="timm:vit_tiny_patch16_224:img_size=32:patch_size=4:depth=4"
    )
    with torch.no_grad():
        assert torch.allclose(named.encoder(x)["feats"], loaded.encoder(x)["feats"], atol=1e-6)


# --- TorchScript and torch.export: architectures normprobe does not know ----------------------------


class Foreign(nn.Module):
    """Not a ResNet or ViT: a conv net whose forward returns (feats, z)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.GELU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x).flatten(1)
        return feats, self.head(feats)


class ForeignDict(Foreign):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x).flatten(1)
        z = self.head(feats)
        return {"feats": feats, "z": z, "logits": z.softmax(-1)}


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_torchscript(tmp_path, kind):
    model = _randomise(Foreign() if kind == "trace" else ForeignDict())
    x = _images()
    scripted = torch.jit.trace(model, x) if kind == "trace" else torch.jit.script(model)
    torch.jit.save(scripted, tmp_path / "model.pt")
    loaded = load_encoder(tmp_path / "model.pt", trust_code=True)
    assert loaded.adapter == "torchscript"
    assert loaded.preprocess.input_size == (32, 32) and loaded.preprocess.mean is None
    with torch.no_grad():
        feats, z = Foreign.forward(model, x)
        _assert_heads(loaded, {"feats": feats, "z": z}, x)
    overridden = load_encoder(tmp_path / "model.pt", arch="input_size=48:norm=imagenet", trust_code=True)
    assert overridden.preprocess.input_size == (48, 48) and overridden.preprocess.mean == IMAGENET_MEAN


def test_torch_export_static_shape(tmp_path):
    """A static batch of 4 and 24x24 input: the size comes from the program, batches of any size are chunked."""
    model = _randomise(Foreign())
    torch.export.save(torch.export.export(model, (_images(24, 4),)), tmp_path / "model.pt2")
    loaded = load_encoder(tmp_path / "model.pt2", trust_code=True)
    assert loaded.adapter == "torch.export" and loaded.preprocess.input_size == (24, 24)
    x = _images(24, 6)
    with torch.no_grad():
        feats, z = model(x)
        _assert_heads(loaded, {"feats": feats, "z": z}, x)


def test_torch_export_dynamic_batch(tmp_path):
    model = _randomise(Foreign())
    program = torch.export.export(model, (_images(32, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_encoder(tmp_path / "model.pt2", trust_code=True)
    x = _images(32, 5)
    with torch.no_grad():
        feats, z = model(x)
        _assert_heads(loaded, {"feats": feats, "z": z}, x)


# --- --arch ---------------------------------------------------------------------------------------


def test_parse_arch_forms():
    assert parse_arch(None) is None
    assert parse_arch("resnet18").backbone == {"name": "resnet18"}
    assert parse_arch("resnet18:cifar:width=32").backbone == {
        "name": "resnet18",
        "stem": "cifar",
        "width": 32,
    }
    assert parse_arch("resnet50:imagenet").backbone == {"name": "resnet50", "stem": "imagenet"}
    vit = parse_arch("timm:vit_small_patch16_224:img_size=32:patch_size=4")
    assert (
        vit.backbone == {"name": "timm:vit_small_patch16_224", "img_size": 32, "patch_size": 4}
        and vit.input_size == 32
    )
    only = parse_arch("input_size=224:norm=imagenet")
    assert only.backbone is None and (only.input_size, only.norm) == (224, "imagenet")
    for bad in (
        "resnet9000",
        "resnet18:width=x",
        "resnet18:depth=3",
        "timm:not_a_model",
        "norm=zca",
        "resnet18::cifar",
    ):
        with pytest.raises(NormprobeError, match="--arch"):
            parse_arch(bad)


def test_arch_overrides_inferred_stem_padding(tmp_path):
    """A bare torchvision file cannot tell solo-learn's CIFAR padding 2 from 1; --arch can."""
    model = _randomise(_torchvision_resnet(cifar_padding=2))
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    x = _images()
    with torch.no_grad():
        want = model(x)
        assert not torch.allclose(
            load_encoder(tmp_path / "backbone.pth").encoder(x)["feats"], want, atol=1e-3
        )
        fixed = load_encoder(tmp_path / "backbone.pth", arch="resnet18:cifar:stem_padding=2:norm=cifar10")
        assert torch.allclose(fixed.encoder(x)["feats"], want, atol=1e-5)
    assert fixed.preprocess.mean == CIFAR10_MEAN


# --- .safetensors: the same state_dicts, read by the safetensors package (no pickle at all) --------


def _layout(name: str, folder) -> tuple[dict, dict, str | None]:
    """A model's state_dict in ``name``'s layout, the object its own project torch.saves, and an --arch."""
    if name == "paper":
        sd = _randomise(PaperModel("simsiam", _torchvision_resnet(zero_init_residual=True), 64)).state_dict()
        return sd, sd, None
    if name == "solo-learn":
        (folder / "args.json").write_text(json.dumps({"method": "byol", "data": {"dataset": "cifar10"}}))
        sd = _randomise(SoloBYOL(_torchvision_resnet(cifar_padding=2))).state_dict()
        return sd, _lightning(sd), None
    if name == "lightly":
        sd = _randomise(LightlyBYOL()).state_dict()
        return sd, _lightning(sd), "input_size=32"
    if name == "torchvision":
        sd = _randomise(torchvision.models.resnet18()).state_dict()
        return sd, sd, "input_size=32"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=1)
    sd = _randomise(model).state_dict()
    return sd, sd, None


@pytest.mark.parametrize("layout", ["paper", "solo-learn", "lightly", "torchvision", "timm"])
def test_safetensors_state_dict_loads_through_the_same_adapter(tmp_path, monkeypatch, layout):
    from safetensors.torch import save_file

    sd, saved, arch = _layout(layout, tmp_path)
    torch.save(saved, tmp_path / "model.pt")
    # safetensors refuses tensors that share storage (the paper registers every module twice): copy each.
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    (tmp_path / "model.bin").write_bytes((tmp_path / "model.safetensors").read_bytes())
    want = load_encoder(tmp_path / "model.pt", arch=arch)
    assert want.adapter == layout

    def no_pickle(*args, **kwargs):
        raise AssertionError("a safetensors file went through torch.load")

    monkeypatch.setattr(torch, "load", no_pickle)
    x = _images()
    for name in ("model.safetensors", "model.bin"):  # by its name, and by its content
        got = load_encoder(tmp_path / name, arch=arch)
        assert (got.adapter, got.method, got.heads, got.preprocess) == (
            want.adapter,
            want.method,
            want.heads,
            want.preprocess,
        )
        with torch.no_grad():
            expected, actual = want.encoder(x), got.encoder(x)
        for head in want.heads:
            assert torch.equal(actual[head], expected[head]), (name, head)
