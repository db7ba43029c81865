"""Where a node of the model runs."""

from __future__ import annotations

import enum


class EnclaveMode(str, enum.Enum):
    """Placement of one layer or node.

    ``GPU`` runs on the untrusted device (CUDA when present, else CPU), ``ENCLAVE`` runs
    inside the trusted enclave, ``AUTO`` runs wherever its inputs already are (the enclave
    if any input lives there, else the device).
    """

    GPU = "GPU"
    ENCLAVE = "ENCLAVE"
    AUTO = "AUTO"

    @classmethod
    def parse(cls, value: EnclaveMode | str) -> EnclaveMode:
        from taoism.errors import ConfigError

        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            raise ConfigError(
                f"unknown placement {value!r}; use one of {[m.value for m in cls]}"
            ) from None
