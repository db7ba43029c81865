"""Small transformers defined in the package: a ViT and a BERT-style encoder (random weights).

Both are written with plain ``torch.nn`` layers and tensor ops (no fused attention), so torch.fx
traces them and ``torch.export`` exports them. Partition units are the blocks of a transformer:
the embedding, each encoder layer, then the head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from taoism.errors import ConfigError

__all__ = ["Attention", "EncoderLayer", "TinyBERT", "TinyViT", "bert_tiny", "vit_tiny"]


class Attention(nn.Module):
    """Multi-head self-attention: one ``qkv`` Linear, scaled dot products, softmax, ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention dim {dim} is not divisible by heads={heads}")
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """A transformer encoder layer; ``pre_norm`` (ViT) or post-norm (BERT)."""

    def __init__(self, dim: int, heads: int, mlp: int, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), bias)
            return x + self._mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self._mlp(x))


class TinyViT(nn.Module):
    """A small Vision Transformer: patch embedding, class token, pre-norm encoder, linear head.

    Module names: ``patch_embed`` (``proj`` conv, ``cls_token``, ``pos_embed``), ``blocks.0..``,
    ``norm``, ``head``. Units: ``patch_embed``, each of ``blocks.i``, then (``norm``, ``head``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        in_channels: int = 3,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp: int = 128,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch_embed = _PatchEmbed(in_channels, dim, patch, (image_size // patch) ** 2 + 1)
        self.blocks = nn.Sequential(
            *(EncoderLayer(dim, heads, mlp, pre_norm=True) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x))
        return self.head(self.norm(x)[:, 0])

    def taoism_units(self) -> list[tuple[str, ...]]:
        """The embedding, each encoder layer, then the head."""
        return [
            ("patch_embed",),
            *((f"blocks.{i}",) for i in range(len(self.blocks))),
            ("norm", "head"),
        ]


class _PatchEmbed(nn.Module):
    """Patches by a strided conv (``proj``), a class token in front, learned positions added."""

    def __init__(self, in_channels: int, dim: int, patch: int, tokens: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed


class TinyBERT(nn.Module):
    """A small BERT-style encoder: token + position embeddings, post-norm layers, pooled head.

    ``forward(input_ids, attention_mask=None)``: ids ``(batch, seq)`` int64, mask ``(batch,
    seq)`` with 1 for real tokens and 0 for padding (masked keys get a large negative score).
    Units: ``embeddings`` (word, position, LayerNorm), each of ``layers.i``, then (``pooler``,
    ``classifier``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        vocab: int = 1000,
        max_len: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp: int = 128,
    ) -> None:
        super().__init__()
        self.embeddings = _Embeddings(vocab, max_len, dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, mlp, pre_norm=False) for _ in range(depth)
        )
        self.pooler = nn.Linear(dim, dim)
        self.pool_act = nn.Tanh()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embeddings(input_ids)
        bias = None
        if attention_mask is not None:
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        return self.classifier(self.pool_act(self.pooler(x[:, 0])))

    def taoism_units(self) -> list[tuple[str, ...]]:
        """The embedding, each encoder layer, then the head."""
        return [
            ("embeddings",),
            *((f"layers.{i}",) for i in range(len(self.layers))),
            ("pooler", "pool_act", "classifier"),
        ]


class _Embeddings(nn.Module):
    """Word plus learned position embeddings, then LayerNorm (as in BERT)."""

    def __init__(self, vocab: int, max_len: int, dim: int) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.norm(self.word(input_ids) + self.position(pos))


def vit_tiny(num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> TinyViT:
    """TinyViT with patch 4 (32x32: 64 patches; 224x224: patch 16, 196 patches)."""
    patch = 4 if image_size <= 64 else 16
    return TinyViT(num_classes, image_size, patch, in_channels)


def bert_tiny(num_classes: int = 2) -> TinyBERT:
    """TinyBERT: vocabulary 1000, up to 64 tokens, 2 layers of width 64."""
    return TinyBERT(num_classes)
