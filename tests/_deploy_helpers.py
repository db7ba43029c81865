"""Helpers for tests/test_deploy.py, also run as scripts (the owner, and hosts that must not hold a weight).

A memory scan never holds a 64-byte run of the weights it looks for: it knows each run only
by its first 8 bytes and the SHA-256 of the whole run, so scanning cannot find its own needles.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

RUN = 64  # bytes in one run
_CHUNK = 16 << 20
_PR_CAPBSET_DROP, _CAP_SYS_PTRACE = 24, 19


def raw_view(t: Any) -> memoryview:
    """The bytes of a contiguous CPU tensor without copying them."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def run_keys(tensors: list[Any], limit: int) -> list[list[str]]:
    """Up to ``limit`` evenly spread 64-byte runs (at 64-byte offsets) of ``tensors``, as [8-byte key, sha256]."""
    runs = [
        (i, off)
        for i, t in enumerate(tensors)
        for off in range(0, t.numel() * t.element_size() - RUN + 1, RUN)
    ]
    step = max(1, len(runs) // limit)
    keys = []
    for i, off in runs[::step][:limit]:
        v = raw_view(tensors[i].detach().contiguous())[off : off + RUN]
        keys.append([bytes(v[:8]).hex(), hashlib.sha256(v).hexdigest()])
    return keys


def _regions() -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms, path = parts[1], parts[5] if len(parts) > 5 else ""
            if "r" not in perms or path in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            if "w" not in perms and ".so" in path:
                continue  # read-only shared-library code and constants cannot hold a copy
            out.append((lo, hi))
    return out


def scan(keys: list[list[str]]) -> int:
    """How many of ``keys`` occur anywhere in this process's readable memory (/proc/self/mem)."""
    want = [(bytes.fromhex(k), bytes.fromhex(h)) for k, h in keys]
    found: set[int] = set()
    buf = bytearray(_CHUNK + RUN)
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for lo, hi in _regions():
            pos = lo
            while pos < hi:
                n = min(_CHUNK + RUN, hi - pos)
                try:
                    mem.seek(pos)
                    got = mem.readinto(memoryview(buf)[:n]) or 0
                except (OSError, ValueError, OverflowError):
                    break  # unreadable region: skip it
                view = memoryview(buf)[:got]
                for j, (key, digest) in enumerate(want):
                    if j in found:
                        continue
                    at = buf.find(key, 0, got)
                    while at != -1 and at + RUN <= got:
                        if hashlib.sha256(view[at : at + RUN]).digest() == digest:
                            found.add(j)
                            break
                        at = buf.find(key, at + 1, got)
                del view
                pos += _CHUNK
    return len(found)


# ------------------------------------------------------------------------------ the model owner

CASES = {
    # name: (zoo model, placement or strategy)
    "small": ("small_cnn", {"strategy": "deep:1"}),
    "large": ("resnet18", {"placement": {"_default": "ENCLAVE", "conv1": "GPU", "bn1": "GPU"}}),
    # TEESlice (issue 14): public backbone on the device; proxies, gates and fc sealed
    "slices": ("teeslice_small_cnn", {"strategy": "teeslice"}),
}


def owner(out_dir: str, owner_key: str) -> None:
    """Package each case with a secret random seed; write refs and scan keys (the test process never sees the model)."""
    import torch

    import taoism
    from taoism.zoo import get_model

    torch.manual_seed(secrets.randbits(62))
    meta: dict[str, Any] = {}
    for name, (zoo, kw) in CASES.items():
        model = get_model(
            zoo, dataset_shape="cifar", seed=None
        ).eval()  # weights from the secret seed
        with torch.no_grad():  # non-trivial BN statistics so outputs are not near-constant
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        xs = [torch.randn(2, 3, 32, 32) for _ in range(3)]
        done = taoism.package(
            model, xs[0], out=Path(out_dir) / f"{name}.taoism", owner_key=owner_key, **kw
        )
        with torch.no_grad():
            ys = [model(x) for x in xs]
        for i, (x, y) in enumerate(zip(xs, ys)):
            (Path(out_dir) / f"{name}.x{i}").write_bytes(bytes(raw_view(x)))
            (Path(out_dir) / f"{name}.y{i}").write_bytes(bytes(raw_view(y.contiguous())))
        sd = model.state_dict()
        desc = pkg_program(done.path, Path(owner_key).with_suffix(".pub"))
        device_paths = {spec["path"] for spec in desc["device"]["modules"].values()}
        # every tensor the device does not run is the enclave's: its modules' weights, and the
        # constants it reads directly (TEESlice's gate logits)
        in_enclave = [k for k in sd if k.rsplit(".", 1)[0] not in device_paths]
        shielded = [sd[k] for k in in_enclave if sd[k].dtype == torch.float32]
        device = [
            t
            for k, t in sd.items()
            if k.rsplit(".", 1)[0] in device_paths and t.dtype == torch.float32
        ]
        meta[name] = {
            "shielded": run_keys(shielded, 16),
            "device": run_keys(device, 4),
            "y_shape": list(ys[0].shape),
            "shielded_sections": done.shielded_tensors,
            "shielded_elements": sum(sd[k].numel() for k in in_enclave),
        }
    (Path(out_dir) / "meta.json").write_text(json.dumps(meta))


def pkg_program(path: Any, owner_public: Any) -> dict[str, Any]:
    """The program section of a package."""
    from taoism.trust import open_package

    with open_package(path, owner_public, verify=False) as pkg:
        return pkg.program()


# ------------------------------------------------------------------------------ hosts


def shield_fc_host() -> None:
    """shield() ResNet-18 with only ``fc`` in the enclave, wipe and drop the model, run, scan: print JSON.

    The caller's own fc.weight is zeroed before it is dropped: freed malloc chunks keep their
    bytes, and that copy is the caller's, not taoism's. Every run found is then a copy taoism made
    (lowering, the LOAD frame, the channel's staging buffer).
    """
    import torch

    import taoism
    from taoism.zoo import get_model

    torch.manual_seed(secrets.randbits(62))
    model = get_model("resnet18", dataset_shape="cifar", seed=None).eval()
    x = torch.randn(2, 3, 32, 32)
    keys = run_keys([model.fc.weight], 32)
    device_keys = run_keys([model.conv1.weight], 4)
    sm = taoism.shield(model, x, {"fc": "ENCLAVE", "_default": "GPU"}, device="cpu")
    with torch.no_grad():
        model.fc.weight.zero_()  # the caller wipes its own copy; what is left is taoism's
    del model
    gc.collect()
    for _ in range(3):
        sm(x)
    print(json.dumps({"found": scan(keys), "total": len(keys), "device_found": scan(device_keys)}))
    sm.close()


def mem_host(package: str, keyserver: str, owner_public: str, platform_key: str) -> None:
    """Deploy, then try to read the enclave's /proc/PID/mem and a dumpable child's; print JSON."""
    import subprocess

    import taoism

    def read_mem(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as f:
            lo = int(f.readline().split("-")[0], 16)
        try:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
                f.seek(lo)
                return "read" if f.read(64) else "empty"
        except PermissionError:
            return "EPERM"
        except OSError as exc:
            return f"errno {exc.errno}"

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        control = read_mem(child.pid)
    finally:
        child.kill()
        child.wait()
    with taoism.deploy(
        package, keyserver, owner_public=owner_public, platform_key=platform_key, device="cpu"
    ) as sm:
        enclave = read_mem(sm.backend.pid)
    print(json.dumps({"enclave": enclave, "control": control}))


def drop_ptrace() -> None:
    """preexec_fn: drop CAP_SYS_PTRACE from the bounding set, so a root test runner is an ordinary parent."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAPBSET_DROP, _CAP_SYS_PTRACE, 0, 0, 0)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"owner": owner, "shield-fc": shield_fc_host, "mem": mem_host}[cmd](*args)
    sys.stdout.flush()
    os._exit(0)
