"""Core: capture, placement, partition, the enclave process, and equality with plain PyTorch.

Every numeric check compares with the plain model in eval mode at rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from conftest import assert_same
from models import AllLayers, TwoInTwoOut, WithUntraceable

import taoism
from taoism import EnclaveConfig, EnclaveMode
from taoism.backends.process import wait_gone
from taoism.capture import capture
from taoism.placement import PlacementRules, build_plan
from taoism.zoo import example_input, get_model

E, G, A = EnclaveMode.ENCLAVE, EnclaveMode.GPU, EnclaveMode.AUTO


# -- every layer type, in every placement ---------------------------------------------------


@pytest.fixture(scope="module")
def all_layers():
    torch.manual_seed(1)
    return AllLayers().eval(), torch.randn(3, 3, 16, 16)


@pytest.mark.parametrize(
    "placement",
    [
        {"_default": "ENCLAVE"},
        {"_default": "GPU"},
        {"re:.*(relu|act|pool|bn).*": "ENCLAVE", "_default": "GPU"},  # non-linear layers shielded
        {
            "conv": "ENCLAVE",
            "gconv": "ENCLAVE",
            "fc2": "ENCLAVE",
            "ln": "ENCLAVE",
            "_default": "GPU",
        },
        {"sconv": "ENCLAVE", "_default": "AUTO"},  # everything downstream follows into the enclave
    ],
    ids=["enclave", "device", "nonlinear", "mixed", "auto"],
)
def test_all_layer_types_match_plain(all_layers, placement):
    model, x = all_layers
    ref = model(x)
    with taoism.shield(model, x, placement) as sm:
        assert_same(sm(x), ref)
        for b in (1, 5):  # other batch sizes than the example
            xb = torch.randn(b, 3, 16, 16)
            assert_same(sm(xb), model(xb))


def test_alternating_placement_every_node(all_layers):
    """Every other graph node in the enclave: the worst case for crossings and residuals."""
    model, x = all_layers
    names = [
        n.name for n in capture(model, x).gm.graph.nodes if n.op not in ("placeholder", "output")
    ]
    placement = {n: ("ENCLAVE" if i % 2 else "GPU") for i, n in enumerate(names)}
    with taoism.shield(model, x, placement) as sm:
        assert sm.plan.totals()["segments"] >= len(names) // 2
        assert_same(sm(x), model(x))


def test_multiple_inputs_and_structured_outputs():
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, y = torch.randn(2, 6), torch.randn(2, 3)
    ref = model(x, y)
    with taoism.shield(model, (x, y), {"a": "ENCLAVE", "re:sigmoid.*": "ENCLAVE"}) as sm:
        out = sm(x, y)
        assert set(out) == {"sum", "pair"}
        assert_same(out["sum"], ref["sum"])
        assert_same(out["pair"][0], ref["pair"][0])
        assert_same(out["pair"][1], ref["pair"][1])


# -- the model zoo --------------------------------------------------------------------------

ZOO_CIFAR = ["resnet18", "resnet34", "resnet50", "vgg16_bn", "alexnet", "teeslice_resnet18"]


@pytest.mark.parametrize("name", ZOO_CIFAR)
def test_zoo_cifar_all_modes(name):
    model = get_model(name, dataset_shape="cifar")
    x = example_input(name, "cifar", batch=2)
    ref = model(x)
    from taoism.cli import default_split

    for placement in ({"_default": "GPU"}, {"_default": "ENCLAVE"}, default_split(model)):
        with taoism.shield(model, x, placement) as sm:
            assert_same(sm(x), ref)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "alexnet"])
def test_zoo_imagenet_in_enclave(name):
    model = get_model(name, dataset_shape="imagenet")
    x = example_input(name, "imagenet", batch=1)
    # The enclave runs its torch ops on EnclaveConfig().threads threads; float32 kernels reduce in
    # a thread-count-dependent order (ResNet-50 logits: 3e-5 apart at 1 vs 2 threads, std 25),
    # so the reference runs on the same count.
    prev = torch.get_num_threads()
    torch.set_num_threads(EnclaveConfig().threads)
    try:
        ref = model(x)
    finally:
        torch.set_num_threads(prev)
    with taoism.shield(model, x, {"_default": "ENCLAVE"}) as sm:
        assert_same(sm(x), ref)


def test_small_cnn_shapes():
    for shape in ("mnist", "digits"):
        model = get_model("small_cnn", dataset_shape=shape)
        x = example_input("small_cnn", shape, batch=4)
        with taoism.shield(model, x, {"re:features\\.[26]": "ENCLAVE", "fc": "ENCLAVE"}) as sm:
            assert_same(sm(x), model(x))


# -- placement and partition ----------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    model = get_model("resnet18", dataset_shape="cifar")
    return model, example_input("resnet18", "cifar", batch=2)


def _plan(model, x, placement):
    return build_plan(capture(model, x), PlacementRules.from_spec(placement))


def test_matching_order_exact_then_regex_then_default(resnet):
    model, x = resnet
    plan = _plan(
        model,
        x,
        {"layer1": "ENCLAVE", "layer1.0.conv1": "GPU", "re:.*relu.*": "ENCLAVE", "_default": "GPU"},
    )
    where = {l.info.name: l.placement for l in plan.layers}
    assert where["layer1_0_conv1"] is G  # the longer exact name wins
    assert where["layer1_0_bn1"] is E  # module "layer1" covers everything inside it
    assert where["layer1_0_conv2"] is E
    assert where["layer2_0_relu1"] is E  # regex
    assert where["layer2_0_conv1"] is G  # default
    assert where["fc"] is G


def test_auto_runs_where_inputs_are(resnet):
    model, x = resnet
    plan = _plan(model, x, {"layer3": "ENCLAVE", "_default": "AUTO"})
    where = {l.info.name: l.placement for l in plan.layers}
    assert where["conv1"] is G  # inputs on the host
    assert where["layer2_1_conv2"] is G
    assert where["layer3_0_conv1"] is E
    assert where["layer4_0_conv1"] is E  # follows its input into the enclave
    assert where["fc"] is E
    assert all(l.requested is A for l in plan.layers if not l.info.module_path.startswith("layer3"))


def test_residual_crosses_once(resnet):
    """The block input feeds conv1 (enclave) and the residual add (device): sent in only once."""
    model, x = resnet
    placement = {"layer1.0.conv1": "ENCLAVE", "layer1.0.bn2": "ENCLAVE", "_default": "GPU"}
    plan = _plan(model, x, placement)
    sent = [v for s in plan.enclave_segments for v in s.send_in]
    assert len(sent) == len(set(sent))
    with taoism.shield(model, x, placement) as sm:
        assert_same(sm(x), model(x))


def test_inference_starting_on_the_device_wakes_the_enclave_first(resnet):
    """An inference whose first segment runs on the device tells the backend first (prepare:
    an idle enclave is woken while that segment runs); one starting in the enclave does not."""
    model, x = resnet
    for placement, want in (
        ({"relu": "ENCLAVE", "_default": "GPU"}, 2),
        ({"_default": "ENCLAVE"}, 0),
    ):
        with taoism.shield(model, x, placement) as sm:
            calls: list[int] = []
            real = sm._backend.prepare
            sm._backend.prepare = lambda: (calls.append(1), real())[1]
            assert_same(sm(x), model(x))
            assert_same(sm(x), model(x))
            assert len(calls) == want, placement


def test_values_kept_in_enclave_are_not_resent(resnet):
    """The stem ReLU output stays in the enclave for the residual add two segments later."""
    model, x = resnet
    placement = {"relu": "ENCLAVE", "add": "ENCLAVE", "_default": "GPU"}
    plan = _plan(model, x, placement)
    first, second = plan.enclave_segments[:2]
    assert "relu" in first.keep and "relu" in first.returns  # kept inside and sent to the device
    assert "relu" in second.inputs and "relu" not in second.send_in  # ... and not sent back in
    with taoism.shield(model, x, placement) as sm:
        assert_same(sm(x), model(x))


def test_unknown_name_is_an_error(resnet):
    model, x = resnet
    with pytest.raises(taoism.PlacementError, match="layer9"):
        _plan(model, x, {"layer9": "ENCLAVE"})
    with pytest.raises(taoism.PlacementError, match="matches no node"):
        _plan(model, x, {"re:nothing_like_this": "ENCLAVE"})
    with pytest.raises(taoism.ConfigError, match="does not compile"):
        _plan(model, x, {"re:(": "ENCLAVE"})
    with pytest.raises(taoism.ConfigError, match="unknown placement"):
        _plan(model, x, {"fc": "TPU"})


def test_plan_accounting_by_hand():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = torch.randn(5, 4)
    plan = _plan(model, x, {"2": "ENCLAVE"})
    t = plan.totals()
    assert t["params"] == 4 * 3 + 3 + 3 * 2 + 2
    assert t["params_enclave"] == 3 * 2 + 2
    # FLOPs per sample: linear = 2*in*out + out (bias), relu = numel
    assert t["flops"] == (2 * 4 * 3 + 3) + 3 + (2 * 3 * 2 + 2)
    assert t["flops_enclave"] == 2 * 3 * 2 + 2
    assert t["crossings"] == 2  # the ReLU output in, the logits out
    assert t["bytes_crossing"] == (5 * 3 + 5 * 2) * 4


def test_plan_save_and_reload(resnet, tmp_path):
    model, x = resnet
    with taoism.shield(model, x, {"layer2": "ENCLAVE", "re:.*relu.*": "ENCLAVE"}) as sm:
        path = tmp_path / "plan.json"
        sm.plan.save(path)
        before = [l.placement for l in sm.plan.layers]
    data = json.loads(path.read_text())
    assert data["format"] == "taoism-plan/1" and data["totals"]["enclave_nodes"] > 0
    again = _plan(model, x, str(path))
    assert [l.placement for l in again.layers] == before


def test_unsupported_module_in_enclave_is_refused_up_front():
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(3, 3), Custom()).eval()
    x = torch.randn(2, 3)
    with pytest.raises(taoism.PlacementError, match="Custom|whitelist"):
        taoism.shield(model, x, {"_default": "ENCLAVE"}, leaf_modules=[Custom])
    # the same opaque module runs fine on the device
    with taoism.shield(model, x, {"0": "ENCLAVE"}, leaf_modules=[Custom]) as sm:
        assert_same(sm(x), model(x))


def test_untraceable_model_names_the_submodule_and_the_fix():
    model = WithUntraceable().eval()
    x = torch.randn(2, 4)
    with pytest.raises(taoism.CaptureError, match=r"'odd'.*leaf_modules"):
        taoism.shield(model, x)
    with taoism.shield(model, x, {"pre": "ENCLAVE", "post": "ENCLAVE"}, leaf_modules=["odd"]) as sm:
        assert_same(sm(x), model(x))


# -- inputs ---------------------------------------------------------------------------------


def test_bad_inputs_are_typed_errors(resnet):
    model, x = resnet
    with taoism.shield(model, x, {"fc": "ENCLAVE"}) as sm:
        with pytest.raises(taoism.InputError, match="shape"):
            sm(torch.randn(2, 3, 28, 28))
        with pytest.raises(taoism.InputError, match="dtype"):
            sm(x.double())
        with pytest.raises(taoism.InputError, match="input tensor"):
            sm(x, x)
        with pytest.raises(taoism.InputError, match="torch.Tensor"):
            sm(x.numpy())
        assert_same(sm(x), model(x))  # still usable afterwards


# -- the enclave process --------------------------------------------------------------------


def test_enclave_is_a_separate_process_with_its_own_threads(resnet):
    model, x = resnet
    with taoism.shield(model, x, {"fc": "ENCLAVE"}, threads=1) as sm:
        pid = sm.backend.pid
        assert pid is not None and pid != os.getpid()
        st = sm.stats()
        assert st["enclave"]["threads"] == 1
        assert st["enclave"]["weight_elements"] == 512 * 10 + 10
    assert wait_gone(pid), "closing the shielded model must stop the enclave process"


def test_gc_stops_the_enclave(resnet):
    model, x = resnet
    sm = taoism.shield(model, x, {"fc": "ENCLAVE"})
    pid = sm.backend.pid
    del sm
    gc.collect()
    assert wait_gone(pid)


def test_crash_is_reported_and_reload_recovers(resnet):
    model, x = resnet
    sm = taoism.shield(model, x, {"layer4": "ENCLAVE"})
    try:
        os.kill(sm.backend.pid, signal.SIGKILL)
        with pytest.raises(taoism.EnclaveCrashed, match="reload"):
            sm(x)
        with pytest.raises(taoism.EnclaveCrashed, match="reload"):
            sm(x)  # stays failed, does not hang
        sm.reload(model)
        assert_same(sm(x), model(x))
    finally:
        sm.close()


def test_hung_enclave_times_out_and_is_stopped(resnet):
    model, x = resnet
    cfg = taoism.EnclaveConfig(timeout_s=1.0)
    sm = taoism.shield(model, x, {"fc": "ENCLAVE"}, enclave=cfg)
    pid = sm.backend.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(taoism.BoundaryTimeout, match="timeout_s"):
            sm(x)
        assert wait_gone(pid)
        with pytest.raises(taoism.EnclaveCrashed):
            sm(x)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        sm.close()


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_enclave_left_behind_when_host_dies(how, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, torch, taoism
        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
        sm = taoism.shield(m, torch.randn(1, 4), {{"1": "ENCLAVE"}})
        sm(torch.randn(2, 4))
        print(sm.backend.pid, flush=True)
        if {how!r} == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(0)  # no close(): the exit itself must stop the enclave
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    pid = int(proc.stdout.strip().splitlines()[-1])
    assert wait_gone(pid, timeout=10.0), f"enclave {pid} outlived its host ({how})"


def test_backend_registry():
    assert "sim" in taoism.available_backends()
    with pytest.raises(taoism.ConfigError, match="unknown enclave backend"):
        taoism.get_backend("nope")
    with pytest.raises(taoism.BackendUnavailable, match="SGX|gramine"):
        taoism.get_backend("gramine")
    with pytest.raises(taoism.BackendUnavailable):
        taoism.shield(
            nn.Linear(2, 2), torch.randn(1, 2), {"_default": "ENCLAVE"}, backend="gramine"
        )


def test_gramine_refuses_with_the_transport_gap_and_what_the_machine_lacks(tmp_path, monkeypatch):
    from taoism.backends import gramine

    with pytest.raises(taoism.BackendUnavailable) as info:
        taoism.get_backend("gramine")
    msg = str(info.value)
    assert "SCM_RIGHTS" in msg and "untrusted_shm" in msg and "backend='sim'" in msg
    assert "also lacks" in msg and "SGX device" in msg and "gramine-sgx" in msg
    # a machine with SGX, Gramine and a manifest still gets the transport refusal, and only it
    manifest = tmp_path / "taoism.manifest.sgx"
    manifest.write_bytes(b"signed")
    monkeypatch.setattr(gramine.os.path, "exists", lambda p: p == gramine.SGX_DEVICES[0])
    monkeypatch.setattr(gramine.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    config = taoism.EnclaveConfig(backend="gramine", gramine_manifest=str(manifest))
    assert gramine.GramineBackend.platform_gaps(config) == []
    with pytest.raises(taoism.BackendUnavailable) as info:
        taoism.get_backend("gramine", config)
    assert str(info.value) == gramine.TRANSPORT_GAP


# -- no shielded weight on the host ---------------------------------------------------------


def _reachable_tensors(root) -> list[torch.Tensor]:
    """Every tensor reachable from ``root`` through instance state (not through modules/classes)."""
    import types

    seen, out, stack = set(), [], [root]
    skip = (
        type,
        types.ModuleType,
        types.FunctionType,
        types.BuiltinFunctionType,
        types.CodeType,
        types.FrameType,
    )
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out.append(obj)
            continue
        stack.extend(gc.get_referents(obj))
    return out


def test_host_holds_no_shielded_weight():
    model = get_model("resnet18", dataset_shape="cifar")
    x = example_input("resnet18", "cifar", batch=1)
    ref = model(x)
    shielded = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("layer3", "fc")) and v.dtype.is_floating_point and v.numel() > 1
    }
    sm = taoism.shield(model, x, {"layer3": "ENCLAVE", "fc": "ENCLAVE"})
    try:
        del model
        gc.collect()
        assert_same(sm(x), ref)
        tensors = _reachable_tensors(sm)
        assert len(tensors) > 10  # the device segments' weights are reachable: the walk works
        for name, w in shielded.items():
            for t in tensors:
                assert not (t.shape == w.shape and torch.equal(t.detach().cpu(), w)), (
                    f"shielded weight {name} is reachable from the host side"
                )
        assert not any(k.startswith(("layer3", "fc")) for k in sm.host_state_dict())
        assert any(k.startswith("layer2") for k in sm.host_state_dict())
    finally:
        sm.close()


# -- profiling ------------------------------------------------------------------------------


def test_profile_breakdown(resnet):
    model, x = resnet
    with taoism.shield(model, x, {"re:.*relu.*": "ENCLAVE"}) as sm:
        prof = sm.profile(x, repeats=3, warmup=1)
        assert prof.end_to_end.n == 3 and prof.end_to_end.median > 0
        assert {l.name for l in prof.layers} == {l.info.name for l in sm.plan.layers}
        assert all(l.time.median > 0 for l in prof.layers)
        enc = [s for s in prof.segments if s.side == "ENCLAVE"]
        assert enc and all(s.enclave_compute > 0 and s.crypto > 0 and s.crossings == 2 for s in enc)
        t = prof.totals()
        assert t["crossings"] == sm.plan.crossings()
        json.dumps(prof.to_json())
        assert "end-to-end" in prof.table()


def test_reload_reapplies_the_strategy():
    """After a crash, reload() must deploy the strategy again, never the unprotected model."""
    model = get_model("small_cnn", dataset_shape="digits")
    x = example_input("small_cnn", "digits", batch=2)
    sm = taoism.shield(model, x, strategy="intermediate:0.8")
    try:
        os.kill(sm.backend.pid, signal.SIGKILL)
        with pytest.raises(taoism.EnclaveCrashed):
            sm(x)
        sm.reload(model)
        assert_same(sm(x), model(x))
        original = model.state_dict()
        host = sm.host_state_dict()
        morphed = [
            k
            for k in host
            if k.endswith("weight")
            and k in original
            and host[k].shape == original[k].shape
            and host[k].dim() > 1
        ]
        assert morphed, "intermediate offloads at least the last layer to the device"
        assert all(not torch.equal(host[k].cpu(), original[k]) for k in morphed)
    finally:
        sm.close()
