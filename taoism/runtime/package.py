"""Owner side: capture, plan and lower a model as shield() does, and write a signed package.

Run by the model owner, not on the device. The package's ``plan`` section is the plan with its
full transfer schedule; its ``program`` section holds the enclave program (run by the enclave,
its weights sealed under the model key), the device program (rebuilt by :func:`taoism.deploy`
over the plaintext device weights), the input specs and the output structure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from taoism.capture import capture
from taoism.config import EnclaveConfig
from taoism.errors import ConfigError, PlacementError
from taoism.placement import EnclaveMode, PlacementRules, PlacementSpec, Plan, build_plan
from taoism.placement.lowering import enclave_program
from taoism.placement.memory import attach_memory_plan
from taoism.protocol.vocabulary import encode_arg
from taoism.trust.keys import write_secret
from taoism.trust.writer import write_package

PACKAGE_PROGRAM_FORMAT = "taoism-package-program/1"


@dataclass(frozen=True)
class Packaged:
    """What :func:`package` wrote: the package (for the device) and the model key file (for the key service)."""

    path: Path
    key_path: Path
    shielded_tensors: int
    device_tensors: int


def plan_document(plan: Plan) -> dict[str, Any]:
    """``plan.to_json()`` plus the full schedule :func:`taoism.deploy` rebuilds the Plan from."""
    doc = plan.to_json()
    doc["schedule"] = {
        "segments": [
            {**s.to_json(), "host_free": list(s.host_free), "enclave_free": list(s.enclave_free)}
            for s in plan.segments
        ],
        "input_names": list(plan.input_names),
        "output_names": list(plan.output_names),
        "batch": plan.batch,
        "value_bytes": dict(plan.value_bytes),
    }
    return doc


def package(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    placement: PlacementSpec = None,
    *,
    strategy: Any = None,
    out: str | os.PathLike[str] = "model.taoism",
    owner_key: str | os.PathLike[str],
    tee: str = "unlimited",
    memory_budget: int | None = None,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    overwrite: bool = False,
) -> Packaged:
    """Seal ``model`` into a signed package at ``out`` and its fresh model key into ``out + '.key'`` (0600)."""
    if strategy is not None and placement is not None:
        raise ConfigError("give either placement= or strategy=, not both")
    out_path = Path(out)
    key_path = out_path.with_name(out_path.name + ".key")
    if key_path.exists() and not overwrite:
        raise ConfigError(
            f"{key_path} exists; pass overwrite=True to replace the package and its model key"
        )
    cfg = EnclaveConfig(tee=tee, memory_budget=memory_budget)
    if strategy is not None:
        from taoism.strategies import apply_strategy

        model, placement = apply_strategy(model, strategy)
    rules = (
        placement if isinstance(placement, PlacementRules) else PlacementRules.from_spec(placement)
    )
    examples = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    captured = capture(model, examples, leaf_modules=tuple(leaf_modules))
    plan = build_plan(captured, rules)
    desc, shielded = enclave_program(captured, plan)
    attach_memory_plan(
        desc, shielded, plan, cfg, captured
    )  # refuses a layer that cannot fit the TEE
    device_segments = [s for s in plan.segments if s.side is EnclaveMode.GPU]
    try:
        device_desc, device = enclave_program(captured, plan, device_segments)
    except PlacementError as exc:
        raise PlacementError(
            f"taoism.package stores device segments in the same whitelisted op vocabulary "
            f"as the enclave's, and this one is not in it: {exc}"
        ) from None
    out_node = next(n for n in captured.gm.graph.nodes if n.op == "output")
    program = {
        "format": PACKAGE_PROGRAM_FORMAT,
        "enclave": desc,
        "device": device_desc,
        "inputs": [[str(t.dtype).removeprefix("torch."), list(t.shape[1:])] for t in examples],
        "output": encode_arg(
            out_node.args[0], lambda a: a.name if isinstance(a, fx.Node) else None
        ),
        "tee": tee,
        "memory_budget": memory_budget,
    }
    model_key = write_package(
        out_path,
        plan_document(plan),
        dict(zip(device_desc["tensors"], device)),
        program,
        dict(zip(desc["tensors"], shielded)),
        owner_key,
    )
    try:
        write_secret(key_path, model_key, overwrite=overwrite)
    finally:
        del model_key
    return Packaged(out_path, key_path, len(shielded), len(device))


__all__ = ["PACKAGE_PROGRAM_FORMAT", "Packaged", "package", "plan_document"]
