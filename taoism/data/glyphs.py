"""``glyphs``: a synthetic, offline character-recognition data set rendered from system fonts.

**What it is.** Grayscale 28x28 images of single characters (Latin upper and lower case, digits,
Greek and Cyrillic letters), rendered with Pillow from the TrueType/OpenType fonts the setup
installs from Debian (:data:`FONT_PACKAGES`; about 100 fonts in about 25 families), each with a
small random affine distortion (rotation, shear, scale, shift). Nothing is downloaded.

**Why it exists.** The security evaluation needs a many-class task that is hard enough that a
handful of labelled queries does not already give most of the victim's accuracy, and a public
model from a *different distribution*, as ImageNet is for CIFAR-10. CIFAR is not available
offline (no Debian package ships it), Fashion-MNIST is a 10-class task that 5 labels per class
nearly solve, so this set stands in for CIFAR. It is synthetic: accuracy figures on it are not
comparable with CIFAR figures, only the relations between strategies are.

**How it is split.** Only characters that *every* chosen font renders are classes; characters
that look the same as an earlier class in most fonts (Latin ``A`` / Greek ``Α`` / Cyrillic ``А``,
``o`` / ``ο`` / ``о``, ...) are dropped. Font *families* are split disjointly (seeded) into four
groups: ``public`` (only the public model's data), ``private`` (the victim's members and
non-members), ``attacker`` (the attacker's queries and shadow data) and ``test`` (held-out
fonts for accuracy). The victim's task is the ``private_scripts`` classes (default Latin + digits);
the public data set is the ``public_scripts`` classes (default Greek + Cyrillic) in the public
fonts: another script, other classes and other fonts than the victim's.

Renderings are cached on disk, content-addressed by the configuration and the font files' bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taoism.errors import ConfigError

__all__ = [
    "FONT_PACKAGES",
    "GLYPH_SCRIPTS",
    "FontNotFoundError",
    "GlyphConfig",
    "discover_fonts",
    "glyphs",
]

#: The Debian packages the setup installs for this data set (scripts/system-data.sh, `make data`).
FONT_PACKAGES = (
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
    "fonts-liberation",
    "fonts-liberation2",
    "fonts-urw-base35",
    "fonts-freefont-ttf",
    "fonts-noto-core",
    "fonts-noto-mono",
    "fonts-crosextra-carlito",
)
DEFAULT_FONT_DIRS = ("/usr/share/fonts",)

GLYPH_SCRIPTS: dict[str, str] = {
    "digits": "0123456789",
    "latin_upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "latin_lower": "abcdefghijklmnopqrstuvwxyz",
    "greek_upper": "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ",
    "greek_lower": "αβγδεζηθικλμνξοπρστυφχψω",
    "cyrillic_upper": "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ",
    "cyrillic_lower": "абвгдежзийклмнопрстуфхцчшщъыьэюя",
}
_GROUPS = ("public", "private", "attacker", "test")


class FontNotFoundError(ConfigError, FileNotFoundError):
    """Too few fonts that cover the requested characters were found."""


@dataclass(frozen=True)
class GlyphConfig:
    """Every knob of the glyph set (all but ``cache_dir`` are part of the cache key).

    ``font_dirs``: directories searched recursively for ``.ttf`` / ``.otf`` files.
    ``renders``: distorted renderings per (font, class). ``fractions``: share of font families
    in the public / private / attacker / test groups. ``max_fonts_per_family`` caps how many
    styles of one family are used (None: all); ``max_classes`` keeps the first N victim classes
    (tiny test sets). Distortion: ``rotate`` degrees, ``shear``, ``scale`` (+-), ``shift``
    (fraction of the side).
    """

    size: int = 28
    font_dirs: tuple[str, ...] = DEFAULT_FONT_DIRS
    private_scripts: tuple[str, ...] = ("digits", "latin_upper", "latin_lower")
    public_scripts: tuple[str, ...] = (
        "greek_upper",
        "greek_lower",
        "cyrillic_upper",
        "cyrillic_lower",
    )
    renders: int = 20
    fractions: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)
    max_fonts_per_family: int | None = None
    max_classes: int | None = None
    min_fonts: int = 8
    rotate: float = 8.0
    shear: float = 0.15
    scale: float = 0.1
    shift: float = 0.06
    seed: int = 0
    cache_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for s in (*self.private_scripts, *self.public_scripts):
            if s not in GLYPH_SCRIPTS:
                raise ConfigError(
                    f"GlyphConfig: unknown script {s!r}; one of {', '.join(GLYPH_SCRIPTS)}"
                )
        if set(self.private_scripts) & set(self.public_scripts):
            raise ConfigError("GlyphConfig: private_scripts and public_scripts must be disjoint")
        if len(self.fractions) != 4 or any(f <= 0 for f in self.fractions):
            raise ConfigError(
                f"GlyphConfig.fractions must be 4 positive shares, got {self.fractions!r}"
            )
        if self.size < 8 or self.renders < 1 or self.min_fonts < 4:
            raise ConfigError("GlyphConfig: need size >= 8, renders >= 1 and min_fonts >= 4")

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cache_dir")
        d.pop("font_dirs")  # the fonts themselves (their bytes) enter the key instead
        return d


@dataclass(frozen=True)
class _Font:
    path: str
    family: str
    chars: frozenset[str]


def _family(tt: Any, path: Path) -> str:
    names = tt["name"]
    for nid in (16, 1):
        rec = names.getName(nid, 3, 1) or names.getName(nid, 1, 0)
        if rec is not None:
            return str(rec.toUnicode()).strip()
    return path.stem.split("-")[0]


def discover_fonts(font_dirs: Sequence[str | os.PathLike], needed: str) -> list[_Font]:
    """Fonts under ``font_dirs`` whose character map covers every character of ``needed``."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError as exc:
        raise ConfigError(
            "the glyphs data set needs fontTools and Pillow: pip install 'taoism[data]'"
        ) from exc
    found = []
    for d in font_dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            continue
        for path in sorted(
            p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file()
        ):
            try:
                with TTFont(path, lazy=True, fontNumber=0) as tt:
                    cmap = tt.getBestCmap() or {}
                    fam = _family(tt, path)
            except Exception:  # an unreadable font file is skipped, never fatal
                continue
            chars = frozenset(chr(c) for c in cmap)
            if set(needed) <= chars:
                found.append(_Font(str(path), fam, chars))
    return found


def _render(
    font: Any, ch: str, size: int, rng: np.random.Generator | None, cfg: GlyphConfig
) -> np.ndarray:
    """One character, white on black, baseline-anchored (case and descenders keep their place)."""
    from PIL import Image, ImageDraw

    big = 2 * size
    img = Image.new("L", (big, big), 0)
    ImageDraw.Draw(img).text((big / 2, 0.74 * big), ch, fill=255, font=font, anchor="ms")
    if rng is not None:
        a = math.radians(rng.uniform(-cfg.rotate, cfg.rotate))
        sh = rng.uniform(-cfg.shear, cfg.shear)
        sc = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
        tx, ty = rng.uniform(-cfg.shift, cfg.shift, size=2) * big
        # inverse map (output -> input) about the centre: Pillow's AFFINE takes it directly
        m = np.array([[math.cos(a), -math.sin(a) + sh], [math.sin(a), math.cos(a)]]) / sc
        c = big / 2
        off = np.array([c, c]) - m @ np.array([c + tx, c + ty])
        img = img.transform(
            (big, big),
            Image.Transform.AFFINE,
            (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1]),
            resample=Image.Resampling.BILINEAR,
        )
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _load_font(path: str, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, size=int(round(1.15 * size)))


def _distinct_classes(chars: str, fonts: list[_Font], size: int) -> str:
    """Drop characters that render like an earlier kept one in at least half of the fonts.

    "Like": the pixel difference is under 15% of the two glyphs' ink (identical glyphs give 0).
    """
    imgs = (
        np.stack(
            [
                np.stack(
                    [
                        _render(_load_font(f.path, size), ch, size, None, GlyphConfig())
                        for ch in chars
                    ]
                )
                for f in fonts
            ]
        ).astype(np.float32)
        / 255.0
    )  # (fonts, chars, H, W)
    kept: list[int] = []
    for i in range(len(chars)):
        if imgs[:, i].max() == 0:
            continue
        same = [
            np.mean(
                np.abs(imgs[:, i] - imgs[:, j]).sum(axis=(1, 2))
                < 0.15 * (imgs[:, i] + imgs[:, j]).sum(axis=(1, 2)) / 2
            )
            >= 0.5
            for j in kept
        ]
        if not any(same):
            kept.append(i)
    return "".join(chars[i] for i in kept)


def _split_families(fonts: list[_Font], cfg: GlyphConfig) -> dict[str, list[_Font]]:
    fams: dict[str, list[_Font]] = {}
    for f in fonts:
        fams.setdefault(f.family, []).append(f)
    if cfg.max_fonts_per_family is not None:
        fams = {k: v[: cfg.max_fonts_per_family] for k, v in fams.items()}
    names = sorted(fams)
    order = np.random.default_rng(cfg.seed).permutation(len(names))
    total = sum(len(v) for v in fams.values())
    target = [f * total / sum(cfg.fractions) for f in cfg.fractions]
    groups: dict[str, list[_Font]] = {g: [] for g in _GROUPS}
    # each family (largest first, ties by the seeded order) goes to the group furthest below target
    for i in sorted(range(len(names)), key=lambda i: (-len(fams[names[order[i]]]), i)):
        fam = fams[names[order[i]]]
        g = min(range(4), key=lambda k: (len(groups[_GROUPS[k]]) - target[k]) / target[k])
        groups[_GROUPS[g]].extend(fam)
    return groups


def _fonts_sha(fonts: list[_Font]) -> str:
    h = hashlib.sha256()
    for f in sorted(fonts, key=lambda f: f.path):
        h.update(f.path.encode())
        h.update(hashlib.sha256(Path(f.path).read_bytes()).digest())
    return h.hexdigest()


def _render_group(
    fonts: list[_Font], chars: str, cfg: GlyphConfig, tag: str
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in sorted(fonts, key=lambda f: f.path):
        font = _load_font(f.path, cfg.size)
        seed = int(
            hashlib.sha256(f"{cfg.seed}:{tag}:{Path(f.path).name}".encode()).hexdigest()[:12], 16
        )
        rng = np.random.default_rng(seed)
        for c, ch in enumerate(chars):
            for _ in range(cfg.renders):
                xs.append(_render(font, ch, cfg.size, rng, cfg))
                ys.append(c)
    if not xs:
        return np.zeros((0, 1, cfg.size, cfg.size), np.uint8), np.zeros(0, np.int64)
    return np.stack(xs)[:, None], np.asarray(ys, np.int64)


def _build_arrays(
    cfg: GlyphConfig, fonts: list[_Font]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    priv = "".join(GLYPH_SCRIPTS[s] for s in cfg.private_scripts)
    pub = "".join(GLYPH_SCRIPTS[s] for s in cfg.public_scripts)
    if len({f.family for f in fonts}) < 4 or len(fonts) < cfg.min_fonts:
        raise FontNotFoundError(
            f"glyphs: found {len(fonts)} font(s) in {len({f.family for f in fonts})} families covering every "
            f"character of {', '.join(cfg.private_scripts + cfg.public_scripts)} under "
            f"{', '.join(map(str, cfg.font_dirs))}; need >= {cfg.min_fonts} fonts in >= 4 families. Install "
            f"`apt-get install {' '.join(FONT_PACKAGES)}` (the Makefile does), or pass font_dirs="
        )
    groups = _split_families(fonts, cfg)
    used = [f for g in _GROUPS for f in groups[g]]
    classes = _distinct_classes(priv + pub, used, cfg.size)
    priv_c = "".join(c for c in classes if c in priv)[: cfg.max_classes or None]
    pub_c = "".join(c for c in classes if c in pub)
    arrays: dict[str, np.ndarray] = {}
    for g in _GROUPS:
        x, y = _render_group(groups[g], pub_c if g == "public" else priv_c, cfg, g)
        arrays[f"x_{g}"], arrays[f"y_{g}"] = x, y
    meta = {
        "classes": priv_c,
        "public_classes": pub_c,
        "distinct_classes": classes,
        "fonts": {g: sorted(Path(f.path).name for f in groups[g]) for g in _GROUPS},
        "families": {g: sorted({f.family for f in groups[g]}) for g in _GROUPS},
        "fonts_found": len(fonts),
        "families_found": len({f.family for f in fonts}),
    }
    return arrays, meta


def _cached_arrays(cfg: GlyphConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    fonts = discover_fonts(
        cfg.font_dirs, "".join(GLYPH_SCRIPTS[s] for s in cfg.private_scripts + cfg.public_scripts)
    )
    if cfg.cache_dir is None:
        return _build_arrays(cfg, fonts)
    blob = json.dumps({"config": cfg.key(), "fonts": _fonts_sha(fonts), "v": 1}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    path = Path(cfg.cache_dir).expanduser() / "glyphs" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k != "meta"}
                meta = json.loads(str(z["meta"]))
            return arrays, meta
        except (OSError, ValueError, KeyError):
            pass  # a corrupt entry is rebuilt
    arrays, meta = _build_arrays(cfg, fonts)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, meta=np.asarray(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays, meta


def glyphs(config: GlyphConfig | None = None) -> Any:
    """The glyph set (see the module docstring) as an :class:`~taoism.data.ImageDataset`.

    Train = the private and attacker fonts' renderings (``meta["groups"]`` holds their index
    tensors), test = the held-out test fonts; ``meta["public"]`` holds the public data set
    (``x``, ``y``, ``num_classes``), normalised with the same statistics.
    """
    from taoism.data.datasets import ImageDataset, _fingerprint, _labels, _normalise

    cfg = config or GlyphConfig()
    arr, meta = _cached_arrays(cfg)
    n_priv = len(arr["y_private"])
    x_tr_u8 = np.concatenate([arr["x_private"], arr["x_attacker"]])
    y_tr = np.concatenate([arr["y_private"], arr["y_attacker"]])
    # the test fonts in a fixed random order, so that a prefix (``eval_samples``) spans every font
    order = np.random.default_rng(cfg.seed).permutation(len(arr["y_test"]))
    arr = {**arr, "x_test": arr["x_test"][order], "y_test": arr["y_test"][order]}
    xtr, xte, mean, std = _normalise(x_tr_u8, arr["x_test"], 255.0)
    m, s = (
        torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
    )
    xpub = torch.from_numpy(arr["x_public"]).to(torch.float32).div_(255.0).sub_(m).div_(s)
    k = len(meta["classes"])
    meta = {
        **meta,
        "groups": {"private": torch.arange(n_priv), "attacker": torch.arange(n_priv, len(y_tr))},
        "public": {
            "x": xpub,
            "y": torch.from_numpy(arr["y_public"]),
            "num_classes": len(meta["public_classes"]),
        },
        "packages": list(FONT_PACKAGES),
        "config": cfg.key(),
    }
    return ImageDataset(
        "glyphs",
        "mnist" if cfg.size == 28 else f"glyphs{cfg.size}",
        k,
        xtr,
        _labels(y_tr, len(y_tr), k, "glyphs train"),
        xte,
        _labels(arr["y_test"], len(arr["y_test"]), k, "glyphs test"),
        mean,
        std,
        _fingerprint(*(arr[n] for n in sorted(arr))),
        source="fonts: " + ", ".join(cfg.font_dirs),
        meta=meta,
    )
