"""The enclave's heap policy (taoism.enclave.heap): freed memory stays for reuse, no page-fault churn.

Counted in minor page faults, which the policy exists to remove: a 40 MiB block (above glibc's
largest dynamic mmap threshold, so glibc maps and unmaps it every time by default) allocated and
freed again and again, in a fresh process with and without the policy; then a real enclave whose
model makes a 37 MiB activation every inference, with the policy (the default) and without.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import assert_same

import taoism
from taoism.config import EnclaveConfig
from taoism.errors import ConfigError

_PAGES_40MIB = (40 << 20) // 4096

_CHURN = """
import ctypes, json, resource, sys
from taoism.enclave.heap import retain_heap
applied = retain_heap() if sys.argv[1] == "retain" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def churn(n):
    for _ in range(n):
        p = libc.malloc(40 << 20)
        ctypes.memset(p, 1, 40 << 20)  # written, page by page
        libc.free(p)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(2)
f0 = faults()
churn(6)
print(json.dumps({"applied": applied, "faults": faults() - f0}))
"""


def _churn(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_retain_heap_reuses_large_blocks_instead_of_faulting_them_in_again():
    default, retained = _churn("default"), _churn("retain")
    # the control: by default each 40 MiB block is mapped afresh, a fault per page, six times
    assert default["faults"] >= 6 * _PAGES_40MIB * 0.9, default
    assert retained["applied"] is True
    assert retained["faults"] < 0.05 * 6 * _PAGES_40MIB, retained


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[7])


class _WideConv(nn.Module):
    """A 64-channel 384x384 activation (37.7 MiB at batch 1) inside, ten numbers out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("retain", [True, False])
def test_the_enclave_keeps_its_heap_by_default(retain):
    torch.manual_seed(0)
    model = _WideConv().eval()
    x = torch.randn(1, 3, 384, 384)
    cfg = EnclaveConfig(threads=1, retain_heap=retain)
    with taoism.shield(model, x, {"_default": "ENCLAVE"}, enclave=cfg) as sm, torch.no_grad():
        assert sm.stats()["enclave"]["heap_retained"] is retain
        for _ in range(2):
            assert_same(sm(x), model(x))
        pid = sm.backend.pid
        faults = []
        for _ in range(6):
            f0 = _minor_faults(pid)
            sm(x)
            faults.append(_minor_faults(pid) - f0)
    # Per inference, the median: a kept heap may still grow once to its high-water mark (seen at
    # the 3rd or 6th inference here, as the order of frees varies), never every time.
    per_inference = statistics.median(faults)
    pages = (64 * 384 * 384 * 4) // 4096  # the activation, in pages
    if retain:
        assert per_inference < 0.1 * pages, f"page faults per inference: {faults}"
    else:  # the control: without the policy the activation is faulted in every time
        assert per_inference >= 0.9 * pages, f"page faults per inference: {faults}"


def test_retain_heap_must_be_a_bool():
    with pytest.raises(ConfigError, match="retain_heap"):
        EnclaveConfig(retain_heap="yes")  # type: ignore[arg-type]
