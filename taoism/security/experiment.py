"""One leakage experiment: public model, victim, deployment, and the attacks on it.

The setting (documented choice, standing in for the paper's ImageNet-pretrained weights):

* The training split is cut by samples (:func:`taoism.data.attack_splits`): a *public* half and
  a *private* half, the private half in four parts (target-train = the victim's members,
  target-test, shadow-train, shadow-test).
* The **public model** is pretrained on the public half with a label-free pretext task
  (predicting image rotations, ``public_task="rotation"``), then its classifier head is
  re-initialised, as a downstream task replaces an ImageNet head. It knows generic features of
  the domain but not the private task, like ImageNet weights for CIFAR. ``public_task=
  "supervised"`` trains it on the public half's class labels instead (a much stronger public
  model, so every strategy leaks "less" relative to it).
* The **victim** starts from the public model, gets a fresh head (private seed) and is
  fine-tuned on target-train.
* The **attacker** knows the architecture and the public model, holds shadow-train/shadow-test
  from the same distribution, reads what the deployment exposes
  (:func:`taoism.strategies.attacker_view` on ``taoism.shield(victim, x, strategy=...)``) and
  queries the deployment for top-1 labels on ``queries`` samples of shadow-train. It tunes its
  surrogate on a held-out part of those queries (:mod:`taoism.security.tuning`) and calibrates
  membership inference on its own shadow model (:func:`taoism.security.models.shadow_state`).
* On ``glyphs`` the public model is trained on another script in other fonts and the splits
  follow the font groups (see :mod:`taoism.data.glyphs` and :mod:`taoism.security.models`).

Each function here is deterministic for a given configuration, seed and thread count. Every
strategy of one (seed, query budget) sees the same queries and the same fine-tuning and shadow
randomness (common random numbers), so differences between strategies are not seed noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from taoism.data import AttackSplits, ImageDataset
from taoism.data.datasets import canonical_name
from taoism.errors import ConfigError
from taoism.security.attacks import (
    agreement,
    align_output_rows,
    membership_inference,
    shadow_threshold,
    transfer_attack,
)
from taoism.security.cache import Cache, config_hash
from taoism.security.models import (
    build,
    dataset_for,
    is_sliced,
    plain_backbone,
    prepare_models,
    public_state,
    shadow_state,
    sliced_counterpart,
    splits_for,
    subseed,
    torch_threads,
)
from taoism.security.sliced import attacker_sliced, sliced_model, trains_slices
from taoism.security.starts import Start, teeslice_starts, view_start
from taoism.security.training import accuracy, classifier_head, predict_logits, seeded
from taoism.security.tuning import AttackGrid, fit_surrogate, grid_edges
from taoism.security.views import view_summary

__all__ = [
    "AttackConfig",
    "JobSpec",
    "dataset_for",
    "prepare_models",
    "run_job",
    "sliced_counterpart",
    "torch_threads",
]

#: Metrics taken from the start with the best model-stealing accuracy / the best MIA accuracy.
MS_KEYS = (
    "ms_accuracy",
    "fidelity",
    "surrogate_init_accuracy",
    "adv_success",
    "adv_surrogate_success",
    "adv_samples",
)
MIA_KEYS = (
    "mia_accuracy",
    "mia_auc",
    "mia_threshold",
    "mia_tpr",
    "mia_tnr",
    "generalization_gap",
    "confidence_gap",
    "mia_samples",
)


#: Bump when the TEESlice row's victim, starts or figures change meaning (part of its job key).
TEESLICE_JOB_VERSION = 2

#: The smoke presets' TEESlice training: the artifact's coefficients, at most two pruning steps
#: in a 4-epoch pruning phase (a test, not a result; it runs in seconds on digits' ~140 members).
SMOKE_TEESLICE = (
    ("teacher_epochs", 20),
    ("student_epochs", 20),
    ("prune_every", 2),
    ("max_prune_steps", 2),
    ("prune_epochs", 4),
    ("batch_size", 32),
)


@dataclass(frozen=True)
class AttackConfig:
    """Every knob of the experiment (all part of the cache key). Use :meth:`preset` for defaults.

    Data: ``split_size`` caps each private split, ``public_size`` the public split,
    ``data_options`` are passed to the data set loader (``glyphs``: GlyphConfig fields).
    Public model: ``public_task`` ("rotation" or "supervised"; a data set with its own public
    data is always supervised on it), ``public_epochs``, ``public_lr``.
    Victim: ``victim_epochs``, ``victim_lr``, ``victim_batch``, ``victim_weight_decay``.
    Model stealing: the tuning grid ``ms_lrs`` x ``ms_epochs`` (+ the paper's per-layer rates
    when ``ms_paper_point``), chosen on ``ms_val_fraction`` of the queries, batch ``ms_batch``,
    each rate's run stopped early when its held-out accuracy stops improving (``ms_early_stop``) and
    only the best ``ms_keep`` rates trained past the first epoch count (successive halving), and
    the grid widened up to ``ms_widen`` times past an edge the best point lies on (see
    :class:`~taoism.security.tuning.AttackGrid`);
    adversarial transfer: ``pgd_eps`` and ``pgd_alpha`` in pixel units (x 1/std per channel),
    ``pgd_steps``, ``adv_samples``; ``eval_samples`` caps the test samples used for accuracy
    and fidelity. Membership inference: the shadow model is trained like the victim unless
    ``shadow_epochs`` / ``shadow_lr`` say otherwise; ``mia_samples`` caps members (and as many
    non-members). Deployment: ``backend`` (None = default), ``device`` (the untrusted device),
    ``latency_repeats``. ``threads``: torch intra-op threads while a job runs (None = leave).
    TEESlice row: ``teeslice_options`` are :class:`~taoism.teeslice.TeeSliceConfig` fields
    (default: the artifact's) for the slices :func:`taoism.teeslice.sliced_victim` trains.
    ``black_box_start``: every other row's attacker also tries the black-box start (the public
    weights, nothing from the host) beside the exposed view, and the row reports the best, as
    the TEESlice row does: an attacker can always ignore what the host exposes.
    """

    split_size: int | None = None
    public_size: int | None = None
    data_options: tuple[tuple[str, Any], ...] = ()
    public_task: str = "rotation"
    public_epochs: int = 3
    public_lr: float = 0.01
    public_batch: int = 128
    victim_epochs: int = 20
    victim_lr: float = 0.01
    victim_batch: int = 64
    victim_weight_decay: float = 0.0
    ms_lrs: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01, 0.03)
    ms_epochs: tuple[int, ...] = (5, 10, 20, 40)
    ms_paper_point: bool = True
    ms_val_fraction: float = 0.2
    ms_batch: int = 16
    ms_early_stop: bool = False
    ms_keep: int | None = None
    ms_widen: int = 2
    pgd_eps: float = 8 / 255
    pgd_alpha: float = 2 / 255
    pgd_steps: int = 10
    adv_samples: int | None = 1000
    eval_samples: int | None = None
    shadow_epochs: int | None = None
    shadow_lr: float | None = None
    mia_samples: int | None = None
    backend: str | None = None
    device: str | None = "cpu"
    latency_repeats: int = 3
    threads: int | None = 1
    teeslice_options: tuple[tuple[str, Any], ...] = ()
    black_box_start: bool = True

    def __post_init__(self) -> None:
        if self.public_task not in ("rotation", "supervised"):
            raise ConfigError(
                f"public_task must be 'rotation' or 'supervised', got {self.public_task!r}"
            )
        for name in ("public_epochs", "victim_epochs", "pgd_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"AttackConfig.{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.black_box_start, bool):
            raise ConfigError(
                f"AttackConfig.black_box_start must be True or False, got {self.black_box_start!r}"
            )
        if self.latency_repeats < 1:
            raise ConfigError("AttackConfig.latency_repeats must be >= 1")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ConfigError(
                f"AttackConfig.threads must be an int >= 1 or None, got {self.threads!r}"
            )
        for name, kind in (("ms_lrs", float), ("ms_epochs", int)):
            v = getattr(self, name)
            v = (v,) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            try:
                object.__setattr__(self, name, tuple(kind(e) for e in v))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"AttackConfig.{name} must be a sequence of numbers, got {v!r}"
                ) from None
        for name in ("data_options", "teeslice_options"):
            object.__setattr__(self, name, tuple((str(k), v) for k, v in getattr(self, name)))
        self.grid()  # validates the grid
        self.teeslice_config(0)  # validates the TEESlice options

    def teeslice_config(self, seed: int) -> Any:
        """The TeeSliceConfig of the TEESlice row (``teeslice_options`` over the defaults)."""
        from taoism.teeslice import TeeSliceConfig

        fields = {f.name for f in dataclasses.fields(TeeSliceConfig)} - {"seed"}
        unknown = sorted(k for k, _ in self.teeslice_options if k not in fields)
        if unknown:
            raise ConfigError(
                f"AttackConfig.teeslice_options: unknown TeeSliceConfig field(s) {unknown}; "
                f"known: {sorted(fields)}"
            )
        return TeeSliceConfig(**{**dict(self.teeslice_options), "seed": seed})

    @classmethod
    def preset(cls, dataset: str, *, smoke: bool = False, **overrides: Any) -> AttackConfig:
        """Defaults sized for ``dataset`` on a 2-core CPU; ``smoke`` shrinks them for tests."""
        name = canonical_name(dataset)
        base: dict[str, Any]
        if name == "digits":
            base = dict(
                public_epochs=30,
                public_lr=0.02,
                public_batch=64,
                victim_epochs=40,
                victim_lr=0.02,
                victim_batch=32,
                adv_samples=None,
            )
        elif name == "fashion_mnist":
            base = dict(public_size=15000, split_size=2500, public_epochs=3, victim_epochs=20)
        elif name == "glyphs":
            base = dict(
                public_task="supervised",
                public_epochs=8,
                public_lr=0.05,
                victim_epochs=15,
                victim_lr=0.02,
                eval_samples=5000,
                # Compute budget, fixed before any result (docs: BENCHMARKS.md, security section):
                # MIA on 5,000 members + 5,000 non-members (standard error <= 0.5 points),
                # each tuning run stopped when its held-out accuracy stops improving, and successive
                # halving of the six rates after the first epoch count (the best 3 go on).
                mia_samples=5000,
                ms_early_stop=True,
                ms_keep=3,
            )
        else:  # cifar
            base = dict(
                public_size=20000,
                split_size=5000,
                public_epochs=10,
                public_lr=0.05,
                victim_epochs=30,
                victim_lr=0.02,
            )
        if smoke:
            base.update(
                latency_repeats=1,
                adv_samples=200,
                ms_lrs=(0.0003, 0.001, 0.003, 0.01, 0.03),
                ms_epochs=(3, 10, 30, 80),
            )
            base.update(teeslice_options=SMOKE_TEESLICE)
            if name == "glyphs":
                base.update(
                    data_options=(("max_classes", 10), ("renders", 5), ("max_fonts_per_family", 1)),
                    public_epochs=3,
                    victim_epochs=8,
                    eval_samples=None,
                    adv_samples=100,
                )
            elif name != "digits":
                base.update(public_size=3000, split_size=600, eval_samples=2000)
        base.update(overrides)
        return cls(**base)

    def grid(self) -> AttackGrid:
        """The attacker's tuning grid."""
        return AttackGrid(
            self.ms_lrs,
            self.ms_epochs,
            self.ms_paper_point,
            self.ms_val_fraction,
            self.ms_batch,
            early_stop=self.ms_early_stop,
            keep=self.ms_keep,
            widen=self.ms_widen,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("data_options", "teeslice_options"):
            d[name] = [list(kv) for kv in getattr(self, name)]
        return d

    def public_key(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "split_size",
                "public_size",
                "public_task",
                "public_epochs",
                "public_lr",
                "public_batch",
            )
        }

    def victim_key(self) -> dict[str, Any]:
        return {
            **self.public_key(),
            **{
                k: getattr(self, k)
                for k in ("victim_epochs", "victim_lr", "victim_batch", "victim_weight_decay")
            },
        }


@dataclass(frozen=True)
class JobSpec:
    """One independent, cacheable unit: (model, dataset, strategy, seed, queries, config)."""

    model: str
    dataset: str
    strategy: str
    seed: int
    queries: int
    config: AttackConfig
    data_root: str | None = None
    data_fingerprint: str = ""

    def key(self) -> str:
        config = self.config.to_dict()
        if self.strategy == "teeslice":  # the TEESlice row's model comes from taoism.teeslice
            config["teeslice_version"] = TEESLICE_JOB_VERSION
        else:  # other rows do not depend on it: their keys (and cached results) stay as they were
            del config["teeslice_options"]
        return config_hash(
            {
                "kind": "job",
                "model": self.model,
                "dataset": self.dataset,
                "data": self.data_fingerprint,
                "strategy": self.strategy,
                "seed": self.seed,
                "queries": self.queries,
                "config": config,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "strategy": self.strategy,
            "seed": self.seed,
            "queries": self.queries,
            "data_root": self.data_root,
            "config": self.config.to_dict(),
        }


def load_data(spec: JobSpec, cache: Cache) -> ImageDataset:
    """The job's data set (glyph renderings cached in ``cache``)."""
    return dataset_for(spec.dataset, spec.data_root, cache.root, spec.config.data_options)


def _deployed_strategy(spec: str, seed: int) -> Any:
    """The strategy dataclass for ``spec`` with its secrets drawn from the experiment seed, so a
    rerun with the same seed deploys the same obfuscation (the attack never reads the secrets)."""
    from taoism.strategies import parse_strategy

    s = parse_strategy(spec)
    if dataclasses.is_dataclass(s) and any(f.name == "secret_seed" for f in dataclasses.fields(s)):
        if s.secret_seed is None:
            s = dataclasses.replace(s, secret_seed=subseed(seed, "secret:" + spec))
    return s


def run_job(spec: JobSpec, cache: Cache, *, progress: bool = False) -> dict[str, Any]:
    """Deploy the victim with ``spec.strategy``, attack it, and return the metrics (cached)."""
    key = spec.key()
    hit = cache.get_json("jobs", key)
    if hit is not None:
        hit["cache_hit"] = True
        return hit
    with torch_threads(spec.config.threads):
        result = _run_job(spec, cache, progress=progress)
    cache.put_json("jobs", key, result)
    result["cache_hit"] = False
    return result


def draw_queries(spec: JobSpec, ds: ImageDataset, sp: AttackSplits) -> torch.Tensor:
    """The attacker's query indices: ``spec.queries`` of its own samples (shadow-train)."""
    pool = sp.shadow_train
    if spec.queries < 1 or spec.queries > len(pool):
        raise ConfigError(
            f"queries={spec.queries} must lie in 1..{len(pool)} (the attacker's "
            f"shadow-train pool for {ds.name} with split_size={spec.config.split_size})"
        )
    with seeded(subseed(spec.seed, f"queries:{spec.queries}")) as gen:
        return pool[torch.randperm(len(pool), generator=gen)[: spec.queries]]


def deploy(
    spec: JobSpec, victim: torch.nn.Module, ds: ImageDataset, xq: torch.Tensor
) -> dict[str, Any]:
    """Shield the victim; return what the host exposes, the oracle's labels, report and profile."""
    from taoism.runtime import shield
    from taoism.strategies import attacker_view, strategy_report

    cfg = spec.config
    strategy = _deployed_strategy(spec.strategy, spec.seed)
    example = ds.x_test[:1].clone()
    with shield(victim, example, strategy=strategy, backend=cfg.backend, device=cfg.device) as sm:
        view = {
            k: dataclasses.replace(
                e, tensor=e.tensor.detach().clone() if e.tensor is not None else None
            )
            for k, e in attacker_view(sm, victim).items()
        }
        report = strategy_report(sm, victim, strategy=spec.strategy)
        # Black-box oracle: top-1 labels from the deployed model.
        yq = torch.cat([sm(xq[i : i + 256]).argmax(1).cpu() for i in range(0, len(xq), 256)])
        prof = sm.profile(example, repeats=cfg.latency_repeats, warmup=1)
    return {"view": view, "report": report, "yq": yq, "profile": prof}


def attack_starts(
    spec: JobSpec,
    ds: ImageDataset,
    view: dict[str, Any],
    cache: Cache,
    deployed: torch.nn.Module | None = None,
) -> list[Start]:
    """Where the attacker starts: the view on a fresh copy, or TEESlice's three starts
    (``deployed``: the sliced model whose architecture the attacker knows; default: the job's)."""
    cfg = spec.config
    public_sd = public_state(spec.model, ds, spec.seed, cfg, cache)
    fresh = build(spec.model, ds, subseed(spec.seed, "attacker-init"))
    if trains_slices(spec.model, spec.strategy):
        like = (
            deployed
            if deployed is not None
            else sliced_model(spec.model, ds, spec.seed, cfg, cache)[0]
        )
        sliced = attacker_sliced(spec.model, ds, like, spec.seed, public_sd)
        return teeslice_starts(
            sliced,
            lambda: build(spec.model, ds, subseed(spec.seed, "attacker-init")),
            view,
            sliced.state_dict(),
            public_sd,
        )
    if not is_sliced(fresh):
        starts = [view_start(fresh, view, public_sd)]
        # (a view that exposes nothing is the black-box start already)
        if cfg.black_box_start and any(v != "absent" for v in starts[0].statuses.values()):
            bb = build(spec.model, ds, subseed(spec.seed, "attacker-init"))
            starts.append(view_start(bb, {}, public_sd, "black_box"))
        return starts
    plain = plain_backbone(spec.model)
    plain_sd = public_state(plain, ds, spec.seed, cfg, cache)
    return teeslice_starts(
        fresh,
        lambda: build(plain, ds, subseed(spec.seed, "attacker-init")),
        view,
        public_sd,
        plain_sd,
    )


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|".encode() + _tensor_digest(t).encode())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 over a tensor's dtype, shape and bytes."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode() + raw).hexdigest()


def _experiment_key(spec: JobSpec, sliced: bool, queries: int) -> str:
    """The job key without the strategy: what every start of one (victim, queries) shares."""
    return dataclasses.replace(spec, strategy="teeslice" if sliced else "*", queries=queries).key()


def _steal(
    start: Start,
    victim: torch.nn.Module,
    ds: ImageDataset,
    xq: torch.Tensor,
    yq: torch.Tensor,
    spec: JobSpec,
    victim_pred: torch.Tensor,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Tune and train one surrogate from ``start`` (head rows already realigned); its
    model-stealing metrics. ``victim_pred``: the victim's labels on the evaluation samples."""
    cfg = spec.config
    x_eval, y_eval = ds.x_test[: cfg.eval_samples], ds.y_test[: cfg.eval_samples]
    init_acc = accuracy(start.model, x_eval, y_eval)
    surrogate, tuning = fit_surrogate(
        start.model, xq, yq, start.statuses, cfg.grid(), subseed(spec.seed, f"ms:{spec.queries}")
    )
    sur_pred = predict_logits(surrogate, x_eval).argmax(1)
    lo, hi = ds.pixel_bounds()
    scale = ds.pixel_scale()
    adv = transfer_attack(
        surrogate,
        victim,
        x_eval,
        y_eval,
        eps=cfg.pgd_eps * scale,
        alpha=cfg.pgd_alpha * scale,
        steps=cfg.pgd_steps,
        lo=lo,
        hi=hi,
        max_samples=cfg.adv_samples,
        victim_pred=victim_pred,
    )
    return surrogate, {
        "victim_accuracy": float((victim_pred == y_eval).double().mean()),
        "ms_accuracy": float((sur_pred == y_eval).double().mean()),
        "fidelity": agreement(sur_pred, victim_pred),
        "surrogate_init_accuracy": init_acc,
        **adv,
        "tuning": {**tuning, "at_edge": grid_edges(tuning, cfg.grid())},
    }


def _mia_threshold(
    spec: JobSpec, shadow: torch.nn.Module, ds: ImageDataset, sp: AttackSplits, cache: Cache
) -> float:
    """The MIA threshold of the job's shadow model (the same for every job of its victim: cached)."""
    key = config_hash(
        {
            "kind": "mia-threshold",
            "base": _experiment_key(spec, trains_slices(spec.model, spec.strategy), 0),
        }
    )
    hit = cache.get_json("shadow", key)
    if hit is not None:
        return float(hit["tau"])
    tau = shadow_threshold(
        shadow,
        (ds.x_train[sp.shadow_train], ds.y_train[sp.shadow_train]),
        (ds.x_train[sp.shadow_test], ds.y_train[sp.shadow_test]),
    )
    cache.put_json("shadow", key, {"tau": tau})
    return tau


def _mia(
    surrogate: torch.nn.Module, tau: float, ds: ImageDataset, sp: AttackSplits, cfg: AttackConfig
) -> dict[str, Any]:
    take = (
        (lambda idx: idx[: cfg.mia_samples]) if cfg.mia_samples is not None else (lambda idx: idx)
    )
    return membership_inference(
        surrogate,
        ds.x_train[take(sp.target_train)],
        ds.y_train[take(sp.target_train)],
        ds.x_train[take(sp.target_test)],
        ds.y_train[take(sp.target_test)],
        None,
        None,
        None,
        tau=tau,
    )


def _attack_start(
    start: Start,
    victim: torch.nn.Module,
    ds: ImageDataset,
    xq: torch.Tensor,
    yq: torch.Tensor,
    spec: JobSpec,
    context: dict[str, Any],
    cache: Cache,
) -> dict[str, Any]:
    """One start's model-stealing and MIA metrics, cached by content.

    Two strategies whose attacker starts hold the same tensors (e.g. ``deep:0`` and ``none``,
    or ``deep:K`` over every unit and ``all``) give the same surrogate, since every strategy of one (seed,
    queries) shares the queries and the training randomness: the key is the start's state
    digest, its tensor statuses, the oracle's labels and the job without its strategy, so such
    a start is trained once and its metrics reused (``reused_from`` names the first job).
    """
    head_name, _ = classifier_head(start.model)
    # realign the head only where this start holds the obfuscated head (not the black-box start)
    realigned = (
        align_output_rows(start.model, xq, yq)
        if start.statuses.get(f"{head_name}.weight") == "obfuscated"
        else None
    ) is not None
    key = config_hash(
        {
            "kind": "start",
            "base": context["base"],
            "state": state_digest(start.model),
            "statuses": dict(sorted(start.statuses.items())),
            "oracle": _tensor_digest(yq),
        }
    )
    hit = cache.get_json("starts", key)
    if hit is not None:
        return {**hit["metrics"], "head_realigned": realigned, "reused_from": hit["job"]}
    surrogate, ms = _steal(start, victim, ds, xq, yq, spec, context["victim_pred"])
    metrics = {**ms, **_mia(surrogate, context["tau"], ds, context["splits"], spec.config)}
    cache.put_json(
        "starts", key, {"metrics": metrics, "job": {"strategy": spec.strategy, "start": start.name}}
    )
    return {**metrics, "head_realigned": realigned}


def best_of(per_start: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The row's metrics: model stealing from the start with the best MS accuracy, membership
    inference from the start with the best MIA accuracy (the attacker's best on each)."""
    ms = max(per_start, key=lambda n: (per_start[n]["ms_accuracy"], n))
    mia = max(per_start, key=lambda n: (per_start[n]["mia_accuracy"], n))
    out = {k: per_start[ms][k] for k in ("victim_accuracy", *MS_KEYS) if k in per_start[ms]}
    out.update({k: per_start[mia][k] for k in MIA_KEYS if k in per_start[mia]})
    return {**out, "ms_start": ms, "mia_start": mia}


def _run_job(spec: JobSpec, cache: Cache, *, progress: bool) -> dict[str, Any]:
    t = {"start": time.perf_counter()}
    cfg = spec.config
    ds = load_data(spec, cache)
    _, victim_sd, victim_info = prepare_models(
        spec.model, ds, spec.seed, cfg, cache, progress=progress
    )
    shadow = build(spec.model, ds)
    shadow.load_state_dict(shadow_state(spec.model, ds, spec.seed, cfg, cache, progress=progress))
    victim = build(spec.model, ds)
    victim.load_state_dict(victim_sd)
    victim.eval()
    plain_victim, sliced_info = victim, None
    if trains_slices(
        spec.model, spec.strategy
    ):  # deploy (and shadow) the TEESlice model of this victim
        victim, sliced_info = sliced_model(spec.model, ds, spec.seed, cfg, cache, progress=progress)
        shadow = sliced_model(
            spec.model, ds, spec.seed, cfg, cache, role="shadow", progress=progress
        )[0]
    t["models"] = time.perf_counter()
    sp = splits_for(ds, spec.seed, cfg)
    qidx = draw_queries(spec, ds, sp)
    xq = ds.x_train[qidx]
    dep = deploy(spec, victim, ds, xq)
    view, yq = dep["view"], dep["yq"]
    t["deploy"] = time.perf_counter()
    per_start: dict[str, dict[str, Any]] = {}
    starts = attack_starts(spec, ds, view, cache, victim if sliced_info is not None else None)
    context = {
        "base": _experiment_key(spec, sliced_info is not None, spec.queries),
        "victim_pred": predict_logits(victim, ds.x_test[: cfg.eval_samples]).argmax(1),
        "tau": _mia_threshold(spec, shadow, ds, sp, cache),
        "splits": sp,
    }
    for start in starts:
        per_start[start.name] = _attack_start(start, victim, ds, xq, yq, spec, context, cache)
    t["attacks"] = time.perf_counter()
    rec = starts[0].rec
    out = _result(spec, dep, victim, xq, yq, qidx, per_start, victim_info, rec, t)
    if sliced_info is not None:  # the deployed sliced model against the plain victim
        plain_acc = accuracy(
            plain_victim, ds.x_test[: cfg.eval_samples], ds.y_test[: cfg.eval_samples]
        )
        out["metrics"]["plain_victim_accuracy"] = plain_acc
        out["metrics"]["accuracy_vs_victim"] = out["metrics"]["victim_accuracy"] - plain_acc
        out["teeslice"] = sliced_info
    return out


_REPORT_KEYS = (
    "params_total",
    "params_tee",
    "params_tee_pct",
    "params_unused",
    "flops_total",
    "flops_tee",
    "flops_tee_pct",
    "flops_overhead",
    "flops_enclave_executed",
    "flops_enclave_executed_pct",
    "crossings",
    "bytes_crossing",
    "segments",
    "enclave_segments",
    "device_holds",
)


def _result(
    spec: JobSpec,
    dep: dict[str, Any],
    victim: torch.nn.Module,
    xq: torch.Tensor,
    yq: torch.Tensor,
    qidx: torch.Tensor,
    per_start: dict[str, dict[str, Any]],
    victim_info: dict[str, Any],
    rec: Any,
    t: dict[str, float],
) -> dict[str, Any]:
    prof, report = dep["profile"], dep["report"]
    totals = prof.totals()
    best = best_of(per_start)
    return {
        "job": spec.to_json(),
        "key": spec.key(),
        "metrics": {k: v for k, v in best.items() if k not in ("ms_start", "mia_start")},
        "starts": per_start,
        "best_start": {"ms": best["ms_start"], "mia": best["mia_start"]},
        "tuning": per_start[best["ms_start"]]["tuning"],
        "victim": victim_info,
        "report": {k: report[k] for k in _REPORT_KEYS if k in report},
        "latency_ms": {
            "median": totals["end_to_end_s"] * 1e3,
            "p10": prof.end_to_end.p10 * 1e3,
            "p90": prof.end_to_end.p90 * 1e3,
            "enclave_compute": totals["enclave_compute_s"] * 1e3,
            "crossings": totals["crossings"],
            "batch": prof.batch,
            "repeats": prof.repeats,
            "backend": prof.meta.get("backend"),
        },
        "attacker": {
            "view": view_summary(dep["view"]),
            "soter_scales": rec.scales if rec is not None else {},
            "shadownet_rows": {m: len(o) for m, o in rec.row_orders.items()}
            if rec is not None
            else {},
            "oracle_matches_plain_victim": agreement(yq, predict_logits(victim, xq).argmax(1)),
            "queries": int(len(qidx)),
        },
        "timing_s": {
            "models": t["models"] - t["start"],
            "deploy": t["deploy"] - t["models"],
            "attacks": t["attacks"] - t["deploy"],
            "total": t["attacks"] - t["start"],
        },
    }
