"""The TSDP strategies as frozen dataclasses, and their string forms.

String forms (case-insensitive, surrounding spaces ignored):

    none                 white-box: everything on the device
    all                  black-box: everything in the enclave
    deep:K               the last K partition units in the enclave (DarkneTZ)
    shallow:K            the first K partition units in the enclave (Serdab)
    magnitude:R          the top-R fraction (0..1) of conv/BN/linear weights by |w| (Magnitude)
    intermediate:THETA   THETA (0..1) = fraction of conv/linear layers offloaded, morphed (SOTER)
    nonlinear[:RATIO]    conv/linear obfuscated on the device, the rest in the enclave (ShadowNet)
    teeslice             a TEESlice model: backbone on the device, slices + fc in the enclave
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from taoism.errors import ConfigError

VALID_FORMS = (
    "none",
    "all",
    "deep:K",
    "shallow:K",
    "magnitude:R",
    "intermediate:THETA",
    "nonlinear[:RATIO]",
    "teeslice",
)
_FORMS_HELP = (
    "valid strategies: 'none' (white-box), 'all' (black-box), 'deep:K' and "
    "'shallow:K' (K = number of units, an int >= 0), 'magnitude:R' (R = fraction in "
    "[0, 1], e.g. 'magnitude:0.01'), 'intermediate:THETA' (THETA = fraction of layers "
    "offloaded, in [0, 1], e.g. 'intermediate:0.8'), 'nonlinear' or 'nonlinear:RATIO' "
    "(RATIO >= 1, default 1.2), 'teeslice'; or one of the dataclasses in "
    "taoism.strategies (NoShield, BlackBox, Deep, Shallow, Magnitude, Intermediate, "
    "NonLinear, TEESlice)"
)


class Strategy:
    """Base of the strategy dataclasses; ``spec`` is the string form."""

    kind: ClassVar[str] = ""

    @property
    def spec(self) -> str:  # pragma: no cover - overridden
        return self.kind

    def __str__(self) -> str:
        return self.spec


def _check_fraction(name: str, v: float) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or not 0 <= v <= 1
    ):
        raise ConfigError(f"{name} must be a number in [0, 1], got {v!r}; {_FORMS_HELP}")
    return float(v)


def _check_seed(name: str, v: int | None, allow_none: bool) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an int{' or None' if allow_none else ''}, got {v!r}")


@dataclass(frozen=True)
class NoShield(Strategy):
    """White-box baseline: the whole model on the untrusted device."""

    kind: ClassVar[str] = "none"

    @property
    def spec(self) -> str:
        return "none"


@dataclass(frozen=True)
class BlackBox(Strategy):
    """Black-box baseline: the whole model in the enclave."""

    kind: ClassVar[str] = "all"

    @property
    def spec(self) -> str:
        return "all"


Units = tuple[tuple[str, ...], ...]


def _norm_units(units: Sequence[Sequence[str] | str] | None) -> Units | None:
    if units is None:
        return None
    out = []
    for u in units:
        names = (u,) if isinstance(u, str) else tuple(u)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(
                f"units must be a list of module names or of tuples of module names, "
                f"got the entry {u!r}"
            )
        out.append(names)
    return tuple(out)


@dataclass(frozen=True)
class _LayerWise(Strategy):
    k: int = 1
    units: Units | None = None  # None: taoism.zoo.units(model)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"{self.kind}: K must be an int >= 0, got {self.k!r}; {_FORMS_HELP}")
        object.__setattr__(self, "units", _norm_units(self.units))

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.k}"


@dataclass(frozen=True)
class Deep(_LayerWise):
    """Shield the last ``k`` partition units (DarkneTZ). ``units`` overrides the model's units."""

    kind: ClassVar[str] = "deep"


@dataclass(frozen=True)
class Shallow(_LayerWise):
    """Shield the first ``k`` partition units (Serdab). ``units`` overrides the model's units."""

    kind: ClassVar[str] = "shallow"


@dataclass(frozen=True)
class Magnitude(Strategy):
    """Shield the top-``r`` fraction of all conv/BN/linear parameters ranked by ``|w|``.

    Ranked jointly over every weight and bias of every Conv1d/2d, BatchNorm1d/2d and Linear
    module (buffers are not weights). Ties at the threshold are broken by a permutation drawn
    with ``seed``. The number shielded is ``round(r * N)``.
    """

    kind: ClassVar[str] = "magnitude"
    r: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", _check_fraction("magnitude: R", self.r))
        _check_seed("magnitude: seed", self.seed, allow_none=False)

    @property
    def spec(self) -> str:
        return f"magnitude:{self.r:g}"


@dataclass(frozen=True)
class Intermediate(Strategy):
    """SOTER: offload a ``theta`` fraction of the conv/linear layers, morphed by secret scalars.

    The layers offloaded are ``max(1, round(theta * n))`` of the ``n`` conv/linear layers: the
    last one always, the others drawn with ``seed``. Each carries its weight and bias multiplied
    by a secret ``s ~ U(low, high)`` (drawn with ``secret_seed``; None = fresh OS entropy); the
    enclave multiplies the layer's output by ``1/s``. Everything else runs in the enclave.
    """

    kind: ClassVar[str] = "intermediate"
    theta: float = 0.8
    seed: int = 0
    secret_seed: int | None = None
    low: float = 1.0
    high: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta", _check_fraction("intermediate: THETA", self.theta))
        _check_seed("intermediate: seed", self.seed, allow_none=False)
        _check_seed("intermediate: secret_seed", self.secret_seed, allow_none=True)
        if not (0 < self.low <= self.high):
            raise ConfigError(
                f"intermediate: the scalar range must satisfy 0 < low <= high, got "
                f"[{self.low}, {self.high}]"
            )

    @property
    def spec(self) -> str:
        return f"intermediate:{self.theta:g}"


@dataclass(frozen=True)
class NonLinear(Strategy):
    """ShadowNet: every conv/linear on the device with obfuscated weights.

    Output channels grow to ``max(int(ratio * C), C + 1)`` with noise filters (and biases) drawn
    from ``U(-noise, noise)``, and the rows are shuffled by a secret permutation (drawn with
    ``secret_seed``; None = fresh OS entropy). The enclave keeps the real channels in order and
    runs BN, activations, pooling and adds. With ``plain_first_and_downsample`` (the reference
    configuration) the first conv/linear layer and every conv under a ``downsample`` module run
    on the device as they are, unobfuscated. Grouped convolutions run in the enclave.
    """

    kind: ClassVar[str] = "nonlinear"
    ratio: float = 1.2
    noise: float = 10.0
    secret_seed: int | None = None
    plain_first_and_downsample: bool = True

    def __post_init__(self) -> None:
        if (
            isinstance(self.ratio, bool)
            or not isinstance(self.ratio, (int, float))
            or not (math.isfinite(self.ratio) and self.ratio >= 1)
        ):
            raise ConfigError(
                f"nonlinear: RATIO must be a number >= 1, got {self.ratio!r}; {_FORMS_HELP}"
            )
        if not (
            isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise > 0
        ):
            raise ConfigError(f"nonlinear: noise must be a number > 0, got {self.noise!r}")
        _check_seed("nonlinear: secret_seed", self.secret_seed, allow_none=True)
        object.__setattr__(self, "ratio", float(self.ratio))

    @property
    def spec(self) -> str:
        return "nonlinear" if self.ratio == 1.2 else f"nonlinear:{self.ratio:g}"


@dataclass(frozen=True)
class TEESlice(Strategy):
    """TEESlice: a sliced model's public ``backbone`` on the device, the rest in the enclave.

    Needs a model with ``public_modules()`` / ``private_modules()`` (e.g.
    ``taoism.zoo.get_model("teeslice_resnet18")``).
    """

    kind: ClassVar[str] = "teeslice"

    @property
    def spec(self) -> str:
        return "teeslice"


StrategyLike = str | Strategy

_SIMPLE = {"none": NoShield, "all": BlackBox, "teeslice": TEESlice}


def _bad(s: str, why: str) -> ConfigError:
    return ConfigError(f"invalid strategy {s!r}: {why}; {_FORMS_HELP}")


def parse_strategy(strategy: StrategyLike) -> Strategy:
    """A strategy dataclass from its string form (or the dataclass itself)."""
    if isinstance(strategy, Strategy):
        return strategy
    if not isinstance(strategy, str):
        raise ConfigError(
            f"strategy must be a string or a strategy dataclass, got "
            f"{type(strategy).__name__}; {_FORMS_HELP}"
        )
    s = strategy.strip().lower()
    name, sep, arg = s.partition(":")
    name, arg = name.strip(), arg.strip()
    if name in _SIMPLE:
        if sep:
            raise _bad(strategy, f"{name!r} takes no parameter")
        return _SIMPLE[name]()
    if name in ("deep", "shallow"):
        if not arg:
            raise _bad(strategy, f"{name!r} needs the number of units, e.g. '{name}:1'")
        try:
            k = int(arg)
        except ValueError:
            raise _bad(strategy, f"K={arg!r} is not an int") from None
        if k < 0:
            raise _bad(strategy, "K must be >= 0")
        return (Deep if name == "deep" else Shallow)(k)
    if name in ("magnitude", "intermediate"):
        if not arg:
            raise _bad(
                strategy,
                f"{name!r} needs a fraction, e.g. '{name}:{0.01 if name == 'magnitude' else 0.8}'",
            )
        try:
            v = float(arg)
        except ValueError:
            raise _bad(strategy, f"{arg!r} is not a number") from None
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise _bad(strategy, f"the fraction must be in [0, 1], got {arg}")
        return Magnitude(v) if name == "magnitude" else Intermediate(v)
    if name == "nonlinear":
        if not sep:
            return NonLinear()
        try:
            v = float(arg)
        except ValueError:
            raise _bad(strategy, f"RATIO={arg!r} is not a number") from None
        if not (math.isfinite(v) and v >= 1):
            raise _bad(strategy, "RATIO must be >= 1")
        return NonLinear(ratio=v)
    raise _bad(strategy, f"unknown strategy name {name!r}")


# The paper's representative configuration of each strategy, then the two baselines.
REFERENCE_STRATEGIES: tuple[str, ...] = (
    "deep:1",
    "shallow:1",
    "magnitude:0.01",
    "intermediate:0.8",
    "nonlinear",
    "teeslice",
)
BASELINE_STRATEGIES: tuple[str, ...] = ("none", "all")


def expand_strategies(strategies: str | Sequence[StrategyLike]) -> list[str]:
    """Normalise a strategy list: ``"all"`` alone (string or one-element list) means the six
    reference configurations plus ``none`` and ``all``; a string may be comma-separated.

    Every entry is validated; duplicates are dropped (order kept).
    """
    if isinstance(strategies, str):
        items: list[StrategyLike] = [p for p in (x.strip() for x in strategies.split(",")) if p]
    else:
        items = list(strategies)
    if not items:
        raise ConfigError(f"no strategy given; {_FORMS_HELP}")
    if len(items) == 1 and isinstance(items[0], str) and items[0].strip().lower() == "all":
        items = [*BASELINE_STRATEGIES, *REFERENCE_STRATEGIES]
    out: list[str] = []
    for it in items:
        spec = parse_strategy(it).spec
        if spec not in out:
            out.append(spec)
    return out


__all__ = [
    "BlackBox",
    "Deep",
    "Intermediate",
    "Magnitude",
    "NoShield",
    "NonLinear",
    "Shallow",
    "Strategy",
    "StrategyLike",
    "TEESlice",
    "VALID_FORMS",
    "REFERENCE_STRATEGIES",
    "BASELINE_STRATEGIES",
    "expand_strategies",
    "parse_strategy",
]
