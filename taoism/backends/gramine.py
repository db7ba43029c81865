"""``gramine``: the enclave server inside a real SGX enclave under Gramine (not runnable yet).

Built behind the same contract as ``sim`` (attestation through ``/dev/attestation``, the
``gramine-sgx`` launch), but it refuses to start everywhere, with the reason: the boundary's
transport does not cross Gramine's enclave boundary. The channel rides on an AF_UNIX socketpair
the enclave process inherits and on shared-memory regions passed over it with SCM_RIGHTS;
Gramine keeps AF_UNIX sockets between Gramine processes (encrypted transparently, so a host
process cannot talk to them), does not hand a host file descriptor to the enclave, and does not
pass descriptors with SCM_RIGHTS (gramineproject/gramine issues 556 and 468). Running under SGX
needs a transport over loopback TCP with the regions as ``untrusted_shm`` files; it is not built.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from taoism.backends.process import ProcessBackend
from taoism.config import EnclaveConfig
from taoism.errors import BackendUnavailable

SGX_DEVICES = ("/dev/sgx_enclave", "/dev/sgx/enclave", "/dev/isgx")

TRANSPORT_GAP = (
    "backend 'gramine' cannot run yet: the boundary's transport (an inherited AF_UNIX socketpair "
    "and shared-memory regions passed over it with SCM_RIGHTS) does not cross Gramine's enclave "
    "boundary, where AF_UNIX sockets reach only other Gramine processes and host file "
    "descriptors are not passed in. A transport over loopback TCP with `untrusted_shm` regions is "
    "needed and is not built; use backend='sim' (the default)"
)


class GramineBackend(ProcessBackend):
    """Real SGX through Gramine: refuses to start until the boundary has a Gramine transport."""

    name = "gramine"
    quote_kind = "sgx"  # package mode: a real DCAP quote via /dev/attestation

    @staticmethod
    def platform_gaps(config: EnclaveConfig) -> list[str]:
        """What this machine lacks for ``gramine-sgx`` (empty where SGX, Gramine and the manifest exist)."""
        gaps = []
        if not any(os.path.exists(d) for d in SGX_DEVICES):
            gaps.append(
                f"an SGX device (looked for {', '.join(SGX_DEVICES)}: an SGX-capable Xeon with "
                "the in-kernel driver)"
            )
        if shutil.which("gramine-sgx") is None:
            gaps.append("the `gramine-sgx` command (https://gramine.readthedocs.io, on PATH)")
        manifest = config.gramine_manifest
        if not manifest or not Path(manifest).is_file():
            gaps.append(
                "a signed manifest for `python -m taoism.enclave.server` (`gramine-manifest` + "
                "`gramine-sgx-sign`, passed as EnclaveConfig(gramine_manifest=PATH))"
            )
        return gaps

    @classmethod
    def check_platform(cls, config: EnclaveConfig) -> None:
        gaps = cls.platform_gaps(config)
        also = f". This machine also lacks: {'; '.join(gaps)}" if gaps else ""
        raise BackendUnavailable(TRANSPORT_GAP + also)

    def command(self, sock_fd: int) -> list[str]:
        """The ``gramine-sgx`` launch line (reached once a Gramine transport exists)."""
        manifest = Path(str(self.config.gramine_manifest))
        args = super().command(sock_fd)[1:]  # drop sys.executable; gramine runs its own python
        return ["gramine-sgx", str(manifest.with_suffix("").with_suffix("")), *args]
