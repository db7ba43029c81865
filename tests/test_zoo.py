"""Tests for taoism.zoo: shapes, fx tracing, seeding, weights loading, units, errors."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.fx
from torch import nn

import taoism
from taoism import zoo
from taoism.errors import ConfigError

EXPECTED_MODELS = {
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg16_bn",
    "alexnet",
    "small_cnn",
    "gap_resnet20",
    "teeslice_resnet18",
    "teeslice_resnet34",
    "teeslice_resnet50",
    "teeslice_small_cnn",
    "vit_tiny",
    "bert_tiny",
}
CASES = [(name, shape) for name in sorted(EXPECTED_MODELS) for shape in zoo.supported_shapes(name)]

# torchvision's parameter counts for the ImageNet models (structure check without torchvision).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vgg16_bn": 138_365_992,
    "alexnet": 61_100_840,
}


def _nparams(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_list_models() -> None:
    assert set(zoo.list_models()) == EXPECTED_MODELS
    assert len(zoo.list_models()) == len(EXPECTED_MODELS)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_trace_units(name: str, shape: str) -> None:
    model = zoo.get_model(name, dataset_shape=shape)
    assert not model.training
    classes = {"imagenet": 1000, "tokens": 2}.get(shape, 10)
    batch = 1 if shape == "imagenet" else 2
    xs = zoo.example_inputs(name, shape, batch=batch)  # (x,), or (token ids, attention mask)
    assert tuple(xs[0].shape) == (batch, *zoo.input_shape(name, shape))
    with torch.no_grad():
        y = model(*xs)
        assert tuple(y.shape) == (batch, classes)
        assert torch.isfinite(y).all()
        graph_module = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(graph_module(*xs), y, rtol=1e-4, atol=1e-5)

    # Clean trace: every module call is its own module instance (no shared ReLUs).
    called = collections.Counter(
        n.target for n in graph_module.graph.nodes if n.op == "call_module"
    )
    assert called and max(called.values()) == 1, called.most_common(3)

    # Units resolve, do not overlap, and cover every parameter.
    unit_list = zoo.units(model)
    flat = [m for unit in unit_list for m in unit]
    assert len(flat) == len(set(flat))
    for qual in flat:
        model.get_submodule(qual)
    for pname, _ in model.named_parameters():
        assert any(pname.startswith(q + ".") for q in flat), pname

    if shape == "imagenet" and name in TORCHVISION_PARAMS:
        assert _nparams(model) == TORCHVISION_PARAMS[name]


def test_resnet18_cifar_counts_and_units() -> None:
    model = zoo.get_model("resnet18", dataset_shape="cifar", num_classes=10)
    assert _nparams(model) == 11_173_962
    assert _nparams(model.fc) == 5_130
    assert _nparams(model.conv1) == 1_728
    expected = [("conv1", "bn1", "relu")]
    expected += [(f"layer{i}.{j}",) for i in range(1, 5) for j in range(2)]
    expected += [("avgpool", "fc")]
    assert zoo.units(model) == expected
    assert len(expected) == 10
    # torchvision-compatible names
    keys = model.state_dict().keys()
    for k in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
    ):
        assert k in keys
    assert "maxpool" not in dict(model.named_modules())


def test_resnet_imagenet_stem_unit() -> None:
    model = zoo.get_model("resnet18", dataset_shape="imagenet")
    assert zoo.units(model)[0] == ("conv1", "bn1", "relu", "maxpool")
    assert model.conv1.kernel_size == (7, 7)


def test_num_classes_override() -> None:
    model = zoo.get_model("vgg16_bn", num_classes=100)
    assert model(zoo.example_input("vgg16_bn")).shape == (1, 100)


def test_small_cnn_shapes() -> None:
    assert zoo.input_shape("small_cnn", "mnist") == (1, 28, 28)
    assert zoo.input_shape("small_cnn", "digits") == (1, 8, 8)
    assert zoo.input_shape("resnet50", "imagenet") == (3, 224, 224)
    with pytest.raises(ConfigError, match="input_size"):
        zoo.SmallCNN(input_size=2)


def test_seed_determinism_and_global_rng() -> None:
    before = torch.get_rng_state()
    a = zoo.get_model("resnet18", seed=1)
    b = zoo.get_model("resnet18", seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    _assert_same_state(a, b)
    c = zoo.get_model("resnet18", seed=2)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert torch.equal(zoo.example_input("resnet18", seed=3), zoo.example_input("resnet18", seed=3))
    assert not torch.equal(
        zoo.example_input("resnet18", seed=3), zoo.example_input("resnet18", seed=4)
    )


def test_weights_roundtrip_dict_and_files(tmp_path) -> None:
    src = zoo.get_model("small_cnn", dataset_shape="digits", seed=5)
    src.features[1].running_mean.add_(0.5)  # a buffer must round-trip too
    sd = src.state_dict()
    x = zoo.example_input("small_cnn", "digits", batch=2)

    _assert_same_state(src, zoo.get_model("small_cnn", dataset_shape="digits", weights=sd))

    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    for wrap in ("state_dict", "model", "model_state_dict"):
        ckpt = tmp_path / f"{wrap}.pth"
        torch.save({wrap: sd, "epoch": 3, "best_acc": 0.9}, ckpt)
        _assert_same_state(src, zoo.get_model("small_cnn", dataset_shape="digits", weights=ckpt))
    loaded = zoo.get_model("small_cnn", dataset_shape="digits", weights=str(plain))
    _assert_same_state(src, loaded)
    torch.testing.assert_close(loaded(x), src.eval()(x))

    ddp = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, ddp)
    _assert_same_state(src, zoo.get_model("small_cnn", dataset_shape="digits", weights=ddp))


def test_weights_roundtrip_resnet18_file(tmp_path) -> None:
    src = zoo.get_model("resnet18", seed=7)
    path = tmp_path / "resnet18.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    _assert_same_state(src, zoo.get_model("resnet18", weights=path))


def test_weights_missing_num_batches_tracked_tolerated() -> None:
    src = zoo.get_model("small_cnn", dataset_shape="mnist", seed=1)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    zoo.get_model("small_cnn", dataset_shape="mnist", weights=sd)


def test_bad_weights_raise_config_error(tmp_path) -> None:
    sd = zoo.get_model("small_cnn", dataset_shape="digits").state_dict()

    missing = {k: v for k, v in sd.items() if k != "fc.weight"}
    with pytest.raises(ConfigError, match=r"missing keys.*fc\.weight"):
        zoo.get_model("small_cnn", dataset_shape="digits", weights=missing)

    extra = {**sd, "head.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"unexpected keys.*head\.weight"):
        zoo.get_model("small_cnn", dataset_shape="digits", weights=extra)

    with pytest.raises(ConfigError, match=r"fc\.weight.*num_classes"):
        zoo.get_model("small_cnn", dataset_shape="digits", num_classes=3, weights=sd)

    with pytest.raises(ConfigError, match="does not exist"):
        zoo.get_model("small_cnn", weights=tmp_path / "nope.pt")

    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(ConfigError, match="not a state_dict"):
        zoo.get_model("small_cnn", weights=not_dict)

    with pytest.raises(ConfigError, match="not a tensor"):
        zoo.get_model("small_cnn", dataset_shape="digits", weights={**sd, "epoch": 3})

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="weights_only"):
        zoo.get_model("small_cnn", weights=garbage)


def test_name_and_shape_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown model 'resnet19'.*did you mean 'resnet18'.*available models"
    ):
        zoo.get_model("resnet19")
    with pytest.raises(ConfigError, match="list_models"):
        zoo.input_shape("transformer", "cifar")
    with pytest.raises(ConfigError, match=r"dataset_shape='mnist'.*cifar, imagenet"):
        zoo.get_model("resnet18", dataset_shape="mnist")
    with pytest.raises(ConfigError, match=r"known shapes"):
        zoo.example_input("small_cnn", "svhn")
    with pytest.raises(ConfigError, match="imagenet"):
        zoo.get_model("small_cnn", dataset_shape="imagenet")
    with pytest.raises(ConfigError, match="num_classes"):
        zoo.get_model("resnet18", num_classes=0)
    with pytest.raises(ConfigError, match="batch"):
        zoo.example_input("resnet18", batch=0)


def test_name_aliases() -> None:
    assert isinstance(zoo.get_model("ResNet-18"), zoo.ResNet)
    assert isinstance(zoo.get_model("VGG16BN"), zoo.VGG)
    assert zoo.supported_shapes("small-cnn") == ("mnist", "digits", "cifar")


def test_units_fallback_and_vgg_alexnet_counts() -> None:
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert zoo.units(seq) == [("0",), ("1",), ("2",)]
    assert len(zoo.units(zoo.get_model("vgg16_bn"))) == 16
    alex = zoo.units(zoo.get_model("alexnet"))
    assert len(alex) == 8
    assert alex[-3] == ("avgpool", "classifier.0", "classifier.1", "classifier.2")
    assert zoo.units(zoo.get_model("small_cnn", dataset_shape="mnist")) == [
        ("features.0", "features.1", "features.2", "features.3"),
        ("features.4", "features.5", "features.6", "features.7"),
        ("fc",),
    ]


class TestTEESlice:
    def test_structure(self) -> None:
        model = zoo.get_model("teeslice_resnet18")
        assert isinstance(model.backbone, zoo.ResNet)
        assert isinstance(model.backbone.fc, nn.Identity)
        groups = dict(model.slices.items())
        assert list(groups) == [f"layer{i}_{j}" for i in range(1, 5) for j in range(2)]
        assert [len(g.proxies) for g in groups.values()] == [1, 2, 3, 3, 3, 3, 3, 3]
        assert groups["layer1_0"].offsets == (1,)
        assert groups["layer3_0"].offsets == (1, 2, 3)
        # layer3.0 (16x16 -> 8x8, 128 -> 256 ch) fed by layer2.1, layer2.0 (16x16) and layer1.1 (32x32)
        convs = [p.conv for p in groups["layer3_0"].proxies]
        assert [c.stride for c in convs] == [(2, 2), (2, 2), (4, 4)]
        assert [c.in_channels for c in convs] == [128, 128, 64]
        assert all(c.kernel_size == (1, 1) and c.out_channels == 256 for c in convs)
        for g in groups.values():
            torch.testing.assert_close(g.gates().sum(), torch.tensor(1.0))
        units = zoo.units(model)
        assert len(units) == 10
        assert units[0] == ("backbone.conv1", "backbone.bn1", "backbone.relu")
        assert units[1] == ("backbone.layer1.0", "slices.layer1_0")
        assert units[-1] == ("backbone.avgpool", "fc")
        private = {n for n, _ in model.named_parameters() if not n.startswith("backbone.")}
        assert all(n.startswith(("slices.", "fc.")) for n in private)
        assert "slices.layer4_1.alphas" in private

    def test_frozen_backbone(self) -> None:
        model = zoo.get_model("teeslice_resnet18")
        for name, p in model.named_parameters():
            assert p.requires_grad == (not name.startswith("backbone.")), name
        model.train()
        assert model.training and model.slices.training and not model.backbone.training
        assert model.public_modules() == ("backbone",)
        assert model.private_modules() == ("slices", "fc")

    def test_slices_feed_the_output(self) -> None:
        model = zoo.get_model("teeslice_resnet18")
        x = zoo.example_input("teeslice_resnet18", batch=2)
        with torch.no_grad():
            base = model(x)
            model.slices["layer2_1"].alphas.copy_(torch.tensor([5.0, -5.0, 0.0]))
            assert not torch.allclose(model(x), base)
            # With every proxy's BN zeroed the model is the backbone plus the private fc.
            for g in model.slices.values():
                for p in g.proxies:
                    p.bn.weight.zero_()
                    p.bn.bias.zero_()
            torch.testing.assert_close(model(x), model.fc(model.backbone(x)))

    def test_load_backbone(self, tmp_path) -> None:
        public = zoo.get_model("resnet18", seed=11, num_classes=100)
        model = zoo.get_model("teeslice_resnet18")
        path = tmp_path / "public.pt"
        torch.save(public.state_dict(), path)
        model.load_backbone(path)
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, public.state_dict()[k]), k
        with pytest.raises(ConfigError, match="missing keys"):
            model.load_backbone({"conv1.weight": public.conv1.weight})

    def test_roundtrip_and_rank(self) -> None:
        src = zoo.get_model("teeslice_resnet18", seed=3)
        _assert_same_state(src, zoo.get_model("teeslice_resnet18", weights=src.state_dict()))
        low = zoo.TEESliceResNet(
            zoo.ResNet(zoo.Bottleneck, (1, 1, 1, 1)), num_classes=10, rank=16
        ).eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(
                torch.fx.symbolic_trace(low)(x), low(x), rtol=1e-4, atol=1e-5
            )
        with pytest.raises(ConfigError, match="max_proxies"):
            zoo.TEESliceResNet(zoo.ResNet(zoo.BasicBlock, (1, 1, 1, 1)), max_proxies=4)


class TestTEESliceSmallCNN:
    def test_structure_and_units(self) -> None:
        model = zoo.get_model("teeslice_small_cnn", dataset_shape="mnist")
        assert isinstance(model.backbone, zoo.SmallCNN)
        assert isinstance(model.backbone.fc, nn.Identity)
        groups = dict(model.slices.items())
        assert list(groups) == ["group0", "group1"]
        assert [g.offsets for g in groups.values()] == [(1,), (1, 2)]
        # group1 (14x14 -> 7x7, 16 -> 32 ch) fed by group0's output (14x14) and the image (28x28)
        convs = [p.conv for p in groups["group1"].proxies]
        assert [c.stride for c in convs] == [(2, 2), (4, 4)]
        assert [c.in_channels for c in convs] == [16, 1]
        assert all(c.kernel_size == (1, 1) and c.out_channels == 32 for c in convs)
        assert zoo.units(model) == [
            (
                "backbone.features.0",
                "backbone.features.1",
                "backbone.features.2",
                "backbone.features.3",
                "slices.group0",
            ),
            (
                "backbone.features.4",
                "backbone.features.5",
                "backbone.features.6",
                "backbone.features.7",
                "slices.group1",
            ),
            ("fc",),
        ]
        for name, p in model.named_parameters():
            assert p.requires_grad == (not name.startswith("backbone.")), name
        model.train()
        assert model.training and model.slices.training and not model.backbone.training
        assert model.public_modules() == ("backbone",)
        assert model.private_modules() == ("slices", "fc")

    @pytest.mark.parametrize("shape", ["mnist", "digits", "cifar"])
    def test_slices_feed_the_output_and_trace(self, shape: str) -> None:
        model = zoo.get_model("teeslice_small_cnn", dataset_shape=shape)
        x = zoo.example_input("teeslice_small_cnn", shape, batch=2)
        with torch.no_grad():
            base = model(x)
            torch.testing.assert_close(
                torch.fx.symbolic_trace(model)(x), base, rtol=1e-4, atol=1e-5
            )
            model.slices["group1"].alphas.copy_(torch.tensor([5.0, -5.0]))
            assert not torch.allclose(model(x), base)
            for g in model.slices.values():
                for p in g.proxies:
                    p.bn.weight.zero_()
                    p.bn.bias.zero_()
            torch.testing.assert_close(model(x), model.fc(model.backbone(x)))

    def test_load_backbone_from_plain_small_cnn(self, tmp_path) -> None:
        public = zoo.get_model("small_cnn", dataset_shape="digits", seed=11)
        model = zoo.get_model("teeslice_small_cnn", dataset_shape="digits")
        model.load_backbone(public.state_dict())
        assert model.backbone.state_dict().keys() == {
            k for k in public.state_dict() if not k.startswith("fc.")
        }
        for k, v in model.backbone.state_dict().items():
            assert torch.equal(v, public.state_dict()[k]), k
        x = zoo.example_input("small_cnn", "digits", batch=2)
        with torch.no_grad():
            torch.testing.assert_close(model.backbone(x), torch.flatten(public.features(x), 1))
        src = zoo.get_model("teeslice_small_cnn", dataset_shape="digits", seed=3)
        _assert_same_state(
            src,
            zoo.get_model("teeslice_small_cnn", dataset_shape="digits", weights=src.state_dict()),
        )
        with pytest.raises(ConfigError, match="missing keys"):
            model.load_backbone({"features.0.weight": public.features[0].weight})


def test_gap_resnet20_head_is_small_and_shield_matches() -> None:
    """The GAP-head victim: fc under 2% of the parameters, so deep:1 is a faithful DarkneTZ."""
    net = zoo.get_model("gap_resnet20", dataset_shape="mnist", num_classes=62, seed=1)
    total = sum(p.numel() for p in net.parameters())
    assert 100 * sum(p.numel() for p in net.fc.parameters()) / total < 2.0
    assert len(zoo.units(net)) == 11  # stem, 9 blocks, (avgpool, fc)
    x = zoo.example_input("gap_resnet20", "mnist", batch=4)
    y = net(x)
    assert y.shape == (4, 62) and y.std().item() > 1e-3
    with taoism.shield(net, x, strategy="deep:1") as sm:
        torch.testing.assert_close(sm(x), y, rtol=1e-4, atol=1e-5)
