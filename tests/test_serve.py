"""The inference server as a real subprocess on a loopback port: answers, errors, crash, SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import assert_same
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from taoism.cli import default_split
from taoism.serve.launch import ServerProcess, kill_process, process_gone
from taoism.serve.metrics import parse_metrics
from taoism.zoo import get_model

MODEL, SHAPE = "small_cnn", "cifar"
BIN = "application/vnd.safetensors"


class Server(ServerProcess):
    """The server of these tests: small_cnn, first half of its blocks in the enclave."""

    def __init__(self, *args: str) -> None:
        placement = json.dumps(default_split(get_model(MODEL, dataset_shape=SHAPE)))
        super().__init__(
            ["--model", MODEL, "--dataset-shape", SHAPE, "--placement", placement, *args]
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.client.get("/metrics").text)


@pytest.fixture(scope="module")
def plain():
    return get_model(MODEL, dataset_shape=SHAPE)


@pytest.fixture(scope="module")
def server():
    srv = Server("--max-batch", "8", "--max-wait-ms", "20", "--max-body-bytes", "200000")
    pids = srv.enclave_pids()
    assert pids, "the split plan must start an enclave process"
    yield srv
    pids += srv.enclave_pids()
    srv.client.close()
    assert srv.stop() == 0, srv.stderr()
    assert all(process_gone(pid) for pid in pids)


def _input(seed: int, rows: int = 1) -> torch.Tensor:
    return torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _predict(client: httpx.Client, x: torch.Tensor, binary: bool = False) -> httpx.Response:
    if binary:
        return client.post(
            "/v1/predict", content=st_save({"inputs": x}), headers={"content-type": BIN}
        )
    return client.post("/v1/predict", json={"inputs": x.tolist()})


def _outputs(r: httpx.Response) -> torch.Tensor:
    if r.headers["content-type"].startswith("application/json"):
        return torch.tensor(r.json()["outputs"])
    return st_load(r.content)["outputs"]


def _check(r: httpx.Response, x: torch.Tensor, plain) -> None:
    assert r.status_code == 200, r.text
    with torch.no_grad():
        ref = plain(x)
    assert ref.std() > 0.05  # outputs are not near-constant
    assert_same(_outputs(r), ref)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "safetensors"])
@pytest.mark.parametrize("rows", [1, 3])
def test_predict_matches_plain_model(server, plain, binary, rows):
    for seed in range(3):
        x = _input(100 * rows + seed, rows)
        r = _predict(server.client, x, binary)
        _check(r, x, plain)
        assert r.headers["content-type"].startswith(BIN if binary else "application/json")


def test_octet_stream_is_safetensors(server, plain):
    x = _input(7)
    r = server.client.post(
        "/v1/predict",
        content=st_save({"inputs": x}),
        headers={"content-type": "application/octet-stream"},
    )
    _check(r, x, plain)
    assert r.headers["content-type"] == "application/octet-stream"


_BAD = [
    ("malformed json", b'{"inputs": [1, 2', "application/json", 400, "not valid JSON"),
    ("wrong key", b'{"input": []}', "application/json", 400, 'exactly one key, "inputs"'),
    (
        "wrong shape",
        json.dumps({"inputs": [[[0.0] * 32] * 32]}).encode(),
        "application/json",
        400,
        "(batch, 3, 32, 32)",
    ),
    (
        "ragged",
        json.dumps({"inputs": [[1.0, 2.0], [1.0]]}).encode(),
        "application/json",
        400,
        "rectangular",
    ),
    ("strings", json.dumps({"inputs": [["a"]]}).encode(), "application/json", 400, "numbers"),
    ("nan", b'{"inputs": [NaN]}', "application/json", 400, "finite"),
    ("too many rows", st_save({"inputs": torch.zeros(9, 3, 32, 32)}), BIN, 413, "1 to 8"),
    (
        "wrong dtype",
        st_save({"inputs": torch.zeros(1, 3, 32, 32, dtype=torch.float64)}),
        BIN,
        400,
        "torch.float64",
    ),
    ("wrong tensor name", st_save({"x": torch.zeros(1, 3, 32, 32)}), BIN, 400, "named 'inputs'"),
    (
        "malformed safetensors",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}xxx",
        BIN,
        400,
        "not valid safetensors",
    ),
    ("pickle", b"\x80\x04\x95", "application/python-pickle", 415, "not supported"),
    ("no content type", b"{}", "", 415, "not supported"),
    ("over the size limit", b"0" * 200_001, "application/json", 413, "at most 200000"),
]


@pytest.mark.parametrize(
    "body,ctype,status,needle", [b[1:] for b in _BAD], ids=[b[0] for b in _BAD]
)
def test_bad_requests_get_4xx_with_message(server, body, ctype, status, needle):
    r = server.client.post("/v1/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"] == "RequestError"
    assert needle in r.json()["message"]


def test_wrong_method_and_path(server):
    assert server.client.get("/v1/predict").status_code == 405
    assert server.client.post("/v2/predict", json={}).status_code == 404


def test_healthz(server):
    r = server.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["input_shape"] == [3, 32, 32]


def test_concurrent_load_every_output_checked_and_batched(server, plain):
    before = server.metrics()
    n = 100

    def one(i: int) -> tuple[int, torch.Tensor, httpx.Response]:
        x = _input(1000 + i)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return i, x, _predict(c, x, binary=i % 2 == 1)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(n)))
    assert len(results) == n
    for _i, x, r in results:
        _check(r, x, plain)
    after = server.metrics()
    batches = after["taoism_batch_requests_count"] - before["taoism_batch_requests_count"]
    single = (
        after["taoism_batch_requests_bucket{le=1.0}"]
        - before["taoism_batch_requests_bucket{le=1.0}"]
    )
    assert after["taoism_batch_requests_sum"] - before["taoism_batch_requests_sum"] == n
    assert batches < n and single < batches, (batches, single)  # requests were batched
    assert (
        after["taoism_requests_total{status=200}"] - before["taoism_requests_total{status=200}"]
        == n
    )
    assert after["taoism_request_latency_quantile_seconds{quantile=0.99}"] > 0


def _kill_enclave(server) -> int:
    (pid,) = server.enclave_pids()
    kill_process(pid)
    return pid


def test_enclave_crash_gives_503_then_restarts(server, plain):
    restarts = server.metrics()["taoism_enclave_restarts_total"]
    old = _kill_enclave(server)
    x = _input(5)
    r = _predict(server.client, x)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "ServiceUnavailable" and "restarted" in r.json()["message"]
    deadline = time.monotonic() + 120
    while True:
        r = _predict(server.client, x)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    _check(r, x, plain)
    assert server.metrics()["taoism_enclave_restarts_total"] == restarts + 1
    assert server.enclave_pids() not in ([old], [])
    assert server.client.get("/healthz").json()["status"] == "ok"


def test_crash_under_load_never_a_wrong_answer(server, plain):
    n, done = 60, []
    lock = threading.Lock()

    def one(i: int) -> tuple[torch.Tensor, httpx.Response]:
        x = _input(5000 + i)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = _predict(c, x, binary=i % 2 == 0)
        with lock:
            done.append(i)
        return x, r

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        while len(done) < n // 4:
            time.sleep(0.01)
        _kill_enclave(server)
        results = [f.result() for f in futures]
    statuses = [r.status_code for _, r in results]
    assert set(statuses) <= {200, 503}, statuses
    for x, r in results:
        if r.status_code == 200:
            _check(r, x, plain)
    # the server recovers by itself
    deadline = time.monotonic() + 120
    x = _input(9)
    while (r := _predict(server.client, x)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    _check(r, x, plain)


def test_sigterm_finishes_in_flight_requests_and_stops_the_enclave(plain):
    srv = Server("--max-batch", "16", "--max-wait-ms", "1500")
    try:
        enclaves = srv.enclave_pids()
        assert enclaves
        n = 6
        xs = [_input(7000 + i) for i in range(n)]
        with ThreadPoolExecutor(n) as pool:

            def one(x):
                with httpx.Client(base_url=srv.url, timeout=60) as c:
                    return _predict(c, x)

            futures = [pool.submit(one, x) for x in xs]
            deadline = time.monotonic() + 60
            while srv.metrics()["taoism_requests_in_flight"] < n:  # all n wait in the batcher
                assert time.monotonic() < deadline, "requests did not reach the server"
                time.sleep(0.02)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        for x, r in zip(xs, results):
            _check(r, x, plain)
        assert srv.proc.wait(timeout=60) == 0
        assert "enclave is closed" in srv.output()
        assert all(process_gone(pid) for pid in enclaves)
    finally:
        srv.client.close()
        srv.stop()


def test_codec_fuzz_bad_bodies_get_request_error_only():
    """Mutated JSON and safetensors bodies: a tensor that fits the spec, or RequestError."""
    import random

    from taoism.errors import RequestError
    from taoism.serve import codec

    spec = codec.InputSpec(torch.float32, (2, 3), 4)
    good = {
        codec.JSON: json.dumps({"inputs": torch.randn(2, 2, 3).tolist()}).encode(),
        codec.SAFETENSORS: st_save({"inputs": torch.randn(3, 2, 3)}),
    }
    rng = random.Random(0)
    accepted = 0
    for i in range(3000):
        kind = codec.JSON if i % 2 else codec.SAFETENSORS
        body = bytearray(good[kind])
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(body) + 1)
            if op < 0.4 and body:
                body[min(pos, len(body) - 1)] = rng.randrange(256)
            elif op < 0.7:
                del body[pos : pos + rng.randint(1, 16)]
            else:
                body[pos:pos] = rng.randbytes(rng.randint(1, 8))
        try:
            x = codec.decode(bytes(body), kind, spec)
        except RequestError as exc:
            assert str(exc) and exc.status in (400, 413)
            continue
        accepted += 1
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (2, 3) and 1 <= x.shape[0] <= 4
    assert accepted < 3000
