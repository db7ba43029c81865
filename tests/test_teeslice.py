"""TEESlice training (taoism.teeslice): layouts, loss terms, pruning, deployment, smoke run."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import assert_same
from torch import nn

import taoism
from taoism.errors import ConfigError, UnsupportedBackbone
from taoism.teeslice import Proxy, SlicedNet, TeeSliceConfig, backbone_layout, tee_share
from taoism.teeslice.command import run_teeslice
from taoism.teeslice.losses import feature_loss, kd_loss, student_loss
from taoism.teeslice.prune import first_prune, next_prune
from taoism.teeslice.train import _prune
from taoism.zoo import get_model, input_shape

TINY = TeeSliceConfig(
    teacher_epochs=3, student_epochs=3, prune_epochs=3, prune_every=1, batch_size=64
)


def _randomise(model: SlicedNet, seed: int = 0) -> SlicedNet:
    """Non-trivial gates and BN statistics, so the merge path is not near-constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.slices.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            elif hasattr(m, "alphas"):
                m.alphas.copy_(torch.randn(m.alphas.shape, generator=g))
        for m in model.head.modules():  # a head of unit-scale weights: outputs far from zero
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
    return model.eval()


def _sliced(name: str, shape: str, classes: int = 10) -> SlicedNet:
    return SlicedNet(get_model(name, dataset_shape=shape), input_shape(name, shape), classes)


def _n_proxies(model: nn.Module) -> int:
    return sum(isinstance(m, Proxy) for m in model.modules())


# layouts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,shape,blocks",
    [
        ("resnet18", "cifar", 9),
        ("resnet18", "imagenet", 9),
        ("resnet34", "cifar", 17),
        ("resnet50", "cifar", 17),
        ("vgg16_bn", "cifar", 13),
        ("alexnet", "imagenet", 5),
        ("alexnet", "cifar", 5),
        ("small_cnn", "digits", 2),
        ("gap_resnet20", "digits", 10),
        ("gap_resnet20", "mnist", 10),
    ],
)
def test_every_supported_backbone_gets_proxies_per_block(name, shape, blocks):
    model = _sliced(name, shape, classes=7)
    assert len(backbone_layout(get_model(name, dataset_shape=shape)).blocks) == blocks
    # block i (1-based) has min(i, 3) proxies
    assert _n_proxies(model) == sum(min(i, 3) for i in range(1, blocks + 1))
    x = torch.randn(2, *input_shape(name, shape))
    logits, feats = model.features(x)
    assert logits.shape == (2, 7) and len(feats) == blocks
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(
        p.requires_grad for n in ("slices", "head") for p in model.get_submodule(n).parameters()
    )


def test_gap_resnet_blocks_are_stem_and_residual_blocks_with_a_gap_head():
    """The glyphs victim (gap_resnet20): stem, nine residual blocks; head = GAP + fc, private."""
    net = get_model("gap_resnet20", dataset_shape="mnist")
    layout = backbone_layout(net)
    assert layout.blocks == (
        ("conv1", "bn1", "relu"),
        *((f"layer{i}.{b}",) for i in (1, 2, 3) for b in range(3)),
    )
    assert (layout.pool, layout.classifier) == ("avgpool", "fc")
    model = _randomise(SlicedNet(net, input_shape("gap_resnet20", "mnist"), 7), seed=4)
    assert (
        isinstance(model.head.pool, nn.AdaptiveAvgPool2d)
        and model.head.classifier.out_features == 7
    )
    assert not hasattr(model.backbone, "fc") and not hasattr(model.backbone, "avgpool")
    model.remove_proxies([("block4", 2), ("block9", 1)])
    x = torch.randn(3, 1, 28, 28)
    with taoism.shield(model, x, strategy="teeslice") as sm:
        y = sm(x)
    assert_same(y, model(x))
    assert float(y.std()) > 0.1


def test_unsupported_backbones_are_typed_errors():
    with pytest.raises(UnsupportedBackbone, match="cannot place proxies on a Sequential"):
        SlicedNet(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), (1, 8, 8))
    with pytest.raises(ConfigError):  # UnsupportedBackbone is a ConfigError
        backbone_layout(nn.Linear(3, 3))


def test_backbone_too_deep_for_the_images_is_a_typed_error(tmp_path):
    """VGG16-BN halves 8x8 digits to nothing: refused before any training, saying why."""
    with pytest.raises(ConfigError, match=r"vgg16_bn cannot run on the digits images \(1, 8, 8\)"):
        run_teeslice("vgg16_bn", "digits", cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.rglob("*.pt"))  # nothing was trained or cached


def test_a_victim_that_did_not_learn_is_refused_before_slicing(tmp_path):
    """AlexNet (no batch norm) at lr 0.05 stays at chance on digits: refused, saying how to fix."""
    with pytest.raises(
        ConfigError, match=r"alexnet victim did not learn .* change the learning rate"
    ):
        run_teeslice(
            "alexnet",
            "digits",
            train_size=300,
            public_epochs=1,
            victim_epochs=1,
            lr=0.05,
            cache_dir=tmp_path,
            progress=False,
        )
    assert (tmp_path / "teeslice-victim").is_dir()  # the victim was trained ...
    assert not (tmp_path / "teeslice").exists()  # ... and no TEESlice training started


def test_config_validates():
    with pytest.raises(ConfigError, match="max_proxies"):
        TeeSliceConfig(max_proxies=4)
    with pytest.raises(ConfigError, match="flops_weight"):
        TeeSliceConfig(flops_weight=-1)


# loss terms -------------------------------------------------------------------------------------
def test_each_loss_term_is_in_the_total_with_its_weight():
    torch.manual_seed(1)
    model = _randomise(_sliced("small_cnn", "digits")).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    t_logits, t_feats = torch.randn(16, 10), [torch.randn_like(f) for f in model.features(x)[1]]
    logits, feats = model.features(x)
    cfg = TeeSliceConfig(ce_weight=0.5)
    total, parts = student_loss(logits, feats, model.expected_flops(), t_logits, t_feats, y, cfg)
    kd, fe, fl = (
        kd_loss(logits, t_logits, 4.0),
        feature_loss(feats, t_feats),
        model.expected_flops(),
    )
    ce = nn.functional.cross_entropy(logits, y)
    assert all(float(v.detach()) > 1e-3 for v in (kd, fe, fl, ce))
    assert_same(total, 1.0 * kd + 10.0 * fe + 0.3 * fl + 0.5 * ce)
    assert parts == pytest.approx(
        {k: float(v.detach()) for k, v in zip(("kd", "feature", "flops", "ce"), (kd, fe, fl, ce))},
        rel=1e-5,
    )
    # kd uses T = 4: T^2 * KL of the softened distributions
    p = torch.softmax(t_logits / 4, 1)
    manual = (p * (p.log() - torch.log_softmax(logits / 4, 1))).sum(1).mean() * 16
    assert_same(kd, manual)


@pytest.mark.parametrize(
    "term,where",
    [
        ("kd_weight", "head"),
        ("feature_weight", "slices"),
        ("flops_weight", "alphas"),
        ("ce_weight", "head"),
    ],
)
def test_each_loss_term_alone_drives_its_parameters(term, where):
    """With only one weight set, that term's gradient reaches the parameters it must train."""
    torch.manual_seed(2)
    model = _randomise(_sliced("small_cnn", "digits")).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        t_logits, t_feats = torch.randn(16, 10), [torch.randn_like(f) for f in model.features(x)[1]]
    zero = dict(kd_weight=0.0, feature_weight=0.0, flops_weight=0.0, ce_weight=0.0)
    cfg = TeeSliceConfig(**{**zero, term: 1.0})
    logits, feats = model.features(x)
    total, _ = student_loss(logits, feats, model.expected_flops(), t_logits, t_feats, y, cfg)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    hit = [n for n, g in grads.items() if g is not None and g.abs().sum() > 0]
    key = {"head": "head.", "slices": "proxies", "alphas": "alphas"}[where]
    assert any(key in n for n in hit), (term, hit)
    if term == "flops_weight":  # the FLOPs term touches nothing but the gates
        assert all("alphas" in n for n in hit)


def test_flops_term_is_gate_weighted_and_normalised():
    model = _sliced("resnet18", "cifar")
    with torch.no_grad():
        for g in model.slices.values():
            g.alphas.fill_(0.0)
    # equal gates: every proxy weighs 1 / (n_proxies + 1) of its block
    expected = sum(p.flops / (len(g.proxies) + 1) for g in model.slices.values() for p in g.proxies)
    assert model.expected_flops().item() == pytest.approx(expected / model.flops_norm, rel=1e-6)
    with torch.no_grad():
        for g in model.slices.values():
            g.alphas[0] = 50.0  # all weight on the public block
    assert model.expected_flops().item() < 1e-12


# pruning ----------------------------------------------------------------------------------------
def test_remove_proxies_deletes_modules_and_parameters():
    model = _randomise(_sliced("resnet18", "cifar"))
    keys = set(model.state_dict())
    before = _n_proxies(model)
    drop = [(k, o) for k, o, _ in model.proxy_list()[:5]] + [("block0", 1)]
    model.remove_proxies(drop)
    assert _n_proxies(model) == before - 5  # block0's only proxy is among the first 5
    assert "block0" not in model.slices  # a block without proxies has no slice left
    gone = keys - set(model.state_dict())
    assert any(k.startswith("slices.block0.") for k in gone) and len(gone) > 5
    assert all(len(g.alphas) == len(g.proxies) + 1 for g in model.slices.values())
    model(torch.randn(2, 3, 32, 32))
    copy_ = _sliced("resnet18", "cifar")
    copy_.restrict(model.structure())
    copy_.load_state_dict(model.state_dict())  # same structure, same keys


def test_prune_rules_pick_lowest_gates():
    model = _sliced("resnet18", "cifar")
    with torch.no_grad():
        for i, g in enumerate(model.slices.values()):
            g.alphas.copy_(torch.tensor([1.0] + [1.0 - 0.4 * i - j for j in range(len(g.proxies))]))
    gates = model.proxy_gates()
    low = sorted(gates, key=gates.get)
    below = [p for p in low if gates[p] < 0.1]
    assert len(gates) // 2 < len(below) < len(gates)
    assert first_prune(model, 0.1, 0.5) == below  # every gate below the threshold goes
    assert next_prune(model, 0.05) == low[:1]  # 5% of 24 rounds to 1
    assert len(next_prune(model, 0.25)) == 6


def test_first_prune_drops_at_least_the_fraction_and_at_most_the_cap():
    """The artifact's first step (``init_prune_proxies_by_thred``): below-threshold proxies and
    at least 50% of all; 80% when every gate is below the threshold."""
    model = _sliced("resnet18", "cifar")
    with torch.no_grad():
        for g in model.slices.values():
            g.alphas.fill_(0.0)  # gates 1/2 .. 1/4: none below 0.1
    gates = model.proxy_gates()
    picked = first_prune(model, 0.1, 0.5)
    assert len(picked) == 12 and all(
        gates[p] <= min(gates[q] for q in gates if q not in picked) for p in picked
    )
    assert len(first_prune(model, 0.9, 0.5, cap=0.8)) == int(0.8 * 24)  # all below 0.9


def _fake_fit(epochs: int, every: int = 2):
    """A pruning-phase ``fit`` that trains nothing and calls the interval hook on schedule."""

    def fit(model, hook):
        for epoch in range(every, epochs + 1, every):
            hook(epoch)

    return fit


def test_prune_phase_remembers_the_last_model_that_kept_the_rule():
    model = _sliced("resnet18", "cifar")
    # base, epoch 2 (ok), 4 (ok), 6 (breaks: no step), 8 (ok again), 10 (final, breaks); final
    accs = iter([1.0, 0.995, 0.991, 0.98, 0.992, 0.97, 0.97])
    cfg = TeeSliceConfig(prune_threshold=0.9, prune_epochs=10, prune_every=2)
    out, history = _prune(model, _fake_fit(10), lambda m: next(accs), cfg)
    assert [h["kept"] for h in history[1:]] == [True, True, False, True, False]
    # first step 80% (every gate below 0.9), then 1 at epochs 2, 4 and 8; not at 6
    assert [h["proxies"] for h in history] == [24, 5, 4, 3, 3, 2]
    assert _n_proxies(out) == 3  # the model remembered at epoch 8, not the final one
    assert _n_proxies(model) == 24  # the input model is left as it was


def test_prune_phase_returns_the_fine_tuned_model_when_it_is_more_accurate():
    """After the last step the fine-tuning goes on; its result wins when it is more accurate."""
    model = _sliced("resnet18", "cifar")
    accs = iter([1.0, 0.995, 0.98, 0.999])  # base, epoch 2 (ok, prunes), epoch 4 (final)
    cfg = TeeSliceConfig(prune_threshold=0.9, prune_epochs=4, prune_every=2)
    out, history = _prune(model, _fake_fit(4), lambda m: next(accs), cfg)
    assert [h["proxies"] for h in history] == [24, 5, 4]
    assert _n_proxies(out) == 4


def test_prune_phase_keeps_the_unpruned_model_if_the_rule_never_holds():
    model = _sliced("resnet18", "cifar")
    accs = iter([1.0, 0.9, 0.9, 0.9])
    cfg = TeeSliceConfig(prune_threshold=0.9, prune_epochs=4, prune_every=2)
    out, history = _prune(model, _fake_fit(4), lambda m: next(accs), cfg)
    assert out is model and not any(h["kept"] for h in history[1:])


# the artifact's student (defects fixed in session 3) --------------------------------------------
def test_gates_start_on_the_backbone_and_merges_end_in_relu():
    """alpha_init (2, -2): the backbone block carries most of the weight at the start, and every
    merged feature is non-negative (ReLU after the merge), as the artifact's NetTailorBlock."""
    model = _sliced("resnet18", "cifar").train()
    for g in model.slices.values():
        gates = g.gates()
        assert gates[0].item() > 0.85 and torch.allclose(gates[1:], gates[1])
    _, feats = model.features(torch.randn(4, 3, 32, 32))
    assert all(f.min().item() >= 0 for f in feats)
    plain = SlicedNet(
        get_model("small_cnn", dataset_shape="digits"), (1, 8, 8), 10, merge_relu=False
    )
    assert plain.features(torch.randn(8, 1, 8, 8))[1][-1].min().item() < 0  # the switch works


def test_local_feature_loss_trains_only_its_own_block():
    """feature_detach: the feature loss of the last block reaches only the last block's slice."""
    model = _randomise(_sliced("gap_resnet20", "digits")).train()
    x = torch.randn(4, 1, 8, 8)
    for local, others in ((True, False), (False, True)):
        model.zero_grad()
        feats = model.features(x, local=local)[1]
        feats[-1].square().mean().backward()
        last = f"slices.block{len(feats) - 1}."
        hit = {
            n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert any(n.startswith(last) for n in hit)
        assert any(n.startswith("slices.") and not n.startswith(last) for n in hit) == others
    logits, merged = model.features(x)
    assert_same(
        torch.stack([f.sum() for f in merged]),
        torch.stack([f.sum() for f in model.features(x, local=True)[1]]),
    )


def test_one_student_pass_gives_the_two_pass_loss_and_gradients():
    """The training step takes logits and block-local features from one ``features(x,
    local=True)`` pass; loss and every gradient equal the two-pass form (logits from a plain
    pass, features from a local one)."""
    model = _randomise(_sliced("gap_resnet20", "digits")).train()
    x = torch.randn(16, 1, 8, 8)
    t_logits = torch.randn(16, 10) * 3
    t_feats = [torch.randn_like(f) for f in model.features(x)[1]]
    y = torch.randint(0, 10, (16,))
    grads = []
    for one_pass in (True, False):
        model.zero_grad()
        torch.manual_seed(0)
        if one_pass:
            logits, feats = model.features(x, local=True)
        else:
            logits = model.features(x)[0]
            feats = model.features(x, local=True)[1]
        loss, parts = student_loss(
            logits, feats, model.expected_flops(), t_logits, t_feats, y, TeeSliceConfig()
        )
        loss.backward()
        assert parts["kd"] > 0.1 and parts["feature"] > 0.1
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


def test_teacher_outputs_are_computed_once_and_equal_per_batch_ones(monkeypatch):
    """The fixed teacher's logits and block outputs, precomputed over the training data, equal
    a per-batch forward of the same rows; above the memory bound each step computes its own."""
    train_module = importlib.import_module("taoism.teeslice.train")  # the package's train is
    # the function
    teacher = get_model("gap_resnet20", dataset_shape="digits", num_classes=10, seed=3).eval()
    layout = backbone_layout(teacher)
    x = torch.randn(300, 1, 8, 8)
    logits, feats = train_module._teacher_outputs(teacher, layout, x, batch=128)
    idx = torch.tensor([5, 299, 0, 140])
    with torch.no_grad():
        ref_logits, ref_feats = train_module._plain_features(teacher, layout, x[idx])
    assert float(ref_logits.std()) > 0.05
    torch.testing.assert_close(logits[idx], ref_logits, rtol=1e-5, atol=1e-6)
    for f, r in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(f[idx], r, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(train_module, "TEACHER_CACHE_BYTES", 1000)
    assert train_module._teacher_outputs(teacher, layout, x) is None


def test_flops_term_is_normalised_by_the_backbone_flops():
    """The artifact divides the proxies' expected FLOPs by the backbone's FLOPs."""
    from taoism.capture import capture

    model = _sliced("small_cnn", "digits")
    plain = get_model("small_cnn", dataset_shape="digits").eval()
    cap = capture(plain, torch.zeros(2, 1, 8, 8))
    conv_names = {n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d)}
    convs = sum(
        i.flops for i in cap.nodes.values() if i.op == "call_module" and i.target in conv_names
    )
    assert len(conv_names) == 2 and convs > 0
    assert model.backbone_flops == pytest.approx(convs, rel=0.02)
    assert_same(
        model.expected_flops("backbone") * model.backbone_flops,
        model.expected_flops() * model.flops_norm,
    )


def test_cosine_schedule():
    from taoism.teeslice.train import _lr_at

    cfg = TeeSliceConfig()
    lrs = [_lr_at(cfg, 0.1, e, 10) for e in range(10)]
    assert lrs[0] == 0.1 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.003
    assert _lr_at(TeeSliceConfig(lr_schedule="constant"), 0.1, 9, 10) == 0.1


# training, pruning and deployment on digits ---------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """public model, victim and TEESlice model of small_cnn on digits (a tiny configuration)."""
    cache = tmp_path_factory.mktemp("teeslice-cache")
    kw = dict(
        cache_dir=cache,
        config=TINY,
        public_epochs=4,
        victim_epochs=4,
        public_task="supervised",
        threads=1,
        progress=False,
    )
    result, victim, out = run_teeslice("small_cnn", "digits", **kw)
    return kw, result, victim, out


def test_smoke_digits_trains_prunes_and_caches(digits_run):
    kw, result, _, out = digits_run
    before, after = out["before_prune"], out["after_prune"]
    assert before["proxies"] == 3 and after["proxies"] < before["proxies"]  # pruning removed some
    assert after["flops_tee"] < before["flops_tee"] and after["params_tee"] < before["params_tee"]
    hist = out["prune_history"]
    base = hist[0]["val_accuracy"]
    for h in hist[1:]:
        assert h["kept"] == (h["val_accuracy"] >= 0.99 * base)
    # the returned model is one that kept the rule (an evaluated, kept structure)
    assert after["proxies"] in [h["proxies"] for h in hist if h.get("kept", True)]
    assert out["victim_test_accuracy"] > 0.8 and after["test_accuracy"] > 0.5
    assert not out["cached"] and _n_proxies(result.model) == after["proxies"]
    again, _, out2 = run_teeslice("small_cnn", "digits", **kw)  # same inputs: a cache hit
    assert again.cached and again.metrics == result.metrics
    assert again.model.structure() == result.model.structure()
    x = torch.randn(8, 1, 8, 8)
    assert_same(again.model(x), result.model(x))


def test_trained_sliced_model_deploys_with_teeslice(digits_run):
    from taoism.data import load_dataset
    from taoism.strategies import strategy_report

    _, result, _, out = digits_run
    model = result.model
    x = load_dataset("digits").x_test[:32]
    with taoism.shield(model, x, strategy="teeslice") as sm:
        y = sm(x)
        rep = strategy_report(sm, model)
        text = str(sm.plan)
    assert_same(y, model(x))
    assert float(y.std()) > 0.1
    assert rep["params_tee"] == tee_share(model)["params_tee"] == out["after_prune"]["params_tee"]
    assert rep["flops_tee_pct"] == pytest.approx(out["after_prune"]["flops_tee_pct"], rel=1e-6)
    # pruned proxies are gone from the deployed program: one proxy conv node per remaining proxy
    convs = [w for w in text.split() if w.startswith("slices_") and w.endswith("_conv")]
    assert len(convs) == _n_proxies(model) == out["after_prune"]["proxies"] < 3


def test_untrained_resnet_slices_deploy_equal(digits_run):
    model = _randomise(_sliced("resnet18", "cifar"), seed=3)
    model.remove_proxies([("block3", 2), ("block5", 1)])
    x = torch.randn(2, 3, 32, 32)
    with taoism.shield(model, x, strategy="teeslice") as sm:
        assert_same(sm(x), model(x))
        placed = {n.name: n.placement for n in sm.plan.nodes} if hasattr(sm.plan, "nodes") else None
    if placed is not None:
        assert all(
            str(p).endswith("ENCLAVE")
            for n, p in placed.items()
            if n.startswith(("slices", "head"))
        )
        assert all(
            not str(p).endswith("ENCLAVE") for n, p in placed.items() if n.startswith("backbone")
        )


def test_gate_logits_learn_at_their_own_rate():
    from taoism.teeslice.train import _epochs

    model = _sliced("small_cnn", "digits")
    cfg = TeeSliceConfig(alpha_lr_scale=10.0, lr_schedule="constant", batch_size=4)
    seen = []

    def step(idx, opt):
        seen.append(sorted(g["lr"] for g in opt.param_groups))
        return {}

    _epochs(model, 8, 1, 0.1, "sgd", cfg, torch.Generator().manual_seed(0), "t", False, step)
    assert seen and all(lrs == pytest.approx([0.1, 1.0]) for lrs in seen)


@pytest.mark.parametrize("bn", ["public", "private"])
def test_backbone_bn_statistics_follow_the_private_data_only_when_asked(bn):
    """``backbone_bn="public"`` leaves every backbone tensor as the public model's; "private"
    (the artifact's model.train()) changes only the backbone's BN statistics, never a weight."""
    from taoism.teeslice import train

    torch.manual_seed(0)
    public = get_model("gap_resnet20", dataset_shape="digits", seed=1)
    victim = get_model("gap_resnet20", dataset_shape="digits", seed=2)
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 10, (96,))
    data = taoism.teeslice.SliceData(x, y, x[:32], y[:32])
    cfg = TeeSliceConfig(
        teacher_epochs=1, student_epochs=1, prune=False, batch_size=32, backbone_bn=bn
    )
    model = train(victim, public, data, cfg, use_cache=False, progress=False).model
    ref = public.state_dict()
    changed = {k for k, v in model.backbone.state_dict().items() if not torch.equal(v, ref[k])}
    if bn == "public":
        assert not changed
    else:
        assert changed and all(
            k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed
        )
    with pytest.raises(ConfigError, match="backbone_bn"):
        TeeSliceConfig(backbone_bn="shared")
