"""Enclave memory budget: TEE profiles, accounting, chunked execution, sealed paging, refusal.

Chunked executors are called directly with tiny budgets and compared with the unchunked layer
(rtol 1e-4, atol 1e-5); whole models run through the enclave server in-process (many budgets,
fast) and through a real ``shield()`` (the encrypted boundary and the enclave process).
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_same
from models import AllLayers

import taoism
from taoism.capture import capture
from taoism.config import EnclaveConfig
from taoism.enclave.exec import (
    AdaptivePoolExecutor,
    BatchNormExecutor,
    BinaryExecutor,
    CatExecutor,
    ConvExecutor,
    ExecContext,
    FlattenExecutor,
    LinearExecutor,
    Operand,
    PoolExecutor,
    UnaryExecutor,
    run_chunked,
)
from taoism.enclave.memory import Accountant, ResidentValues
from taoism.enclave.paged import PagedTensor
from taoism.enclave.pages import PageSealer
from taoism.enclave.server import EnclaveServer
from taoism.errors import ConfigError, IntegrityError, MemoryBudgetError
from taoism.placement import PlacementRules, build_plan
from taoism.placement.memory import format_memory_plan, memory_plan
from taoism.runtime.lowering import device_segment, enclave_program
from taoism.tee import PROFILES, TeeCostModel, cost_table, get_profile, project
from taoism.zoo import example_input, get_model

MiB = 1 << 20
_names = itertools.count()


# -- profiles and configuration ---------------------------------------------------------------


def test_profiles_and_config() -> None:
    assert set(PROFILES) >= {"sgx1-client", "sgx2-server", "trustzone", "unlimited"}
    assert get_profile("sgx1-client").memory_budget == int(93.5 * MiB)
    assert get_profile("trustzone").memory_budget == 16 * MiB
    assert get_profile("sgx2-server").memory_budget >= 64 * (1 << 30)
    assert get_profile("unlimited").memory_budget is None
    assert EnclaveConfig().budget_bytes is None
    assert EnclaveConfig(tee="trustzone").budget_bytes == 16 * MiB
    assert EnclaveConfig(tee="trustzone", memory_budget=5 * MiB).budget_bytes == 5 * MiB
    with pytest.raises(ConfigError, match="sgx1-client"):
        EnclaveConfig(tee="sgx3")
    with pytest.raises(ConfigError):
        EnclaveConfig(memory_budget=100)
    with pytest.raises(dataclass_frozen_error()):
        get_profile("trustzone").memory_budget = 1  # type: ignore[misc]
    assert "40,000" in cost_table() and "platform.md" in cost_table()


def dataclass_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_cost_model_replace_and_projection() -> None:
    sgx = get_profile("sgx1-client").cost
    fast = sgx.replace(cpu_ghz=4.0, mem_encryption_slowdown=1.5)
    assert fast.cpu_ghz == 4.0 and sgx.cpu_ghz == 3.0 and fast.sources["cpu_ghz"] == "user override"
    with pytest.raises(ConfigError):
        sgx.replace(bogus=1)
    with pytest.raises(ConfigError):
        TeeCostModel(cpu_ghz=0)
    stat = SimpleNamespace(median=0.010)
    prof = SimpleNamespace(
        end_to_end=stat,
        segments=[
            SimpleNamespace(side="ENCLAVE", crossings=2, enclave_compute=0.004),
            SimpleNamespace(side="GPU", crossings=0, enclave_compute=0.0),
        ],
    )
    mem = {
        "budget_bytes": 16 * MiB,
        "last_inference": {
            "sealed_bytes": 4096 * 10,
            "unsealed_bytes": 4096 * 30,
            "peak_bytes": 10 * MiB,
        },
    }
    p = project(prof, mem, "sgx1-client", fast)
    assert p.transitions == 2 and p.pages == 40
    assert p.model_paging_s == pytest.approx(40 * 40_000 / 4e9)
    assert p.model_transition_s_low == pytest.approx(2 * 8_200 / 4e9)
    assert p.model_encryption_s == pytest.approx(0.5 * 0.004)
    assert p.measured_end_to_end_s == 0.010  # measured numbers are never altered
    js = p.to_json()
    assert js["kind"].startswith("projection") and js["measured"]["end_to_end_s"] == 0.010
    # an unbudgeted run whose peak exceeds the TEE's budget: evict + reload the overflow once
    unb = {
        "budget_bytes": None,
        "last_inference": {"sealed_bytes": 0, "unsealed_bytes": 0, "peak_bytes": 20 * MiB},
    }
    p2 = project(prof, unb, "trustzone")
    assert p2.paged_bytes == 2 * 4 * MiB
    assert "PROJECTION" in str(p2)


# -- chunked executors, called directly ----------------------------------------------------------


def _ctx(budget: int | None) -> ExecContext:
    acct = Accountant(budget)
    sealer = PageSealer()
    sealer.on_bytes = acct.on_sealed
    return ExecContext(acct, sealer, page_bytes=2048)


def _op(ctx: ExecContext, t: torch.Tensor | None, paged: bool) -> Operand | None:
    if t is None:
        return None
    if paged:
        return Operand(PagedTensor.seal_tensor(f"t{next(_names)}", t, ctx.sealer, 1024))
    return Operand(t)


def _check(make, ref: torch.Tensor, paged: bool, frac: float = 0.3) -> None:
    """Run the executor with a budget well below its whole working set; compare with ``ref``."""
    ctx = _ctx(None)
    ex = make(ctx, paged)
    whole = ex.plan(float("inf"), False).cost
    smallest = ex.min_cost()
    budget = max(int(whole * frac), smallest)
    ctx = _ctx(budget)
    ex = make(ctx, paged)
    out, plan = run_chunked(ex, ctx, "layer")
    if isinstance(out, PagedTensor):
        out = out.read()
    assert_same(out, ref)
    if budget < whole:  # (a strided chunk can cost more than a whole view: then none is smaller)
        assert plan.chunks > 1, (plan.describe(), whole, budget)
    assert ctx.acct.peak <= budget
    assert ctx.acct.total == 0  # everything the executor charged was released


CONV_CASES = [  # N, C, H, W, O, k, stride, pad, dil, groups
    (1, 7, 7, 7, 13, 3, 1, 1, 1, 1),  # prime channels, 7x7 map, batch 1
    (3, 5, 11, 9, 7, 3, 2, 1, 1, 1),  # stride 2, odd map
    (2, 6, 9, 8, 9, 3, 2, 2, 2, 3),  # dilation, groups
    (2, 6, 7, 7, 6, 3, 1, 1, 1, 6),  # depthwise
    (1, 3, 23, 17, 5, 7, 2, 3, 1, 1),  # 7x7 stride-2 stem
    (2, 11, 5, 5, 17, 1, 1, 0, 1, 1),  # pointwise
    (257, 3, 5, 5, 5, 3, 1, 1, 1, 1),  # batch 257
]


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv2d_chunked_equals_whole(case, paged: bool) -> None:
    n, c, h, w, o, k, s, p, d, g = case
    x, wt, b = torch.randn(n, c, h, w), torch.randn(o, c // g, k, k), torch.randn(o)
    ref = F.conv2d(x, wt, b, s, p, d, g)
    _check(
        lambda ctx, pg: ConvExecutor(
            _op(ctx, x, pg),
            _op(ctx, wt, pg),
            _op(ctx, b, pg),
            s,
            p,
            d,
            g,
            "zeros",
            ref.shape,
            ref.dtype,
        ),
        ref,
        paged,
    )


@pytest.mark.parametrize("kind", ["conv1d", "reflect", "same"])
def test_conv_variants_chunked(kind: str) -> None:
    if kind == "conv1d":
        m = nn.Conv1d(5, 7, 3, stride=2, padding=1)
        x = torch.randn(3, 5, 29)
    elif kind == "reflect":
        m = nn.Conv2d(5, 7, 3, padding=1, padding_mode="reflect")
        x = torch.randn(3, 5, 9, 9)
    else:
        m = nn.Conv2d(5, 7, 3, padding="same", dilation=2)
        x = torch.randn(3, 5, 9, 9)
    with torch.no_grad():
        ref = m(x)
    _check(
        lambda ctx, pg: ConvExecutor(
            _op(ctx, x, pg),
            _op(ctx, m.weight.detach(), pg),
            _op(ctx, m.bias.detach(), pg),
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.padding_mode,
            ref.shape,
            ref.dtype,
        ),
        ref,
        False,
        frac=0.5,
    )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("shape,out", [((1, 97), 13), ((257, 31), 11), ((4, 5, 23), 7)])
def test_linear_chunked(shape, out: int, paged: bool) -> None:
    x, w, b = torch.randn(*shape), torch.randn(out, shape[-1]), torch.randn(out)
    ref = F.linear(x, w, b)
    _check(
        lambda ctx, pg: LinearExecutor(
            _op(ctx, x, pg), _op(ctx, w, pg), _op(ctx, b, pg), ref.shape, ref.dtype
        ),
        ref,
        paged,
    )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("shape", [(3, 7, 7, 7), (257, 5), (2, 13, 11)])
def test_batchnorm_chunked(shape, paged: bool) -> None:
    c = shape[1]
    x = torch.randn(*shape)
    p = {
        "running_mean": torch.randn(c),
        "running_var": torch.rand(c) + 0.5,
        "weight": torch.randn(c),
        "bias": torch.randn(c),
    }
    ref = F.batch_norm(
        x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, 0.0, 1e-5
    )
    _check(
        lambda ctx, pg: BatchNormExecutor(
            _op(ctx, x, pg), {k: _op(ctx, v, pg) for k, v in p.items()}, 1e-5, ref.shape, ref.dtype
        ),
        ref,
        paged,
    )


POOLS = [  # nd, max?, kernel, stride, pad, dil, ceil, count_include_pad, shape
    (2, True, 3, 2, 1, 1, False, True, (2, 5, 7, 7)),
    (2, True, 3, 2, 1, 1, True, True, (1, 3, 10, 9)),
    (2, True, 2, 1, 0, 2, False, True, (2, 3, 11, 8)),
    (2, False, 3, 2, 1, 1, False, True, (2, 5, 7, 7)),
    (2, False, 3, 2, 1, 1, False, False, (2, 5, 9, 7)),
    (2, False, 2, 2, 0, 1, True, True, (3, 4, 7, 7)),
    (1, True, 3, 2, 1, 1, False, True, (3, 5, 17)),
    (1, False, 3, 2, 1, 1, False, True, (3, 5, 17)),
]


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("case", POOLS, ids=lambda c: "-".join(map(str, c[:8])))
def test_pool_chunked(case, paged: bool) -> None:
    nd, is_max, k, s, p, d, ceil, cip, shape = case
    x = torch.randn(*shape)
    if nd == 2:
        ref = F.max_pool2d(x, k, s, p, d, ceil) if is_max else F.avg_pool2d(x, k, s, p, ceil, cip)
    else:
        ref = F.max_pool1d(x, k, s, p, d, ceil) if is_max else F.avg_pool1d(x, k, s, p, ceil, cip)
    _check(
        lambda ctx, pg: PoolExecutor(
            _op(ctx, x, pg), nd, is_max, k, s, p, d, ceil, cip, None, ref.shape, ref.dtype
        ),
        ref,
        paged,
    )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
def test_adaptive_unary_binary_cat_flatten_chunked(paged: bool) -> None:
    x = torch.randn(3, 7, 7, 5)
    ref = F.adaptive_avg_pool2d(x, (2, 3))
    _check(
        lambda ctx, pg: AdaptivePoolExecutor(
            F.adaptive_avg_pool2d, _op(ctx, x, pg), (2, 3), 2, ref.shape, ref.dtype
        ),
        ref,
        paged,
    )
    ref = F.adaptive_max_pool2d(x, 1)
    _check(
        lambda ctx, pg: AdaptivePoolExecutor(
            F.adaptive_max_pool2d, _op(ctx, x, pg), 1, 2, ref.shape, ref.dtype
        ),
        ref,
        paged,
    )
    for fn in (F.relu, F.gelu, F.hardswish, torch.sigmoid):
        ref = fn(x)
        _check(
            lambda ctx, pg: UnaryExecutor(fn, _op(ctx, x, pg), (), {}, ref.shape, ref.dtype),
            ref,
            paged,
        )
    y = torch.randn(7, 1, 5)  # broadcast over batch and rows
    for fn, args in (
        (torch.add, (x, y)),
        (torch.mul, (x, 0.5)),
        (torch.sub, (2.0, x)),
        (torch.div, (x, x + 3)),
    ):
        ref = fn(*args)
        _check(
            lambda ctx, pg: BinaryExecutor(
                fn,
                [_op(ctx, a, pg) if isinstance(a, torch.Tensor) else a for a in args],
                ref.shape,
                ref.dtype,
            ),
            ref,
            paged,
        )
    parts = [torch.randn(3, c, 7, 5) for c in (2, 5, 3)]
    for dim in (1, 0):
        ps = parts if dim == 1 else [p.transpose(0, 1).contiguous() for p in parts]
        ref = torch.cat(ps, dim)
        _check(
            lambda ctx, pg: CatExecutor([_op(ctx, p, pg) for p in ps], dim, ref.shape, ref.dtype),
            ref,
            paged,
        )
    if paged:
        ref = torch.flatten(x, 1)
        _check(
            lambda ctx, pg: FlattenExecutor(_op(ctx, x, True), 1, -1, ref.shape, ref.dtype),
            ref,
            True,
        )


def test_smallest_chunk_that_does_not_fit_is_refused() -> None:
    x, w = torch.randn(1, 64, 9, 9), torch.randn(64, 64, 3, 3)
    ctx = _ctx(4096)
    ex = ConvExecutor(Operand(x), Operand(w), None, 1, 1, 1, 1, "zeros", (1, 64, 9, 9), x.dtype)
    with pytest.raises(MemoryBudgetError, match="conv_x"):
        run_chunked(ex, ctx, "conv_x")


# -- sealed paging ---------------------------------------------------------------------------


def test_sealed_pages_reject_tamper_swap_stale_and_foreign() -> None:
    sealer = PageSealer()
    t = torch.randn(6, 5, 4)
    pt = PagedTensor.seal_tensor("a:x", t, sealer, 5 * 4 * 4 * 2)  # blocks of 2 rows
    assert len(list(pt.blocks())) == 3
    assert_same(pt.read(), t)
    assert_same(pt.read((slice(1, 4), slice(0, 5), slice(1, 3))), t[1:4, :, 1:3])
    store = sealer.store.pages
    keys = sorted(k for k in store if k[0] == "a:x")
    # tampered ciphertext
    good = store[keys[0]]
    bad = bytearray(good.data)
    bad[3] ^= 1
    store[keys[0]] = type(good)(good.nonce, bad)
    with pytest.raises(IntegrityError, match="failed authentication"):
        pt.read()
    store[keys[0]] = good
    assert_same(pt.read(), t)
    # two pages swapped
    store[keys[0]], store[keys[1]] = store[keys[1]], store[keys[0]]
    with pytest.raises(IntegrityError):
        pt.read((slice(0, 2), slice(0, 5), slice(0, 4)))
    store[keys[0]], store[keys[1]] = store[keys[1]], store[keys[0]]
    # a stale page: the same value re-sealed later (new version), an old page replayed
    old = store[keys[1]]
    pt2 = PagedTensor.seal_tensor("a:x", t * 2, sealer, 5 * 4 * 4 * 2)
    assert pt2.version > pt.version
    store[keys[1]] = old
    with pytest.raises(IntegrityError):
        pt2.read()
    # a page sealed by another enclave (another key) under the same identity
    other = PageSealer()
    PagedTensor.seal_tensor("a:y", t, sealer, 1 << 20)
    foreign = PagedTensor.seal_tensor("a:y", t, other, 1 << 20)
    sealer.store.pages[("a:y", (0, 0, 0))] = other.store.pages[("a:y", (0, 0, 0))]
    with pytest.raises(IntegrityError):
        PagedTensor("a:y", t.shape, t.dtype, foreign.cuts, sealer).read()
    # a page removed from untrusted memory
    del store[keys[2]]
    with pytest.raises(IntegrityError):
        pt2.read()


# -- whole models: the enclave server in-process, and shield() -------------------------------


def _program(model: nn.Module, x: torch.Tensor, placement: dict | None = None):
    cap = capture(model, x)
    plan = build_plan(cap, PlacementRules.from_spec(placement or {"_default": "ENCLAVE"}))
    desc, tensors = enclave_program(cap, plan)
    return cap, plan, desc, tensors


def _loaded(desc, tensors) -> EnclaveServer:
    srv = EnclaveServer()
    srv.load(json.dumps(desc).encode(), list(tensors))
    return srv


def _serve(desc, tensors, plan, inputs, runs: int = 2):
    srv = _loaded(desc, tensors)
    for _ in range(runs):
        env = dict(zip(plan.input_names, inputs))
        for seg in plan.segments:
            outs, _ = srv.run(seg.index, [env[v] for v in seg.send_in], False)
            env.update(zip(seg.returns, outs))
    return srv, env


@pytest.mark.parametrize(
    "batch,budget", [(3, None), (3, 160 << 10), (3, 100 << 10), (1, 84 << 10), (257, 1 << 20)]
)
def test_all_layers_in_enclave_within_budget(batch: int, budget: int | None) -> None:
    torch.manual_seed(1)
    model = AllLayers().eval()
    x = torch.randn(batch, 3, 16, 16)
    with torch.inference_mode():
        ref = model(x)
    cap, plan, desc, tensors = _program(model, x)
    mp = memory_plan(plan, budget, cap, program=(desc, tensors))
    desc["memory"] = mp.spec()
    srv, env = _serve(desc, tensors, plan, [x])
    assert_same(env[plan.output_names[0]], ref)
    st = srv.memory.stats()
    if budget is not None:
        assert st["peak_bytes"] <= budget and st["within_budget"]
        assert mp.peak_bytes <= budget
        assert mp.chunked_nodes, "this budget must force chunking"
        assert st["fast_runs"] == 0
    else:
        assert st["fast_runs"] >= 1  # the second run took the compiled segment directly
    # the host's plan is the enclave's accounting, to the byte
    assert mp.peak_bytes == st["last_inference"]["peak_bytes"]
    assert mp.sealed_bytes == st["last_inference"]["sealed_bytes"]
    assert "expected peak" in format_memory_plan(mp)


def test_description_without_memory_section_runs_unlimited_on_the_one_path() -> None:
    model = AllLayers().eval()
    x = torch.randn(2, 3, 16, 16)
    _, plan, desc, tensors = _program(model, x)
    assert "memory" not in desc
    srv, env = _serve(desc, tensors, plan, [x], runs=1)
    assert srv.memory is not None and srv.memory.budget is None  # accounted, no budget
    assert srv.memory.stats()["peak_bytes"] > 0 and srv.memory.runs == len(plan.enclave_segments)
    with torch.inference_mode():
        assert_same(env[plan.output_names[0]], model(x))


class _Wide(nn.Module):
    """A layer with no chunked form (LayerNorm over a wide row) after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4 * 32 * 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).flatten(1))


def test_refusal_names_the_layer_before_the_enclave_starts() -> None:
    model, x = _Wide().eval(), torch.randn(4, 3, 32, 32)
    cap, plan, desc, tensors = _program(model, x)
    with pytest.raises(MemoryBudgetError) as err:
        memory_plan(plan, 160 << 10, cap)
    msg = str(err.value)
    assert "'norm'" in msg and "163,840" in msg and "needs" in msg
    with pytest.raises(MemoryBudgetError, match="'norm'"):
        taoism.shield(
            model,
            x,
            placement={"_default": "ENCLAVE"},
            device="cpu",
            enclave=EnclaveConfig(tee="trustzone", memory_budget=160 << 10),
        )
    # weights that cannot be sealed and do not fit: named at plan time too
    with pytest.raises(MemoryBudgetError, match="'norm'"):
        memory_plan(plan, 96 << 10, cap)
    # a layer whose smallest chunk is too big is named too
    conv = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1)).eval()
    cap2 = capture(conv, torch.randn(1, 512, 4, 4))
    plan2 = build_plan(cap2, PlacementRules.from_spec({"_default": "ENCLAVE"}))
    with pytest.raises(
        MemoryBudgetError, match=r"'_0' \(conv\).*163,840 bytes even at its smallest"
    ):
        memory_plan(plan2, 160 << 10, cap2)
    with pytest.raises(ConfigError):
        taoism.shield(model, x, placement={"_default": "ENCLAVE"}, device="cpu", tee="sgx9")


def test_shield_with_budget_matches_plain_model() -> None:
    torch.manual_seed(2)
    model = AllLayers().eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.inference_mode():
        ref = model(x)
    cfg = EnclaveConfig(tee="trustzone", memory_budget=96 << 10)
    with taoism.shield(
        model, x, placement={"_default": "ENCLAVE"}, device="cpu", enclave=cfg
    ) as sm:
        assert sm.memory_plan is not None and sm.memory_plan.chunked_nodes
        for _ in range(2):
            assert_same(sm(x), ref)
        mem = sm.stats()["enclave"]["memory"]
        assert mem["budget_bytes"] == 96 << 10
        assert 0 < mem["peak_bytes"] <= 96 << 10
        assert mem["last_inference"]["peak_bytes"] == sm.memory_plan.peak_bytes
        assert any(n["chunks"] > 1 for n in mem["nodes"])
        assert mem["runtime_not_counted"]["max_rss_bytes"] > mem["peak_bytes"]
        prof = sm.profile(x, repeats=1, warmup=0)
        proj = project(prof, sm.stats(), "trustzone")
        assert proj.measured_end_to_end_s == prof.end_to_end.median
        assert (
            proj.paged_bytes
            == mem["last_inference"]["sealed_bytes"] + mem["last_inference"]["unsealed_bytes"]
        )
    with taoism.shield(
        model, x, placement={"_default": "ENCLAVE"}, device="cpu", tee="sgx1-client"
    ) as sm:
        assert_same(sm(x), ref)
        mem = sm.stats()["enclave"]["memory"]
        assert mem["tee"] == "sgx1-client" and mem["peak_bytes"] <= int(93.5 * MiB)
        assert not sm.memory_plan.chunked_nodes


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_view_is_charged_once_under_inference_mode(device):
    """The enclave runs in inference mode, where views record no ``_base``: storages are the key.

    Keyed by ``_base`` (before the fix) the reshape was charged again as a new tensor, and the
    shield-time simulation of vit_tiny at batch 8 under 1000 KiB stopped with an "internal" error.
    """
    acct = Accountant(None)
    values = ResidentValues(acct)
    with torch.inference_mode():
        t = torch.empty(8, 65, 576, device=device)
        values.add("t", t)
        assert acct.total == t.nbytes
        values.add("r", t.reshape(8, 65, 3, 3, 64))  # a view
        assert acct.total == t.nbytes
        values.add("c", t.permute(0, 2, 1).reshape(8, -1))  # a real copy
        assert acct.total == 2 * t.nbytes
        values.drop("t")
        assert acct.total == 2 * t.nbytes  # the view still holds the storage
        values.drop("r")
        assert acct.total == t.nbytes


def test_vit_tiny_over_a_tight_budget_fails_typed_and_says_which_layer():
    m = get_model("vit_tiny", dataset_shape="cifar")
    x = example_input("vit_tiny", "cifar", batch=8)
    with pytest.raises(MemoryBudgetError, match="softmax.*no chunked form") as err:
        taoism.shield(
            m, x, {"_default": "ENCLAVE"}, enclave=EnclaveConfig(memory_budget=1000 << 10)
        )
    assert "internal" not in str(err.value)


class _KeepAndStateless(nn.Module):
    """ReLU segments that keep nothing, and one whose output the enclave keeps for a later add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu0, self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu1(self.conv1(self.relu0(self.conv0(x))))
        return self.relu2(self.conv2(r)) + r


def _run_split(model: nn.Module, x: torch.Tensor, lean: bool, runs: int = 3):
    cap, plan, desc, tensors = _program(model, x, {"re:relu.*|add": "ENCLAVE", "_default": "GPU"})
    srv = _loaded(desc, tensors)
    if not lean:
        for p in srv.programs.values():
            p.stateless = False
    gms = {s.index: s for s in plan.segments}
    outs, envs = [], []
    with torch.inference_mode():
        for _ in range(runs):
            env = dict(zip(plan.input_names, [x]))
            for seg in plan.segments:
                if seg.index in srv.programs:
                    got, _ = srv.run(seg.index, [env[v] for v in seg.send_in], False)
                    env.update(zip(seg.returns, got))
                    envs.append(sorted(srv.memory.env))
                else:
                    sub = device_segment(cap, gms[seg.index], torch.device("cpu"))
                    env.update(zip(seg.outputs, sub(*[env[v] for v in seg.inputs])))
            outs.append(env[plan.output_names[0]])
    stats = srv.memory.stats()
    stats.pop("runtime_not_counted")
    return srv, outs, envs, stats


def test_lean_replay_of_stateless_segments_accounts_like_the_full_replay() -> None:
    torch.manual_seed(3)
    model = _KeepAndStateless().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        ref = model(x)
    lean, outs, envs, stats = _run_split(model, x, lean=True)
    _, outs_full, envs_full, stats_full = _run_split(model, x, lean=False)
    kinds = sorted(p.stateless for p in lean.programs.values())
    assert kinds[0] is False and kinds[-1] is True  # both kinds of segment are exercised
    for got, full in zip(outs, outs_full):
        assert_same(got, ref)
        assert torch.equal(got, full)
    assert envs == envs_full  # the enclave holds the same values after every segment
    assert stats == stats_full and stats["fast_runs"] > 0  # same peaks, counters and reports
    assert lean.memory is not None and lean.memory._lanes  # the flattened replay was taken


class _Activations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.acts = nn.Sequential(
            nn.ReLU(inplace=True), nn.Sigmoid(), nn.Tanh(), nn.GELU("tanh"), nn.MaxPool2d(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acts(self.conv(x) * 3)


def test_replay_makes_the_modules_torch_calls_itself_with_identical_results() -> None:
    torch.manual_seed(4)
    model = _Activations().eval()
    x = torch.randn(2, 3, 8, 8)
    _, _, desc, tensors = _program(model, x, {"re:acts.*": "ENCLAVE", "_default": "GPU"})
    (prog,) = _loaded(desc, tensors).programs.values()
    code = prog.replay.code
    for call in ("torch.relu(", "torch.sigmoid(", "torch.tanh(", "approximate = 'tanh'"):
        assert call in code, code
    assert code.count(".forward(") == 1  # the pool: its module's forward, not a lowering
    with torch.inference_mode():
        h = model.conv(x) * 3
        assert h.abs().max() > 3 and h.std() > 0.5  # not a near-constant input
        want = prog.gm.forward(h.clone())
        got = prog.replay.forward(h.clone())
        assert torch.equal(got[0], want[0]) and torch.equal(got[0], model.acts(h.clone()))


def test_stateless_args_follow_the_call_order_not_the_send_order() -> None:
    from taoism.enclave.program import SegmentProgram

    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    graph.output((graph.call_function(torch.sub, (a, b)),))
    gm = torch.fx.GraphModule(nn.Module(), graph)
    prog = SegmentProgram(1, ("a", "b"), ("b", "a"), ("sub",), (), ("a", "b"), gm, ("sub",))
    assert prog.stateless and prog.input_order == (1, 0)
    x, y = torch.tensor([5.0]), torch.tensor([2.0])
    assert prog.run(prog.stateless_args([y, x]))[0].item() == 3.0  # sent as (b, a)
    kept = SegmentProgram(2, ("a",), ("a",), ("a",), ("a",), (), gm, ("sub",))
    assert not kept.stateless and kept.input_order is None
