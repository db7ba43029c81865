"""Security evaluation (taoism.security): attacks, de-obfuscation, the table, the sweep, caching.

Everything runs on real (small) trained models: the sklearn digits smoke configuration trains a
public model and a victim in seconds. Nothing here is hard-coded: thresholds are the ones the
attacks must clear.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

import taoism
from taoism import data, zoo
from taoism.errors import ConfigError
from taoism.security import (
    AttackConfig,
    Cache,
    JobSpec,
    black_box_view,
    build_surrogate,
    config_hash,
    default_cache_dir,
    format_table,
    membership_inference,
    pgd,
    reconstruct_state,
    run_attack_table,
    run_job,
    sweep,
    threshold_attack,
    white_box_view,
)
from taoism.security.experiment import (
    attack_starts,
    dataset_for,
    deploy,
    prepare_models,
    sliced_counterpart,
    torch_threads,
)
from taoism.security.models import build
from taoism.security.sliced import attacker_sliced, sliced_model
from taoism.security.training import accuracy, train_classifier
from taoism.security.tuning import AttackGrid, fit_surrogate, grid_edges
from taoism.security.views import exposed_param, match_rows
from taoism.strategies import attacker_view

MODEL, DATASET = "small_cnn", "digits"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and robust when the machine is busy."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return dataset_for(DATASET, None)


@pytest.fixture(scope="module")
def smoke_cfg():
    return AttackConfig.preset(DATASET, smoke=True)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """The smoke table, computed once from an empty cache."""
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("out")
    t0 = time.perf_counter()
    res = run_attack_table(
        MODEL,
        DATASET,
        None,
        queries=[50],
        seeds=[0],
        cache_dir=cache,
        out_dir=out,
        progress=False,
        smoke=True,
    )
    return res, cache, out, time.perf_counter() - t0


def _row(res, strategy, q=50):
    return next(r for r in res["rows"] if r["strategy"] == strategy and r["queries"] == q)


# -- pure pieces -------------------------------------------------------------------------------


def test_cache_key_and_default_location(tmp_path):
    a = config_hash({"x": 1, "y": [1.0, "z"]})
    assert a == config_hash({"y": [1.0, "z"], "x": 1})
    assert a != config_hash({"x": 2, "y": [1.0, "z"]})
    d = default_cache_dir()
    assert d.is_absolute() and d == Path.home() / ".cache" / "taoism"
    c = Cache(tmp_path / "c")
    assert c.get_json("jobs", "k") is None and c.misses == 1
    c.put_json("jobs", "k", {"v": 1})
    assert c.get_json("jobs", "k") == {"v": 1} and c.hits == 1
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError):
        Cache(tmp_path / "f")


def test_attack_config_validates():
    with pytest.raises(ConfigError):
        AttackConfig(public_task="imagenet")
    with pytest.raises(ConfigError):
        AttackConfig(ms_epochs=-1)
    with pytest.raises(ConfigError):
        AttackConfig(threads=0)
    with pytest.raises(ConfigError, match="black_box_start must be True or False"):
        AttackConfig(black_box_start="no")  # a truthy string must not turn the start on
    with pytest.raises(ConfigError):
        AttackConfig(ms_lrs=(0.1, 0.01))  # the grid's rates must increase
    assert AttackConfig(ms_epochs=7).grid().epochs == (7,)
    assert AttackConfig.preset("fashion_mnist").split_size == 2500


def test_threshold_attack_separates():
    members = torch.tensor([0.9, 0.95, 0.99, 0.97])
    non = torch.tensor([0.2, 0.5, 0.6, 0.1])
    tau = threshold_attack(members, non)
    assert 0.6 < tau < 0.9
    assert threshold_attack(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == float("inf")


def test_match_rows_and_reconstruction_rules():
    g = torch.Generator().manual_seed(0)
    pub = torch.randn(6, 5, generator=g)
    victim = pub + 0.05 * torch.randn(6, 5, generator=g)
    perm = torch.randperm(6, generator=g)
    order = match_rows(victim[perm], pub)
    assert torch.equal(victim[perm][order], victim)

    # A synthetic view of each kind, checked against the rules of the published attacks.
    template = {
        "a.weight": torch.zeros(6, 5),
        "a.bias": torch.zeros(6),
        "b.weight": torch.zeros(6, 5),
        "c.weight": torch.zeros(6, 5),
        "d.weight": torch.zeros(6, 5),
    }
    public = {
        "a.weight": pub,
        "a.bias": torch.zeros(6),
        "b.weight": pub,
        "c.weight": pub,
        "d.weight": pub,
    }
    zeroed = victim.clone()
    zeroed[0, 0] = 0.0
    noise = (torch.rand(2, 5, generator=g) * 2 - 1) * 10
    rows = torch.cat([victim, noise])
    shuffle = torch.randperm(8, generator=g)
    view = {
        "a.weight": exposed_param("obfuscated", rows[shuffle]),
        "a.bias": exposed_param(
            "obfuscated", torch.cat([torch.arange(6.0), torch.tensor([7.0, 8.0])])[shuffle]
        ),
        "b.weight": exposed_param("morphed", 3.5 * victim),
        "c.weight": exposed_param("zeroed", zeroed),
        "d.weight": exposed_param("absent", None),
    }
    rec = reconstruct_state(view, public, template)
    assert torch.allclose(rec.state["a.weight"], victim)  # noise dropped, rows un-shuffled
    assert torch.equal(rec.state["a.bias"], torch.arange(6.0))  # bias follows its weight's rows
    ratio = rec.state["b.weight"] / victim
    assert float(ratio.std()) < 1e-5 and 0.9 < float(ratio.mean()) < 1.1  # scalar divided out
    assert rec.state["c.weight"][0, 0] == pub[0, 0] and torch.equal(
        rec.state["c.weight"][1:], victim[1:]
    )
    assert torch.equal(rec.state["d.weight"], pub)


def test_white_and_black_box_views_without_deployment(digits):
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=1)
    pub = zoo.get_model(MODEL, dataset_shape="digits", seed=2).state_dict()
    sur, _ = build_surrogate(net, white_box_view(net), pub)
    assert all(
        torch.equal(a, b) for a, b in zip(sur.state_dict().values(), net.state_dict().values())
    )
    sur, _ = build_surrogate(net, black_box_view(net), pub)
    assert all(torch.equal(sur.state_dict()[k], v) for k, v in pub.items())


def test_pgd_fools_its_own_model(digits):
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=0)
    train_classifier(net, digits.x_train, digits.y_train, epochs=15, lr=0.05, seed=0, batch_size=64)
    x, y = digits.x_test[:200], digits.y_test[:200]
    lo, hi = digits.pixel_bounds()
    s = digits.pixel_scale()
    xa = pgd(net, x, y, eps=0.3 * s, alpha=0.05 * s, steps=10, lo=lo, hi=hi)
    assert float((xa - x).abs().max()) <= float((0.3 * s).max()) + 1e-5
    assert accuracy(net, xa, y) < accuracy(net, x, y) - 0.3


def test_mia_on_deliberately_overfit_victim(digits):
    """White-box MIA (surrogate = the victim) against a victim memorising 150 samples."""
    sp = data.attack_splits(len(digits.y_train), seed=0)
    tr, te, sh_in, sh_out = (
        sp.target_train[:150],
        sp.target_test[:150],
        sp.shadow_train[:150],
        sp.shadow_test[:150],
    )
    x, y = digits.x_train, digits.y_train
    victim = zoo.get_model(MODEL, dataset_shape="digits", seed=5)
    train_classifier(victim, x[tr], y[tr], epochs=100, lr=0.05, seed=1, batch_size=32)
    assert accuracy(victim, x[tr], y[tr]) == 1.0
    shadow = zoo.get_model(MODEL, dataset_shape="digits", seed=6)  # trained on its own
    train_classifier(shadow, x[sh_in], y[sh_in], epochs=100, lr=0.05, seed=2, batch_size=32)
    res = membership_inference(
        victim, x[tr], y[tr], x[te], y[te], shadow, (x[sh_in], y[sh_in]), (x[sh_out], y[sh_out])
    )
    assert res["mia_accuracy"] > 0.58, res
    assert res["generalization_gap"] > 0.03 and res["confidence_gap"] > 0.05


# -- through the deployment --------------------------------------------------------------------


def test_magnitude_view_lacks_the_shielded_weights(digits, smoke_cfg, tmp_path):
    public_sd, victim_sd, _ = prepare_models(MODEL, digits, 0, smoke_cfg, Cache(tmp_path))
    victim = zoo.get_model(MODEL, dataset_shape="digits")
    victim.load_state_dict(victim_sd)
    r = 0.1
    with taoism.shield(victim, digits.x_test[:1], strategy=f"magnitude:{r}") as sm:
        view = attacker_view(sm, victim)
        host = sm.host_state_dict()
    # Independent ranking: the top-r |w| over every conv/BN/linear weight and bias.
    params = {n: p.detach() for n, p in victim.named_parameters()}
    flat = torch.cat([p.abs().flatten() for p in params.values()])
    k = round(r * flat.numel())
    cut = torch.topk(flat, k).values.min()
    shielded = 0
    for name, p in params.items():
        top = p.abs() > cut  # strictly above the cut: certainly shielded
        shielded += int(top.sum())
        e = view[name]
        if bool(top.any()):
            assert e.status == "zeroed", name
            assert bool((e.tensor[top] == 0).all()), f"{name}: a shielded weight is on the host"
            assert torch.equal(host[name][top], torch.zeros_like(host[name][top]))
        # everything the host holds for this tensor is either 0 or the victim's exact value
        if e.tensor is not None:
            assert bool(((e.tensor == 0) | (e.tensor == p)).all())
    assert shielded >= k - 5
    # ... and the attacker's surrogate holds the public values there, not the victim's.
    sur, _ = build_surrogate(zoo.get_model(MODEL, dataset_shape="digits", seed=9), view, public_sd)
    for name, p in sur.named_parameters():
        top = params[name].abs() > cut
        assert torch.equal(p.detach()[top], public_sd[name][top])


def test_nonlinear_deobfuscation_recovers_the_rows(digits, smoke_cfg, tmp_path):
    public_sd, victim_sd, _ = prepare_models(MODEL, digits, 0, smoke_cfg, Cache(tmp_path))
    victim = zoo.get_model(MODEL, dataset_shape="digits")
    victim.load_state_dict(victim_sd)
    with taoism.shield(victim, digits.x_test[:1], strategy="nonlinear") as sm:
        view = attacker_view(sm, victim)
    assert view["features.4.weight"].status == "obfuscated"
    assert view["features.4.weight"].tensor.shape[0] > victim_sd["features.4.weight"].shape[0]
    sur, rec = build_surrogate(victim, view, public_sd)
    # Un-shuffled by L2 match to the public model: the conv the victim fine-tuned from it is exact.
    assert torch.equal(sur.state_dict()["features.4.weight"], victim_sd["features.4.weight"])
    assert "features.4" in rec.row_orders


def test_queries_beyond_the_attacker_pool_are_refused(digits, smoke_cfg, tmp_path):
    spec = JobSpec(MODEL, digits.name, "none", 0, 10_000, smoke_cfg, None, digits.fingerprint)
    with pytest.raises(ConfigError, match="queries"):
        run_job(spec, Cache(tmp_path))


def test_ray_missing_is_a_config_error(tmp_path):
    pytest.importorskip("taoism")
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ray is installed")
    with pytest.raises(ConfigError, match=r"pip install 'taoism\[ray\]'"):
        run_attack_table(
            MODEL,
            DATASET,
            ["deep:1"],
            seeds=[0],
            ray=True,
            cache_dir=tmp_path,
            progress=False,
            smoke=True,
        )


# -- the table ---------------------------------------------------------------------------------


def test_table_white_box_vs_black_box(table_run):
    res, _, _, _ = table_run
    strategies = [r["strategy"] for r in res["rows"]]
    assert strategies[0] == "none" and strategies[-1] == "all"
    for s in ("deep:1", "shallow:1", "magnitude:0.01", "intermediate:0.8", "nonlinear"):
        assert s in strategies
    assert not res["skipped"]  # teeslice runs on slices taoism.teeslice trains from the victim
    assert not res["errors"]
    wb, bb = _row(res, "none"), _row(res, "all")
    # digits is easy: the tuned black-box attacker reaches ~83% against a ~93% victim, so the
    # ceiling of the MS ratio is ~1.13x here (the glyph tests check the harder setting)
    assert wb["metrics"]["fidelity"]["mean"] >= 0.90
    assert wb["metrics"]["fidelity"]["mean"] > bb["metrics"]["fidelity"]["mean"] + 0.1
    assert wb["metrics"]["ms_accuracy"]["mean"] > bb["metrics"]["ms_accuracy"]["mean"] + 0.05
    assert wb["metrics"]["mia_accuracy"]["mean"] > bb["metrics"]["mia_accuracy"]["mean"]
    assert abs(bb["x_black_box"]["ms_accuracy"]["mean"] - 1.0) < 1e-12
    assert wb["x_black_box"]["ms_accuracy"]["mean"] > 1.05
    assert bb["metrics"]["ms_accuracy"]["mean"] >= 2 * res["reference"]["chance"]
    assert wb["flops_tee_pct"] == 0.0 and bb["flops_tee_pct"] == 100.0
    for r in res["rows"]:
        assert r["latency_ms"]["mean"] > 0
        for m in (
            "ms_accuracy",
            "fidelity",
            "adv_success",
            "mia_accuracy",
            "generalization_gap",
            "confidence_gap",
        ):
            assert r["metrics"][m]["mean"] is not None, (r["strategy"], m)
    # Every job attacked what the deployment exposed, labelled by the deployed oracle.
    for j in res["jobs"]:
        assert j["attacker"]["oracle_matches_plain_victim"] == 1.0
    views = {j["job"]["strategy"]: j["attacker"]["view"] for j in res["jobs"]}
    assert views["all"]["absent"]["tensors"] == sum(v["tensors"] for v in views["all"].values())
    assert views["magnitude:0.01"]["zeroed"]["tensors"] > 0
    assert views["intermediate:0.8"]["morphed"]["tensors"] > 0
    assert views["nonlinear"]["obfuscated"]["tensors"] > 0
    assert "MS acc" in format_table(res)


def test_table_rows_also_try_the_black_box_start(table_run):
    """Every row that exposes something is attacked from the view and from the black-box start,
    and reports the best; the black-box start is the "all" row's own start, trained identically."""
    res, _, _, _ = table_run
    jobs = {j["job"]["strategy"]: j for j in res["jobs"]}
    assert set(jobs["all"]["starts"]) == {"view"}
    bb = jobs["all"]["starts"]["view"]
    for s in ("none", "deep:1", "shallow:1", "magnitude:0.01", "intermediate:0.8", "nonlinear"):
        starts = jobs[s]["starts"]
        assert set(starts) == {"view", "black_box"}, s
        for k in ("ms_accuracy", "fidelity", "mia_accuracy"):
            assert starts["black_box"][k] == bb[k], (s, k)
        row = _row(res, s)
        assert row["metrics"]["ms_accuracy"]["mean"] == max(
            v["ms_accuracy"] for v in starts.values()
        )
        assert row["metrics"]["mia_accuracy"]["mean"] == max(
            v["mia_accuracy"] for v in starts.values()
        )
        assert row["x_black_box"]["ms_accuracy"]["mean"] >= 1.0 - 1e-12, s
    # the switch is part of the job key, and off it attacks the view alone
    off = AttackConfig.preset(DATASET, smoke=True, black_box_start=False)
    on = AttackConfig.preset(DATASET, smoke=True)
    assert (
        JobSpec(MODEL, DATASET, "deep:1", 0, 50, off).key()
        != JobSpec(MODEL, DATASET, "deep:1", 0, 50, on).key()
    )


def test_table_teeslice_row_is_measured_on_the_sliced_model(table_run):
    res, _, _, _ = table_run
    assert "teeslice" not in res["skipped"]
    row = _row(res, "teeslice")
    assert row["model"] == MODEL  # the plain victim, sliced by taoism.teeslice
    for m in (
        "ms_accuracy",
        "fidelity",
        "adv_success",
        "mia_accuracy",
        "mia_auc",
        "victim_accuracy",
        "plain_victim_accuracy",
        "accuracy_vs_victim",
    ):
        v = row["metrics"][m]["mean"]
        assert v is not None and math.isfinite(v), m
    # the deployed sliced model learnt the private task, and is measured against the plain victim
    m = row["metrics"]
    assert m["victim_accuracy"]["mean"] > 0.5
    assert m["plain_victim_accuracy"]["mean"] == pytest.approx(
        _row(res, "none")["metrics"]["victim_accuracy"]["mean"], abs=1e-6
    )
    assert m["accuracy_vs_victim"]["mean"] == pytest.approx(
        m["victim_accuracy"]["mean"] - m["plain_victim_accuracy"]["mean"]
    )
    assert (
        _row(res, "none")["metrics"]["accuracy_vs_victim"]["mean"] is None
    )  # only the TEESlice row
    job = next(j for j in res["jobs"] if j["job"]["strategy"] == "teeslice")
    info = job["teeslice"]
    assert info["victim_test_accuracy"] == job["victim"]["victim_test_accuracy"]
    assert info["after_prune"]["proxies"] <= info["before_prune"]["proxies"] == 3
    assert info["prune_steps"] >= 1 and info["train_size"] > 0
    # the TEESlice model trained in phase 1 is reused (cache hit) by the job
    assert info["cached"]
    t = row["teeslice"]
    assert t["sliced_test_accuracy"]["mean"] == info["sliced_test_accuracy"]
    assert t["accuracy_vs_victim"]["mean"] == pytest.approx(
        info["sliced_test_accuracy"] - info["victim_test_accuracy"]
    )
    rep = job["report"]
    # Shares relative to the plain small_cnn (the "none" job's totals), not to the sliced model.
    plain = next(j for j in res["jobs"] if j["job"]["strategy"] == "none")["report"]
    assert (
        rep["relative_to"]["model"] == MODEL and rep["sliced_model"] == "taoism.teeslice.SlicedNet"
    )
    assert rep["relative_to"]["params_total"] == plain["params_total"]
    assert row["params_tee_pct"] == pytest.approx(100 * rep["params_tee"] / plain["params_total"])
    assert row["flops_tee_pct"] == pytest.approx(100 * rep["flops_tee"] / plain["flops_total"])
    assert 0 < row["params_tee_pct"] < 100 and 0 < row["flops_tee_pct"] < 100
    # the deployment's own TEE share is the one taoism.teeslice reports for the trained model
    assert rep["params_tee_pct_sliced"] == pytest.approx(info["after_prune"]["params_tee_pct"])
    # The attacker holds the public backbone in plaintext; slices and head are absent.
    view = job["attacker"]["view"]
    assert view["plaintext"]["tensors"] > 0 and view["absent"]["tensors"] > 0
    assert job["attacker"]["oracle_matches_plain_victim"] == 1.0
    # attacked fairly: three starts, the row reports the best of them for MS and for MIA
    assert set(job["starts"]) == {"sliced_unfrozen", "backbone_new_head", "plain_public"}
    assert row["metrics"]["ms_accuracy"]["mean"] == max(
        s["ms_accuracy"] for s in job["starts"].values()
    )
    assert row["metrics"]["mia_accuracy"]["mean"] == max(
        s["mia_accuracy"] for s in job["starts"].values()
    )
    text = format_table(res)
    assert "teeslice q=50: sliced model test" in text and "after pruning" in text


def test_sliced_counterpart_and_job_keys(smoke_cfg):
    assert sliced_counterpart("small_cnn") == "teeslice_small_cnn"
    assert sliced_counterpart("SmallCNN") == "teeslice_small_cnn"
    assert sliced_counterpart("teeslice_small_cnn") is None
    assert sliced_counterpart("vgg16_bn") is None
    a = JobSpec("small_cnn", "digits", "teeslice", 0, 50, smoke_cfg)
    b = JobSpec("teeslice_small_cnn", "digits", "teeslice", 0, 50, smoke_cfg)
    assert a.key() != b.key()
    # the TEESlice options are part of the teeslice job's key only
    other = AttackConfig.preset(DATASET, smoke=True, teeslice_options=(("student_epochs", 3),))
    assert JobSpec("small_cnn", "digits", "teeslice", 0, 50, other).key() != a.key()
    for s in ("none", "deep:1"):
        assert (
            JobSpec("small_cnn", "digits", s, 0, 50, other).key()
            == JobSpec("small_cnn", "digits", s, 0, 50, smoke_cfg).key()
        )
    assert other.teeslice_config(5).student_epochs == 3 and other.teeslice_config(5).seed == 5
    with pytest.raises(ConfigError, match="unknown TeeSliceConfig field"):
        AttackConfig(teeslice_options=(("no_such_field", 1),))
    with pytest.raises(ConfigError, match="max_proxies"):
        AttackConfig(teeslice_options=(("max_proxies", 9),))


def test_teeslice_skipped_with_the_reason_on_an_unsupported_backbone(digits):
    from taoism.security.sliced import teeslice_applies

    assert (
        teeslice_applies(MODEL, digits) is None and teeslice_applies("gap_resnet20", digits) is None
    )
    assert "cannot place proxies on a TEESliceSmallCNN" in teeslice_applies(
        "teeslice_small_cnn", digits
    )


def test_table_files(table_run):
    res, _, out, _ = table_run
    files = {k: Path(v) for k, v in res["files"].items()}
    assert set(files) == {"json", "csv", "png"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in files.values())
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(files["json"].read_text())
    assert [r["strategy"] for r in loaded["rows"]] == [r["strategy"] for r in res["rows"]]
    header = files["csv"].read_text().splitlines()[0].split(",")
    assert {
        "strategy",
        "flops_tee_pct",
        "ms_accuracy_mean",
        "ms_accuracy_x_bb_mean",
        "mia_accuracy_std",
        "latency_ms_mean",
    } <= set(header)


def test_second_run_hits_the_cache_in_worker_processes(table_run, tmp_path):
    res, cache, _, first_s = table_run
    t0 = time.perf_counter()
    again = run_attack_table(
        MODEL,
        DATASET,
        None,
        queries=[50],
        seeds=[0],
        cache_dir=cache,
        progress=False,
        smoke=True,
        jobs=2,
    )
    n = len(res["jobs"])
    assert again["cache"]["job_hits"] == n and again["cache"]["job_misses"] == 0
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in res["rows"]]
    assert time.perf_counter() - t0 < first_s


def test_same_seed_same_table(table_run, tmp_path):
    """Recomputed from scratch (fresh cache: public model, victim, attacks) -> identical metrics."""
    res, _, _, _ = table_run
    fresh = run_attack_table(
        MODEL,
        DATASET,
        ["deep:1"],
        queries=[50],
        seeds=[0],
        cache_dir=tmp_path,
        progress=False,
        smoke=True,
    )
    assert fresh["cache"]["job_hits"] == 0
    for r in fresh["rows"]:
        assert r["metrics"] == _row(res, r["strategy"])["metrics"], r["strategy"]
        assert r["flops_tee_pct"] == _row(res, r["strategy"])["flops_tee_pct"]


def test_sweep_finds_the_sweet_spot(table_run):
    _, cache, _, _ = table_run
    res = sweep(
        MODEL,
        DATASET,
        strategies=("deep",),
        queries=50,
        seeds=[0],
        cache_dir=cache,
        progress=False,
        smoke=True,
    )
    fam = res["families"]["deep"]
    n_units = len(zoo.units(zoo.get_model(MODEL, dataset_shape="digits")))
    assert [p["config"] for p in fam["points"]] == [f"deep:{k}" for k in range(n_units + 1)]
    flops = [p["flops_tee_pct"] for p in fam["points"]]
    assert flops == sorted(flops) and flops[0] == 0.0
    bb = res["black_box"]["mean"]
    if fam["c_star"] is None:
        assert fam["c_star_flops_tee_pct"] == 100.0
    else:
        first = next(p for p in fam["points"] if p["ms_accuracy"]["mean"] <= 1.05 * bb)
        assert fam["c_star"] == first["config"]
        assert fam["c_star_flops_tee_pct"] == first["flops_tee_pct"]
    assert res["cache"]["job_hits"] >= 2  # deep:1 and all come from the table's cache


# -- the attacker's tuning -----------------------------------------------------------------------


def test_fit_surrogate_chooses_on_held_out_queries_only(digits):
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=3)
    x, y = digits.x_train[:200], digits.y_train[:200]
    grid = AttackGrid(
        lrs=(0.001, 0.01, 0.1), epochs=(2, 6), val_fraction=0.2, batch_size=32, widen=0
    )
    sur, tun = fit_surrogate(net, x, y, {}, grid, seed=0)
    assert set(tun["grid"]) == {"0.001", "0.01", "0.1", "paper", "start"}
    assert tun["val_samples"] == 40
    best = max(v["accuracy"] for d in tun["grid"].values() for v in d.values())
    assert tun["val_accuracy"] == best
    assert tun["grid"][str(tun["lr"])][str(tun["epochs"])]["accuracy"] == best
    assert accuracy(sur, digits.x_test, digits.y_test) > 0.5
    # the start is left untouched; the same seed gives the same choice and weights
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            net.state_dict().values(),
            zoo.get_model(MODEL, dataset_shape="digits", seed=3).state_dict().values(),
        )
    )
    sur2, tun2 = fit_surrogate(net, x, y, {}, grid, seed=0)
    assert tun2 == tun and all(
        torch.equal(a, b) for a, b in zip(sur.state_dict().values(), sur2.state_dict().values())
    )
    assert grid_edges({"lr": 0.1, "epochs": 2}, grid) == {"lr": True, "epochs": False}
    assert grid_edges({"lr": "paper", "epochs": 6}, grid) == {"lr": False, "epochs": True}


def test_fit_surrogate_early_stop_and_halving(digits):
    """Early stopping and successive halving only cut runs short: every recorded point equals
    the full grid's, a stopped run's last point is its first non-improvement, and after the first
    epoch count only ``keep`` rates go on."""
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=3)
    x, y = digits.x_train[:200], digits.y_train[:200]
    kw = dict(lrs=(0.0003, 0.003, 0.03, 0.3), epochs=(1, 2, 4, 8), batch_size=32, widen=0)
    _, full = fit_surrogate(net, x, y, {}, AttackGrid(**kw), seed=0)
    _, cut = fit_surrogate(net, x, y, {}, AttackGrid(**kw, early_stop=True, keep=2), seed=0)
    went_on = [lr for lr, d in cut["grid"].items() if len(d) > 1]
    assert len(went_on) <= 2 and all(len(d) >= 1 for d in cut["grid"].values())
    for lr, d in cut["grid"].items():
        for ep, v in d.items():
            assert v == full["grid"][lr][ep]  # the same run, only shorter
        accs = [d[e]["accuracy"] for e in sorted(d, key=int)]
        flat = [i for i in range(1, len(accs)) if accs[i] <= max(accs[:i])]
        assert flat in ([], [len(accs) - 1])  # stopped at its first non-improvement, or never
    with pytest.raises(ConfigError, match="keep"):
        AttackGrid(keep=0)


def test_fit_surrogate_widens_the_grid_past_an_edge(digits):
    """Rates far too small and too few epochs put the best point on both edges: the grid grows
    past them (one more rate, twice the epochs), the original points are unchanged, and the
    edge guard reads the widened axes."""
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=3)
    x, y = digits.x_train[:200], digits.y_train[:200]
    kw = dict(lrs=(1e-3, 3e-3), epochs=(1, 2), batch_size=32, paper_point=False)
    _, narrow = fit_surrogate(net, x, y, {}, AttackGrid(**kw, widen=0), seed=0)
    assert narrow["lr"] == 3e-3 and narrow["epochs"] == 2  # on both edges
    assert grid_edges(narrow, AttackGrid(**kw)) == {"lr": True, "epochs": True}
    _, wide = fit_surrogate(net, x, y, {}, AttackGrid(**kw, widen=2), seed=0)
    assert wide["grid_lrs"][:3] == [1e-3, 3e-3, 0.009] and len(wide["grid_lrs"]) in (3, 4)
    assert wide["grid_epochs"][:3] == [1, 2, 4] and len(wide["grid_epochs"]) in (3, 4)
    for lr, d in narrow["grid"].items():
        for ep, v in d.items():
            assert wide["grid"][lr][ep] == v  # the same runs, continued
    assert wide["val_accuracy"] > narrow["val_accuracy"]
    assert wide["grid"][str(wide["lr"])][str(wide["epochs"])]["accuracy"] == wide["val_accuracy"]
    assert grid_edges(wide, AttackGrid(**kw)) == grid_edges(
        {"lr": wide["lr"], "epochs": wide["epochs"]},
        AttackGrid(**{**kw, "lrs": tuple(wide["grid_lrs"]), "epochs": tuple(wide["grid_epochs"])}),
    )
    with pytest.raises(ConfigError, match="widen"):
        AttackGrid(widen=-1)


def test_fit_surrogate_keeps_the_start_when_no_training_helps(digits):
    """A start that is already good and rates that wreck it: the untrained start is chosen
    (epochs 0), never on an edge, and returned unchanged."""
    net = zoo.get_model(MODEL, dataset_shape="digits", seed=3)
    x, y = digits.x_train[:200], digits.y_train[:200]
    good, _ = fit_surrogate(
        net, x, y, {}, AttackGrid(lrs=(0.003, 0.01, 0.03), epochs=(5, 10), widen=0), seed=0
    )
    grid = AttackGrid(lrs=(3.0, 10.0), epochs=(2,), paper_point=False, widen=0)
    sur, tun = fit_surrogate(good, x, y, {}, grid, seed=0)
    assert tun["lr"] == "start" and tun["epochs"] == 0, tun
    assert tun["val_accuracy"] > max(v["accuracy"] for v in tun["grid"]["3.0"].values())
    assert grid_edges(tun, grid) == {"lr": False, "epochs": False}
    assert all(
        torch.equal(a, b) for a, b in zip(sur.state_dict().values(), good.state_dict().values())
    )


def test_run_graph_keeps_call_order_and_checks_deps():
    import operator

    from taoism.security.runner import run_graph

    calls = [(operator.add, (i, 10)) for i in range(5)]
    deps = [[], [0], [0], [1, 2], []]
    assert run_graph(calls, deps, jobs=2, desc="t", progress=False) == [10, 11, 12, 13, 14]
    assert run_graph(calls, deps, jobs=1, desc="t", progress=False) == [10, 11, 12, 13, 14]
    with pytest.raises(ConfigError, match="deps"):
        run_graph(calls, [[], [1], [], [], []], jobs=2, desc="t", progress=False)


# -- glyphs: the smoke of the evaluation the paper's effect needs ---------------------------------

GLYPHS = "glyphs"


@pytest.fixture(scope="module")
def glyph_run(tmp_path_factory):
    """White-box and black-box on a tiny glyph set (10 classes, 5 queries per class)."""
    cache = tmp_path_factory.mktemp("glyph-cache")
    t0 = time.perf_counter()
    res = run_attack_table(
        MODEL,
        GLYPHS,
        ["none"],
        queries_per_class=[5],
        seeds=[0],
        cache_dir=cache,
        progress=False,
        smoke=True,
    )
    return res, cache, time.perf_counter() - t0  # about 100 s on the loaded 2-core box


def test_glyphs_white_box_beats_black_box_and_guards(glyph_run):
    res, _, _ = glyph_run
    assert not res["errors"] and not res["skipped"]
    ref = res["reference"]
    wb, bb = _row(res, "none", 50), _row(res, "all", 50)
    assert ref["chance"] == pytest.approx(0.1)
    assert wb["metrics"]["ms_accuracy"]["mean"] > bb["metrics"]["ms_accuracy"]["mean"] + 0.1
    assert wb["metrics"]["mia_accuracy"]["mean"] > bb["metrics"]["mia_accuracy"]["mean"]
    # guard: the black-box attacker learns something (at least twice chance)
    assert bb["metrics"]["ms_accuracy"]["mean"] >= 2 * ref["chance"]
    # guard: the black-box attacker's chosen setting is inside its grid (not at an edge)
    for t in bb["tuning"]:
        assert t["at_edge"] == {"lr": False, "epochs": False}, t
    # the victim's own figures and the public model's transfer value are reported
    v = ref["victim"]
    assert v["victim_test_accuracy"]["mean"] > 0.8 and v["members_per_class"]["mean"] >= 10
    assert (
        v["public_probe_accuracy"]["mean"] is not None
        and v["random_probe_accuracy"]["mean"] is not None
    )
    assert ref["per_queries"]["50"]["ms_ceiling_x_black_box"] > 1.0
    assert "chance" in format_table(res)


def test_glyphs_attacker_start_never_holds_victim_values(glyph_run):
    """Guard: every tensor the host does not expose starts from public or fresh values."""
    res, cache, _ = glyph_run
    cfg = AttackConfig.preset(GLYPHS, smoke=True)
    ds = dataset_for(GLYPHS, None, cache, cfg.data_options)
    for strategy, model in (
        ("all", MODEL),
        ("deep:1", MODEL),
        ("teeslice", MODEL),
        ("teeslice", "teeslice_small_cnn"),
    ):
        _, victim_sd, _ = prepare_models(model, ds, 0, cfg, Cache(cache))
        victim = build(model, ds)
        victim.load_state_dict(victim_sd)
        other_init = build(
            model, ds, 777
        ).state_dict()  # constant inits (e.g. gate logits 0) match anyway
        spec = JobSpec(model, ds.name, strategy, 0, 50, cfg, None, ds.fingerprint)
        if model == MODEL and strategy == "teeslice":  # the slices taoism.teeslice trains
            victim = sliced_model(MODEL, ds, 0, cfg, Cache(cache))[0]
            victim_sd = victim.state_dict()
            with torch.no_grad():
                other = attacker_sliced(MODEL, ds, victim, 777, build(MODEL, ds, 5).state_dict())
            other_init = other.state_dict()
        view = deploy(spec, victim, ds, ds.x_train[:4])["view"]
        for start in attack_starts(spec, ds, view, Cache(cache)):
            sd = start.model.state_dict()
            for name, t in sd.items():
                if not t.is_floating_point():
                    continue
                vname = (
                    name
                    if start.name in ("view", "black_box", "sliced_unfrozen")
                    else f"backbone.{name}"
                )
                exposed = view.get(vname) is not None and view[vname].status == "plaintext"
                if exposed or vname not in victim_sd or victim_sd[vname].shape != t.shape:
                    continue
                if torch.equal(victim_sd[vname], other_init[vname]):
                    continue
                assert not torch.equal(t, victim_sd[vname]), (strategy, start.name, name)


def test_glyphs_same_seed_same_table(glyph_run, tmp_path):
    res, _, _ = glyph_run
    again = run_attack_table(
        MODEL,
        GLYPHS,
        ["none"],
        queries_per_class=[5],
        seeds=[0],
        cache_dir=tmp_path,
        progress=False,
        smoke=True,
    )
    assert again["cache"]["job_hits"] == 0
    for r in again["rows"]:
        assert r["metrics"] == _row(res, r["strategy"], 50)["metrics"], r["strategy"]
