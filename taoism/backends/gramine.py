"""``gramine``: the same enclave server inside a real SGX enclave under Gramine.

It starts ``gramine-sgx`` with a manifest for the taoism enclave server instead of a plain
Python process; everything above the process boundary (protocol, channel, executor) is shared
with ``sim``. It refuses clearly where SGX or Gramine is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from taoism.backends.process import ProcessBackend
from taoism.config import EnclaveConfig
from taoism.errors import BackendUnavailable

SGX_DEVICES = ("/dev/sgx_enclave", "/dev/sgx/enclave", "/dev/isgx")


class GramineBackend(ProcessBackend):
    """Real SGX through Gramine (needs an SGX-capable CPU, the driver and gramine-sgx)."""

    name = "gramine"
    quote_kind = "sgx"  # package mode: a real DCAP quote via /dev/attestation

    @classmethod
    def check_platform(cls, config: EnclaveConfig) -> None:
        device = next((d for d in SGX_DEVICES if os.path.exists(d)), None)
        if device is None:
            raise BackendUnavailable(
                "backend 'gramine' needs Intel SGX, but no SGX device was found "
                f"(looked for {', '.join(SGX_DEVICES)}). Use backend='sim' (the default) on this "
                "machine, or run on an SGX-capable Xeon with the in-kernel SGX driver"
            )
        if shutil.which("gramine-sgx") is None:
            raise BackendUnavailable(
                f"backend 'gramine' found the SGX device {device} but not the `gramine-sgx` "
                "command; install Gramine (https://gramine.readthedocs.io) and make sure it is on PATH"
            )
        manifest = config.gramine_manifest
        if not manifest or not Path(manifest).is_file():
            raise BackendUnavailable(
                "backend 'gramine' needs a signed manifest for the taoism enclave server: build "
                "one with `gramine-manifest` + `gramine-sgx-sign` for `python -m "
                "taoism.enclave.server` and pass EnclaveConfig(gramine_manifest=PATH) (the .manifest.sgx file)"
            )

    def command(self, sock_fd: int) -> list[str]:
        manifest = Path(str(self.config.gramine_manifest))
        args = super().command(sock_fd)[1:]  # drop sys.executable; gramine runs its own python
        return ["gramine-sgx", str(manifest.with_suffix("").with_suffix("")), *args]
