import pytest
import torch
import torchvision

from reidctl.errors import ReidctlError
from reidctl.models import ModelConfig, build_model
from reidctl.models.weights import init_description
from reidctl.models.reid import GeneralizedMeanPooling
from tests.conftest import shared_path


@pytest.mark.parametrize("arch,channels", [("mobilenet_v2", 1280), ("resnet18", 512)])
@pytest.mark.parametrize("last_stride,rows", [(1, 8), (2, 4)])
def test_feature_map_and_outputs(arch, channels, last_stride, rows):
    model = build_model(ModelConfig(arch=arch, parts=3, last_stride=last_stride, height=128, width=64), pretrained="none").eval()
    x = torch.randn(2, 3, 128, 64)
    assert model.backbone(x).shape[1:] == (channels, rows, rows // 2)
    out = model.embed(x)
    assert out["global"].shape == (2, channels) and out["parts"].shape == (2, 3, channels)
    assert torch.allclose(out["global"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out["parts"].norm(dim=2), torch.ones(2, 3), atol=1e-5)


def test_neck_bias_frozen_and_gem_is_learnable():
    model = build_model(ModelConfig(arch="resnet18", pooling="gem", height=64, width=32), pretrained="none")
    assert not model.neck.bias.requires_grad and model.neck.weight.requires_grad
    assert model.pool.p.requires_grad and float(model.pool.p.detach()) == 3.0


def test_gem_formula_and_stripes():
    x = torch.rand(2, 4, 6, 2) + 0.1
    gem = GeneralizedMeanPooling()
    expected = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(gem(x)[..., 0], expected, atol=1e-6)
    parts = GeneralizedMeanPooling(bins=3)(x)
    assert torch.allclose(parts[..., 1], x[:, :, 2:4].pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)
    # with p = 1 and the adaptive split the stripes are exactly AdaptiveAvgPool2d((P, 1)), overlap included
    y = torch.rand(2, 4, 8, 3)
    avg = GeneralizedMeanPooling(p=1.0, bins=3, split="adaptive")
    assert torch.allclose(avg(y), torch.nn.AdaptiveAvgPool2d((3, 1))(y).flatten(2), atol=1e-6)
    # the default split is disjoint: rows [0,2), [2,5), [5,8)
    disjoint = GeneralizedMeanPooling(p=1.0, bins=3)(y)
    assert torch.allclose(disjoint[..., 1], y[:, :, 2:5].mean(dim=(2, 3)), atol=1e-6)


def test_too_many_parts_for_the_map_is_a_clear_error():
    model = build_model(ModelConfig(arch="resnet18", parts=3, last_stride=2, height=32, width=16), pretrained="none")
    with pytest.raises(ReidctlError, match="rows"):
        model(torch.randn(2, 3, 32, 16))


def test_shared_mobilenet_features_file_loads():
    path = shared_path("weights", "mobilenet_v2_imagenet_features.pth")
    model = build_model(ModelConfig(arch="mobilenet_v2", height=128, width=64), weights=path)
    ref = torchvision.models.mobilenet_v2().features
    ref.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(model.backbone.features[0][0].weight, ref[0][0].weight)


def test_full_torchvision_state_dict_loads_and_ignores_classifier(tmp_path):
    net = torchvision.models.resnet18()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "r18.pth")
    model = build_model(ModelConfig(arch="resnet18", height=64, width=32), weights=tmp_path / "r18.pth")
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight)


def test_bad_weights_files(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ReidctlError, match="does not fit the mobilenet_v2 backbone"):
        build_model(ModelConfig(arch="mobilenet_v2"), weights=tmp_path / "r18.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ReidctlError, match="not a readable PyTorch weights file"):
        build_model(ModelConfig(arch="resnet18"), weights=tmp_path / "junk.pth")
    with pytest.raises(ReidctlError, match="not found"):
        build_model(ModelConfig(arch="resnet18"), weights=tmp_path / "missing.pth")
    with pytest.raises(ReidctlError, match=r"--weights FILE and --pretrained imagenet both choose the start"):
        build_model(ModelConfig(arch="resnet18"), weights=tmp_path / "r18.pth", pretrained="imagenet")
    with pytest.raises(ReidctlError, match=r"--weights FILE and --pretrained none both choose the start"):
        build_model(ModelConfig(arch="resnet18"), weights=tmp_path / "r18.pth", pretrained="none")


def test_imagenet_offline_names_both_ways_out(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    for pretrained in ("imagenet", None):  # None: not chosen, so ImageNet
        with pytest.raises(ReidctlError, match=r"^could not fetch torchvision's ImageNet weights for resnet18 \(OSError: "
                           r"Name or service not known\); .*--weights FILE, .*--pretrained none$"):
            build_model(ModelConfig(arch="resnet18"), pretrained=pretrained)


def test_a_fresh_model_starts_from_imagenet_unless_told_otherwise(monkeypatch, tmp_path):
    reference = torchvision.models.resnet18()
    fetched = []

    def fetch(arch):
        fetched.append(arch)
        return reference.state_dict()

    monkeypatch.setattr("reidctl.models.weights.fetch_imagenet", fetch)
    config = ModelConfig(arch="resnet18", height=64, width=32)
    model = build_model(config)
    assert fetched == ["resnet18"] and torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert init_description(None, None) == "imagenet"
    torch.manual_seed(0)
    random_start = build_model(config, pretrained="none")
    assert fetched == ["resnet18"] and not torch.equal(random_start.backbone.conv1.weight, reference.conv1.weight)
    assert init_description("none", None) == "random"
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    assert init_description(None, tmp_path / "r18.pth") == "weights:r18.pth"
    with pytest.raises(ReidctlError, match=r"^unknown --pretrained 'imagenet21k' \(choose imagenet or none\)$"):
        build_model(config, pretrained="imagenet21k")


def test_bad_config_values():
    for kwargs, message in [
        ({"arch": "vgg"}, r"^unknown architecture 'vgg' \(choose one of "),
        ({"pooling": "max"}, r"^unknown pooling 'max' \(choose avg or gem\)$"),
        ({"parts": -1}, r"^--parts must be 0 \(no parts\) or a positive number of stripes$"),
        ({"last_stride": 3}, r"^--last-stride must be 1 or 2$"),
        ({"height": 8}, r"^input size 8×128 is too small \(at least 32×16\)$"),
    ]:
        with pytest.raises(ReidctlError, match=message):
            ModelConfig(**kwargs)
