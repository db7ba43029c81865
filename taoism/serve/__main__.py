"""``python -m taoism.serve``: the server's options, until ``taoism serve`` is wired in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The options of ``taoism serve`` (names match :func:`taoism.serve.main_serve`)."""
    p.add_argument("--model", default="resnet18", help="zoo model name (see `taoism models`)")
    p.add_argument("--dataset-shape", default="cifar", help="cifar, imagenet, mnist, digits")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--weights", default=None, help="state_dict or checkpoint file to load")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--strategy", default=None, help="TSDP strategy, e.g. teeslice, deep:1")
    g.add_argument("--placement", default=None, help="JSON object or file of placement rules")
    g.add_argument("--plan", default=None, help="a plan file saved by `taoism plan --save`")
    p.add_argument("--tee", default=None, help="TEE profile: unlimited, sgx1-client, ...")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--threads", type=int, default=1, help="host torch threads")
    p.add_argument("--enclave-threads", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--max-batch", type=int, default=16, help="most rows per enclave call")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="batching wait after the first request"
    )
    p.add_argument("--max-body-bytes", type=int, default=8 << 20)
    p.add_argument("--max-queue", type=int, default=4096)
    p.add_argument("--request-timeout-s", type=float, default=60.0)
    p.add_argument("--shutdown-timeout-s", type=float, default=30.0)
    p.add_argument("--log-level", default="warning")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and run :func:`taoism.serve.main_serve`."""
    from taoism.serve import main_serve

    p = argparse.ArgumentParser(prog="python -m taoism.serve", description=__doc__)
    add_serve_args(p)
    args = vars(p.parse_args(argv))
    return main_serve(args.pop("model"), args.pop("dataset_shape"), **args)


if __name__ == "__main__":
    sys.exit(main())
