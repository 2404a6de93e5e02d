"""Backbones with torchvision's parameter names, heads as in the papers, the Encoder, preprocessing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from normprobe.errors import NormprobeError
from normprobe.models import Encoder, build_backbone, build_encoder, build_head, head_out_dim
from normprobe.models import heads as H
from normprobe.models.resnet import ResNet
from normprobe.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_state_dict_matches_torchvision(name: str) -> None:
    with torch.device("meta"):  # shapes and names only: no memory, no initialisation cost
        ours = ResNet(name, stem="imagenet", width=64).state_dict()
        theirs = {
            k: v
            for k, v in getattr(torchvision.models, name)(weights=None).state_dict().items()
            if not k.startswith("fc.")
        }
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_torchvision_weights_give_torchvision_features() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    ours = ResNet("resnet18", stem="imagenet").eval()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x))


def test_cifar_stem_and_width() -> None:
    model = ResNet("resnet18", stem="cifar", width=16)
    assert tuple(model.conv1.weight.shape) == (16, 3, 3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert model.num_features == 128
    assert ResNet("resnet50", stem="cifar", width=8).num_features == 256
    assert ResNet("resnet18", stem="cifar", stem_padding=2).conv1.padding == (2, 2)  # solo-learn's stem
    with torch.inference_mode():
        assert tuple(model.eval()(torch.randn(3, 3, 32, 32)).shape) == (3, 128)


def test_heads_as_in_the_papers() -> None:
    simclr = build_head(H.simclr_projector(512))
    assert [type(m).__name__ for m in simclr] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head_out_dim(H.simclr_projector(512)) == 256
    simsiam = H.simsiam_projector(512)
    assert simsiam[-1] == {"type": "bn", "dim": 2048, "affine": False}
    assert head_out_dim(H.bottleneck_predictor()) == 2048 and H.bottleneck_predictor()[0]["out"] == 512
    assert head_out_dim(H.byol_projector(2048)) == 256 and H.byol_projector(2048)[0]["out"] == 4096
    assert head_out_dim(H.mocov2_projector(2048)) == 128
    assert head_out_dim(H.mocov3_predictor()) == 256
    with pytest.raises(NormprobeError, match="unknown head layer type 'dropout'"):
        build_head([{"type": "dropout"}])


def test_encoder_returns_raw_embeddings_of_each_head() -> None:
    torch.manual_seed(0)
    spec = {
        "backbone": {"name": "resnet18", "stem": "cifar", "width": 8},
        "projector": H.simsiam_projector(64, 96),
        "predictor": H.bottleneck_predictor(96, 24),
    }
    encoder = build_encoder(spec).eval()
    assert isinstance(encoder, Encoder) and encoder.heads == ("feats", "z", "p")
    with torch.inference_mode():
        out = encoder(torch.rand(5, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"feats": (5, 64), "z": (5, 96), "p": (5, 96)}
    norms = out["p"].norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # nothing is normalised: the norm is the signal
    assert build_encoder({"backbone": {"name": "resnet18", "width": 8}}).heads == ("feats",)
    with pytest.raises(NormprobeError, match="predictor but no projector"):
        build_encoder({"backbone": {"name": "resnet18"}, "predictor": H.bottleneck_predictor()})
    with pytest.raises(NormprobeError, match="unknown backbone 'vgg11'"):
        build_backbone({"name": "vgg11"})
    with pytest.raises(NormprobeError, match="bad options for backbone resnet18"):
        build_backbone({"name": "resnet18", "depth": 3})


def test_preprocess_scales_resizes_and_normalises() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    x = Preprocess((32, 32), CIFAR10_MEAN, CIFAR10_STD)(images)
    assert x.dtype == torch.float32 and tuple(x.shape) == (4, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    manual = F.interpolate(
        images.permute(0, 3, 1, 2).float() / 255,
        size=(32, 32),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    manual = (manual - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, manual)

    same_size = Preprocess((64, 64))(images)  # no resize, no normalisation: [0, 1] inputs as in the paper
    torch.testing.assert_close(same_size, images.permute(0, 3, 1, 2).float() / 255)
    assert Preprocess((32, 32)).describe() == "32x32, [0,1] scaling, no mean/std normalisation"
    assert Preprocess((16, 16))(images, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(NormprobeError, match="expected uint8"):
        Preprocess()(images.float())


def test_preprocess_round_trips_and_rejects_malformed_specs() -> None:
    p = Preprocess((224, 224), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert Preprocess.from_dict(p.to_dict()) == p
    assert Preprocess.from_dict({"input_size": 32}) == Preprocess((32, 32))
    with pytest.raises(NormprobeError, match="both mean and std"):
        Preprocess.from_dict({"input_size": 32, "mean": [0.5, 0.5, 0.5]})
    with pytest.raises(NormprobeError, match="malformed"):
        Preprocess.from_dict({"size": 32})
