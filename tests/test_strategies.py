"""The six TSDP strategies: equivalence through shield(), what the host holds, accounting, errors,
and the strategy benchmark.

Every deployment goes through ``taoism.shield(..., strategy=...)`` (one enclave process each),
cached per module and closed at the end. Tolerance: float32, rtol 1e-4 and atol 1e-5 for every
strategy (measured worst case over the zoo: 6% of that bound, for magnitude and intermediate,
whose split sums and 1/s rescaling change the rounding).
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import taoism
from taoism import zoo
from taoism.errors import ConfigError
from taoism.strategies import (
    Deep,
    Intermediate,
    Magnitude,
    NonLinear,
    Shallow,
    apply_strategy,
    attacker_view,
    expand_strategies,
    parse_strategy,
    strategy_report,
)

RTOL, ATOL = 1e-4, 1e-5
STRATEGIES = (
    "none",
    "all",
    "deep:1",
    "shallow:1",
    "magnitude:0.01",
    "intermediate:0.8",
    "nonlinear",
)
RANKED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


class Tiny(nn.Module):
    """A non-zoo model small enough to count by hand (input 1x4x4).

    conv 1->2 3x3 (bias): 20 params, 2*9*32 + 32 = 608 FLOPs; bn: 4 params, 64 FLOPs;
    F.relu: 32 FLOPs; flatten: 0; fc 32->3: 99 params, 2*32*3 + 3 = 195 FLOPs.
    Total 123 params, 899 FLOPs per sample. Units (top-level children): conv, bn, fc.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(32, 3)
        with torch.no_grad():  # |conv.weight| = 0.1 .. 1.8 dominates every other entry
            signs = torch.tensor([1.0, -1.0]).repeat(9)
            self.conv.weight.copy_((torch.arange(1, 19) * 0.1 * signs).reshape(2, 1, 3, 3))
            self.conv.bias.copy_(torch.tensor([0.05, -0.04]))
            self.bn.weight.copy_(torch.tensor([0.5, 0.6]))
            self.bn.bias.copy_(torch.tensor([0.01, -0.02]))
            self.bn.running_mean.copy_(torch.tensor([0.1, -0.2]))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.7]))
            g = torch.Generator().manual_seed(1)
            self.fc.weight.copy_(torch.rand(3, 32, generator=g) * 0.02 - 0.01)
            self.fc.bias.copy_(torch.tensor([0.003, -0.002, 0.001]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(x, 1))


TINY_PARAMS, TINY_FLOPS = 123, 899
TINY_FLOPS_PARTS = {"conv": 608, "bn": 64, "relu": 32, "fc": 195}


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Give BN layers non-trivial (trained-looking) parameters and statistics, deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "small_cnn": (
            _trained_like(zoo.get_model("small_cnn", dataset_shape="digits"), 1),
            zoo.example_input("small_cnn", "digits", batch=2),
        ),
        "resnet18": (
            _trained_like(zoo.get_model("resnet18", dataset_shape="cifar"), 2),
            zoo.example_input("resnet18", "cifar", batch=1),
        ),
        "tiny": (
            Tiny().eval(),
            torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)),
        ),
        "teeslice_resnet18": (
            _trained_like(zoo.get_model("teeslice_resnet18", dataset_shape="cifar"), 4),
            zoo.example_input("teeslice_resnet18", "cifar", batch=1),
        ),
    }


class _Deployments:
    """Each (model, strategy) shielded once per module; every enclave closed at teardown."""

    def __init__(self, models: dict[str, tuple[nn.Module, torch.Tensor]]) -> None:
        self.models = models
        self.cache: dict[tuple[str, str], object] = {}

    def get(self, model_key: str, strategy: object):
        key = (model_key, strategy if isinstance(strategy, str) else repr(strategy))
        if key not in self.cache:
            model, x = self.models[model_key]
            self.cache[key] = taoism.shield(model, x, strategy=strategy, device="cpu")
        return self.cache[key]

    def close(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:  # each close waits for its enclave process to exit
            list(pool.map(lambda sm: sm.close(), self.cache.values()))


@pytest.fixture(scope="module")
def deployed(models):
    d = _Deployments(models)
    yield d
    d.close()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- equivalence --------------------------------------------------------------------------------
@pytest.mark.parametrize("model_key", ["small_cnn", "resnet18", "tiny"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_matches_unprotected_model(deployed, models, model_key, strategy):
    model, x = models[model_key]
    before = _state(model)
    sm = deployed.get(model_key, strategy)
    with torch.no_grad():
        expected = model(x)
    got = sm(x)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    # A second, different batch through the same deployment.
    x2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        torch.testing.assert_close(sm(x2), model(x2), rtol=RTOL, atol=ATOL)
    after = _state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "shield(strategy=) mutated the model"
    )


def test_teeslice_matches_and_keeps_slices_in_enclave(deployed, models):
    model, x = models["teeslice_resnet18"]
    sm = deployed.get("teeslice_resnet18", "teeslice")
    with torch.no_grad():
        torch.testing.assert_close(sm(x), model(x), rtol=RTOL, atol=ATOL)
    view = attacker_view(sm, model)
    host = sm.host_state_dict()
    for name, e in view.items():
        if name.startswith("backbone."):
            assert e.status == "plaintext", name
            assert torch.equal(e.tensor, host[name])
        else:  # slices.* and fc.*
            assert e.status == "absent" and e.tensor is None and e.in_enclave, name
    assert any(n.startswith("slices.") for n in view) and "fc.weight" in view
    rep = strategy_report(sm, model, "teeslice")
    slice_params = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")
    )
    assert rep["params_tee"] == slice_params
    assert 0 < rep["flops_tee_pct"] < 50


def test_rewritten_models_are_fx_traceable_and_equal(models):
    model, x = models["small_cnn"]
    with torch.no_grad():
        expected = model(x)
    for s in STRATEGIES:
        rewritten, placement = apply_strategy(model, s)
        assert isinstance(placement, dict) and "_default" in placement
        gm = torch.fx.symbolic_trace(rewritten)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), expected, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(rewritten(x), expected, rtol=RTOL, atol=ATOL)


def test_apply_strategy_never_mutates_the_callers_model(models):
    model, _ = models["resnet18"]
    before = _state(model)
    ids = {k: v.data_ptr() for k, v in model.state_dict().items()}
    for s in STRATEGIES:
        out, _ = apply_strategy(model, s)
        assert out is not model
        assert all(p.data_ptr() != ids.get(n) for n, p in out.state_dict().items())
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_units_outside_the_zoo_follow_execution_order():
    class Reordered(nn.Module):  # children registered in a different order than they run
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Linear(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    m = Reordered().eval()
    _, placement = apply_strategy(m, "deep:1")
    assert placement == {"_default": "AUTO", "body": "GPU", "head": "ENCLAVE"}
    _, placement = apply_strategy(m, "shallow:1")
    assert placement == {"_default": "AUTO", "body": "ENCLAVE", "head": "GPU"}


def test_magnitude_tie_break_is_seeded_and_exact():
    lin = nn.Sequential(nn.Linear(10, 10)).eval()
    with torch.no_grad():
        lin[0].weight.fill_(1.0)  # 100 tied entries, 10 zero biases
        lin[0].bias.zero_()

    def zeroed(seed: int) -> torch.Tensor:
        out, _ = apply_strategy(lin, Magnitude(0.5, seed=seed))
        return out.get_submodule("0").weight.detach() == 0

    a, b, c = zeroed(0), zeroed(0), zeroed(1)
    assert int(a.sum()) == round(0.5 * 110) == int(c.sum())
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_secrets_are_fresh_unless_seeded(models):
    model, _ = models["small_cnn"]

    def host_weights(s):
        out, placement = apply_strategy(model, s)
        return placement, {k: v for k, v in out.state_dict().items() if not k.startswith("_tsdp")}

    p1, w1 = host_weights("intermediate:0.5")
    p2, w2 = host_weights("intermediate:0.5")
    assert p1 == p2, "the layer choice is seeded"
    assert not torch.equal(w1["fc.weight"], w2["fc.weight"]), "the secret scalars are fresh"
    _, w3 = host_weights(Intermediate(0.5, secret_seed=5))
    _, w4 = host_weights(Intermediate(0.5, secret_seed=5))
    assert torch.equal(w3["fc.weight"], w4["fc.weight"])
    _, n1 = host_weights("nonlinear")
    _, n2 = host_weights("nonlinear")
    assert not torch.equal(n1["fc.weight"], n2["fc.weight"]), "noise and permutation are fresh"


# --- what the host holds ------------------------------------------------------------------------
@pytest.mark.parametrize("model_key", ["small_cnn", "resnet18", "tiny"])
def test_magnitude_zeroes_exactly_the_top_r_entries(deployed, models, model_key):
    model, _ = models[model_key]
    r = 0.01
    sm = deployed.get(model_key, "magnitude:0.01")
    host = sm.host_state_dict()
    ranked = [
        (f"{mn}.{pn}", p.detach())
        for mn, m in model.named_modules()
        if isinstance(m, RANKED)
        for pn, p in m.named_parameters(recurse=False)
    ]
    n = sum(p.numel() for _, p in ranked)
    k = round(r * n)
    assert k > 0
    shielded_vals, public_vals = [], []
    for name, orig in ranked:
        h = host[name]  # every layer still runs on the device, at its original path
        assert h.shape == orig.shape
        zero = (h == 0) & (orig != 0)
        assert torch.equal(h[~zero], orig[~zero]), f"{name}: unshielded entries changed"
        shielded_vals.append(orig[zero].abs().reshape(-1))
        public_vals.append(orig[~zero].abs().reshape(-1))
    shielded, public = torch.cat(shielded_vals), torch.cat(public_vals)
    assert shielded.numel() == k
    assert shielded.min() >= public.max(), "a zeroed entry is smaller than an exposed one"
    view = attacker_view(sm, model)
    assert sum(e.zeroed for e in view.values()) == k
    assert sum(e.status == "zeroed" for e in view.values()) >= 1
    rep = strategy_report(sm, model, "magnitude:0.01")
    assert rep["params_tee"] == k
    assert rep["device_holds"]["zeroed"]["entries"] == k
    assert rep["device_holds"]["absent"]["tensors"] == 0


def test_intermediate_morphs_offloaded_layers(deployed, models):
    model, _ = models["resnet18"]
    sm = deployed.get("resnet18", "intermediate:0.8")
    host = sm.host_state_dict()
    view = attacker_view(sm, model)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    offloaded = [n for n in layers if f"{n}.weight" in host]
    assert len(offloaded) == max(1, round(0.8 * len(layers)))
    assert "fc" in offloaded, "the last layer is always offloaded"
    scales = []
    for name in offloaded:
        mod = model.get_submodule(name)
        orig, h = mod.weight.detach(), host[f"{name}.weight"]
        assert h.shape == orig.shape and not torch.equal(h, orig)
        ratio = h / orig
        s = float(ratio.median())
        assert 1.0 <= s <= 5.0
        torch.testing.assert_close(ratio, torch.full_like(ratio, s), rtol=1e-5, atol=0)
        if mod.bias is not None:
            torch.testing.assert_close(
                host[f"{name}.bias"], mod.bias.detach() * s, rtol=1e-5, atol=1e-8
            )
        assert view[f"{name}.weight"].status == "morphed"
        scales.append(s)
    assert len(set(round(s, 6) for s in scales)) == len(scales), "each layer has its own scalar"
    for name in set(layers) - set(offloaded):
        assert view[f"{name}.weight"].status == "absent"
    for name, e in view.items():  # BN runs in the enclave
        if ".bn" in name or "downsample.1" in name:
            assert e.status == "absent", name


def test_nonlinear_obfuscates_conv_and_linear(deployed, models):
    model, _ = models["resnet18"]
    sm = deployed.get("resnet18", "nonlinear")
    host = sm.host_state_dict()
    view = attacker_view(sm, model)
    plain = {"conv1", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"}
    shuffled_somewhere = False
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        orig, h = mod.weight.detach(), host[f"{name}.weight"]
        if name in plain:
            assert view[f"{name}.weight"].status == "plaintext" and torch.equal(h, orig)
            continue
        c = orig.shape[0]
        assert view[f"{name}.weight"].status == "obfuscated"
        assert h.shape == (max(int(1.2 * c), c + 1), *orig.shape[1:])
        flat_h, flat_o = h.reshape(h.shape[0], -1), orig.reshape(c, -1)
        where = {row.numpy().tobytes(): j for j, row in enumerate(flat_h)}  # host row -> position
        pos = torch.tensor([where.get(row.numpy().tobytes(), -1) for row in flat_o])
        assert bool((pos >= 0).all()), f"{name}: a real row is missing"
        is_real = torch.zeros(h.shape[0], dtype=torch.bool)
        is_real[pos] = True
        noise = flat_h[~is_real]
        assert noise.shape[0] == h.shape[0] - c
        assert float(noise.abs().max()) <= 10.0 and float(noise.abs().max()) > 1.0
        shuffled_somewhere |= not torch.equal(pos, torch.arange(c))
    assert shuffled_somewhere, "rows must be shuffled by a secret permutation"
    for name, e in view.items():
        if ".bn" in name or name.startswith("bn1") or "downsample.1" in name:
            assert e.status == "absent", name
    assert not any(k.startswith("_tsdp") for k in host), "the secret index must stay in the enclave"


@pytest.mark.parametrize("model_key", ["small_cnn", "resnet18", "tiny"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_shielded_weight_in_host_plaintext(deployed, models, model_key, strategy):
    model, _ = models[model_key]
    sm = deployed.get(model_key, strategy)
    host = sm.host_state_dict()
    view = attacker_view(sm, model)
    originals = dict(model.named_parameters()) | dict(model.named_buffers())
    assert set(view) == set(originals)
    assert not any(k.startswith("_tsdp") for k in host)
    assert set(host) <= set(originals), "the host holds tensors under unknown names"
    for name, e in view.items():
        o = originals[name].detach()
        if e.status == "absent":
            assert name not in host and e.tensor is None
        else:
            assert e.tensor is host[name] or torch.equal(e.tensor, host[name])
        if e.status == "plaintext" or o.numel() < 2 or bool((o == o.reshape(-1)[0]).all()):
            continue  # exposed by design, or a constant (zeros/ones) that says nothing
        # A shielded (absent / morphed) tensor must not be anywhere on the host in plaintext.
        if e.status in ("absent", "morphed"):
            assert not any(h.shape == o.shape and torch.equal(h, o) for h in host.values()), name
        if e.status == "zeroed":
            z = (e.tensor == 0) & (o != 0)
            assert int(z.sum()) == e.zeroed > 0
    if strategy == "all":
        assert host == {}
    if strategy == "none":
        assert all(e.status == "plaintext" for e in view.values())


# --- accounting ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "params_tee", "flops_tee", "crossings"),
    [
        ("none", 0, 0, 0),
        ("all", TINY_PARAMS, TINY_FLOPS, 2),
        ("deep:1", 99, TINY_FLOPS_PARTS["fc"], 2),  # fc; relu/flatten follow their input (device)
        ("shallow:1", 20, TINY_FLOPS_PARTS["conv"], 2),
        (
            "deep:2",
            103,
            64 + 32 + 195,
            2,
        ),  # bn + fc, and relu/flatten now follow bn into the enclave
        # top-12 |w| = 12 of conv.weight's 18 entries; each does 2*16 FLOPs (one MAC per output pixel)
        ("magnitude:0.1", 12, 12 * 2 * 16, 3),
        # layers conv, fc; round(0.5 * 2) = 1 offloaded = fc (the last); conv/bn/relu in the enclave
        ("intermediate:0.5", 24, 608 + 64 + 32, 4),
        # conv is the first layer (plain on device), fc obfuscated; bn + relu in the enclave
        ("nonlinear", 4, 64 + 32, 4),
    ],
)
def test_accounting_matches_hand_count(
    deployed, models, strategy, params_tee, flops_tee, crossings
):
    model, x = models["tiny"]
    sm = deployed.get("tiny", strategy)
    with torch.no_grad():
        torch.testing.assert_close(sm(x), model(x), rtol=RTOL, atol=ATOL)
    rep = strategy_report(sm, model, strategy)
    assert rep["params_total"] == TINY_PARAMS and rep["flops_total"] == TINY_FLOPS
    assert rep["params_tee"] == params_tee
    assert rep["params_tee_pct"] == pytest.approx(100.0 * params_tee / TINY_PARAMS)
    assert rep["flops_tee"] == flops_tee
    assert rep["flops_tee_pct"] == pytest.approx(100.0 * flops_tee / TINY_FLOPS)
    assert rep["crossings"] == crossings == sm.plan.totals()["crossings"]
    assert rep["bytes_crossing"] == sm.plan.totals()["bytes_crossing"]
    assert rep["strategy"] == strategy
    held = rep["device_holds"]
    assert sum(v["params"] for v in held.values()) == TINY_PARAMS
    json.dumps(rep)  # JSON-able


def test_accounting_bytes_hand_count(deployed):
    sm = deployed.get("tiny", "deep:1")  # flatten (2 x 32 floats) in, fc (2 x 3 floats) out
    rep = strategy_report(sm, deployed.models["tiny"][0])
    assert rep["bytes_crossing"] == 2 * 32 * 4 + 2 * 3 * 4
    assert rep["batch"] == 2


def test_reference_accounting_resnet18(deployed, models):
    model, _ = models["resnet18"]
    rep = strategy_report(deployed.get("resnet18", "deep:1"), model)
    assert rep["params_tee"] == 5130  # the reference: only the final FC, 0.046%
    assert rep["params_tee_pct"] == pytest.approx(0.0459, abs=5e-4)
    rep = strategy_report(deployed.get("resnet18", "shallow:1"), model)
    assert rep["params_tee"] == 1728 + 128  # first conv (1,728) + its BN
    rep = strategy_report(deployed.get("resnet18", "all"), model)
    assert rep["params_tee_pct"] == 100.0 and rep["flops_tee_pct"] == pytest.approx(100.0)


# --- dataclass forms, parsing and errors --------------------------------------------------------
def test_dataclass_forms(deployed, models):
    model, x = models["tiny"]
    assert parse_strategy("deep:2") == Deep(2)
    assert parse_strategy(" Magnitude:0.1 ") == Magnitude(0.1)
    assert parse_strategy("nonlinear") == NonLinear()
    assert parse_strategy(Intermediate(0.3)).spec == "intermediate:0.3"
    # a user-given unit list: (conv, bn) is one unit
    sm = deployed.get("tiny", Shallow(1, units=[("conv", "bn"), ("fc",)]))
    with torch.no_grad():
        torch.testing.assert_close(sm(x), model(x), rtol=RTOL, atol=ATOL)
    assert strategy_report(sm, model)["params_tee"] == 24
    assert expand_strategies("all") == [
        "none",
        "all",
        "deep:1",
        "shallow:1",
        "magnitude:0.01",
        "intermediate:0.8",
        "nonlinear",
        "teeslice",
    ]
    assert expand_strategies(["all"]) == expand_strategies("all")
    assert expand_strategies("deep:1, none,deep:1") == ["deep:1", "none"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "bogus",
        "deep",
        "deep:",
        "deep:x",
        "deep:-1",
        "deep:1.5",
        "shallow:two",
        "magnitude",
        "magnitude:2",
        "magnitude:abc",
        "magnitude:nan",
        "intermediate",
        "intermediate:-0.1",
        "nonlinear:0.5",
        "nonlinear:x",
        "teeslice:3",
        "none:1",
        "all:0",
    ],
)
def test_bad_strategy_strings_raise_config_error(bad):
    with pytest.raises(ConfigError, match="valid strategies"):
        parse_strategy(bad)


def test_bad_strategy_objects_and_models(models):
    model, x = models["resnet18"]
    with pytest.raises(ConfigError, match="valid strategies"):
        parse_strategy(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Deep(-1)
    with pytest.raises(ConfigError):
        Magnitude(1.5)
    with pytest.raises(ConfigError, match="valid strategies"):
        taoism.shield(model, x, strategy="deep:k")
    with pytest.raises(ConfigError, match="0..10"):
        apply_strategy(model, "deep:11")
    with pytest.raises(ConfigError, match="teeslice_resnet18"):
        apply_strategy(model, "teeslice")
    with pytest.raises(ConfigError, match="not a submodule"):
        apply_strategy(model, Deep(1, units=[("nope",)]))
    with pytest.raises(ConfigError, match="not both"):
        taoism.shield(model, x, {"fc": "ENCLAVE"}, strategy="deep:1")


# --- the benchmark ------------------------------------------------------------------------------
def test_strategy_bench_and_outputs(tmp_path):
    from taoism.bench.strategies import format_table, run_strategy_bench, write_outputs

    result = run_strategy_bench(
        "small_cnn",
        "digits",
        2,
        ["deep:1", "magnitude:0.05", "teeslice", "deep:99"],
        repeats=2,
        warmup=1,
        progress=False,
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == [
        "plain-device",
        "plain-cpu",
        "none",
        "all",
        "deep:1",
        "magnitude:0.05",
        "teeslice",
        "deep:99",
    ]
    assert (
        "partition units" in rows["deep:99"]["error"]
    )  # a failing strategy is recorded, run goes on
    # small_cnn's teeslice row runs the zoo's teeslice_small_cnn
    assert rows["teeslice"]["error"] is None, rows["teeslice"]["error"]
    assert rows["teeslice"]["model"] == "teeslice_small_cnn"
    assert 0 < rows["teeslice"]["victim_params_pct"] < 100
    for name in ("none", "all", "deep:1", "magnitude:0.05"):
        r = rows[name]
        assert r["error"] is None, r["error"]
        assert r["e2e_ms"] > 0 and r["p10_ms"] <= r["e2e_ms"] <= r["p90_ms"]
        assert r["throughput_per_s"] == pytest.approx(2000.0 / r["e2e_ms"])
        parts = r["device_ms"] + r["enclave_ms"] + r["crypto_ms"] + r["copy_ms"] + r["wait_ms"]
        assert r["sum_parts_ms"] == pytest.approx(parts)
        assert r["ratio"] == pytest.approx(r["e2e_ms"] / parts)
        assert r["ratio_flag"] == (r["ratio"] > 1.15)
        assert r["max_abs_err"] <= 1e-4
    assert rows["none"]["crossings"] == 0 and rows["none"]["params_tee_pct"] == 0
    assert rows["all"]["params_tee_pct"] == 100.0 and rows["all"]["enclave_ms"] > 0
    assert rows["deep:1"]["crossings"] == 2 and 0 < rows["deep:1"]["params_tee_pct"] < 100
    assert rows["magnitude:0.05"]["params_tee_pct"] == pytest.approx(5.0, abs=0.01)
    assert rows["plain-cpu"]["e2e_ms"] > 0
    table = format_table(result)
    assert "magnitude:0.05" in table and "error" in table
    paths = write_outputs(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["model"] == "small_cnn" and len(data["rows"]) == 8
    with paths["csv"].open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["name"] for r in csv_rows] == list(rows)
    assert math.isclose(float(csv_rows[4]["e2e_ms"]), rows["deep:1"]["e2e_ms"])
    for key in ("breakdown_png", "latency_vs_flops_png"):
        blob = paths[key].read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000
