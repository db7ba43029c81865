"""``sim``: simulated SGX. The enclave is a separate OS process on this machine.

Isolation comes from the process boundary (the host never receives the enclave's weights or
keys); there is no hardware memory encryption or attestation, which ``gramine`` adds.
"""

from __future__ import annotations

from taoism.backends.process import ProcessBackend


class SimBackend(ProcessBackend):
    """Default backend: runs anywhere Python and torch run."""

    name = "sim"
