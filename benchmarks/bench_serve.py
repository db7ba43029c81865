"""Load test of the inference server on loopback: every answer checked against the plain model.

Starts ``python -m taoism.serve`` (ResNet-18 CIFAR, first half of its blocks in the enclave, or
``--strategy``) on a free loopback port, then runs two phases, each bounded in count and time:
1. ``--requests`` concurrent requests (all started at once, up to ``--concurrency`` connections),
   each with its own input; every 200 answer compared with the plain model for that input
   (rtol 1e-4, atol 1e-5). Reported: lost (no answer: transport error or the time limit),
   mixed (a 200 whose output is not its own input's), 5xx and 4xx counts, client-side
   p50/p99 latency of the 200s, throughput.
2. the same with the enclave process killed once, after ``--kill-at`` of the answers arrived:
   requests in flight at the kill get a 503, none a wrong answer; the run goes on after the
   restart.
In the same run, before the server starts: the shielded model's own rate at ``--max-batch``
rows per call in-process (the server's compute limit) and plain PyTorch's, for the ratio.

The client is aiohttp, in the same process, on the same CPUs as the server.

Usage: python benchmarks/bench_serve.py [--requests 1000] [--concurrency 1000] [--max-batch 16]
       [--max-wait-ms 5] [--format mixed|json|binary] [--time-limit 300] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time

import aiohttp
import httpx
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import taoism
from taoism.bench.stats import Stat
from taoism.cli import default_split
from taoism.serve.launch import ServerProcess, kill_process
from taoism.serve.metrics import parse_metrics
from taoism.zoo import get_model, input_shape

RTOL, ATOL = 1e-4, 1e-5


def _inputs(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1234))


def compute_limit(
    model: torch.nn.Module, shield_kw: dict, batch: int, shape: tuple[int, ...], repeats: int
) -> dict:
    """Rows/s of the shielded model and of plain PyTorch, in-process, ``batch`` rows per call."""
    x = _inputs(batch, shape)
    out = {}
    with taoism.shield(model, x, **shield_kw) as sm:
        torch.testing.assert_close(sm(x), model(x), rtol=RTOL, atol=ATOL)
        for name, fn in (("shielded", sm), ("plain", model)):
            times = []
            with torch.inference_mode():
                fn(x)
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - t0)
            st = Stat.of(times)
            out[name] = {"batch_s": st.to_json(), "rows_per_s": batch / st.median}
    return out


def _bodies(xs: torch.Tensor, fmt: str) -> list[tuple[bytes, str]]:
    """Every request's body, encoded before the clock starts (the client shares the CPUs)."""
    out = []
    for i in range(len(xs)):
        x = xs[i : i + 1]
        if fmt == "binary" or (fmt == "mixed" and i % 2 == 1):
            out.append((st_save({"inputs": x}), "application/vnd.safetensors"))
        else:
            out.append((json.dumps({"inputs": x.tolist()}).encode(), "application/json"))
    return out


def _decode(content: bytes, ctype: str) -> torch.Tensor:
    if ctype.startswith("application/json"):
        return torch.tensor(json.loads(content)["outputs"])
    return st_load(content)["outputs"]


async def load_phase(
    url: str,
    bodies: list[tuple[bytes, str]],
    ref: torch.Tensor,
    concurrency: int,
    time_limit: float,
    kill: tuple[float, ServerProcess] | None = None,
) -> dict:
    """All requests at once; every answer checked; optionally kill the enclave after kill[0] s."""
    n = len(bodies)
    done = 0
    killed: dict = {}
    # aiohttp's client: httpx's async pool was ~3x slower at a few hundred connections here,
    # and the client shares the CPUs with the server
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=time_limit)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as client:

        async def one(i: int) -> dict:
            nonlocal done
            body, ctype = bodies[i]
            t0 = time.perf_counter()
            try:
                async with client.post(
                    "/v1/predict", data=body, headers={"content-type": ctype}
                ) as r:
                    content = await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return {"i": i, "status": None, "error": type(exc).__name__}
            done += 1
            return {
                "i": i,
                "status": r.status,
                "latency": time.perf_counter() - t0,
                "content": content,
                "ctype": r.headers.get("content-type", ""),
            }

        async def killer(after_s: float, srv: ServerProcess) -> None:
            await asyncio.sleep(after_s)
            (pid,) = srv.enclave_pids()
            await asyncio.to_thread(kill_process, pid)
            killed.update(pid=pid, after_s=after_s, answers_before=done)
            print(f"killed enclave {pid} after {after_s:.2f} s, {done} answers", flush=True)

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        kill_task = asyncio.ensure_future(killer(*kill)) if kill else None
        finished, pending = await asyncio.wait(tasks, timeout=time_limit)
        wall = time.perf_counter() - t0
        for t in pending:
            t.cancel()
        if kill_task is not None:
            await kill_task
    results = [t.result() for t in finished]
    ok = [r for r in results if r["status"] == 200]
    mixed = sum(
        not torch.allclose(
            _decode(r["content"], r["ctype"]), ref[r["i"] : r["i"] + 1], rtol=RTOL, atol=ATOL
        )
        for r in ok
    )
    lat = sorted(r["latency"] for r in ok)
    codes: dict[str, int] = {}
    for r in results:
        key = str(r["status"]) if r["status"] is not None else r["error"]
        codes[key] = codes.get(key, 0) + 1
    return {
        "requests": n,
        "answered_200": len(ok),
        "mixed": mixed,
        "lost": n - len(results) + sum(r["status"] is None for r in results),
        "5xx": sum(1 for r in results if r["status"] and r["status"] >= 500),
        "4xx": sum(1 for r in results if r["status"] and 400 <= r["status"] < 500),
        "codes": codes,
        "wall_s": wall,
        "throughput_rps": len(ok) / wall,
        "latency_s": Stat.of(lat).to_json() if lat else None,
        "p50_ms": lat[len(lat) // 2] * 1e3 if lat else None,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1e3 if lat else None,
        "kill": killed,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset-shape", default="cifar")
    p.add_argument("--strategy", default=None, help="TSDP strategy instead of the first-half split")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--format", choices=("mixed", "json", "binary"), default="mixed")
    p.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        help="kill the enclave after this fraction of the steady phase's wall time",
    )
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per phase")
    p.add_argument("--repeats", type=int, default=10, help="in-process compute-limit repeats")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = get_model(args.model, dataset_shape=args.dataset_shape)
    shape = tuple(input_shape(args.model, args.dataset_shape))
    if args.strategy:
        shield_kw, serve_args = {"strategy": args.strategy}, ["--strategy", args.strategy]
    else:
        placement = default_split(model)
        shield_kw, serve_args = {"placement": placement}, ["--placement", json.dumps(placement)]
    print(f"compute limit in-process ({args.max_batch} rows per call) ...", flush=True)
    limit = compute_limit(model, shield_kw, args.max_batch, shape, args.repeats)
    xs = _inputs(args.requests, shape)
    with torch.inference_mode():
        ref = torch.cat([model(xs[i : i + 64]) for i in range(0, len(xs), 64)])
    result = {
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "model": args.model,
        "dataset_shape": args.dataset_shape,
        "placement": args.strategy or "first half of the blocks in the enclave",
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "format": args.format,
        "concurrency": args.concurrency,
        "compute_limit": limit,
        "phases": {},
    }
    common = [
        "--model",
        args.model,
        "--dataset-shape",
        args.dataset_shape,
        *serve_args,
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--request-timeout-s",
        str(args.time_limit),
    ]
    bodies = _bodies(xs, args.format)
    with ServerProcess(common) as srv:
        for phase in ("steady", "enclave killed once"):
            kill = None
            if phase != "steady":
                kill = (args.kill_at * result["phases"]["steady"]["wall_s"], srv)
            print(f"phase {phase}: {args.requests} requests ...", flush=True)
            res = asyncio.run(
                load_phase(srv.url, bodies, ref, args.concurrency, args.time_limit, kill)
            )
            m = parse_metrics(httpx.get(srv.url + "/metrics").text)
            res["server_restarts_total"] = m["taoism_enclave_restarts_total"]
            res["server_p50_ms_p99_ms"] = [  # server side, over its recent successful requests
                m.get(f"taoism_request_latency_quantile_seconds{{quantile={q}}}", float("nan"))
                * 1e3
                for q in (0.5, 0.99)
            ]
            res["server_mean_requests_per_batch"] = m["taoism_batch_requests_sum"] / max(
                m["taoism_batch_requests_count"], 1
            )
            result["phases"][phase] = res
            print(json.dumps({k: v for k, v in res.items() if k != "latency_s"}), flush=True)
        code = srv.stop()
        print(srv.stderr()[-3000:], flush=True)
        result["server_exit_code"] = code
    rate = limit["shielded"]["rows_per_s"]
    for phase, res in result["phases"].items():
        print(
            f"{phase:<22} lost {res['lost']}  mixed {res['mixed']}  5xx {res['5xx']}  "
            f"p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  "
            f"{res['throughput_rps']:.1f} req/s = {res['throughput_rps'] / rate:.2f} x the "
            f"in-process shielded rate ({rate:.1f} rows/s); plain "
            f"{limit['plain']['rows_per_s']:.1f} rows/s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    steady = result["phases"]["steady"]
    crash = result["phases"]["enclave killed once"]
    bad = steady["lost"] + steady["mixed"] + steady["5xx"] + crash["lost"] + crash["mixed"]
    return 1 if bad or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
