"""What ``plan`` and ``run`` share: the model options, the execution modes, the placement."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from taoism.cli._options import Decorator, option_group
from taoism.errors import ConfigError

if TYPE_CHECKING:
    import torch

MODES = ("gpu", "cpu", "enclave", "split")
MODE_HELP = (
    "gpu: whole model on the device (CUDA if present, else CPU); cpu: on the CPU; "
    "enclave: whole model in the enclave; split: a mixed placement (--placement, --plan, "
    "--strategy, or by default the first half of the model's blocks in the enclave)."
)


def mode_option(extra_help: str = "") -> Decorator:
    """``--mode gpu|cpu|enclave|split`` (default split)."""
    return click.option(
        "--mode", type=click.Choice(MODES), default="split", help=MODE_HELP + extra_help
    )


@dataclass(frozen=True)
class ModelArgs:
    """A zoo model, its example input and where its layers run."""

    model: str = "resnet18"
    dataset_shape: str = "cifar"
    num_classes: int | None = None
    weights: Path | None = None
    batch: int = 1
    placement: str | None = None
    plan: Path | None = None
    strategy: str | None = None
    tee: str | None = None

    def __post_init__(self) -> None:
        given = [f"--{n}" for n in ("placement", "plan", "strategy") if getattr(self, n)]
        if len(given) > 1:
            raise ConfigError(
                f"give one of --placement, --plan, --strategy, not {' and '.join(given)}"
            )

    @property
    def places(self) -> bool:
        """Whether a placement, plan or strategy was given."""
        return bool(self.placement or self.plan or self.strategy)

    def build(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """The zoo model (with ``--weights`` loaded) and its example input."""
        from taoism.zoo import example_input, get_model

        model = get_model(
            self.model,
            dataset_shape=self.dataset_shape,
            num_classes=self.num_classes,
            weights=str(self.weights) if self.weights else None,
        )
        return model, example_input(self.model, self.dataset_shape, batch=self.batch)

    def placement_spec(self) -> Any:
        """``--plan`` (a path), ``--placement`` (parsed JSON object or a file path) or None."""
        if self.plan:
            return str(self.plan)
        if self.placement:
            text = self.placement.strip()
            if text.startswith("{"):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"--placement is not valid JSON: {exc}") from None
            return text
        return None

    def shield_kwargs(
        self, mode: str, model: torch.nn.Module, enclave_threads: int = 1
    ) -> dict[str, Any]:
        """Keyword arguments of :func:`taoism.shield` for ``mode``."""
        from taoism.config import EnclaveConfig

        kw: dict[str, Any] = {
            "enclave": EnclaveConfig(threads=enclave_threads, tee=self.tee or "unlimited")
        }
        if mode == "cpu":
            kw["device"] = "cpu"
        elif mode == "enclave":
            kw["placement"] = {"_default": "ENCLAVE"}
        elif mode == "split":
            if self.strategy:
                kw["strategy"] = self.strategy
            else:
                kw["placement"] = self.placement_spec() or default_split(model)
        return kw


_file = click.Path(exists=True, dir_okay=False, path_type=Path)

#: ``--model``, ``--dataset-shape``, ... passed to the command as ``spec: ModelArgs``.
model_options = option_group(
    ModelArgs,
    "spec",
    click.option("--model", default="resnet18", help="Zoo model name (see `taoism models`)."),
    click.option(
        "--dataset-shape",
        default="cifar",
        help="Input shape family: cifar (32x32), imagenet (224x224), mnist (28x28), digits (8x8).",
    ),
    click.option(
        "--num-classes",
        type=click.IntRange(min=1),
        default=None,
        help="Output classes  [default: the shape family's]",
    ),
    click.option(
        "--weights",
        type=_file,
        default=None,
        help="A state_dict or checkpoint file to load  [default: random init]",
    ),
    click.option(
        "--batch", type=click.IntRange(min=1), default=1, help="Batch size of the example input."
    ),
    click.option(
        "--placement",
        metavar="JSON|FILE",
        default=None,
        help='Placement as a JSON object or file: {"name" | "re:regex" | "_default": '
        '"GPU" | "ENCLAVE" | "AUTO"}.',
    ),
    click.option(
        "--plan",
        type=_file,
        default=None,
        help="A plan file written by `taoism plan --json` (reuses its placement).",
    ),
    click.option(
        "--strategy",
        default=None,
        help="A TSDP strategy instead of a placement: deep:K, shallow:K, magnitude:R, "
        "intermediate:THETA, nonlinear, teeslice, none, all.",
    ),
    click.option(
        "--tee",
        default=None,
        help="TEE memory profile: unlimited, sgx1-client, sgx2-server, trustzone  "
        "[default: unlimited]",
    ),
)


def default_split(model: torch.nn.Module) -> dict[str, str]:
    """The demo's split placement: the first half of the model's units in the enclave."""
    from taoism.zoo import units

    us = units(model)
    first = us[: max(1, len(us) // 2)]
    placement = {name: "ENCLAVE" for unit in first for name in unit}
    placement["_default"] = "GPU"
    return placement


def set_host_threads(threads: int) -> None:
    """Set torch's host thread count."""
    import torch

    torch.set_num_threads(threads)
