"""Request safety: threads on one ShieldedModel, refused replies, failed sessions, pipelined map."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from conftest import assert_same

from taoism import EnclaveConfig, shield
from taoism.backends.process import wait_gone
from taoism.cli import default_split
from taoism.errors import BoundaryTimeout, EnclaveCrashed, InputError, SessionFailed
from taoism.protocol.kinds import Kind
from taoism.runtime.observe import Observer
from taoism.zoo import example_input, get_model

SHAPE = (3, 32, 32)


def _model(name: str = "small_cnn") -> torch.nn.Module:
    torch.manual_seed(1)
    return get_model(name, dataset_shape="cifar").eval()


def _placement(kind: str, model: torch.nn.Module) -> dict:
    return (
        {"strategy": "teeslice"}
        if kind == "teeslice"
        else {"placement": {"_default": "ENCLAVE"} if kind == "whole" else default_split(model)}
    )


def _inputs(seed: int, n: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *SHAPE, generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind,sessions", [("whole", 1), ("split", 1), ("split", 2)])
def test_threads_share_one_model_and_each_gets_its_own_output(kind, sessions):
    model = _model()
    with shield(
        model,
        example_input("small_cnn", "cifar", batch=2),
        **_placement(kind, model),
        enclave=EnclaveConfig(sessions=sessions),
    ) as sm:
        results: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                for i, x in enumerate(_inputs(100 + k, 5)):
                    results[(k, i)] = (x, sm(x))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert len(results) == 40
        outs = [y for _, y in results.values()]
        assert (
            max((a - b).abs().max().item() for a, b in zip(outs, outs[1:])) > 1e-3
        )  # not constant
        with torch.no_grad():
            for x, y in results.values():
                assert_same(y, model(x))
        assert sm.backend.alive
        runs = [b.stats()["enclave"]["runs"] for b in sm._pool]
        assert len(runs) == sessions and sum(runs) == 40 * len(sm.plan.enclave_segments)
        assert min(runs) > 0  # a pool spreads the calls over its sessions


class _Retag:
    """The real channel, except that RUN requests go out with another segment's tag."""

    def __init__(self, chan, tag: int) -> None:
        self._chan, self._tag = chan, tag

    def __getattr__(self, name):
        return getattr(self._chan, name)

    def send(self, kind, tag, *args, **kw):
        return self._chan.send(kind, self._tag if kind == Kind.RUN else tag, *args, **kw)

    def request(self, kind, tag, *args, **kw):
        return self._chan.request(kind, self._tag if kind == Kind.RUN else tag, *args, **kw)


def _split_model():
    model = _model()
    sm = shield(model, example_input("small_cnn", "cifar", batch=2), **_placement("split", model))
    assert [s.side.value for s in sm.plan.segments] == ["ENCLAVE", "GPU"]
    return model, sm


def test_reply_for_another_segment_is_refused_and_fails_the_session():
    model, sm = _split_model()
    with sm:
        pid = sm.backend.pid
        sm.backend._chan = _Retag(sm.backend._chan, tag=7)  # the enclave answers for "segment 7"
        with pytest.raises(SessionFailed, match="tag 7, expected kind 11 tag 0"):
            sm(_inputs(1, 1)[0])
        assert not sm.backend.alive and wait_gone(pid)
        with pytest.raises(SessionFailed, match="reload"):
            sm(_inputs(2, 1)[0])
        sm.reload(model)
        x = _inputs(3, 1)[0]
        with torch.no_grad():
            assert_same(sm(x), model(x))


def test_reply_with_wrong_tensor_count_is_refused():
    model, sm = _split_model()
    with sm:
        sm.backend._returns[0] += 1  # the backend now expects one tensor more than segment 0 sends
        with pytest.raises(SessionFailed, match=r"1 tensor\(s\), expected 2"):
            sm(_inputs(1, 1)[0])
        with pytest.raises(SessionFailed, match="reload"):
            sm(_inputs(1, 1)[0])


def test_reply_with_wrong_shape_is_refused_by_the_model():
    model, sm = _split_model()
    with sm:
        real_run = sm.backend.run

        def run(segment, tensors, **kw):
            reply = real_run(segment, tensors, **kw)
            reply.tensors[0] = reply.tensors[0].flatten(1)  # a real reply, reshaped on the host
            return reply

        sm.backend.run = run
        with pytest.raises(SessionFailed, match="shaped"):
            sm(_inputs(1, 1)[0])
        assert not sm.backend.alive


class _Interrupt(Observer):
    def done(self, seg, seconds, reply):
        if reply is not None:
            raise KeyboardInterrupt


def test_interrupt_mid_request_fails_the_session_and_reload_recovers():
    model, sm = _split_model()
    with sm:
        x = _inputs(4, 1)[0]
        with pytest.raises(InputError):
            sm(x[:, :1])  # refused before anything is sent: the session stays usable
        assert_same(sm(x), model(x).detach())
        with pytest.raises(KeyboardInterrupt), torch.inference_mode():
            sm._forward((x,), _Interrupt())
        with pytest.raises(SessionFailed, match="KeyboardInterrupt at segment 0.*reload"):
            sm(x)
        sm.reload(model)
        with torch.no_grad():
            assert_same(sm(x), model(x))


def test_timeout_against_a_stopped_enclave_fails_the_session():
    model = _model()
    sm = shield(
        model,
        example_input("small_cnn", "cifar", batch=2),
        {"_default": "ENCLAVE"},
        enclave=EnclaveConfig(timeout_s=1.0),
    )
    with sm:
        x = _inputs(5, 1)[0]
        sm(x)
        pid = sm.backend.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(BoundaryTimeout, match="did not answer"):
                sm(x)
        finally:
            if not wait_gone(pid, timeout=5.0):
                os.kill(pid, signal.SIGKILL)
        with pytest.raises(SessionFailed, match="BoundaryTimeout.*reload"):
            sm(x)
        assert isinstance(SessionFailed("x"), EnclaveCrashed)  # a server's crash path catches it
        sm.reload(model)
        with torch.no_grad():
            assert_same(sm(x), model(x))


@pytest.mark.parametrize(
    "name,kind,sessions",
    [
        ("small_cnn", "split", 1),
        ("teeslice_small_cnn", "teeslice", 1),
        ("teeslice_small_cnn", "teeslice", 2),
    ],
)
def test_map_equals_sequential_calls_and_the_plain_model(name, kind, sessions):
    model = _model(name)
    x = _inputs(6, 1, batch=16)[0]
    with shield(
        model, x[:4], **_placement(kind, model), enclave=EnclaveConfig(sessions=sessions)
    ) as sm:
        seq = torch.cat([sm(x[i : i + 4]) for i in range(0, 16, 4)])
        with torch.no_grad():
            ref = model(x)
        assert_same(seq, ref)
        assert_same(sm.map(x, micro_batch=4), seq, rtol=0, atol=0)
        batches = [x[:5], x[5:6], x[6:]]
        outs = sm.map(batches)
        assert len(outs) == 3 and [o.shape[0] for o in outs] == [5, 1, 10]
        assert_same(torch.cat(outs), ref)
        split_each = sm.map(batches, micro_batch=3)
        assert_same(torch.cat(split_each), ref)


def test_a_failed_pool_stops_every_session():
    model = _model()
    sm = shield(
        model,
        example_input("small_cnn", "cifar", batch=2),
        **_placement("split", model),
        enclave=EnclaveConfig(sessions=2),
    )
    with sm:
        pids = [b.pid for b in sm._pool]
        x = _inputs(8, 1)[0]
        with pytest.raises(KeyboardInterrupt), torch.inference_mode():
            sm._forward((x,), _Interrupt())
        assert all(wait_gone(pid) for pid in pids)
        with pytest.raises(SessionFailed, match="reload"):
            sm.map([x, x])
        sm.reload(model)
        with torch.no_grad():
            assert_same(torch.cat(sm.map([x, x])), torch.cat([model(x), model(x)]))
