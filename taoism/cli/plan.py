"""``taoism plan``: preview a placement (params, FLOPs, bytes crossing, enclave memory)."""

from __future__ import annotations

from pathlib import Path

import click

from taoism.cli._common import ModelArgs, default_split, mode_option, model_options
from taoism.cli._options import Output, output_options, write_json


@click.command()
@model_options
@mode_option()
@output_options(
    out_help="Write plan.json and, when the enclave runs anything, memory.json "
    "(the enclave memory plan) into DIR."
)
@click.option(
    "--save",
    metavar="FILE",
    hidden=True,
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The old spelling of --json.",
)
def plan(spec: ModelArgs, mode: str, out: Output, save: Path | None) -> None:
    """Preview a placement without running it: per node placement, params, FLOPs, crossings.

    --json writes the plan; reuse it with `taoism run --plan FILE`.
    """
    from taoism.capture import capture
    from taoism.placement import PlacementRules, build_plan
    from taoism.runtime.lowering import enclave_program

    model, x = spec.build()
    if spec.strategy:
        from taoism.strategies import apply_strategy

        model, placement = apply_strategy(model, spec.strategy)
    else:
        placement = spec.placement_spec()
        if mode == "enclave":
            placement = placement or {"_default": "ENCLAVE"}
        elif mode == "split":
            placement = placement or default_split(model)
    captured = capture(model, x)
    result = build_plan(captured, PlacementRules.from_spec(placement))
    enclave_program(captured, result)  # fails here if the enclave cannot run a placed node
    click.echo(result.table())
    memory = None
    if result.enclave_segments:
        from taoism.placement.memory import memory_plan

        memory = memory_plan(result, spec.tee or "unlimited", captured)
        click.echo()
        click.echo(memory.table())
    if save is not None:
        out.note(f"wrote {write_json(save, result.to_json())}")

    def files(d: Path) -> dict[str, Path]:
        paths = {"plan": write_json(d / "plan.json", result.to_json())}
        if memory is not None:
            paths["memory plan"] = write_json(d / "memory.json", memory.to_json())
        return paths

    out.emit(result.to_json(), "plan", files)


def register(app: click.Group) -> None:
    """Add ``plan`` to ``app``."""
    app.add_command(plan)
