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
  queries the deployment for top-1 labels on ``queries`` samples of shadow-train.

Each function here is deterministic for a given configuration, seed and thread count. Every
strategy of one (seed, query budget) sees the same queries and the same fine-tuning and shadow
randomness (common random numbers), so differences between strategies are not seed noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Iterator
from typing import Any

import torch

from taoism.data import ImageDataset, attack_splits, load_dataset
from taoism.data.datasets import canonical_name
from taoism.errors import ConfigError
from taoism.security.attacks import (agreement, align_output_rows, build_surrogate,
                                     membership_inference, transfer_attack)
from taoism.security.cache import Cache, config_hash
from taoism.security.training import (accuracy, classifier_head, predict_logits, pretrain_rotation,
                                      reset_head, seeded, train_classifier)
from taoism.security.views import view_summary

__all__ = ["AttackConfig", "JobSpec", "prepare_models", "run_job", "sliced_counterpart"]

_SHAPES = {"fashion_mnist": "mnist", "digits": "digits", "cifar10": "cifar", "cifar100": "cifar"}


@dataclass(frozen=True)
class AttackConfig:
    """Every knob of the experiment (all part of the cache key). Use :meth:`preset` for defaults.

    Data: ``split_size`` caps each private split, ``public_size`` the public split.
    Public model: ``public_task`` ("rotation" or "supervised"), ``public_epochs``, ``public_lr``.
    Victim: ``victim_epochs``, ``victim_lr``, ``victim_batch``, ``victim_weight_decay``.
    Model stealing: ``ms_epochs`` (10 in the paper), ``ms_lr``, ``ms_batch``; adversarial
    transfer: ``pgd_eps`` and ``pgd_alpha`` in pixel units (x 1/std per channel), ``pgd_steps``,
    ``adv_samples``; ``eval_samples`` caps the test samples used for accuracy and fidelity.
    Membership inference: the shadow model is trained like the victim unless ``shadow_epochs``
    / ``shadow_lr`` say otherwise; ``mia_samples`` caps members (and as many non-members).
    Deployment: ``backend`` (enclave backend, None = default), ``device`` (the untrusted
    device's torch device for the deployment, None = CUDA when present; training and the
    attacks run on the CPU), ``latency_repeats``.
    ``threads``: torch intra-op threads while a job runs (restored afterwards; None = leave as
    is). One thread per job is fastest for these small models, markedly so on a busy machine
    (OpenMP spin-waits); parallelise with ``jobs=N`` processes instead.
    """

    split_size: int | None = None
    public_size: int | None = None
    public_task: str = "rotation"
    public_epochs: int = 3
    public_lr: float = 0.01
    public_batch: int = 128
    victim_epochs: int = 20
    victim_lr: float = 0.01
    victim_batch: int = 64
    victim_weight_decay: float = 0.0
    ms_epochs: int = 10
    ms_lr: float = 0.003
    ms_batch: int = 16
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

    def __post_init__(self) -> None:
        if self.public_task not in ("rotation", "supervised"):
            raise ConfigError(f"public_task must be 'rotation' or 'supervised', got {self.public_task!r}")
        for name in ("public_epochs", "victim_epochs", "ms_epochs", "pgd_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"AttackConfig.{name} must be an int >= 0, got {v!r}")
        if self.latency_repeats < 1:
            raise ConfigError("AttackConfig.latency_repeats must be >= 1")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"AttackConfig.threads must be an int >= 1 or None, got {self.threads!r}")

    @classmethod
    def preset(cls, dataset: str, *, smoke: bool = False, **overrides: Any) -> "AttackConfig":
        """Defaults sized for ``dataset`` on a 2-core CPU; ``smoke`` shrinks them for tests."""
        name = canonical_name(dataset)
        base: dict[str, Any]
        if name == "digits":
            base = dict(public_epochs=30, public_lr=0.02, public_batch=64, victim_epochs=40,
                        victim_lr=0.02, victim_batch=32, adv_samples=None)
        elif name == "fashion_mnist":
            base = dict(public_size=15000, split_size=2500, public_epochs=3, victim_epochs=20)
        else:  # cifar
            base = dict(public_size=20000, split_size=5000, public_epochs=10, public_lr=0.05,
                        victim_epochs=30, victim_lr=0.02)
        if smoke:
            base.update(latency_repeats=1, adv_samples=200)
            if name != "digits":
                base.update(public_size=3000, split_size=600, eval_samples=2000)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_key(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("split_size", "public_size", "public_task",
                                               "public_epochs", "public_lr", "public_batch")}

    def victim_key(self) -> dict[str, Any]:
        return {**self.public_key(), **{k: getattr(self, k) for k in (
            "victim_epochs", "victim_lr", "victim_batch", "victim_weight_decay")}}


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
        return config_hash({"kind": "job", "model": self.model, "dataset": self.dataset,
                            "data": self.data_fingerprint, "strategy": self.strategy,
                            "seed": self.seed, "queries": self.queries,
                            "config": self.config.to_dict()})

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "strategy": self.strategy,
                "seed": self.seed, "queries": self.queries, "data_root": self.data_root,
                "config": self.config.to_dict()}


@lru_cache(maxsize=2)
def _dataset(name: str, root: str | None) -> ImageDataset:
    # Read-only use: every caller indexes (copies) the tensors, never writes into them.
    return load_dataset(name, root)


def dataset_for(name: str, root: str | os.PathLike | None) -> ImageDataset:
    return _dataset(canonical_name(name), os.fspath(root) if root is not None else None)


def _build(model: str, ds: ImageDataset, seed: int = 0) -> torch.nn.Module:
    from taoism.zoo import get_model

    return get_model(model, dataset_shape=ds.shape, num_classes=ds.num_classes, seed=seed)


def _subseed(seed: int, tag: str) -> int:
    """A per-purpose seed derived from the experiment seed (stable across runs)."""
    return int(config_hash({"seed": seed, "tag": tag}, length=12), 16) % (2 ** 31 - 1)


def _is_sliced(net: torch.nn.Module) -> bool:
    return callable(getattr(net, "public_modules", None)) and callable(getattr(net, "private_modules", None))


def _plain_backbone(model: str) -> str:
    """``teeslice_resnet18`` -> ``resnet18``: the plain architecture of a sliced model's backbone."""
    key = model.strip().lower().replace("-", "").replace("_", "")
    if not key.startswith("teeslice"):
        raise ConfigError(f"model {model!r} is sliced but not named teeslice_<backbone>; cannot "
                          "tell which plain architecture to pretrain as its public backbone")
    from taoism.zoo import _resolve

    return _resolve(key[len("teeslice"):])


def sliced_counterpart(model: str) -> str | None:
    """``small_cnn`` -> ``teeslice_small_cnn``: the zoo's TEESlice model over plain ``model``
    (None when the zoo has none, or ``model`` is itself sliced or unknown)."""
    from taoism.zoo import _resolve, list_models

    try:
        key = _resolve(model)
    except ConfigError:
        return None
    if key.startswith("teeslice_"):
        return None
    name = f"teeslice_{key}"
    return name if name in list_models() else None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare_models(model: str, ds: ImageDataset, seed: int, config: AttackConfig, cache: Cache,
                   *, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """The public model's and the victim's state dicts (trained, or read from the cache) and
    the victim's own accuracy figures."""
    with torch_threads(config.threads):
        return _prepare_models(model, ds, seed, config, cache, progress=progress)


def _public_state(model: str, ds: ImageDataset, seed: int, config: AttackConfig, cache: Cache,
                  *, progress: bool = False) -> dict[str, torch.Tensor]:
    """The public model's state dict (trained, or read from the cache).

    A sliced (TEESlice) model takes the public model of its plain backbone architecture (the
    same cache entry the plain model's experiments use) as its frozen backbone; its slices and
    head keep their fresh initialisation (they are private and trained later).
    """
    base = {"model": model, "dataset": ds.name, "data": ds.fingerprint, "seed": seed}
    pkey = config_hash({"kind": "public", **base, **config.public_key()})
    public_sd = cache.get_tensors("public", pkey)
    if public_sd is not None:
        return public_sd
    net = _build(model, ds, _subseed(seed, "public-init"))
    if _is_sliced(net):
        net.load_backbone(_public_state(_plain_backbone(model), ds, seed, config, cache, progress=progress))
    else:
        sp = attack_splits(len(ds.y_train), seed, split_size=config.split_size, public_size=config.public_size)
        xp = ds.x_train[sp.public]
        if config.public_task == "rotation":
            pretrain_rotation(net, xp, epochs=config.public_epochs, lr=config.public_lr,
                              batch_size=config.public_batch, seed=_subseed(seed, "public"),
                              progress=progress, desc=f"public model (rotation, seed {seed})")
        else:
            train_classifier(net, xp, ds.y_train[sp.public], epochs=config.public_epochs,
                             lr=config.public_lr, batch_size=config.public_batch, weight_decay=5e-4,
                             seed=_subseed(seed, "public"), progress=progress,
                             desc=f"public model (supervised, seed {seed})")
        reset_head(net, _subseed(seed, "public-head"))
    public_sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    cache.put_tensors("public", pkey, public_sd)
    return public_sd


def _prepare_models(model: str, ds: ImageDataset, seed: int, config: AttackConfig, cache: Cache,
                    *, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    sp = attack_splits(len(ds.y_train), seed, split_size=config.split_size, public_size=config.public_size)
    base = {"model": model, "dataset": ds.name, "data": ds.fingerprint, "seed": seed}
    public_sd = _public_state(model, ds, seed, config, cache, progress=progress)
    vkey = config_hash({"kind": "victim", **base, **config.victim_key()})
    victim_sd = cache.get_tensors("victim", vkey)
    info = cache.get_json("victim", vkey)
    if victim_sd is None or info is None:
        net = _build(model, ds)
        net.load_state_dict(public_sd)
        if _is_sliced(net):
            # TEESlice (partition before training): the public backbone stays frozen (the model
            # freezes it); fresh private slices and head are trained on the private data.
            with seeded(_subseed(seed, "victim-slices")):
                for name in net.private_modules():
                    for m in net.get_submodule(name).modules():
                        if hasattr(m, "reset_parameters"):
                            m.reset_parameters()
        else:
            reset_head(net, _subseed(seed, "victim-head"))
        xt, yt = ds.x_train[sp.target_train], ds.y_train[sp.target_train]
        train_classifier(net, xt, yt, epochs=config.victim_epochs, lr=config.victim_lr,
                         batch_size=config.victim_batch, weight_decay=config.victim_weight_decay,
                         seed=_subseed(seed, "victim"), progress=progress,
                         desc=f"victim (seed {seed})")
        info = {
            "victim_test_accuracy": accuracy(net, ds.x_test, ds.y_test),
            "victim_train_accuracy": accuracy(net, xt, yt),
            "victim_nonmember_accuracy": accuracy(net, ds.x_train[sp.target_test], ds.y_train[sp.target_test]),
            "splits": sp.sizes(),
        }
        victim_sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cache.put_tensors("victim", vkey, victim_sd)
        cache.put_json("victim", vkey, info)
    return public_sd, victim_sd, info


def _deployed_strategy(spec: str, seed: int) -> Any:
    """The strategy dataclass for ``spec`` with its secrets drawn from the experiment seed, so a
    rerun with the same seed deploys the same obfuscation (the attack never reads the secrets)."""
    from taoism.strategies import parse_strategy

    s = parse_strategy(spec)
    if dataclasses.is_dataclass(s) and any(f.name == "secret_seed" for f in dataclasses.fields(s)):
        if getattr(s, "secret_seed") is None:
            s = dataclasses.replace(s, secret_seed=_subseed(seed, "secret:" + spec))
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


def _run_job(spec: JobSpec, cache: Cache, *, progress: bool) -> dict[str, Any]:
    key = spec.key()
    t_start = time.perf_counter()
    from taoism.runtime import shield
    from taoism.strategies import attacker_view, strategy_report

    cfg = spec.config
    ds = dataset_for(spec.dataset, spec.data_root)
    public_sd, victim_sd, victim_info = _prepare_models(spec.model, ds, spec.seed, cfg, cache, progress=progress)
    t_models = time.perf_counter()
    victim = _build(spec.model, ds)
    victim.load_state_dict(victim_sd)
    victim.eval()
    sp = attack_splits(len(ds.y_train), spec.seed, split_size=cfg.split_size, public_size=cfg.public_size)

    # The attacker's queries: its own samples from the victim's distribution.
    pool = sp.shadow_train
    if spec.queries < 1 or spec.queries > len(pool):
        raise ConfigError(f"queries={spec.queries} must lie in 1..{len(pool)} (the attacker's "
                          f"shadow-train pool for {ds.name} with split_size={cfg.split_size})")
    with seeded(_subseed(spec.seed, f"queries:{spec.queries}")) as gen:
        qidx = pool[torch.randperm(len(pool), generator=gen)[:spec.queries]]
    xq = ds.x_train[qidx]

    # Deploy; everything the attacker starts from comes from the deployment.
    strategy = _deployed_strategy(spec.strategy, spec.seed)
    example = ds.x_test[:1].clone()
    with shield(victim, example, strategy=strategy, backend=cfg.backend, device=cfg.device) as sm:
        view = {k: dataclasses.replace(e, tensor=e.tensor.detach().clone() if e.tensor is not None else None)
                for k, e in attacker_view(sm, victim).items()}
        report = strategy_report(sm, victim, strategy=spec.strategy)
        # Black-box oracle: top-1 labels from the deployed model.
        yq = torch.cat([sm(xq[i:i + 256]).argmax(1).cpu() for i in range(0, len(xq), 256)])
        prof = sm.profile(example, repeats=cfg.latency_repeats, warmup=1)
    t_deploy = time.perf_counter()
    oracle_matches_plain = agreement(yq, predict_logits(victim, xq).argmax(1))

    # Model stealing.
    surrogate, rec = build_surrogate(victim, view, public_sd)
    head_name, _ = classifier_head(surrogate)
    head_obf = view.get(f"{head_name}.weight") is not None and view[f"{head_name}.weight"].status == "obfuscated"
    head_perm = align_output_rows(surrogate, xq, yq) if head_obf else None
    x_eval, y_eval = ds.x_test, ds.y_test
    if cfg.eval_samples is not None:
        x_eval, y_eval = x_eval[:cfg.eval_samples], y_eval[:cfg.eval_samples]
    init_acc = accuracy(surrogate, x_eval, y_eval)
    train_classifier(surrogate, xq, yq, epochs=cfg.ms_epochs, lr=cfg.ms_lr, batch_size=cfg.ms_batch,
                     seed=_subseed(spec.seed, f"ms:{spec.queries}"),
                     progress=progress, desc=f"surrogate {spec.strategy}")
    victim_pred = predict_logits(victim, x_eval).argmax(1)
    sur_pred = predict_logits(surrogate, x_eval).argmax(1)
    lo, hi = ds.pixel_bounds()
    scale = ds.pixel_scale()
    adv = transfer_attack(surrogate, victim, x_eval, y_eval, eps=cfg.pgd_eps * scale,
                          alpha=cfg.pgd_alpha * scale, steps=cfg.pgd_steps, lo=lo, hi=hi,
                          max_samples=cfg.adv_samples)
    t_ms = time.perf_counter()

    # Membership inference on the surrogate, calibrated with a shadow model.
    n_mia = cfg.mia_samples
    take = (lambda idx: idx[:n_mia]) if n_mia is not None else (lambda idx: idx)
    mia = membership_inference(
        surrogate, ds.x_train[take(sp.target_train)], ds.y_train[take(sp.target_train)],
        ds.x_train[take(sp.target_test)], ds.y_train[take(sp.target_test)],
        (ds.x_train[sp.shadow_train], ds.y_train[sp.shadow_train]),
        (ds.x_train[sp.shadow_test], ds.y_train[sp.shadow_test]),
        shadow_epochs=cfg.shadow_epochs if cfg.shadow_epochs is not None else cfg.victim_epochs,
        shadow_lr=cfg.shadow_lr if cfg.shadow_lr is not None else cfg.victim_lr,
        shadow_batch=cfg.victim_batch, shadow_weight_decay=cfg.victim_weight_decay,
        seed=_subseed(spec.seed, f"shadow:{spec.queries}"), progress=progress)
    t_mia = time.perf_counter()

    keep = ("params_total", "params_tee", "params_tee_pct", "params_unused", "flops_total", "flops_tee",
            "flops_tee_pct", "flops_overhead", "flops_enclave_executed", "flops_enclave_executed_pct",
            "crossings", "bytes_crossing", "segments", "enclave_segments", "device_holds")
    totals = prof.totals()
    result = {
        "job": spec.to_json(),
        "key": key,
        "metrics": {
            "victim_accuracy": float((victim_pred == y_eval).double().mean()),
            "ms_accuracy": float((sur_pred == y_eval).double().mean()),
            "fidelity": agreement(sur_pred, victim_pred),
            "surrogate_init_accuracy": init_acc,
            **adv,
            **mia,
        },
        "victim": victim_info,
        "report": {k: report[k] for k in keep if k in report},
        "latency_ms": {"median": totals["end_to_end_s"] * 1e3,
                       "p10": prof.end_to_end.p10 * 1e3, "p90": prof.end_to_end.p90 * 1e3,
                       "enclave_compute": totals["enclave_compute_s"] * 1e3,
                       "crossings": totals["crossings"], "batch": prof.batch,
                       "repeats": prof.repeats, "backend": prof.meta.get("backend")},
        "attacker": {
            "view": view_summary(view),
            "soter_scales": rec.scales,
            "shadownet_rows": {m: len(o) for m, o in rec.row_orders.items()},
            "head_realigned": head_perm is not None,
            "oracle_matches_plain_victim": oracle_matches_plain,
            "queries": int(len(qidx)),
        },
        "timing_s": {"models": t_models - t_start, "deploy": t_deploy - t_models,
                     "model_stealing": t_ms - t_deploy, "membership_inference": t_mia - t_ms,
                     "total": t_mia - t_start},
    }
    return result
