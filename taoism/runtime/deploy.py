"""Host side of the deployment threat model: run a sealed package without ever holding a shielded weight.

``deploy(path, keyserver=URL, owner_public=...)`` starts an enclave in package mode (pinned to the
owner key, which is part of its measurement), relays the key service's nonce, the enclave's
attestation envelope and the wrapped model key, and rebuilds the device segments from the
package's plaintext device weights. The enclave opens the package itself, checks the owner
signature and hashes, decrypts the shielded tensors and runs the signed program; the host reads
no shielded section at all (not even the ciphertext) and never holds the model key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from taoism.backends import get_backend
from taoism.backends.process import ProcessBackend
from taoism.capture.trace import NodeInfo
from taoism.config import EnclaveConfig
from taoism.enclave.program import build_modules, build_program
from taoism.errors import ConfigError, PackageError
from taoism.placement import EnclaveMode, PlacementRules, Plan
from taoism.placement.plan import LayerPlan, Segment
from taoism.protocol.vocabulary import decode_arg
from taoism.runtime.package import PACKAGE_PROGRAM_FORMAT
from taoism.runtime.shielded import ShieldedModel, _Ref
from taoism.trust.client import KeyServiceClient
from taoism.trust.format import DTYPES
from taoism.trust.reader import open_package

_LAYER_EXTRA = ("requested", "placement", "segment", "crossings_in", "bytes_in")


@dataclass(frozen=True)
class PackageSource:
    """Where a deployed model comes from (kept for :meth:`DeployedModel.reload`): no secret in here."""

    path: str
    keyserver: str
    owner_public: str
    platform_key: str | None = None
    timeout_s: float = 10.0


def plan_from_document(doc: Any, where: str) -> Plan:
    """The Plan a package's plan section describes (see :func:`taoism.runtime.package.plan_document`)."""
    try:
        sched = doc["schedule"]
        layers = tuple(
            LayerPlan(
                NodeInfo(
                    **{
                        **{k: v for k, v in row.items() if k not in _LAYER_EXTRA},
                        "out_shapes": tuple(tuple(s) for s in row["out_shapes"]),
                        "out_dtypes": tuple(row["out_dtypes"]),
                    }
                ),
                EnclaveMode(row["requested"]),
                EnclaveMode(row["placement"]),
                int(row["segment"]),
                int(row["crossings_in"]),
                int(row["bytes_in"]),
            )
            for row in doc["layers"]
        )
        segments = tuple(
            Segment(
                int(s["index"]),
                EnclaveMode(s["side"]),
                *(
                    tuple(s[k])
                    for k in (
                        "nodes",
                        "inputs",
                        "outputs",
                        "send_in",
                        "returns",
                        "keep",
                        "host_free",
                        "enclave_free",
                    )
                ),
            )
            for s in sched["segments"]
        )
        return Plan(
            PlacementRules.from_spec(doc["rules"]),
            layers,
            segments,
            tuple(sched["input_names"]),
            tuple(sched["output_names"]),
            int(sched["batch"]),
            {str(k): int(v) for k, v in sched["value_bytes"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PackageError(
            f"{where}: the plan section is not a taoism package plan ({type(exc).__name__}: "
            f"{exc}); re-package the model with this taoism"
        ) from None


def _input_examples(program: Mapping[str, Any], where: str) -> tuple[torch.Tensor, ...]:
    try:
        return tuple(
            torch.zeros((1, *[int(d) for d in shape]), dtype=DTYPES[dtype])
            for dtype, shape in program["inputs"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{where}: the program's input specs are malformed ({exc})") from None


def _read_host_part(src: PackageSource) -> tuple[dict[str, Any], Plan, dict[str, torch.Tensor]]:
    """Program, plan and device weights; the owner signature and those sections' hashes are checked."""
    with open_package(
        src.path, src.owner_public, verify=False
    ) as pkg:  # shielded sections are never read
        program = pkg.program()
        if not isinstance(program, dict) or program.get("format") != PACKAGE_PROGRAM_FORMAT:
            raise PackageError(
                f"{src.path}: program section is not {PACKAGE_PROGRAM_FORMAT}; re-package the model"
            )
        plan = plan_from_document(pkg.plan(), src.path)
        return program, plan, pkg.device_tensors()


def start_package_enclave(src: PackageSource, config: EnclaveConfig) -> ProcessBackend:
    """Start a package-mode enclave, attest it to the key service and have it load the signed program.

    Every failure stops the enclave before it is raised (no partial state survives).
    """
    cls = get_backend(config.backend, config)
    if not issubclass(cls, ProcessBackend):
        raise ConfigError(f"backend {config.backend!r} cannot run packages; use 'sim' or 'gramine'")
    backend = cls(config)
    backend.package_mode(src.path, src.owner_public, src.platform_key)
    try:
        backend.start()
        wrapped = KeyServiceClient(src.keyserver, src.timeout_s).request_key(backend.attest)
        backend.provision(wrapped)
    except BaseException:
        backend.close()
        raise
    return backend


class DeployedModel(ShieldedModel):
    """A :class:`ShieldedModel` built from a sealed package; :meth:`reload` restarts from the package."""

    def __init__(
        self, source: PackageSource, device: str | torch.device | None, enclave: EnclaveConfig
    ) -> None:
        if enclave.sessions != 1:
            raise ConfigError(
                f"deploy() runs one enclave session per package (got sessions={enclave.sessions}); "
                "deploy the package once per session you need"
            )
        program, _, _ = _read_host_part(source)
        pkg_tee, pkg_budget = program.get("tee", "unlimited"), program.get("memory_budget")
        if (enclave.tee, enclave.memory_budget) not in ((pkg_tee, pkg_budget), ("unlimited", None)):
            raise ConfigError(
                f"{source.path} was planned for tee={pkg_tee!r} (budget {pkg_budget}); the owner "
                f"re-packages for tee={enclave.tee!r}"
            )
        enclave = dataclasses.replace(enclave, tee=pkg_tee, memory_budget=pkg_budget)
        self._source = source
        # the base constructor hands ``source`` to our _build (in place of a model)
        super().__init__(
            source,  # type: ignore[arg-type]
            _input_examples(program, source.path),
            device=device,
            enclave=enclave,
        )

    def _build(self, source: Any, examples: tuple[torch.Tensor, ...]) -> None:
        src: PackageSource = source
        program, plan, device_tensors = _read_host_part(src)
        root = build_modules(program["device"], device_tensors).to(self.device)
        segments: dict[int, fx.GraphModule] = {
            p.index: p.gm for p in build_program(program["device"], root)
        }
        del device_tensors
        backend = start_package_enclave(src, self.enclave_config) if plan.enclave_segments else None
        self._paths = {
            key: str(spec.get("path", key)) for key, spec in program["device"]["modules"].items()
        }
        self.memory_plan = None  # planned by the owner; the enclave has it from the signed program
        self._install(
            plan,
            segments,
            (backend,) if backend is not None else (),
            decode_arg(program["output"], _Ref),
        )

    def host_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the host holds, by its path in the owner's model (as :meth:`ShieldedModel.host_state_dict`)."""
        out = {}
        for name, t in super().host_state_dict().items():
            key, _, rest = name.partition(".")
            out[f"{self._paths.get(key, key)}.{rest}" if rest else self._paths.get(key, key)] = t
        return out

    def reload(self, model: Any = None) -> None:
        """Start a fresh enclave from the package (attest and provision again); no model needed."""
        if model is not None:
            raise ConfigError(
                "a deployed model restarts from its package: call reload() without a model"
            )
        with self._lock:
            self.close()
            self._build(self._source, self.example_inputs(1))


def deploy(
    path: str | os.PathLike[str],
    keyserver: str,
    *,
    owner_public: str | os.PathLike[str],
    platform_key: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    tee: str | None = None,
    backend: str | None = None,
    threads: int | None = None,
    enclave: EnclaveConfig | None = None,
    timeout_s: float = 10.0,
) -> ShieldedModel:
    """Run the sealed package at ``path``: the enclave attests to ``keyserver`` and decrypts its weights itself.

    ``owner_public`` is the owner's public key the package must be signed with (the enclave is
    launched pinned to it); ``platform_key`` the simulated platform key (``sim`` only).
    """
    cfg = enclave or EnclaveConfig()
    overrides: dict[str, Any] = {
        k: v for k, v in (("backend", backend), ("threads", threads), ("tee", tee)) if v is not None
    }
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    src = PackageSource(
        os.fspath(path),
        keyserver,
        os.fspath(owner_public),
        os.fspath(platform_key) if platform_key is not None else None,
        timeout_s,
    )
    KeyServiceClient(keyserver, timeout_s)  # a malformed address fails before anything starts
    return DeployedModel(src, device, cfg)


__all__ = [
    "DeployedModel",
    "PackageSource",
    "deploy",
    "plan_from_document",
    "start_package_enclave",
]
