"""Any nn.Module in: models in the style of torchvision and Hugging Face, both capture paths.

The models are written here (torchvision and transformers are not dependencies): windowed
attention with a shifted window and a relative position bias, stochastic depth, LayerNorm2d,
activations inside Sequentials, BERT-style embeddings with a position-id buffer and an attention
mask, and Python control flow on shapes that torch.fx cannot trace.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_same

import taoism
from taoism import CaptureError, ConfigError, EnclaveMode, PlacementError, PlacementRules
from taoism.capture import capture
from taoism.placement import build_plan
from taoism.strategies import apply_strategy
from taoism.zoo import example_inputs, get_model, units

GPU, ENCLAVE = EnclaveMode.GPU, EnclaveMode.ENCLAVE


# --- torchvision-style pieces ---------------------------------------------------------------
class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: drops the residual branch in training, identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: a subclass of nn.LayerNorm with its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MobileStyle(nn.Module):
    """Activations live in Sequentials named like ``features.1.conv.0.2`` (mobilenet, convnext)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
                )
            )

        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), nn.ReLU()),
            nn.Sequential(block(8, 8), nn.GELU()),
            block(8, 12),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class WindowAttention(nn.Module):
    """Swin-style attention inside shifted windows with a relative position bias table."""

    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        b, h, w, c = x.shape
        pad_h, pad_w = (-h) % self.window, (-w) % self.window
        if pad_h or pad_w:  # data-dependent Python on shapes: fx cannot trace this
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = self.window
        x = x.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, win * win, c)
        q, k, v = (
            self.qkv(x)
            .reshape(x.shape[0], win * win, 3, self.heads, -1)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        attn = torch.einsum("bhqd,bhkd->bhqk", q, k) / (q.shape[-1] ** 0.5)
        bias = self.bias_table[self.rel_index.reshape(-1)].reshape(win * win, win * win, -1)
        attn = (attn + bias.permute(2, 0, 1).unsqueeze(0)).softmax(-1)
        x = self.proj(torch.swapaxes(attn @ v, 1, 2).reshape(x.shape[0], win * win, c))
        x = (
            x.view(b, hp // win, wp // win, win, win, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(b, hp, wp, c)
        )
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class SwinBlock(nn.Module):
    def __init__(self, dim: int, shift: int, p: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, 2, 3, shift)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop_path = StochasticDepth(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStyle(nn.Module):
    """Patch embedding with LayerNorm2d, two shifted-window blocks on a 7x7 grid, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.blocks = nn.Sequential(SwinBlock(16, 0, 0.1), SwinBlock(16, 1, 0.2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).permute(0, 2, 3, 1)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=(1, 2)))


# --- Hugging Face-style BERT ------------------------------------------------------------------
class HFEmbeddings(nn.Module):
    """BertEmbeddings: word + position + token type, position ids sliced from a buffer."""

    def __init__(self, vocab: int, dim: int, max_len: int = 32) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer(
            "position_ids", torch.arange(max_len).expand((1, -1)), persistent=False
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_length = input_ids.size()[1]
        position_ids = self.position_ids[:, 0:seq_length]  # fx: "slice indices must be integers"
        token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))


class HFLayer(nn.Module):
    """BertLayer: self-attention with an additive mask, then the intermediate/output MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
        )
        self.attn_out, self.ln1 = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-12)
        self.intermediate, self.act = nn.Linear(dim, 2 * dim), nn.GELU()
        self.output, self.ln2 = nn.Linear(2 * dim, dim), nn.LayerNorm(dim, eps=1e-12)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = x.size()[:-1] + (self.heads, x.size(-1) // self.heads)
        return x.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ctx = ctx.permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (ctx.size(-2) * ctx.size(-1),))
        x = self.ln1(x + self.attn_out(ctx))
        return self.ln2(x + self.output(self.act(self.intermediate(x))))


class HFEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(HFLayer(dim, heads) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class HFBert(nn.Module):
    """BertForSequenceClassification in miniature: embeddings, encoder.layer.i, pooler, head."""

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.embeddings = HFEmbeddings(vocab, dim)
        self.encoder = HFEncoder(dim, heads, depth)
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.classifier = nn.Linear(dim, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ext = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(
            torch.float32
        ).min
        x = self.encoder(self.embeddings(input_ids), ext)
        return self.classifier(self.pooler(x[:, 0]))


class ShapeBothSides(nn.Module):
    """``n = x.shape[0]`` read by a reshape in the enclave and one on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.conv(x).reshape(n, -1)
        return self.fc(y).reshape(n, 2, 3)


def _tokens(batch: int, seq: int = 10, vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[::2, -3:] = 0
    return ids, mask


def _not_constant(y: torch.Tensor) -> torch.Tensor:
    assert y.std() > 1e-3, "test outputs must not be near-constant"
    return y


@pytest.fixture(scope="module")
def bert() -> HFBert:
    torch.manual_seed(1)
    return HFBert().eval()


@pytest.fixture(scope="module")
def bert_export(bert):
    return capture(bert, _tokens(3), capture="export")


# --- capture -----------------------------------------------------------------------------------
def test_fx_cannot_trace_hf_bert_and_auto_falls_back_to_export(bert, bert_export):
    with pytest.raises(
        CaptureError, match=r"submodule 'embeddings'.*leaf_modules=\['embeddings'\]"
    ):
        capture(bert, _tokens(3), capture="fx")
    assert bert_export.kind == "export"
    paths = {i.module_path for i in bert_export.nodes.values()}
    assert {"encoder.layer.0.query", "embeddings.word_embeddings", "pooler.1"} <= paths
    linear = [i for i in bert_export.nodes.values() if i.target == "aten.linear.default"]
    assert len(linear) == 14 and all(i.flops > 0 for i in linear)
    with pytest.raises(ConfigError, match="capture must be one of"):
        capture(bert, _tokens(3), capture="dynamo")


def test_exported_graph_on_the_device_equals_pytorch_at_any_batch(bert):
    with taoism.shield(bert, _tokens(3), {"_default": "GPU"}, device="cpu") as sm:
        assert sm.plan.totals()["enclave_nodes"] == 0
        for batch in (1, 3, 5):  # exported with a dynamic batch dimension
            ids, mask = _tokens(batch)
            assert_same(sm(ids, mask), _not_constant(bert(ids, mask)))


def test_windowed_attention_needs_export_and_runs_on_the_device():
    torch.manual_seed(2)
    model = SwinStyle().eval()
    x = torch.randn(2, 3, 28, 28)  # 7x7 tokens, windows of 3: padded (data-dependent branch)
    with pytest.raises(CaptureError, match="torch.fx could not trace submodule 'blocks.0.attn'"):
        capture(model, x, capture="fx")
    cg = capture(model, x)
    assert cg.kind == "export"
    targets = {i.target for i in cg.nodes.values()}
    assert {"aten.roll.default", "aten.einsum.default", "aten.pad.default"} <= targets
    with taoism.shield(model, x, device="cpu") as sm:
        for batch in (1, 4):
            xb = torch.randn(batch, 3, 28, 28)
            assert_same(sm(xb), _not_constant(model(xb)))


def test_layernorm_subclass_is_traced_through_and_runs_in_the_enclave():
    torch.manual_seed(3)
    model = MobileStyle().eval()
    with torch.no_grad():
        model.features[0][1].weight.uniform_(0.5, 1.5)
        model.features[0][1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 8, 8)
    cg = capture(model, x, capture="fx")
    inside = [i for i in cg.nodes.values() if i.module_path == "features.0.1"]
    assert cg.kind == "fx" and {i.target for i in inside} >= {
        "permute",
        "torch.nn.functional.layer_norm",
    }
    with taoism.shield(
        model,
        x,
        {"features.0.1": "ENCLAVE", "type:ReLU6": "ENCLAVE", nn.GELU: "ENCLAVE"},
        device="cpu",
    ) as sm:
        placed = {l.info.name for l in sm.plan.layers if l.placement is ENCLAVE}
        relu6 = {i.name for i in cg.nodes.values() if i.module_type == "ReLU6"}
        assert relu6 <= placed and "features_1_1" in placed  # the GELU
        assert_same(sm(x), _not_constant(model(x)))


# --- placement by module type ------------------------------------------------------------------
def _placed(cg, spec) -> dict[str, EnclaveMode]:
    return {l.info.name: l.placement for l in build_plan(cg, PlacementRules.from_spec(spec)).layers}


def test_placement_by_type_and_its_precedence():
    model = MobileStyle().eval()
    cg = capture(model, torch.randn(2, 3, 8, 8), capture="fx")
    by_type = {i.name: i.module_type for i in cg.nodes.values()}
    acts = {n for n, t in by_type.items() if t in ("ReLU", "ReLU6", "GELU")}
    # "type:" matches the class or a base class, by short or dotted name; class keys match too.
    for spec in (
        {"type:ReLU": "ENCLAVE", "type:ReLU6": "ENCLAVE", "type:GELU": "ENCLAVE"},
        {
            nn.ReLU: "ENCLAVE",
            nn.ReLU6: "ENCLAVE",
            "type:torch.nn.modules.activation.GELU": "ENCLAVE",
        },
    ):
        got = _placed(cg, spec)
        assert {n for n, m in got.items() if m is ENCLAVE} == acts
    # Node name > module path > type (innermost module) > regex > default.
    got = _placed(
        cg,
        {
            "features.1": "GPU",
            "type:ReLU6": "ENCLAVE",
            "features_2_0_2": "GPU",
            "re:.*conv.*|features_2.*": "ENCLAVE",
            "_default": "GPU",
        },
    )
    assert got["features_1_0_0_2"] is GPU  # module path beats type
    assert got["features_2_0_2"] is GPU  # node name beats type
    assert got["features_2_0_0"] is ENCLAVE  # regex applies where no name or type matched
    assert got["classifier_1"] is GPU
    assert (
        _placed(cg, {"type:Sequential": "ENCLAVE"})["features_2_0_1"] is ENCLAVE
    )  # containers too
    assert (
        PlacementRules.from_spec({nn.GELU: "GPU"}).to_json()[
            "type:torch.nn.modules.activation.GELU"
        ]
        == "GPU"
    )
    with pytest.raises(PlacementError, match=r"'type:Conv3d' matches no module.*ReLU6"):
        _placed(cg, {"type:Conv3d": "ENCLAVE"})
    with pytest.raises(ConfigError, match="names no class"):
        PlacementRules.from_spec({"type: ": "ENCLAVE"})


def test_placement_by_type_on_an_exported_graph(bert_export):
    got = _placed(bert_export, {"type:GELU": "GPU", "type:HFLayer": "AUTO", "_default": "GPU"})
    assert set(got.values()) == {GPU}
    gelu = [i.name for i in bert_export.nodes.values() if i.target == "aten.gelu.default"]
    assert len(gelu) == 2 and all(bert_export.nodes[g].module_path.endswith(".act") for g in gelu)


# --- ATen ops in the enclave: on its whitelist now (tests/test_anymodule_enclave.py runs them) ---
def test_aten_ops_on_the_whitelist_are_planned_into_the_enclave(bert, bert_export):
    plan = build_plan(bert_export, PlacementRules.from_spec({"type:GELU": "ENCLAVE"}))
    gelu = [l for l in plan.layers if l.info.target == "aten.gelu.default"]
    assert len(gelu) == 2 and all(l.placement is ENCLAVE for l in gelu)


# --- shape values used on both sides -----------------------------------------------------------
def test_shape_value_with_users_on_both_sides_is_computed_on_each_side(tmp_path):
    torch.manual_seed(4)
    model = ShapeBothSides().eval()
    x = torch.randn(3, 3, 6, 6)
    spec = {"conv": "ENCLAVE", "reshape": "ENCLAVE", "_default": "GPU"}
    with taoism.shield(model, x, spec, device="cpu") as sm:
        plan = sm.plan
        assert_same(sm(x), _not_constant(model(x)))
        assert_same(sm(x[:1]), model(x[:1]))
    crossing = {v for s in plan.enclave_segments for v in s.send_in + s.returns}
    assert crossing == {"x", "reshape"}  # only tensors cross: the size is computed on each side
    twins = [l.info.name for l in plan.layers if l.info.name.endswith("_enclave")]
    assert twins and all(
        plan.layers[[l.info.name for l in plan.layers].index(t)].placement is ENCLAVE for t in twins
    )
    plan.save(tmp_path / "plan.json")  # a saved plan names no duplicate and reloads the same
    again = build_plan(
        capture(model, x, capture="fx"), PlacementRules.from_file(tmp_path / "plan.json")
    )
    assert [(l.info.name, l.placement) for l in again.layers] == [
        (l.info.name, l.placement) for l in plan.layers
    ]


class ShapeOfSecret(ShapeBothSides):
    """The device reshapes by the batch size read from an enclave activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n = y.shape[0]
        return self.fc(y.flatten(1)).reshape(n, 2, 3)


def test_device_reading_only_the_shape_of_an_enclave_tensor_is_refused():
    cg = capture(ShapeOfSecret().eval(), torch.randn(2, 3, 6, 6), capture="fx")
    rules = PlacementRules.from_spec({"conv": "ENCLAVE", "fc": "ENCLAVE", "flatten": "ENCLAVE"})
    with pytest.raises(
        PlacementError,
        match="reads only the shape of enclave tensor 'conv'.*would send 'conv' to the host",
    ):
        build_plan(cg, rules)


# --- strategies on any captured model ----------------------------------------------------------
def test_strategies_honour_leaf_modules(bert):
    ids, mask = _tokens(3)
    with pytest.raises(
        CaptureError, match=r"strategy 'magnitude:0.01'.*submodule 'embeddings'.*leaf_modules"
    ):
        apply_strategy(bert, "magnitude:0.01")
    ref = _not_constant(bert(ids, mask))
    for s in ("magnitude:0.01", "intermediate:0.8", "nonlinear", "deep:1", "shallow:1"):
        m2, _ = apply_strategy(bert, s, leaf_modules=["embeddings"])
        assert_same(m2(ids, mask), ref)
    with taoism.shield(
        bert, (ids, mask), strategy="deep:1", leaf_modules=["embeddings"], device="cpu"
    ) as sm:
        assert_same(sm(ids, mask), ref)
        enclave = {l.info.module_path for l in sm.plan.layers if l.placement is ENCLAVE}
        assert enclave == {"classifier"}


def test_transformer_units_are_embedding_each_layer_and_head(bert):
    from taoism.strategies.layerwise import model_units

    assert model_units(bert, None, opts=_opts(leaf_modules=("embeddings",))) == [
        ("embeddings",),
        ("encoder.layer.0",),
        ("encoder.layer.1",),
        ("pooler",),
        ("classifier",),
    ]
    # Layer-wise strategies also work through torch.export (no leaf_modules needed).
    m2, placement = apply_strategy(bert, "shallow:1", example_inputs=_tokens(3))
    assert placement["embeddings"] == "ENCLAVE" and placement["encoder.layer.0"] == "GPU"
    with pytest.raises(CaptureError, match="needs a torch.fx graph"):
        apply_strategy(bert, "nonlinear", capture="export", example_inputs=_tokens(3))


def _opts(**kw):
    from taoism.strategies._graph import CaptureOptions

    return CaptureOptions.of(**kw)


# --- zoo transformers --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_tiny", "bert_tiny"])
def test_zoo_transformers_both_capture_paths_and_all_strategy_rewrites(name):
    model = get_model(name)
    xs = example_inputs(name, batch=3)
    ref = _not_constant(model(*xs))
    assert units(model)[0] in (("patch_embed",), ("embeddings",))
    for kind in ("fx", "export"):
        with taoism.shield(model, xs, capture=kind, device="cpu") as sm:
            assert_same(sm(*xs), ref)
    for s in ("deep:1", "shallow:1", "magnitude:0.01", "intermediate:0.8", "nonlinear"):
        m2, _ = apply_strategy(model, s)
        assert_same(m2(*xs), ref)


def test_zoo_vit_in_the_enclave_whole_and_under_a_strategy():
    model = get_model("vit_tiny")
    xs = example_inputs("vit_tiny", batch=2)
    ref = _not_constant(model(*xs))
    with taoism.shield(model, xs, {"_default": "ENCLAVE"}, device="cpu") as sm:
        assert_same(sm(*xs), ref)
    with taoism.shield(model, xs, strategy="nonlinear", device="cpu") as sm:
        assert_same(sm(*xs), ref)
