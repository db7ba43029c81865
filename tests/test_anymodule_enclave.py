"""The enclave runs what real models use: zoo ViT/BERT and the tests' torchvision/HF-style models.

Every deployment is compared with plain PyTorch (rtol 1e-4 / atol 1e-5), computed with the
enclave's thread count; under ``sgx1-client`` unless a tighter budget is the point. Chunked
executors (matmul, attention, embedding) are also called directly with budgets well below their
whole working set.
"""

from __future__ import annotations

import contextlib
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_same
from test_anymodule import HFBert, MobileStyle, SwinStyle, _tokens
from test_memory import _check, _op  # chunked executors under a budget below their working set

import taoism
from taoism import EnclaveConfig, EnclaveMode, MemoryBudgetError, PlacementError, PlacementRules
from taoism.capture import capture
from taoism.enclave.exec import Operand
from taoism.enclave.exec.attention import AttentionExecutor
from taoism.enclave.exec.embedding import EmbeddingExecutor
from taoism.enclave.exec.matmul import MatmulExecutor, matmul_shape
from taoism.errors import ProgramError
from taoism.placement import build_plan
from taoism.protocol.vocabulary import ATEN_OPS, FUNCTIONS, function_name, to_dtype
from taoism.zoo import example_inputs, get_model, units

ENCLAVE = EnclaveMode.ENCLAVE
TEE = "sgx1-client"


@contextlib.contextmanager
def _enclave_threads():
    """Plain references with the enclave's torch thread count (float32 reduction order)."""
    old = torch.get_num_threads()
    torch.set_num_threads(EnclaveConfig().threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _ref(model: nn.Module, xs: tuple) -> torch.Tensor:
    with _enclave_threads(), torch.no_grad():
        y = model(*xs)
    assert y.std() > 1e-3, "test outputs must not be near-constant"
    return y


def _run(model, xs, ref, placement=None, **kw):
    """Shield, run once, compare; returns the plan's enclave module paths."""
    with taoism.shield(model, xs, placement, device="cpu", tee=kw.pop("tee", TEE), **kw) as sm:
        assert_same(sm(*xs), ref)
        return sm.plan


_ACTIVATIONS = (nn.GELU, nn.Tanh, nn.ReLU, nn.ReLU6, nn.Softmax)


def _activations(model: nn.Module) -> dict[str, str]:
    """Every activation module in the enclave, by type (only the types this model has)."""
    present = {type(m).__name__ for m in model.modules() if isinstance(m, _ACTIVATIONS)}
    return {**{f"type:{t}": "ENCLAVE" for t in sorted(present)}, "_default": "GPU"}


def _first_half(model) -> dict[str, str]:
    us = units(model)
    return {**{p: "ENCLAVE" for u in us[: len(us) // 2] for p in u}, "_default": "GPU"}


# --- the zoo transformers: whole, split, every activation; both capture paths ---------------------
# Whole on both paths; split and activations on one path per model (fx for the ViT, export for
# BERT) to keep the suite fast: each shield starts an enclave process.
@pytest.mark.parametrize("name,split_capture", [("vit_tiny", "fx"), ("bert_tiny", "export")])
def test_zoo_transformer_whole_split_and_activations_in_the_enclave(name, split_capture):
    model = get_model(name)
    xs = example_inputs(name, batch=3)
    ref = _ref(model, xs)
    for kind in ("fx", "export"):
        plan = _run(model, xs, ref, {"_default": "ENCLAVE"}, capture=kind)
        assert all(l.placement is ENCLAVE for l in plan.layers)
    plan = _run(model, xs, ref, _first_half(model), capture=split_capture)
    half = {p.split(".")[0] for u in units(model)[: len(units(model)) // 2] for p in u}
    enclave = {
        l.info.module_path.split(".")[0]
        for l in plan.layers
        if l.placement is ENCLAVE and l.info.module_path
    }  # (shape values: both sides)
    assert enclave == half, enclave
    plan = _run(model, xs, ref, _activations(model), capture=split_capture)
    kinds = {
        type(model.get_submodule(l.info.module_path)).__name__
        for l in plan.layers
        if l.placement is ENCLAVE and l.info.module_path
    }
    assert kinds == {"GELU", "Tanh"} & {type(m).__name__ for m in model.modules()}, kinds


# Each strategy once per model; the rewriting ones (magnitude, intermediate, nonlinear) need an
# fx graph, the layer-wise ones run on both paths (one each per model here, alternating).
@pytest.mark.parametrize(
    "name,fx_layerwise,export_layerwise",
    [("vit_tiny", "deep:1", "shallow:1"), ("bert_tiny", "shallow:1", "deep:1")],
)
def test_zoo_transformer_under_every_strategy(name, fx_layerwise, export_layerwise):
    model = get_model(name)
    xs = example_inputs(name, batch=2)
    ref = _ref(model, xs)
    for s in (fx_layerwise, "magnitude:0.01", "intermediate:0.8", "nonlinear"):
        plan = _run(model, xs, ref, strategy=s)
        assert any(l.placement is ENCLAVE for l in plan.layers), s
    plan = _run(model, xs, ref, strategy=export_layerwise, capture="export")
    assert any(l.placement is ENCLAVE for l in plan.layers)


# --- the tests' torchvision / Hugging Face-style models ---------------------------------------
@pytest.mark.parametrize("kind", ["hf_bert", "swin", "mobile"])
def test_torchvision_and_hf_style_models_whole_in_the_enclave(kind):
    torch.manual_seed(5)
    if kind == "hf_bert":
        model, xs = HFBert().eval(), _tokens(3)
    elif kind == "swin":  # shifted windows, padding to whole windows, relative position bias
        model, xs = SwinStyle().eval(), (torch.randn(2, 3, 28, 28),)
    else:
        model, xs = MobileStyle().eval(), (torch.randn(2, 3, 8, 8),)
    ref = _ref(model, xs)
    plan = _run(
        model, xs, ref, {"_default": "ENCLAVE"}, capture="export"
    )  # (auto picks it for HF/Swin)
    assert all(l.placement is ENCLAVE for l in plan.layers)


class TorchvisionViTBlock(nn.Module):
    """torchvision's EncoderBlock: shape asserts, nn.MultiheadAttention, dropout in eval."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.dropout = nn.Dropout(0.1)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, dim))
        self.pos = nn.Embedding(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {x.shape}")
        x = x + self.pos(torch.arange(x.shape[1], device=x.device))
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        z = self.mlp(self.ln_2(x))
        scores = torch.einsum("bld,bmd->blm", x, z).softmax(-1)
        return torch.bmm(scores, torch.swapaxes(z, 1, 2).transpose(1, 2)) + F.dropout(x, 0.2, False)


def test_multihead_attention_embedding_and_shape_asserts_in_the_enclave():
    torch.manual_seed(6)
    model, xs = TorchvisionViTBlock().eval(), (torch.randn(3, 8, 16),)
    ref = _ref(model, xs)
    for kind in ("fx", "export"):
        _run(model, xs, ref, {"_default": "ENCLAVE"}, capture=kind)
    cg = capture(model, xs, capture="fx")
    assert {"MultiheadAttention", "Embedding"} <= {i.module_type for i in cg.nodes.values()}


# --- under a tight budget: attention, linear and matmul chunked, or refused up front ----------
def test_attention_runs_chunked_under_a_tight_budget_and_is_refused_when_it_cannot_fit():
    torch.manual_seed(7)
    model, xs = HFBert(vocab=50, dim=32, heads=4).eval(), _tokens(8, seq=32)
    ref = _ref(model, xs)
    cfg = EnclaveConfig(tee=TEE, memory_budget=250 << 10)
    with taoism.shield(
        model, xs, {"_default": "ENCLAVE"}, device="cpu", capture="export", enclave=cfg
    ) as sm:
        assert_same(sm(*xs), ref)
        nodes = sm.stats()["enclave"]["memory"]["nodes"]
    chunked = {n["kind"] for n in nodes if n["mode"] == "chunked"}
    assert {"attention", "linear", "layernorm"} <= chunked, chunked
    with pytest.raises(MemoryBudgetError, match="enclave memory budget"):
        taoism.shield(
            model,
            xs,
            {"_default": "ENCLAVE"},
            device="cpu",
            capture="export",
            enclave=EnclaveConfig(tee=TEE, memory_budget=170 << 10),
        )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize(
    "sa,sb", [((3, 2, 9, 7), (3, 2, 7, 5)), ((4, 9, 6), (6, 11)), ((2, 1, 5, 4), (3, 4, 6))]
)
def test_matmul_chunked_equals_whole(sa, sb, paged):
    torch.manual_seed(8)
    a, b = torch.randn(sa), torch.randn(sb)
    shape = matmul_shape(sa, sb)
    _check(
        lambda ctx, p: MatmulExecutor(_op(ctx, a, p), _op(ctx, b, p), shape, a.dtype), a @ b, paged
    )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("mask", ["none", "float", "bool", "causal"])
def test_attention_chunked_equals_whole(mask, paged):
    torch.manual_seed(9)
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 5)
    m = {
        "none": None,
        "float": torch.randn(2, 1, 9, 11),
        "bool": torch.rand(9, 11) > 0.3,
        "causal": None,
    }[mask]
    causal = mask == "causal"
    if causal:
        k, v = k[:, :, :9], v[:, :, :9]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=0.3)
    _check(
        lambda ctx, p: AttentionExecutor(
            _op(ctx, q, p),
            _op(ctx, k, p),
            _op(ctx, v, p),
            _op(ctx, m, p),
            causal,
            0.3,
            ref.shape,
            q.dtype,
        ),
        ref,
        paged,
    )


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
def test_embedding_chunked_equals_whole(paged):
    torch.manual_seed(10)
    table, idx = torch.randn(40, 6), torch.randint(0, 40, (5, 9))
    _check(
        lambda ctx, p: EmbeddingExecutor(Operand(idx), _op(ctx, table, p), (5, 9, 6), table.dtype),
        F.embedding(idx, table),
        paged,
        frac=0.6,
    )


# --- the whitelist: by overload, validated; the precise error for an op still missing -------------
def test_aten_whitelist_is_by_overload_and_to_changes_only_the_dtype():
    assert function_name(torch.ops.aten.linear.default) == "aten.linear.default"
    assert function_name(torch.ops.aten.linear) is None  # a packet, not an overload
    assert function_name(torch.ops.aten.index_put.default) is None
    assert all(str(op) in FUNCTIONS for op in ATEN_OPS)
    assert FUNCTIONS["operator.eq"] is operator.eq and FUNCTIONS["torch._assert"] is torch._assert
    x = torch.randn(2, 3)
    assert to_dtype(x, torch.float64).dtype == torch.float64
    for bad in (("cuda",), (torch.device("cpu"),), (torch.float64, torch.float32)):
        with pytest.raises(ProgramError, match="dtype"):
            to_dtype(x, *bad)
    with pytest.raises(ProgramError):
        to_dtype(x, dtype=torch.float64, device="cpu")


class CumulativeHead(nn.Module):
    """A head using an op the enclave does not run (``cumsum``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=-1)


def test_op_still_missing_gets_the_precise_error_and_the_device_works_around_it():
    model, x = CumulativeHead().eval(), torch.randn(4, 6)
    cg = capture(model, (x,), capture="export")
    with pytest.raises(PlacementError) as err:
        build_plan(cg, PlacementRules.from_spec({"_default": "ENCLAVE"}))
    msg = str(err.value)
    assert (
        "node 'cumsum' calls ATen op 'aten.cumsum.default', which the enclave does not run" in msg
    )
    assert "{'cumsum': 'GPU'}" in msg and "ATEN_OPS" in msg
    ref = _ref(model, (x,))
    plan = _run(model, (x,), ref, {"_default": "ENCLAVE", "cumsum": "GPU"}, capture="export")
    assert [l.info.name for l in plan.layers if l.placement is ENCLAVE] != []


@pytest.mark.parametrize("paged", [False, True], ids=["resident", "sealed"])
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_chunked_equals_whole(affine, paged):
    from taoism.enclave.exec.norm import LayerNormExecutor

    torch.manual_seed(11)
    x, w, b = torch.randn(3, 7, 2, 5), torch.randn(2, 5), torch.randn(2, 5)
    w, b = (w, b) if affine else (None, None)
    ref = F.layer_norm(x, (2, 5), w, b, 1e-5)
    _check(
        lambda ctx, p: LayerNormExecutor(
            _op(ctx, x, p), (2, 5), _op(ctx, w, p), _op(ctx, b, p), 1e-5, x.dtype
        ),
        ref,
        paged,
    )
