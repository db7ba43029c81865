"""The TEESlice student: a frozen public backbone, gated proxy slices and a private head.

Block ``i`` (1-based) of the backbone computes ``b_i = block_i(h_{i-1})`` (public, frozen, on
the device) and the student's feature is::

    h_i = relu(g_0 * b_i + sum_j g_j * proxy_ij(h_{i-j})),   g = softmax(alphas_i)

with ``h_0`` the input and up to ``max_proxies`` proxies, each a 1x1 conv + BN fed by one of
the previous 1-3 features and brought to block ``i``'s output shape by a max pool (kernel
stride + 1, as the artifact's proxies; ``proxy_pool="stride"``: a strided 1x1 conv) or, when
the sizes do not divide, an adaptive average pool. As in the artifact the merge ends in a ReLU
(``merge_relu``), so the next frozen block sees non-negative features like the ones it was
trained on, and the gate logits start at ``alpha_init`` = (2, -2): the backbone block's own
output first carries ~90% of the weight and the student starts close to the backbone. The
private head (pooling, flatten, FC layers) reads ``h_n``.
Pruning removes proxies (their modules and gate logits); a block without proxies is the plain
backbone block. Module names: ``backbone.*`` public; ``slices.block<k>.*`` and ``head.*``
private, so ``strategy="teeslice"`` deploys the backbone on the device, the rest in the enclave.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from taoism.errors import ConfigError, UnsupportedBackbone
from taoism.teeslice.layout import backbone_layout
from taoism.zoo.teeslice import _SlicedModel

__all__ = ["GatedSlice", "Proxy", "SlicedNet"]


PROXY_POOLS = ("max", "stride")


class Proxy(nn.Module):
    """1x1 conv + BN mapping a ``(cin, *src_hw)`` feature to ``(cout, *dst_hw)``.

    Downsampling by an integer stride ``s``: ``pool="max"`` (the artifact's) max-pools with
    kernel ``s + 1``, padding ``s // 2``; ``pool="stride"`` strides the 1x1 conv. Other size
    ratios use an adaptive average pool.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        src_hw: tuple[int, int],
        dst_hw: tuple[int, int],
        pool: str = "max",
    ) -> None:
        super().__init__()
        if pool not in PROXY_POOLS:
            raise UnsupportedBackbone(f"Proxy pool must be one of {PROXY_POOLS}, got {pool!r}")
        (sh, sw), (dh, dw) = src_hw, dst_hw
        stride = sh // dh if sh % dh == 0 and sw % dw == 0 and sh // dh == sw // dw else 0
        self.pool: nn.Module | None = None
        if not stride:
            self.pool = nn.AdaptiveAvgPool2d((dh, dw))
        elif stride > 1 and pool == "max":
            self.pool = nn.MaxPool2d(stride + 1, stride=stride, padding=stride // 2)
            if _pooled(sh, stride) != dh or _pooled(sw, stride) != dw:
                self.pool = nn.AdaptiveAvgPool2d((dh, dw))
            stride = 1
        self.conv = nn.Conv2d(cin, cout, kernel_size=1, stride=max(stride, 1), bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        #: FLOPs per sample (multiply-add = 2), for the expected-FLOPs term
        self.flops = 2 * cin * cout * dh * dw + 2 * cout * dh * dw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return self.bn(self.conv(x))


def _pooled(size: int, stride: int) -> int:
    """Output size of ``MaxPool2d(stride + 1, stride, padding=stride // 2)``."""
    return (size + 2 * (stride // 2) - (stride + 1)) // stride + 1


class GatedSlice(nn.Module):
    """One block's private slice: proxies fed by features ``offsets`` back, softmax-gated
    together with the backbone block's own output (``alphas[0]``), then a ReLU (``relu``).

    ``alphas`` (the gate logits) default to ``alpha_init[0]`` for the block, ``alpha_init[1]``
    for each proxy."""

    def __init__(
        self,
        offsets: Iterable[int],
        proxies: Iterable[Proxy],
        alphas: torch.Tensor | None = None,
        *,
        relu: bool = True,
        alpha_init: tuple[float, float] = (2.0, -2.0),
    ) -> None:
        super().__init__()
        self.offsets = tuple(offsets)
        self.proxies = nn.ModuleList(proxies)
        self.relu = bool(relu)
        if len(self.proxies) != len(self.offsets) or not self.offsets:
            raise UnsupportedBackbone("a GatedSlice needs one offset per proxy, at least one")
        if alphas is None:
            init = torch.full((len(self.offsets) + 1,), float(alpha_init[1]))
            init[0] = float(alpha_init[0])
        else:
            init = alphas.detach().clone()
        self.alphas = nn.Parameter(init)

    def gates(self) -> torch.Tensor:
        """``softmax(alphas)``: [backbone block, proxy 0, proxy 1, ...]."""
        return torch.softmax(self.alphas, dim=0)

    def forward(self, block_out: torch.Tensor, *feats: torch.Tensor) -> torch.Tensor:
        g = self.gates()
        out = g[0] * block_out
        for j, proxy in enumerate(self.proxies):
            out = out + g[j + 1] * proxy(feats[j])
        return torch.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}, relu={self.relu}"


def _with_classes(classifier: nn.Module, num_classes: int | None) -> nn.Module:
    """``classifier`` with its last Linear replaced by a fresh one if its width differs."""
    if num_classes is None:
        return classifier
    if isinstance(classifier, nn.Linear):
        return (
            classifier
            if classifier.out_features == num_classes
            else nn.Linear(classifier.in_features, num_classes)
        )
    last = [n for n, m in classifier.named_children() if isinstance(m, nn.Linear)]
    if last and classifier.get_submodule(last[-1]).out_features != num_classes:
        setattr(
            classifier,
            last[-1],
            nn.Linear(classifier.get_submodule(last[-1]).in_features, num_classes),
        )
    return classifier


class SlicedNet(_SlicedModel):
    """A TEESlice student over ``backbone`` (taken over, frozen; pass a copy).

    ``input_shape`` is the CHW input, used once to measure every block's output shape.
    The backbone's pooling and classifier move into the private ``head``. ``merge_relu``,
    ``alpha_init`` and ``proxy_pool`` are the architecture options of the module docstring
    (defaults: the artifact's); :meth:`options` returns them, to build a model of the same
    architecture.
    """

    def __init__(
        self,
        backbone: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        max_proxies: int = 3,
        *,
        merge_relu: bool = True,
        alpha_init: tuple[float, float] = (2.0, -2.0),
        proxy_pool: str = "max",
    ) -> None:
        super().__init__()
        layout = backbone_layout(backbone)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.max_proxies = int(max_proxies)
        self.merge_relu = bool(merge_relu)
        self.alpha_init = (float(alpha_init[0]), float(alpha_init[1]))
        self.proxy_pool = str(proxy_pool)
        pool = backbone.get_submodule(layout.pool) if layout.pool else nn.Identity()
        classifier = _with_classes(backbone.get_submodule(layout.classifier), num_classes)
        for name in filter(None, (layout.pool, layout.classifier)):
            delattr(backbone, name)
        self.backbone = backbone.requires_grad_(False).eval()
        #: whether ``train()`` also puts the backbone's batch norms in training mode
        self.backbone_bn_train = False
        self.head = nn.Sequential(
            OrderedDict(pool=pool, flatten=nn.Flatten(), classifier=classifier)
        )
        shapes = self._probe(layout.blocks)
        self.slices = nn.ModuleDict()
        plan = []
        for i, names in enumerate(layout.blocks, start=1):
            offsets = tuple(range(1, min(i, self.max_proxies) + 1))
            (cout, dh, dw) = shapes[i]
            proxies = [
                Proxy(shapes[i - o][0], cout, shapes[i - o][1:], (dh, dw), self.proxy_pool)
                for o in offsets
            ]
            key = f"block{i - 1}"
            self.slices[key] = GatedSlice(
                offsets, proxies, relu=self.merge_relu, alpha_init=self.alpha_init
            )
            plan.append((names, key))
        self._blocks: tuple[tuple[tuple[str, ...], str], ...] = tuple(plan)
        #: FLOPs per sample of every proxy before pruning
        self.flops_norm = float(sum(p.flops for _, _, p in self.proxy_list()))

    def _probe(self, blocks: tuple[tuple[str, ...], ...]) -> list[tuple[int, int, int]]:
        """Every block's output shape; also sets ``backbone_flops`` (conv FLOPs per sample)."""
        h = torch.zeros(2, *self.input_shape)
        shapes = [tuple(h.shape[1:])]
        flops = [0]

        def count(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
            assert isinstance(mod, nn.Conv2d)
            k = mod.weight[0].numel()  # cin / groups * kh * kw
            flops[0] += 2 * k * out[0].numel()

        hooks = [
            m.register_forward_hook(count)
            for m in self.backbone.modules()
            if isinstance(m, nn.Conv2d)
        ]
        try:
            with torch.no_grad():
                for names in blocks:
                    for name in names:
                        h = self.backbone.get_submodule(name)(h)
                    if h.dim() != 4:
                        raise UnsupportedBackbone(
                            f"TEESlice proxies are 1x1 convs, but backbone block {names} outputs "
                            f"a {h.dim()}-D tensor {tuple(h.shape)}; only conv blocks can carry "
                            "proxies"
                        )
                    shapes.append(tuple(h.shape[1:]))
        finally:
            for hook in hooks:
                hook.remove()
        #: conv FLOPs per sample of the backbone blocks (the artifact's FLOPs normaliser)
        self.backbone_flops = float(flops[0])
        return shapes  # type: ignore[return-value]

    def options(self) -> dict[str, object]:
        """The constructor's architecture options (``SlicedNet(b, shape, n, **m.options())``)."""
        return {
            "max_proxies": self.max_proxies,
            "merge_relu": self.merge_relu,
            "alpha_init": self.alpha_init,
            "proxy_pool": self.proxy_pool,
        }

    def private_modules(self) -> tuple[str, ...]:  # type: ignore[override]
        """Top-level modules that must stay in the enclave (``slices`` while any proxy is left)."""
        return ("slices", "head") if len(self.slices) else ("head",)

    def train(self, mode: bool = True) -> SlicedNet:
        super().train(mode)
        # The frozen backbone's batch norms keep the public statistics unless the trainer lets
        # them follow the private data (TeeSliceConfig.backbone_bn = "private").
        self.backbone.train(mode and self.backbone_bn_train)
        return self

    def features(
        self, x: torch.Tensor, local: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the merged feature ``h_i`` of every block.

        ``local=True`` returns each block's feature recomputed from *detached* inputs (as the
        artifact's feature loss does): a block's feature loss then trains only that block's
        slice. The frozen backbone block is not rerun (its output, detached, is the same value
        and has no trainable parameter behind it); only the slice is. The logits are those of
        the full graph either way, so one pass gives both terms of the student's loss.
        """
        window = [x]  # h_{i-max_proxies} .. h_{i-1}
        feats = []
        for names, key in self._blocks:
            out = window[-1]
            for name in names:
                out = self.backbone.get_submodule(name)(out)
            if key in self.slices:
                group = self.slices[key]
                merged = group(out, *[window[-o] for o in group.offsets])
                if local:
                    feats.append(group(out.detach(), *[window[-o].detach() for o in group.offsets]))
                out = merged
            elif local:
                feats.append(out.detach())
            if not local:
                feats.append(out)
            window = [*window, out][-self.max_proxies :]
        return self.head(window[-1]), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[0]

    def taoism_units(self) -> list[tuple[str, ...]]:
        """Each (backbone block, its slice if any), then the head."""
        units = [
            (*(f"backbone.{n}" for n in names), *((f"slices.{k}",) if k in self.slices else ()))
            for names, k in self._blocks
        ]
        return [*units, ("head",)]

    # proxies and pruning ------------------------------------------------------------------------
    def proxy_list(self) -> list[tuple[str, int, Proxy]]:
        """Every remaining proxy as ``(block key, offset, module)``."""
        return [
            (k, o, g.proxies[j]) for k, g in self.slices.items() for j, o in enumerate(g.offsets)
        ]

    def proxy_gates(self) -> dict[tuple[str, int], float]:
        """The gate of every remaining proxy."""
        out = {}
        for k, g in self.slices.items():
            gates = g.gates().detach()
            for j, o in enumerate(g.offsets):
                out[(k, o)] = float(gates[j + 1])
        return out

    def expected_flops(self, norm: str = "proxies") -> torch.Tensor:
        """Gate-weighted proxy FLOPs over the FLOPs of all proxies before pruning (in [0, 1];
        ``norm="backbone"``: over the backbone's FLOPs, as the artifact normalises)."""
        total = torch.zeros(())
        for g in self.slices.values():
            gates = g.gates()
            for j, p in enumerate(g.proxies):
                total = total + gates[j + 1] * p.flops
        if norm not in ("proxies", "backbone"):
            raise ConfigError(f"expected_flops: norm must be 'proxies' or 'backbone', got {norm!r}")
        scale = self.flops_norm if norm == "proxies" else self.backbone_flops
        return total / max(scale, 1.0)

    def structure(self) -> dict[str, list[int]]:
        """The remaining proxies' offsets per block (to rebuild a pruned model)."""
        return {k: list(g.offsets) for k, g in self.slices.items()}

    def remove_proxies(self, drop: Iterable[tuple[str, int]]) -> None:
        """Delete proxies (modules and gate logits); a block left without proxies loses its slice."""
        drop = set(drop)
        for k in list(self.slices):
            g = self.slices[k]
            keep = [j for j, o in enumerate(g.offsets) if (k, o) not in drop]
            if len(keep) == len(g.offsets):
                continue
            if not keep:
                del self.slices[k]
                continue
            alphas = g.alphas.detach()[[0, *(j + 1 for j in keep)]]
            self.slices[k] = GatedSlice(
                [g.offsets[j] for j in keep], [g.proxies[j] for j in keep], alphas, relu=g.relu
            )

    def restrict(self, structure: dict[str, list[int]]) -> None:
        """Prune down to ``structure`` (as :meth:`structure` returned it)."""
        self.remove_proxies(
            (k, o) for k, o, _ in self.proxy_list() if o not in structure.get(k, [])
        )
