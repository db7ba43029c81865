"""Owner-sealed packages, attestation and attested key release: real files, crypto and processes."""

from __future__ import annotations

import io
import json
import os
import random
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from taoism.errors import (
    AttestationError,
    BackendUnavailable,
    ConfigError,
    KeyFileError,
    KeyReleaseError,
    PackageError,
    SignatureError,
    TaoismError,
)
from taoism.trust import (
    KeyServer,
    KeyServerConfig,
    KeyServiceClient,
    NonceBook,
    ReportVerifier,
    SgxQuoteSource,
    SgxQuoteVerifier,
    SimQuoteSource,
    SimQuoteVerifier,
    VerifierConfig,
    attest,
    decrypt_shielded,
    enclave_measurement,
    keygen,
    load_private_key,
    load_public_key,
    main_inspect,
    main_keygen,
    main_measure,
    open_package,
    unwrap_model_key,
    wrap_model_key,
    write_package,
    write_secret,
)
from taoism.trust.format import MAGIC, PREFIX, SIGN_LABEL, SIGNED_PREFIX, VERSION
from taoism.trust.tensors import tensor_bytes
from taoism.trust.writer import canonical_json

CONFIG = {"backend": "sim", "threads": 1}
RUN = 64  # bytes: the length of a plaintext run the leak scans look for


def _model() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def _split(model: torch.nn.Module) -> tuple[dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = {k: v for k, v in state.items() if k.startswith("0.")}
    shielded = {k: v for k, v in state.items() if k.startswith("2.")}
    return device, shielded


EXTRA = {  # every stored dtype, a 0-dim and an empty tensor
    "x.f64": torch.randn(3, 2, dtype=torch.float64),
    "x.f16": torch.randn(5).half(),
    "x.bf16": torch.randn(2, 3).bfloat16(),
    "x.i64": torch.arange(-4, 5),
    "x.i32": torch.arange(7).int(),
    "x.i16": torch.arange(3).short(),
    "x.i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
    "x.u8": torch.arange(256, dtype=torch.uint8),
    "x.bool": torch.tensor([True, False, True]),
    "x.scalar": torch.tensor(3.5),
    "x.empty": torch.empty(0, 4),
}
PLAN = {
    "nodes": [{"name": "0", "placement": "GPU"}, {"name": "2", "placement": "ENCLAVE"}],
    "version": 1,
}
PROGRAM = {"ops": [{"op": "linear", "weight": "2.weight", "bias": "2.bias"}], "version": 1}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    owner_key, owner_pub = keygen(d)
    platform_key, platform_pub = keygen(d, "platform")
    other_key, other_pub = keygen(d, "other")
    return {
        "owner_key": owner_key,
        "owner_pub": owner_pub,
        "platform_key": platform_key,
        "platform_pub": platform_pub,
        "other_key": other_key,
        "other_pub": other_pub,
        "dir": d,
    }


@pytest.fixture(scope="module")
def pkg(keys) -> dict:
    model = _model()
    device, shielded = _split(model)
    shielded_all = {**shielded, **EXTRA}
    path = keys["dir"] / "model.taoism"
    key = write_package(path, PLAN, device, PROGRAM, shielded_all, keys["owner_key"])
    key_file = write_secret(keys["dir"] / "model.key", key)
    return {
        "path": path,
        "key": key,
        "key_file": key_file,
        "model": model,
        "device": device,
        "shielded": shielded_all,
    }


def _bits(t: torch.Tensor) -> tuple:
    dtype, shape, raw = tensor_bytes(t, "t")
    return dtype, shape, bytes(raw)


# ------------------------------------------------------------------------------ package format


def test_round_trip_is_bit_identical_and_runs_the_same(pkg, keys):
    with open_package(pkg["path"], keys["owner_pub"]) as r:
        assert (
            r.plan_bytes() == canonical_json(PLAN) and r.plan() == PLAN and r.program() == PROGRAM
        )
        device = r.device_tensors()
        shielded = decrypt_shielded(r, pkg["key"])
    assert list(device) == list(pkg["device"]) and list(shielded) == list(pkg["shielded"])
    for name, t in {**pkg["device"], **pkg["shielded"]}.items():
        assert _bits({**device, **shielded}[name]) == _bits(t), name
    rebuilt = _model()
    torch.nn.init.zeros_(rebuilt[0].weight)  # make sure the weights really come from the package
    rebuilt.load_state_dict(
        {**device, **{k: v for k, v in shielded.items() if not k.startswith("x.")}}
    )
    x = torch.randn(64, 16)
    y = pkg["model"](x)
    assert y.std() > 0.05  # not a near-constant output
    assert torch.equal(rebuilt(x), y)


def test_plan_given_as_string_is_stored_verbatim(tmp_path, keys):
    text = '{ "b": 1,\n  "a": [1, 2] }'
    write_package(tmp_path / "p.taoism", text, {}, "{}", {}, keys["owner_key"])
    with open_package(tmp_path / "p.taoism", keys["owner_pub"]) as r:
        assert r.plan_bytes() == text.encode() and r.shielded_sections() == ()


def test_package_file_holds_device_plaintext_but_no_shielded_run(pkg):
    blob = pkg["path"].read_bytes()
    dev = bytes(tensor_bytes(pkg["device"]["0.weight"], "w")[2])
    assert dev[:RUN] in blob  # positive control: the scan finds plaintext device weights
    for name in ("2.weight", "x.u8"):
        raw = bytes(tensor_bytes(pkg["shielded"][name], name)[2])
        assert len(raw) >= RUN
        assert not any(raw[i : i + RUN] in blob for i in range(0, len(raw) - RUN + 1, 8)), name


def _flip(path: Path, pos: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    out.write_bytes(data)
    return out


def test_tampered_section_is_refused(pkg, keys, tmp_path):
    bad = _flip(pkg["path"], len(pkg["path"].read_bytes()) - 3, tmp_path / "t.taoism")
    with pytest.raises(PackageError, match="does not match its signed SHA-256"):
        open_package(bad, keys["owner_pub"])


def test_tampered_header_and_signature_are_refused(pkg, keys, tmp_path):
    for pos in (PREFIX.size + 5, SIGNED_PREFIX + 1):
        with pytest.raises(SignatureError, match="owner signature does not verify"):
            open_package(_flip(pkg["path"], pos, tmp_path / "h.taoism"), keys["owner_pub"])


def test_truncated_package_is_refused(pkg, keys, tmp_path):
    data = pkg["path"].read_bytes()
    for n in (0, 7, PREFIX.size - 1, PREFIX.size + 10, len(data) // 2, len(data) - 1):
        (tmp_path / "c.taoism").write_bytes(data[:n])
        with pytest.raises(PackageError, match="truncated|shorter|magic"):
            open_package(tmp_path / "c.taoism", keys["owner_pub"])


def _parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    header_len = PREFIX.unpack_from(data)[3]
    return json.loads(data[PREFIX.size : PREFIX.size + header_len]), data[
        PREFIX.size + header_len :
    ]


def _resign(out: Path, header: dict | bytes, body: bytes, key: Ed25519PrivateKey) -> Path:
    raw = header if isinstance(header, bytes) else canonical_json(header)
    signed = struct.pack("<8sIIQ", MAGIC, VERSION, 0, len(raw))
    out.write_bytes(signed + key.sign(SIGN_LABEL + signed + raw) + raw + body)
    return out


def test_resigned_package_and_unknown_owner_key_are_refused(pkg, keys, tmp_path):
    header, body = _parts(pkg["path"])
    other = load_private_key(keys["other_key"])
    resigned = _resign(tmp_path / "r.taoism", header, body, other)
    with pytest.raises(SignatureError):
        open_package(resigned, keys["owner_pub"])
    with pytest.raises(
        SignatureError, match="names owner"
    ):  # signed by "other", header still names the owner
        open_package(resigned, keys["other_pub"])
    with pytest.raises(
        SignatureError
    ):  # a genuine package checked against a key that is not its owner's
        open_package(pkg["path"], keys["other_pub"])


def test_owner_signed_but_swapped_ciphertexts_fail_authentication(pkg, keys, tmp_path):
    header, body = _parts(pkg["path"])
    secs = header["sections"]
    a, b = (next(i for i, s in enumerate(secs) if s["name"] == n) for n in ("x.i8", "x.bool"))
    for k in ("nonce", "sha256"):  # same length (3 B + tag); move b's ciphertext under a's name
        secs[a][k] = secs[b][k]
    body = bytearray(body)
    body[secs[a]["offset"] : secs[a]["offset"] + secs[a]["length"]] = body[
        secs[b]["offset"] : secs[b]["offset"] + secs[b]["length"]
    ]
    owner = load_private_key(keys["owner_key"])
    with open_package(
        _resign(tmp_path / "s.taoism", header, bytes(body), owner), keys["owner_pub"]
    ) as r:
        with pytest.raises(PackageError, match="failed AES-GCM authentication"):
            decrypt_shielded(r, pkg["key"])
        with pytest.raises(KeyReleaseError, match="key check mismatch"):
            decrypt_shielded(r, os.urandom(32))


def test_header_fields_with_huge_or_wrong_values_are_refused(pkg, keys, tmp_path):
    owner = load_private_key(keys["owner_key"])
    header, body = _parts(pkg["path"])
    cases = [
        ("length", 1 << 62),
        ("length", 1 << 40),
        ("offset", -1),
        ("shape", [1 << 40, 1 << 40]),
        ("shape", [2] * 40),
        ("dtype", "object"),
        ("kind", "pickle"),
        ("name", ""),
        ("sha256", "zz"),
    ]
    t0 = time.monotonic()
    for field, value in cases:
        h = json.loads(json.dumps(header))
        h["sections"][3][field] = value
        with pytest.raises(PackageError, match="invalid header"):
            open_package(_resign(tmp_path / "f.taoism", h, body, owner), keys["owner_pub"])
    for raw in (b"[" * 100000, b'{"a":' + b"9" * 5000 + b"}", b"\xff\xfe", b"null"):
        with pytest.raises(PackageError):
            open_package(_resign(tmp_path / "j.taoism", raw, body, owner), keys["owner_pub"])
    data = bytearray(pkg["path"].read_bytes())
    data[16:24] = struct.pack("<Q", 1 << 63)  # header length in the prefix
    (tmp_path / "l.taoism").write_bytes(data)
    with pytest.raises(PackageError, match="header length"):
        open_package(tmp_path / "l.taoism", keys["owner_pub"])
    assert time.monotonic() - t0 < 20  # nothing was allocated from the bogus sizes


def _blank_device_names(header: dict) -> dict:
    secs = [{**s, "name": ""} if s["kind"] == "device" else s for s in header["sections"]]
    return {**header, "created": 0, "sections": secs}


def test_fuzzed_packages_raise_typed_errors_only(pkg, keys, tmp_path):
    rng = random.Random(11)
    data = pkg["path"].read_bytes()
    header, body = _parts(pkg["path"])
    owner = load_private_key(keys["owner_key"])
    raw_header = canonical_json(header)
    deadline = time.monotonic() + 20
    refused, tried = [0, 0, 0, 0], [0, 0, 0, 0]
    for i in range(1200):
        if time.monotonic() > deadline:
            break
        mode = i % 4
        tried[mode] += 1
        if mode == 0:  # bit flips anywhere: every byte is covered by the signature or a signed hash
            blob = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
            (tmp_path / "z.taoism").write_bytes(blob)
        elif mode == 1:  # truncations and appended garbage
            cut = rng.randrange(len(data))
            (tmp_path / "z.taoism").write_bytes(
                data[:cut] if rng.random() < 0.8 else data + os.urandom(cut % 50 + 1)
            )
        else:  # owner-signed structural mutations of the header (reach the validator past the signature)
            h = bytearray(raw_header)
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(len(h))
                h[pos] = rng.choice(b'0123456789{}[]",:-ea ' + bytes([rng.randrange(256)]))
            _resign(tmp_path / "z.taoism", bytes(h), body, owner)
        try:
            with open_package(tmp_path / "z.taoism", keys["owner_pub"]) as r:
                decrypt_shielded(r, pkg["key"])
                r.device_tensors()
                accepted = json.loads(r.header_bytes)
        except (
            PackageError,
            KeyReleaseError,
        ):  # KeyReleaseError: an owner-signed edit of package_id/key_check
            refused[mode] += 1
            continue
        # only an owner-signed mutation can be accepted, and only one the owner could have meant: a new
        # creation time or a renamed device tensor (shielded names are bound into the ciphertexts)
        assert mode >= 2, mode
        assert _blank_device_names(accepted) == _blank_device_names(header)
    assert tried[0] >= 50 and refused[0] == tried[0] and refused[1] == tried[1]
    assert refused[2] + refused[3] > 0.8 * (tried[2] + tried[3])


def test_writer_refuses_bad_inputs(tmp_path, keys):
    cases = [
        ({"w": [1.0, 2.0]}, "not a torch.Tensor"),
        ({"w": torch.zeros(2, dtype=torch.complex64)}, "dtype"),
        ({"": torch.zeros(1)}, "printable"),
        ({"w": torch.zeros(2).to_sparse()}, "dense"),
    ]
    for tensors, match in cases:
        with pytest.raises(PackageError, match=match):
            write_package(tmp_path / "w.taoism", {}, tensors, {}, {}, keys["owner_key"])
    with pytest.raises(PackageError, match="not valid JSON"):
        write_package(tmp_path / "w.taoism", "{oops", {}, {}, {}, keys["owner_key"])
    with pytest.raises(PackageError, match="JSON"):
        write_package(tmp_path / "w.taoism", {"x": float("nan")}, {}, {}, {}, keys["owner_key"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_command_functions(tmp_path, pkg, keys):
    out = io.StringIO()
    assert main_keygen(str(tmp_path / "k"), out=out) == 0 and "0600" in out.getvalue()
    with pytest.raises(KeyFileError):
        main_keygen(str(tmp_path / "k"))
    out = io.StringIO()
    assert (
        main_measure(CONFIG, out=out) == 0
        and out.getvalue().strip() == enclave_measurement(CONFIG).hex()
    )
    out = io.StringIO()
    assert main_inspect(str(pkg["path"]), str(keys["owner_pub"]), out=out) == 0
    doc = json.loads(out.getvalue())
    assert {s["name"] for s in doc["sections"] if s["kind"] == "shielded"} == set(pkg["shielded"])


def test_key_server_refuses_a_package_it_cannot_verify(pkg, keys, tmp_path):
    bad = _flip(pkg["path"], PREFIX.size + 3, tmp_path / "bad.taoism")
    with pytest.raises(SignatureError):
        KeyServer(
            KeyServerConfig(
                str(bad),
                str(pkg["key_file"]),
                str(keys["owner_pub"]),
                str(keys["platform_pub"]),
                ("00" * 32,),
            )
        )
    with pytest.raises(ConfigError, match="--allow"):
        KeyServer(
            KeyServerConfig(
                str(pkg["path"]),
                str(pkg["key_file"]),
                str(keys["owner_pub"]),
                str(keys["platform_pub"]),
                ("not-hex",),
            )
        )


# ------------------------------------------------------------------------------ keys


def test_key_files_modes_and_typed_errors(keys, tmp_path):
    assert keys["owner_key"].stat().st_mode & 0o777 == 0o600
    load_private_key(keys["owner_key"])
    with pytest.raises(KeyFileError, match="already exists"):
        keygen(keys["dir"])
    loose = tmp_path / "loose.key"
    shutil.copy(keys["owner_key"], loose)
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(loose)
    x = tmp_path / "x.pub"
    x.write_bytes(
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_public_key(x)
    (tmp_path / "junk.pub").write_text("hello")
    for bad in (tmp_path / "missing.pub", tmp_path / "junk.pub", keys["owner_key"]):
        with pytest.raises(KeyFileError):
            load_public_key(bad)


# ------------------------------------------------------------------------------ attestation pieces


def test_measurement_is_stable_and_covers_code_and_config(tmp_path):
    import taoism

    m = enclave_measurement(CONFIG)
    assert m == enclave_measurement(dict(reversed(list(CONFIG.items())))) and len(m) == 32
    assert m != enclave_measurement({**CONFIG, "threads": 2})
    root = tmp_path / "taoism"
    shutil.copytree(Path(taoism.__file__).parent / "enclave", root / "enclave")
    base = enclave_measurement(CONFIG, root)
    victim = sorted((root / "enclave").glob("*.py"))[0]
    victim.write_text(victim.read_text() + "\n# changed\n")
    assert enclave_measurement(CONFIG, root) != base


def test_nonce_book_one_use_and_freshness():
    now = [0.0]
    book = NonceBook(ttl_s=10, max_outstanding=2, clock=lambda: now[0])
    a, b = book.issue(), book.issue()
    with pytest.raises(KeyReleaseError, match="outstanding"):
        book.issue()
    book.consume(a)
    with pytest.raises(AttestationError) as e:
        book.consume(a)
    assert e.value.reason == "replay"
    now[0] = 11.0
    with pytest.raises(AttestationError) as e:
        book.consume(b)
    assert e.value.reason == "stale-nonce"
    with pytest.raises(AttestationError) as e:
        book.consume(os.urandom(32))
    assert e.value.reason == "unknown-nonce"


def test_wrapped_key_opens_only_for_its_enclave_and_report(keys):
    source = SimQuoteSource(load_private_key(keys["platform_key"]))
    att = attest(source, os.urandom(32), os.urandom(32), os.urandom(32))
    key = os.urandom(32)
    wrapped = wrap_model_key(key, att.report.enclave_public, att.report_bytes)
    assert (
        key not in wrapped and unwrap_model_key(att.private_key, wrapped, att.report_bytes) == key
    )
    with pytest.raises(KeyReleaseError):
        unwrap_model_key(X25519PrivateKey.generate(), wrapped, att.report_bytes)
    with pytest.raises(KeyReleaseError):
        other = bytearray(att.report_bytes)
        other[40] ^= 1  # a bit of the measurement
        unwrap_model_key(att.private_key, wrapped, bytes(other))
    with pytest.raises(KeyReleaseError):
        unwrap_model_key(att.private_key, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), att.report_bytes)


def test_fuzzed_envelopes_and_wrapped_keys_raise_typed_errors_only(keys):
    platform = SimQuoteVerifier(load_public_key(keys["platform_pub"]))
    m = enclave_measurement(CONFIG)
    verifier = ReportVerifier(VerifierConfig(frozenset({m}), bytes(32)), {platform.kind: platform})
    source = SimQuoteSource(load_private_key(keys["platform_key"]))
    rng = random.Random(5)
    good = attest(source, m, verifier.nonces.issue(), bytes(32))
    wrapped = wrap_model_key(os.urandom(32), good.report.enclave_public, good.report_bytes)
    env = good.envelope.encode()
    for i in range(600):
        if i % 3 == 0:
            blob = bytearray(env)
            for _ in range(rng.randint(1, 3)):
                blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        elif i % 3 == 1:
            blob = bytearray(env[: rng.randrange(len(env))])
        else:
            blob = bytearray(os.urandom(rng.randrange(300)))
        if blob == env:  # two flips of the same bit cancel out
            continue
        with pytest.raises(AttestationError):
            verifier.verify(bytes(blob))
        w = bytearray(wrapped)
        w[rng.randrange(len(w))] ^= 1 << rng.randrange(8)
        for candidate in (bytes(w), bytes(wrapped[: rng.randrange(len(wrapped))])):
            with pytest.raises(KeyReleaseError):
                unwrap_model_key(good.private_key, candidate, good.report_bytes)
    assert verifier.verify(env).nonce == good.report.nonce  # the untouched envelope still verifies


def test_sgx_quote_source_refuses_without_gramine(tmp_path):
    with pytest.raises(BackendUnavailable, match="attestation_type"):
        SgxQuoteSource(tmp_path / "no-attestation").quote(b"r" * 144)
    with pytest.raises(AttestationError) as e:
        SgxQuoteVerifier().verify(b"r" * 144, bytes(432))
    assert e.value.reason == "platform"


# ------------------------------------------------------------------------------ key service process


class KeyServerProcess:
    """``python -m taoism.trust.keyserver`` as a child process; stopped by the fixture."""

    def __init__(self, pkg: dict, keys: dict, allow: list[str], *extra: str) -> None:
        args = [
            sys.executable,
            "-m",
            "taoism.trust.keyserver",
            "--package",
            str(pkg["path"]),
            "--model-key",
            str(pkg["key_file"]),
            "--owner-public",
            str(keys["owner_pub"]),
            "--platform-public",
            str(keys["platform_pub"]),
            *sum((["--allow", m] for m in allow), []),
            *extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.address = self._ready(timeout_s=90)

    def _ready(self, timeout_s: float) -> str | None:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = self.proc.stdout.readline().decode()
                if not line:
                    return None  # exited
                if "listening on" in line:
                    return line.split()[-1]
        self.stop()
        raise AssertionError("key server did not start in time")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(pkg, keys):
    srv = KeyServerProcess(pkg, keys, [enclave_measurement(CONFIG).hex(), "ab" * 32])
    assert srv.address, srv.proc.stderr.read().decode()
    yield srv
    assert srv.stop() == 0  # SIGTERM is a clean shutdown


def _enclave(
    keys,
    pkg,
    platform_key: Path | None = None,
    measurement: bytes | None = None,
    package: bytes | None = None,
    age_s: float = 0.0,
):
    """What the enclave does: attest for a nonce, then unwrap with its private key."""
    source = SimQuoteSource(load_private_key(platform_key or keys["platform_key"]))
    with open_package(pkg["path"], keys["owner_pub"], verify=False) as r:
        header_hash = r.header_hash
    state = {}

    def make(nonce: bytes) -> bytes:
        state["att"] = attest(
            source,
            measurement or enclave_measurement(CONFIG),
            nonce,
            package or header_hash,
            int((time.time() - age_s) * 1000),
        )
        return state["att"].envelope.encode()

    return make, state


def test_good_report_releases_the_key_to_the_enclave_only(server, keys, pkg):
    client = KeyServiceClient(server.address, timeout_s=10)
    make, state = _enclave(keys, pkg)
    wrapped = client.request_key(make)
    assert pkg["key"] not in wrapped  # the host relays only the wrapped key
    key = unwrap_model_key(state["att"].private_key, wrapped, state["att"].report_bytes)
    assert key == pkg["key"]
    with open_package(pkg["path"], keys["owner_pub"]) as r:
        assert _bits(decrypt_shielded(r, key)["2.weight"]) == _bits(pkg["shielded"]["2.weight"])
    with pytest.raises(AttestationError) as e:  # the same report relayed again
        client.release(state["att"].envelope.encode())
    assert e.value.reason == "replay"


@pytest.mark.parametrize(
    "case,reason",
    [
        ("measurement", "measurement"),
        ("signature", "signature"),
        ("package", "package"),
        ("old", "stale-report"),
    ],
)
def test_bad_reports_are_refused(server, keys, pkg, case, reason):
    kwargs = {
        "measurement": {"measurement": enclave_measurement({**CONFIG, "threads": 9})},
        "signature": {"platform_key": keys["other_key"]},
        "package": {"package": os.urandom(32)},
        "old": {"age_s": 3600.0},
    }[case]
    make, _ = _enclave(keys, pkg, **kwargs)
    with pytest.raises(AttestationError, match="refused the attestation report") as e:
        KeyServiceClient(server.address, timeout_s=10).request_key(make)
    assert e.value.reason == reason


def test_unknown_nonce_and_garbage_are_refused(server, keys, pkg):
    client = KeyServiceClient(server.address, timeout_s=10)
    make, _ = _enclave(keys, pkg)
    for envelope, reason in ((make(os.urandom(32)), "unknown-nonce"), (b"\x00" * 200, "malformed")):
        with pytest.raises(AttestationError) as e:
            client.release(envelope)
        assert e.value.reason == reason


def test_stale_nonce_is_refused(pkg, keys):
    srv = KeyServerProcess(pkg, keys, [enclave_measurement(CONFIG).hex()], "--nonce-ttl", "0.2")
    try:
        client = KeyServiceClient(srv.address, timeout_s=10)
        make, _ = _enclave(keys, pkg)
        nonce = client.fetch_nonce()
        time.sleep(0.5)
        with pytest.raises(AttestationError) as e:
            client.release(make(nonce))
        assert e.value.reason == "stale-nonce"
    finally:
        assert srv.stop() == 0


def test_key_server_refuses_to_start_with_the_wrong_model_key(pkg, keys, tmp_path):
    wrong = write_secret(tmp_path / "wrong.key", os.urandom(32))
    srv = KeyServerProcess({**pkg, "key_file": wrong}, keys, ["00" * 32])
    assert srv.address is None
    err = srv.proc.stderr.read().decode()
    assert srv.stop() == 2 and "KeyReleaseError" in err and "key check mismatch" in err


def test_key_service_down_or_hung_is_a_typed_error_within_the_timeout():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KeyReleaseError, match="down"):
        KeyServiceClient(f"127.0.0.1:{port}", timeout_s=2).fetch_nonce()
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        t0 = time.monotonic()
        with pytest.raises(KeyReleaseError, match="timed out"):
            KeyServiceClient(
                f"http://127.0.0.1:{hung.getsockname()[1]}", timeout_s=0.5
            ).fetch_nonce()
        assert time.monotonic() - t0 < 3


def test_errors_are_taoism_errors():
    for cls in (PackageError, SignatureError, KeyFileError, AttestationError, KeyReleaseError):
        assert issubclass(cls, TaoismError)
