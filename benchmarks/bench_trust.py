"""Benchmark owner-sealed packages and attested key release (taoism.trust, phase A).

Per model (ImageNet ResNet-18 / ResNet-50, random weights; ``layer4`` and ``fc`` shielded, the
rest device weights), after one warm-up, over ``--repeats`` repeats (median and min..max):

* ``write``: ``write_package`` (hash everything, AES-GCM the shielded tensors, sign, write);
* ``open``: ``open_package`` (signature, header, SHA-256 of every section) + device tensors +
  ``decrypt_shielded``;
* baselines measured in the same run: writing and reading back the same bytes as one raw
  file (the machine's own I/O limit) and AES-256-GCM over the shielded bytes alone.

Then the key release round trip against a key server process on loopback: fetch nonce,
attest (sim quote), relay, unwrap; median over ``--releases`` requests.

Phase B, ``--deploy`` (same models, same placement, batch 1, CPU): ``taoism.package`` (capture,
plan, lower, seal, sign), ``taoism.deploy`` (host check + enclave start + attest + release +
provision) split into its parts, next to ``taoism.shield`` of the same model; then inference
latency after deploy() and after shield(), both alive, calls interleaved (ratio in one run).

Usage: python benchmarks/bench_trust.py [--models resnet18,resnet50] [--repeats 3] [--deploy] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taoism.trust import (
    KeyServiceClient,
    SimQuoteSource,
    attest,
    decrypt_shielded,
    enclave_measurement,
    keygen,
    load_private_key,
    open_package,
    unwrap_model_key,
    write_package,
    write_secret,
)
from taoism.trust.tensors import tensor_bytes
from taoism.zoo import get_model


def _timed(fn: Callable[[], object], repeats: int) -> dict:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": repeats,
    }


def bench_model(name: str, folder: Path, repeats: int) -> dict:
    state = {k: v for k, v in get_model(name, dataset_shape="imagenet").state_dict().items()}
    shielded = {k: v for k, v in state.items() if k.startswith(("layer4.", "fc."))}
    device = {k: v for k, v in state.items() if k not in shielded}
    raw = b"".join(bytes(tensor_bytes(v, k)[2]) for k, v in state.items())
    sraw = b"".join(bytes(tensor_bytes(v, k)[2]) for k, v in shielded.items())
    path, key_path = folder / f"{name}.taoism", folder / "owner.key"
    keys: dict = {}

    def write() -> None:
        keys["model"] = write_package(
            path, {"model": name}, device, {"ops": []}, shielded, key_path
        )

    def read() -> None:
        with open_package(path, folder / "owner.pub") as r:
            r.device_tensors()
            decrypt_shielded(r, keys["model"])

    def raw_io() -> None:
        (folder / "raw.bin").write_bytes(raw)
        (folder / "raw.bin").read_bytes()

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    return {
        "model": name,
        "bytes": len(raw),
        "shielded_bytes": len(sraw),
        "write": _timed(write, repeats),
        "open_verify_decrypt": _timed(read, repeats),
        "baseline_raw_write_read": _timed(raw_io, repeats),
        "baseline_aes_gcm_shielded": _timed(
            lambda: aead.encrypt(os.urandom(12), sraw, None), repeats
        ),
    }


def bench_release(folder: Path, package: Path, model_key: bytes, releases: int) -> dict:
    write_secret(folder / "model.key", model_key, overwrite=True)
    m = enclave_measurement({"backend": "sim"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taoism.trust.keyserver",
            "--package",
            str(package),
            "--model-key",
            str(folder / "model.key"),
            "--owner-public",
            str(folder / "owner.pub"),
            "--platform-public",
            str(folder / "platform.pub"),
            "--allow",
            m.hex(),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = proc.stdout.readline().split()[-1]
        client = KeyServiceClient(address, timeout_s=30)
        source = SimQuoteSource(load_private_key(folder / "platform.key"))
        with open_package(package, folder / "owner.pub", verify=False) as r:
            header_hash = r.header_hash

        def release() -> None:
            box = {}

            def make(nonce: bytes) -> bytes:
                box["a"] = attest(source, m, nonce, header_hash)
                return box["a"].envelope.encode()

            wrapped = client.request_key(make)
            assert (
                unwrap_model_key(box["a"].private_key, wrapped, box["a"].report_bytes) == model_key
            )

        return {"attest_release_unwrap": _timed(release, releases)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_deploy(name: str, folder: Path, repeats: int, calls: int) -> dict:
    import taoism
    from taoism.backends import get_backend
    from taoism.config import EnclaveConfig
    from taoism.trust.keys import fingerprint, load_public_key
    from taoism.trust.measurement import package_measurement

    torch.manual_seed(0)
    model = get_model(name, dataset_shape="imagenet").eval()
    x = torch.randn(1, 3, 224, 224)
    placement = {"layer4": "ENCLAVE", "fc": "ENCLAVE", "_default": "GPU"}
    path = folder / f"{name}-deploy.taoism"
    res: dict = {
        "model": name,
        "package": _timed(
            lambda: taoism.package(
                model, x, placement, out=path, owner_key=folder / "owner.key", overwrite=True
            ),
            repeats,
        ),
    }
    m = package_measurement(fingerprint(load_public_key(folder / "owner.pub"))).hex()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taoism.trust.keyserver",
            "--package",
            str(path),
            "--owner-public",
            str(folder / "owner.pub"),
            "--platform-public",
            str(folder / "platform.pub"),
            "--allow",
            m,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = proc.stdout.readline().split()[-1]
        kw = {
            "owner_public": folder / "owner.pub",
            "platform_key": folder / "platform.key",
            "device": "cpu",
        }
        res["deploy"] = _timed(lambda: taoism.deploy(path, address, **kw).close(), repeats)
        res["shield"] = _timed(
            lambda: taoism.shield(model, x, placement, device="cpu").close(), repeats
        )
        parts: dict[str, list[float]] = {"enclave_start": [], "attest_release": [], "provision": []}
        for _ in range(repeats):
            backend = get_backend("sim", EnclaveConfig())(EnclaveConfig())
            backend.package_mode(str(path), str(folder / "owner.pub"), str(folder / "platform.key"))
            t0 = time.perf_counter()
            backend.start()
            t1 = time.perf_counter()
            wrapped = KeyServiceClient(address, 30).request_key(backend.attest)
            t2 = time.perf_counter()
            backend.provision(wrapped)
            t3 = time.perf_counter()
            backend.close()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(v)
        res["deploy_parts_median_s"] = {k: statistics.median(v) for k, v in parts.items()}
        with (
            taoism.deploy(path, address, **kw) as dep,
            taoism.shield(model, x, placement, device="cpu") as sh,
        ):
            ref = model(x)
            assert torch.allclose(dep(x), ref, rtol=1e-4, atol=1e-5) and torch.allclose(
                sh(x), ref, rtol=1e-4, atol=1e-5
            )
            lat: dict[str, list[float]] = {"deploy": [], "shield": []}
            for _ in range(calls):
                for k, sm in (("deploy", dep), ("shield", sh)):
                    t0 = time.perf_counter()
                    sm(x)
                    lat[k].append(time.perf_counter() - t0)
        res["latency_median_s"] = {k: statistics.median(v) for k, v in lat.items()}
        res["latency_ratio_deploy_to_shield"] = (
            res["latency_median_s"]["deploy"] / res["latency_median_s"]["shield"]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--releases", type=int, default=20)
    ap.add_argument(
        "--deploy",
        action="store_true",
        help="also time package/deploy/shield and inference after each",
    )
    ap.add_argument(
        "--calls", type=int, default=5, help="--deploy: interleaved inference calls per model"
    )
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keygen(folder)
        keygen(folder, "platform")
        for name in a.models.split(","):
            res = bench_model(name, folder, a.repeats)
            out["models"].append(res)
            print(json.dumps(res))
        small = folder / "release.taoism"  # the release cost does not depend on the package size
        key = write_package(
            small, {"m": 1}, {}, {"ops": []}, {"w": torch.randn(8)}, folder / "owner.key"
        )
        out["release"] = bench_release(folder, small, key, a.releases)
        print(json.dumps(out["release"]))
        if a.deploy:
            out["deploy"] = []
            for name in a.models.split(","):
                out["deploy"].append(bench_deploy(name, folder, a.repeats, a.calls))
                print(json.dumps(out["deploy"][-1]))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
