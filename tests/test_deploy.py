"""Deployment threat model end to end: owner package, key service process, attested enclave, clean host.

Real processes and real cryptography: the owner packages in its own process (the test process
never holds a shielded weight), the key service is ``python -m taoism.trust.keyserver`` started
and stopped here, the enclave is the package-mode enclave process. Memory scans know each
64-byte run of a weight only by its first 8 bytes and SHA-256 (``tests/_deploy_helpers.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _deploy_helpers import drop_ptrace, scan
from conftest import assert_same
from test_trust import KeyServerProcess

import taoism
from taoism.backends import get_backend
from taoism.config import EnclaveConfig
from taoism.errors import (
    AttestationError,
    ConfigError,
    KeyReleaseError,
    PackageError,
    ProgramError,
    SignatureError,
)
from taoism.protocol.kinds import Kind
from taoism.runtime.deploy import PackageSource, start_package_enclave
from taoism.trust import KeyServiceClient, keygen, open_package
from taoism.trust.keys import fingerprint, load_private_key, load_public_key
from taoism.trust.measurement import package_measurement

HELPERS = Path(__file__).with_name("_deploy_helpers.py")
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(taoism.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    ),
}


def _enclave_children() -> list[int]:
    """Enclave processes whose parent is this test process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"taoism.enclave.server" in cmd:
            out.append(int(d.name))
    return out


def _no_enclave_left() -> None:
    deadline = time.monotonic() + 5
    while _enclave_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _enclave_children(), "an enclave process was left behind"


def _key_server(d: Path, name: str, allow: list[str], *extra: str) -> KeyServerProcess:
    pkg = {"path": d / f"{name}.taoism", "key_file": d / f"{name}.taoism.key"}
    keys = {"owner_pub": d / "owner.pub", "platform_pub": d / "platform.pub"}
    return KeyServerProcess(pkg, keys, allow, *extra)


@pytest.fixture(scope="module")
def owner(tmp_path_factory) -> Path:
    """Owner keys, platform key and the packages, made by the owner in its own process."""
    d = tmp_path_factory.mktemp("owner")
    keygen(d, "owner")
    keygen(d, "platform")
    keygen(d / "other", "owner")
    subprocess.run(
        [sys.executable, str(HELPERS), "owner", str(d), str(d / "owner.key")],
        check=True,
        timeout=300,
        env=ENV,
    )
    return d


@pytest.fixture(scope="module")
def meta(owner) -> dict:
    return json.loads((owner / "meta.json").read_text())


@pytest.fixture(scope="module")
def measurement(owner) -> str:
    return package_measurement(fingerprint(load_public_key(owner / "owner.pub"))).hex()


@pytest.fixture(scope="module")
def servers(owner, measurement):
    """Key services: the genuine ones, one allowing another measurement, one with a 1 s nonce TTL."""
    made = {
        "small": _key_server(owner, "small", [measurement]),
        "large": _key_server(owner, "large", [measurement]),
        "slices": _key_server(owner, "slices", [measurement]),
        "wrong": _key_server(owner, "small", ["ab" * 32]),
        "short": _key_server(owner, "small", [measurement], "--nonce-ttl", "1"),
    }
    try:
        assert all(s.address for s in made.values())
        yield {k: s.address for k, s in made.items()}
    finally:
        for s in made.values():
            s.stop()


def _deploy(owner: Path, address: str, name: str = "small", **kw):
    kw.setdefault("owner_public", owner / "owner.pub")
    return taoism.deploy(
        owner / f"{name}.taoism", address, platform_key=owner / "platform.key", device="cpu", **kw
    )


def _refs(owner: Path, name: str, meta: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    def load(suffix: str, shape) -> torch.Tensor:
        return torch.frombuffer(
            bytearray((owner / f"{name}.{suffix}").read_bytes()), dtype=torch.float32
        ).reshape(shape)

    return [(load(f"x{i}", (2, 3, 32, 32)), load(f"y{i}", meta[name]["y_shape"])) for i in range(3)]


# ------------------------------------------------------------------------------ deploy works, host stays clean


@pytest.mark.parametrize("name", ["small", "large", "slices"])
def test_deploy_equals_plain_and_host_holds_no_shielded_weight(owner, meta, servers, name):
    with _deploy(owner, servers[name], name) as sm:
        assert isinstance(sm, taoism.ShieldedModel)
        for x, y in _refs(owner, name, meta):
            assert y.std() > 1e-3  # outputs are not near-constant
            assert_same(sm(x), y)
        assert (
            sm.plan.enclave_segments
            and sm.stats()["enclave"]["weight_elements"] == meta[name]["shielded_elements"]
        )
        held = sm.host_state_dict()
        host_key = {
            "small": "features.0.weight",
            "large": "conv1.weight",
            "slices": "backbone.features.0.weight",  # the public backbone
        }[name]
        assert host_key in held
        assert not any(k.startswith(("fc.", "slices.")) for k in held)
        found = scan(meta[name]["shielded"])
        control = scan(meta[name]["device"])
    assert found == 0, (
        f"{found} of {len(meta[name]['shielded'])} shielded 64-byte runs are in host memory"
    )
    assert control == len(meta[name]["device"]), (
        "positive control: the scan must find the device weights"
    )
    _no_enclave_left()


def test_reload_restarts_from_the_package(owner, meta, servers):
    (x, y), *_ = _refs(owner, "small", meta)
    with _deploy(owner, servers["small"]) as sm:
        first = sm.backend.pid
        sm.backend._fail("test: simulated crash")
        with pytest.raises(taoism.EnclaveCrashed):
            sm(x)
        sm.reload()
        assert sm.backend.pid != first
        assert_same(sm(x), y)
        prof = sm.profile(x, repeats=2, warmup=1)
        assert prof.end_to_end.median > 0
        with pytest.raises(ConfigError, match="without a model"):
            sm.reload(torch.nn.Linear(1, 1))
    _no_enclave_left()


def test_serve_package_answers_like_the_package_and_restarts_by_attesting_again(
    owner, meta, servers
):
    """``taoism serve --package``: a real server process; an enclave kill gives 503, then it re-attests."""
    import httpx

    from taoism.serve.launch import ServerProcess, kill_process

    srv = ServerProcess(
        [
            "--package",
            str(owner / "small.taoism"),
            "--keyserver",
            servers["small"],
            "--owner-public",
            str(owner / "owner.pub"),
            "--platform-key",
            str(owner / "platform.key"),
            "--device",
            "cpu",
            "--max-wait-ms",
            "1",
        ]
    )
    try:
        client = httpx.Client(base_url=srv.url, timeout=60)
        refs = _refs(owner, "small", meta)

        def check(x, y) -> None:
            r = client.post("/v1/predict", json={"inputs": x.tolist()})
            assert r.status_code == 200, r.text
            assert y.std() > 1e-3  # outputs are not near-constant
            assert_same(torch.tensor(r.json()["outputs"]), y)

        for x, y in refs:
            check(x, y)
        (pid,) = srv.enclave_pids()
        kill_process(pid)
        x, y = refs[0]
        r = client.post("/v1/predict", json={"inputs": x.tolist()})
        assert r.status_code == 503, r.text
        deadline = time.monotonic() + 120
        while client.get("/healthz").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        check(x, y)
        assert srv.enclave_pids() not in ([pid], [])
        client.close()
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_serve_package_refuses_zoo_options_and_needs_the_key_service(owner):
    from click.testing import CliRunner

    from taoism.cli import build_app

    pkg = str(owner / "small.taoism")
    res = CliRunner().invoke(build_app(), ["serve", "--package", pkg, "--strategy", "deep:1"])
    assert res.exit_code == 2 and "drop --strategy" in res.output
    res = CliRunner().invoke(build_app(), ["serve", "--package", pkg])
    assert res.exit_code == 2 and "--keyserver" in res.output
    res = CliRunner().invoke(build_app(), ["serve", "--owner-public", str(owner / "owner.pub")])
    assert res.exit_code == 2 and "without --package" in res.output


def test_shield_fc_only_leaves_no_staging_residue():
    """shield() with only fc shielded, the caller's copy wiped and dropped: no copy of taoism's is left.

    Without the wipe, 20 of 32 runs are found (the caller's freed tensor); tests/test_boundary.py
    holds the control that a staging residue would be detected.
    """
    out = subprocess.run(
        [sys.executable, str(HELPERS), "shield-fc"],
        capture_output=True,
        timeout=300,
        env=ENV,
        check=True,
    )
    res = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert res["device_found"] == 4, res  # positive control
    assert res["found"] == 0, (
        f"{res['found']} of {res['total']} fc.weight 64-byte runs in host memory"
    )


# ------------------------------------------------------------------------------ the enclave process


def test_enclave_memory_is_unreadable_by_its_parent(owner, servers):
    """A parent without CAP_SYS_PTRACE gets EPERM on the enclave's /proc/PID/mem; a dumpable child is readable."""
    out = subprocess.run(
        [
            sys.executable,
            str(HELPERS),
            "mem",
            str(owner / "small.taoism"),
            servers["small"],
            str(owner / "owner.pub"),
            str(owner / "platform.key"),
        ],
        capture_output=True,
        timeout=300,
        env=ENV,
        preexec_fn=drop_ptrace,
        check=True,
    )
    res = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert res == {"enclave": "EPERM", "control": "read"}, res


def test_host_edited_program_is_refused_by_the_enclave(owner, servers, tmp_path):
    """The host rewrites the program section (to return a weight): the enclave's own check refuses it."""
    with open_package(owner / "small.taoism", owner / "owner.pub") as pkg:
        sec = pkg.header.by_kind("program")[0]
        start = pkg._data_start + sec.offset
        prog = pkg.program()
    prog["enclave"]["segments"][0]["returns"].append(
        prog["enclave"]["segments"][0]["nodes"][0]["name"]
    )
    edited = json.dumps(prog).encode()[: sec.length].ljust(sec.length)
    raw = bytearray((owner / "small.taoism").read_bytes())
    raw[start : start + sec.length] = edited
    bad = tmp_path / "edited.taoism"
    bad.write_bytes(bytes(raw))
    src = PackageSource(
        str(bad), servers["small"], str(owner / "owner.pub"), str(owner / "platform.key")
    )
    with pytest.raises(PackageError, match="program section .* does not match its signed SHA-256"):
        start_package_enclave(src, EnclaveConfig())  # skips the host's own check on purpose
    _no_enclave_left()


def test_package_mode_enclave_refuses_a_host_described_program(owner, servers):
    src = PackageSource(
        str(owner / "small.taoism"),
        servers["small"],
        str(owner / "owner.pub"),
        str(owner / "platform.key"),
    )
    backend = start_package_enclave(src, EnclaveConfig())
    try:
        desc = {
            "format": "taoism-enclave-program/1",
            "modules": {},
            "constants": [],
            "tensors": [],
            "segments": [],
        }
        with pytest.raises(ProgramError, match="refuses a program described by the host"):
            backend.load(desc, [])
        with pytest.raises(AttestationError, match="already attested"):
            backend.attest(bytes(32))
    finally:
        backend.close()
    _no_enclave_left()


# ------------------------------------------------------------------------------ bad input, one test each


def test_tampered_shielded_tensor_is_refused_by_the_enclave(owner, servers, tmp_path):
    with open_package(owner / "small.taoism", owner / "owner.pub") as pkg:
        sec = pkg.shielded_sections()[0]
        at = pkg._data_start + sec.offset + 5
    raw = bytearray((owner / "small.taoism").read_bytes())
    raw[at] ^= 1
    bad = tmp_path / "tampered.taoism"
    bad.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match="shielded section .* signed SHA-256"):
        taoism.deploy(
            bad,
            servers["small"],
            owner_public=owner / "owner.pub",
            platform_key=owner / "platform.key",
            device="cpu",
        )
    _no_enclave_left()


def test_truncated_package_is_refused_before_an_enclave_starts(owner, servers, tmp_path):
    bad = tmp_path / "truncated.taoism"
    bad.write_bytes((owner / "small.taoism").read_bytes()[:-100])
    with pytest.raises(PackageError, match="truncated|end"):
        taoism.deploy(
            bad,
            servers["small"],
            owner_public=owner / "owner.pub",
            platform_key=owner / "platform.key",
        )
    assert not _enclave_children()


def test_unknown_owner_key_is_refused(owner, servers):
    with pytest.raises(SignatureError, match="does not verify"):
        _deploy(owner, servers["small"], owner_public=owner / "other" / "owner.pub")
    assert not _enclave_children()


def test_resigned_package_gets_no_key(owner, servers, tmp_path):
    """An attacker re-signs the package with its own key and pins the enclave to it: other measurement."""
    from taoism.trust.format import PREFIX, SIGN_LABEL, SIGNED_PREFIX

    raw = bytearray((owner / "small.taoism").read_bytes())
    header_len = PREFIX.unpack_from(raw)[3]
    header = json.loads(bytes(raw[PREFIX.size : PREFIX.size + header_len]))
    header["owner"] = fingerprint(load_public_key(owner / "other" / "owner.pub"))
    new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    signed = PREFIX.pack(*PREFIX.unpack_from(raw)[:3], len(new), bytes(64))[:SIGNED_PREFIX]
    sig = load_private_key(owner / "other" / "owner.key").sign(SIGN_LABEL + signed + new)
    bad = tmp_path / "resigned.taoism"
    bad.write_bytes(signed + sig + new + bytes(raw[PREFIX.size + header_len :]))
    with pytest.raises(AttestationError) as e:
        taoism.deploy(
            bad,
            servers["small"],
            owner_public=owner / "other" / "owner.pub",
            platform_key=owner / "platform.key",
            device="cpu",
        )
    assert e.value.reason in ("measurement", "package")
    _no_enclave_left()


def test_wrong_measurement_is_refused(owner, servers):
    with pytest.raises(AttestationError, match="measurement") as e:
        _deploy(owner, servers["wrong"])
    assert e.value.reason == "measurement"
    _no_enclave_left()


def _bare_enclave(owner: Path, address: str):
    cls = get_backend("sim", EnclaveConfig())
    backend = cls(EnclaveConfig())
    backend.package_mode(
        str(owner / "small.taoism"), str(owner / "owner.pub"), str(owner / "platform.key")
    )
    backend.start()
    return backend


def test_replayed_report_and_replayed_wrapped_key_are_refused(owner, servers):
    client = KeyServiceClient(servers["small"], 10)
    first = _bare_enclave(owner, servers["small"])
    second = _bare_enclave(owner, servers["small"])
    try:
        envelope = first.attest(client.fetch_nonce())
        wrapped = client.release(envelope)
        with pytest.raises(AttestationError) as e:
            client.release(envelope)
        assert e.value.reason == "replay"
        second.attest(client.fetch_nonce())
        with pytest.raises(KeyReleaseError, match="another enclave key or report"):
            second.provision(wrapped)  # released for the first enclave only
        with pytest.raises(
            ProgramError, match="no enclave segment"
        ):  # refused: no partial state, nothing runs
            second.run(1, [torch.zeros(2, 16)])
    finally:
        first.close()
        second.close()
    _no_enclave_left()


def test_stale_report_is_refused(owner, servers):
    client = KeyServiceClient(servers["short"], 10)
    backend = _bare_enclave(owner, servers["short"])
    try:
        nonce = client.fetch_nonce()
        time.sleep(1.3)
        with pytest.raises(AttestationError) as e:
            client.release(backend.attest(nonce))
        assert e.value.reason == "stale-nonce"
    finally:
        backend.close()
    _no_enclave_left()


def test_key_service_down_is_a_typed_error(owner):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(KeyReleaseError, match=f"127.0.0.1:{port}"):
        _deploy(owner, f"http://127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - t0 < 30
    _no_enclave_left()


def test_hung_key_service_times_out(owner):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept, never answer
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyReleaseError, match="time"):
            _deploy(owner, f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_s=1)
        assert time.monotonic() - t0 < 30
    finally:
        stop.set()
        th.join(5)
        for c in held:
            c.close()
        srv.close()
    _no_enclave_left()


def test_tee_mismatch_and_bad_address_fail_before_starting(owner, servers):
    with pytest.raises(ConfigError, match="planned for tee"):
        _deploy(owner, servers["small"], tee="sgx1-client")
    with pytest.raises(ConfigError, match="must look like"):
        _deploy(owner, "ftp://nowhere")
    assert not _enclave_children()


def test_kinds_are_distinct():
    assert len({k.value for k in Kind}) == len(Kind)


# ------------------------------------------------------------------------------ command line


def test_cli_keygen_measure_package_keyserver_run(tmp_path):
    """keygen -> package -> measure -> keyserver (a process) -> run --package, all through `taoism`."""
    from click.testing import CliRunner

    from taoism.cli import build_app

    app, runner = build_app(), CliRunner()

    def ok(*args: str) -> str:
        res = runner.invoke(app, list(args), catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    ok("keygen", "--dir", str(tmp_path))
    ok("keygen", "--dir", str(tmp_path), "--name", "platform")
    pkg = tmp_path / "m.taoism"
    assert "shielded" in ok(
        "package",
        "--model",
        "small_cnn",
        "--strategy",
        "deep:1",
        "--owner-key",
        str(tmp_path / "owner.key"),
        "--package",
        str(pkg),
    )
    measurement = ok("measure", "--owner-public", str(tmp_path / "owner.pub")).strip()
    assert len(measurement) == 64
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taoism.cli",
            "keyserver",
            "--package",
            str(pkg),
            "--owner-public",
            str(tmp_path / "owner.pub"),
            "--platform-public",
            str(tmp_path / "platform.pub"),
            "--allow",
            measurement,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        address = proc.stdout.readline().decode().split()[-1]
        out = ok(
            "run",
            "--package",
            str(pkg),
            "--keyserver",
            address,
            "--owner-public",
            str(tmp_path / "owner.pub"),
            "--platform-key",
            str(tmp_path / "platform.key"),
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(tmp_path / "run.json"),
        )
        assert "ENCLAVE" in out
        assert json.loads((tmp_path / "run.json").read_text())["package"] == str(pkg)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    _no_enclave_left()
