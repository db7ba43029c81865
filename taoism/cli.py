"""The ``taoism`` command line: run, plan, bench, attack, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from taoism.errors import ConfigError, TaoismError

MODES = ("gpu", "cpu", "enclave", "split")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="zoo model name (see `taoism models`)")
    p.add_argument("--dataset-shape", default="cifar",
                   help="input shape family: cifar (32x32), imagenet (224x224), mnist, digits")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--weights", default=None, help="state_dict or checkpoint file to load")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--placement", default=None,
                   help="JSON object or file: {name|re:regex|_default: GPU|ENCLAVE|AUTO}")
    p.add_argument("--plan", default=None, help="a plan file saved by `taoism plan --save`")
    p.add_argument("--strategy", default=None, help="TSDP strategy, e.g. deep:1, magnitude:0.01, all")
    p.add_argument("--tee", default=None, help="TEE profile: unlimited, sgx1-client, sgx2-server, trustzone")


def _placement(args: argparse.Namespace, model: torch.nn.Module) -> Any:
    if args.plan and args.placement:
        raise ConfigError("give --plan or --placement, not both")
    if args.plan:
        return args.plan
    if args.placement:
        text = args.placement.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--placement is not valid JSON: {exc}") from None
        return text
    return None


def default_split(model: torch.nn.Module) -> dict[str, str]:
    """The demo's split placement: the first half of the model's units in the enclave."""
    from taoism.zoo import units

    us = units(model)
    first = us[: max(1, len(us) // 2)]
    placement = {name: "ENCLAVE" for unit in first for name in unit}
    placement["_default"] = "GPU"
    return placement


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    from taoism.zoo import example_input, get_model

    model = get_model(args.model, dataset_shape=args.dataset_shape, num_classes=args.num_classes,
                      weights=args.weights)
    x = example_input(args.model, args.dataset_shape, batch=args.batch)
    return model, x


def _shield_kwargs(args: argparse.Namespace, mode: str, model: torch.nn.Module) -> dict[str, Any]:
    from taoism.config import EnclaveConfig

    kw: dict[str, Any] = {"enclave": EnclaveConfig(threads=args.enclave_threads,
                                                   **({"tee": args.tee} if args.tee else {}))}
    if mode == "cpu":
        kw["device"] = "cpu"
    elif mode == "enclave":
        kw["placement"] = {"_default": "ENCLAVE"}
    elif mode == "split":
        if args.strategy:
            kw["strategy"] = args.strategy
        else:
            kw["placement"] = _placement(args, model) or default_split(model)
    return kw


def cmd_run(args: argparse.Namespace) -> int:
    from taoism.bench import time_plain
    from taoism.runtime import default_device, shield

    torch.set_num_threads(args.threads)
    model, x = _build(args)
    mode = args.mode
    if mode != "split" and (args.placement or args.plan or args.strategy):
        mode = "split"
    kw = _shield_kwargs(args, mode, model)
    device = kw.get("device") or default_device()
    print(f"taoism run: {args.model} ({args.dataset_shape}) batch {args.batch}, mode {mode}, "
          f"device {device}, {args.threads} host thread(s), {args.enclave_threads} enclave thread(s)",
          file=sys.stderr)
    with shield(model, x, **kw) as sm:
        ref = model(x)
        out = sm(x)
        err = (out.float() - ref.float()).abs().max().item()
        prof = sm.profile(x, repeats=args.repeats, warmup=args.warmup)
        plain = time_plain(model, x, device=device, repeats=args.repeats, warmup=args.warmup)
        stats = sm.stats()
        print(sm.plan.table())
        print()
        print(prof.table())
    ratio = prof.end_to_end.median / plain.median if plain.median else float("nan")
    print(f"\nplain PyTorch on {device}: {plain.ms()}; shielded / plain = {ratio:.3f}x; "
          f"max |output - plain| = {err:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "dataset_shape": args.dataset_shape, "mode": mode,
            "batch": args.batch, "threads": args.threads, "enclave_threads": args.enclave_threads,
            "plan": sm.plan.to_json(), "profile": prof.to_json(), "plain": plain.to_json(),
            "ratio_to_plain": ratio, "max_abs_error": err, "enclave_stats": stats}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from taoism.capture import capture
    from taoism.placement import PlacementRules, build_plan
    from taoism.runtime.lowering import enclave_program

    model, x = _build(args)
    if args.strategy:
        from taoism.strategies import apply_strategy

        model, placement = apply_strategy(model, args.strategy)
    else:
        placement = _placement(args, model)
        if args.mode == "enclave":
            placement = placement or {"_default": "ENCLAVE"}
        elif args.mode == "split":
            placement = placement or default_split(model)
    captured = capture(model, x)
    plan = build_plan(captured, PlacementRules.from_spec(placement))
    enclave_program(captured, plan)  # fails here if the enclave cannot run a placed node
    print(plan.table())
    if plan.enclave_segments:
        from taoism.placement.memory import format_memory_plan, memory_plan

        print()
        print(format_memory_plan(memory_plan(plan, args.tee or "unlimited", captured)))
    if args.save:
        plan.save(args.save)
        print(f"wrote {args.save}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from taoism.zoo import list_models, supported_shapes

    for name in list_models():
        print(f"{name:<20} {', '.join(supported_shapes(name))}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """ResNet-18 CIFAR: the three baseline modes and one split placement, side by side."""
    from taoism.bench import time_plain
    from taoism.runtime import default_device, shield
    from taoism.zoo import example_input, get_model

    torch.set_num_threads(args.threads)
    model = get_model("resnet18", dataset_shape="cifar")
    x = example_input("resnet18", "cifar", batch=args.batch)
    ref = model(x)
    dev = default_device()
    rows = []
    plain = time_plain(model, x, device="cpu", repeats=args.repeats, warmup=args.warmup)
    rows.append(("plain PyTorch, CPU", plain, 0.0, 0.0, 0))
    runs = [("gpu", f"whole model on the device ({dev})", {}),
            ("cpu", "whole model on the CPU via taoism", {"device": "cpu"}),
            ("enclave", "whole model in the enclave", {"placement": {"_default": "ENCLAVE"}}),
            ("split", "first half in the enclave", {"placement": default_split(model)})]
    for i, (mode, label, kw) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {label} ...", file=sys.stderr, flush=True)
        with shield(model, x, **kw) as sm:
            out = sm(x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
            prof = sm.profile(x, repeats=args.repeats, warmup=args.warmup)
            t = sm.plan.totals()
            rows.append((label, prof.end_to_end, t["flops_enclave_pct"], t["params_enclave_pct"],
                         t["crossings"]))
    print(f"\nResNet-18 CIFAR, batch {args.batch}, {args.threads} host thread(s), 1 enclave thread; "
          f"outputs of every mode equal the plain model (rtol 1e-4, atol 1e-5)\n")
    print(f"{'mode':<36} {'median ms':>10} {'p10':>8} {'p90':>8} {'x plain':>8} {'%FLOPs TEE':>10} "
          f"{'%params TEE':>11} {'crossings':>9}")
    for label, st, fl, pa, cr in rows:
        print(f"{label:<36} {st.median * 1e3:>10.2f} {st.p10 * 1e3:>8.2f} {st.p90 * 1e3:>8.2f} "
              f"{st.median / plain.median:>8.2f} {fl:>10.1f} {pa:>11.1f} {cr:>9}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from taoism.bench.strategies import format_table, run_strategy_bench, write_outputs

    torch.set_num_threads(args.threads)
    strategies = [s.strip() for s in args.strategies.split(",")] if args.strategies != "all" else ["all"]
    result = run_strategy_bench(args.model, args.dataset_shape, args.batch, strategies,
                                repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                                **({"device": args.device} if args.device else {}))
    print(format_table(result))
    for kind, path in write_outputs(result, args.out).items():
        print(f"wrote {kind}: {path}", file=sys.stderr)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from taoism.security import format_table, run_attack_table, sweep

    strategies = [s.strip() for s in args.strategies.split(",")]
    queries = [int(q) for q in args.queries.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"jobs": args.jobs, "ray": args.ray, "out_dir": args.out, "epochs": args.epochs,
              "data_root": args.data_root, "smoke": args.smoke}
    result = run_attack_table(args.model, args.dataset, strategies, queries, seeds, **common)
    print(format_table(result))
    if args.sweep:
        found = sweep(args.model, args.dataset, queries=queries[0], seeds=seeds, **common)
        for family, info in found.get("families", {}).items():
            print(f"sweet spot {family}: C* = {info.get('c_star')}, "
                  f"%FLOPs(C*) = {info.get('c_star_flops_tee_pct')}")
    print(f"results in {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taoism", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="shield a zoo model, check outputs, print the per-layer profile")
    _add_model_args(p)
    p.add_argument("--mode", choices=MODES, default="split")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="host torch threads")
    p.add_argument("--enclave-threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write plan, profile and baseline to this file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="preview a placement: params, FLOPs, bytes crossing (runs nothing)")
    _add_model_args(p)
    p.add_argument("--mode", choices=MODES, default="split")
    p.add_argument("--save", default=None, help="write the plan as JSON (reuse with --plan)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("bench", help="time every TSDP strategy and the baselines in one run")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset-shape", default="cifar")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--strategies", default="all")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="untrusted device (default: cuda if present, else cpu)")
    p.add_argument("--out", default="results/bench", help="directory for JSON, CSV and PNG")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("attack", help="model stealing and membership inference against each strategy")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--strategies", default="all")
    p.add_argument("--queries", default="50,500")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--ray", nargs="?", const=True, default=False,
                   help="run jobs on Ray (local when no address is given)")
    p.add_argument("--sweep", action="store_true", help="also find each strategy's sweet spot C*")
    p.add_argument("--epochs", type=int, default=None, help="surrogate fine-tuning epochs")
    p.add_argument("--data-root", default=None, help="dataset directory (default: the system's)")
    p.add_argument("--smoke", action="store_true", help="tiny, fast configuration (for checks)")
    p.add_argument("--out", default="results/attack")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("demo", help="ResNet-18 CIFAR in the baseline modes and one split placement")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TaoismError as exc:
        print(f"taoism: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
