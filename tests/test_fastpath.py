"""The compiled hot path of the boundary (``taoism.boundary._fastpath``) against the pure-Python path.

The ordinary install builds the extension on this project's machines, so a missing build fails
here; ``TAOISM_PURE_BOUNDARY=1`` (the pure-path run of the suite) lets these tests skip instead.
Frames from the C sealer must be byte-identical to the pure path's for the same key and sequence
number; the C opener must accept exactly what the pure decoder accepts, with the same typed errors.
"""

from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_boundary import DTYPES, _expect_failure, _pair, _sample  # noqa: E402
from test_fuzz_boundary import CORPUS, FUZZ_TIMEOUT, SEED, _budget, _seed_frames, mutate  # noqa: E402

from taoism.boundary import ChannelConfig, crypto, fastpath, frame
from taoism.boundary.frame import HEADER, HEADER_SIZE
from taoism.errors import BoundaryError, FrameError, IntegrityError

KEY = bytes(range(32))
PREFIX = crypto.PREFIX_HOST_TO_ENCLAVE
TAG = crypto.TAG_SIZE
MAX_BODY = (1 << 20) - HEADER_SIZE - TAG
PURE = ChannelConfig(timeout_s=5.0, compiled=False)
COMPILED = ChannelConfig(timeout_s=5.0, compiled=True)


@pytest.fixture(scope="module")
def mod():
    built = fastpath.built()
    if built is None:
        if fastpath.forced_pure():
            pytest.skip("TAOISM_PURE_BOUNDARY=1 and the compiled path is not built")
        pytest.fail(
            "taoism.boundary._fastpath is not built: `pip install -e .` should build it (needs a C "
            "compiler and the OpenSSL headers); set TAOISM_PURE_BOUNDARY=1 to run without it"
        )
    return built


@pytest.fixture
def compiled_channels(mod):
    """For tests of channels on the compiled path, which TAOISM_PURE_BOUNDARY=1 turns off."""
    if fastpath.forced_pure():
        pytest.skip("TAOISM_PURE_BOUNDARY=1: channels run the pure path")
    return mod


def _pure_frame(kind, tag, seq, tensors, blob=b"", rid=0, key=KEY, prefix=PREFIX) -> bytes:
    """The pure path's sealed frame: encode_frame's plaintext (pinned by the golden bytes) + AES-GCM."""
    plain = frame.encode_frame(kind, tag, seq, tensors, blob, rid)
    out = bytearray(len(plain) + TAG)
    out[:HEADER_SIZE] = plain[:HEADER_SIZE]
    crypto.Sealer(key, prefix).seal_into(
        seq, bytes(plain[:HEADER_SIZE]), bytes(plain[HEADER_SIZE:]), memoryview(out)[HEADER_SIZE:]
    )
    return bytes(out)


def _ext(ext: bool) -> dict:
    """Constructor arguments: ``ext`` sends every non-empty body through the session's AESGCM
    (the long-body route, as a channel's over ``compiled_max_body``), else the C path's libcrypto."""
    return {"max_body": 0, "aead": AESGCM(KEY)} if ext else {}


def _c_frame(
    mod, kind, tag, seq, tensors, blob=b"", rid=0, capacity=1 << 16, ext=False
) -> bytes | None:
    slot = bytearray(capacity)
    n = fastpath.new_sealer(mod, KEY, PREFIX, **_ext(ext)).seal(
        memoryview(slot), kind, tag, seq, rid, tensors, blob
    )
    return None if n < 0 else bytes(slot[:n])


def _c_open(
    mod, raw: bytes, expect_seq: int = 0, snapshot: bool = False, max_body=MAX_BODY, ext=False
):
    slot = bytearray(max(len(raw), 4096))
    slot[: len(raw)] = raw
    return fastpath.new_opener(mod, KEY, PREFIX, **_ext(ext)).open(
        memoryview(slot), len(raw), max_body, expect_seq, snapshot
    )


def _messages():
    gen = torch.Generator().manual_seed(7)
    shapes = [(), (1,), (7,), (2, 3, 4), (1, 2, 1, 2, 1, 2, 1, 2)]
    cases = [([_sample(d, s, gen)], b"") for d in DTYPES for s in shapes]
    cases += [
        ([], b""),  # empty body
        ([], b'{"json": 1}'),  # blob only
        (
            [
                torch.randn(3, 5),
                torch.arange(9, dtype=torch.int32),
                torch.ones(2, dtype=torch.bool),
            ],
            b"hi",
        ),
        ([_sample(d, (5,), gen) for d in DTYPES], b"x" * 63),
        ([torch.randn(256)], b""),  # 1 KiB
        ([torch.randn(65536)], b"big"),  # 256 KiB
    ]
    return cases


# ----------------------------------------------------------------------------- selection


def test_channels_select_the_compiled_path_unless_told_not_to(mod, monkeypatch):
    for cfg, want in ((COMPILED, not fastpath.forced_pure()), (PURE, False)):
        host, enclave, result = _pair(cfg, cfg)
        try:
            assert host.compiled == enclave.compiled == want, result
        finally:
            host.close()
            enclave.close()
    monkeypatch.setenv(fastpath.ENV_PURE, "1")
    host, enclave, _ = _pair(COMPILED, COMPILED)
    try:
        assert not host.compiled and not enclave.compiled
    finally:
        host.close()
        enclave.close()


# ----------------------------------------------------------------------------- byte identity


@pytest.mark.parametrize("ext", [False, True], ids=["libcrypto", "aesgcm"])
@pytest.mark.parametrize("case", range(len(_messages())))
def test_compiled_frames_are_byte_identical_to_the_pure_path(mod, case, ext):
    tensors, blob = _messages()[case]
    for seq, rid in ((0, 0), (5, 9), ((1 << 64) - 1, (1 << 64) - 1)):
        want = _pure_frame(3, 77, seq, tensors, blob, rid)
        got = _c_frame(mod, 3, 77, seq, tensors, blob, rid, capacity=len(want) + 4096, ext=ext)
        assert got == want, (case, seq)


def test_compiled_channel_writes_the_bytes_the_pure_channel_writes(mod):
    """The real slots: a pure channel's frame, and the C sealer's under the same key, seq and id."""
    host, enclave, _ = _pair(PURE, PURE)
    try:
        sealer = fastpath.new_sealer(mod, host._sealer._key, host._sealer.prefix)
        for tensors, blob in _messages():
            seq, rid = host._sealer.next_seq, host._next_rid
            host.send(4, 2, tensors, blob)
            n = HEADER_SIZE + frame.plan_body(tensors, len(blob)).body_len + TAG
            sent = bytes(host._tr.outbound.data[:n])
            enclave.recv()
            slot = bytearray(n)
            assert sealer.seal(memoryview(slot), 4, 2, seq, rid, tensors, blob) == n
            assert bytes(slot) == sent
    finally:
        host.close()
        enclave.close()


def test_messages_outside_the_common_case_are_left_to_the_python_path(mod):
    """-1 and not a byte written: the Python path sends (or refuses) these."""
    sealer = fastpath.new_sealer(mod, KEY, PREFIX)
    x = torch.randn(4, 4)
    not_handled = [
        ([torch.zeros(0, 3)], b""),  # empty tensor: the extent check is the Python path's
        ([x.t()], b""),  # non-contiguous
        ([torch.nn.Parameter(x)], b""),  # a Tensor subclass
        ([x.to(torch.complex64)], b""),  # no wire dtype
        ([torch.ones((1,) * 9)], b""),  # ndim 9
        ([np.ones(3)], b""),  # not a tensor
        ([x], bytearray(b"b")),  # blob not bytes
        ([x] * 65, b""),  # more tensors than the C path takes
        ([torch.randn(2048)], b""),  # does not fit the 4 KiB slot
    ]
    for tensors, blob in not_handled:
        slot = bytearray(4096)
        assert sealer.seal(memoryview(slot), 1, 2, 0, 0, tensors, blob) == -1
        assert not any(slot)
    small = fastpath.new_sealer(mod, KEY, PREFIX, max_body=1024)  # ChannelConfig.compiled_max_body
    slot = bytearray(4096)
    assert small.seal(memoryview(slot), 1, 2, 0, 0, [torch.randn(256)], b"") == -1  # 1088 bytes
    assert small.seal(memoryview(slot), 1, 2, 0, 0, [torch.randn(240)], b"") == 1024 + 64
    slot = bytearray(4096)
    for bad in ((-1, 0), (1 << 16, 0), (0, 1 << 32), (1.0, 0)):  # kind, tag out of range
        assert sealer.seal(memoryview(slot), *bad, 0, 0, [x], b"") == -1
    assert sealer.seal(memoryview(slot), 1, 2, 1 << 64, 0, [x], b"") == -1  # seq
    assert sealer.seal(memoryview(slot), 1, 2, 0, -1, [x], b"") == -1  # request id
    assert sealer.seal(memoryview(slot), 1, 2, 0, 0, iter([x]), b"") == -1
    assert not any(slot)


def test_zero_element_tensors_still_cross_a_compiled_channel(mod):
    host, enclave, _ = _pair(COMPILED, COMPILED)
    try:
        tensors = [torch.zeros(0, 3), torch.randn(2), torch.empty((5, 0), dtype=torch.bfloat16)]
        host.send(1, 0, tensors, b"e")
        msg = enclave.recv()
        assert [(t.dtype, t.shape) for t in msg.tensors] == [(t.dtype, t.shape) for t in tensors]
        assert torch.equal(msg.tensors[1], tensors[1]) and msg.blob == b"e"
    finally:
        host.close()
        enclave.close()


class _CountingAead:
    """The session's AESGCM, counting the calls the C path makes to it (or failing them)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.real, self.fail, self.calls = AESGCM(KEY), fail, []

    def encrypt_into(self, nonce, data, aad, out):
        self.calls.append(("encrypt", len(data)))
        self.views = (data, out)
        if self.fail is not None:
            raise self.fail
        return self.real.encrypt_into(nonce, data, aad, out)

    def decrypt_into(self, nonce, data, aad, out):
        self.calls.append(("decrypt", len(data)))
        self.views = (data,)
        if self.fail is not None:
            raise self.fail
        return self.real.decrypt_into(nonce, data, aad, out)


def test_long_bodies_go_to_the_sessions_aesgcm_and_short_ones_do_not(mod):
    aead = _CountingAead()
    sealer = fastpath.new_sealer(mod, KEY, PREFIX, max_body=1024, aead=aead)
    opener = fastpath.new_opener(mod, KEY, PREFIX, max_body=1024, aead=aead)
    for numel, route in ((240, []), (4096, ["encrypt"])):  # 1024-byte body: libcrypto
        x = torch.randn(numel)
        slot = bytearray(1 << 16)
        n = sealer.seal(memoryview(slot), 1, 2, 7, 0, [x], b"")
        assert bytes(slot[:n]) == _pure_frame(1, 2, 7, [x])
        assert [c[0] for c in aead.calls] == route
        if route:  # the views of the slot it was given are released: no way back into the slot
            for view in aead.views:
                with pytest.raises(ValueError, match="released"):
                    bytes(view)
        aead.calls.clear()
        status, *_, body, _, specs = opener.open(memoryview(slot), n, MAX_BODY, 7, False)
        assert status == 0 and torch.equal(frame.views_of(body, specs)[0], x)
        assert aead.calls == ([("decrypt", n - HEADER_SIZE)] if route else [])
        aead.calls.clear()


def test_a_failing_aesgcm_leaves_no_plaintext_and_its_error_is_not_a_tag_failure(mod):
    x = torch.arange(1.0, 4097.0)
    slot = bytearray(1 << 16)
    bad = _CountingAead(fail=RuntimeError("no"))
    sealer = fastpath.new_sealer(mod, KEY, PREFIX, max_body=0, aead=bad)
    with pytest.raises(RuntimeError, match="no"):
        sealer.seal(memoryview(slot), 1, 2, 0, 0, [x], b"")
    assert bad.calls and not any(slot[HEADER_SIZE:])  # the laid-out body was wiped
    raw = _pure_frame(1, 2, 0, [x])
    with pytest.raises(RuntimeError, match="no"):  # not reported as tampering
        fastpath.new_opener(mod, KEY, PREFIX, max_body=0, aead=bad).open(
            memoryview(bytearray(raw)), len(raw), MAX_BODY, 0, False
        )
    with pytest.raises(ValueError, match="InvalidTag"):
        mod.Opener(KEY, PREFIX, 0, AESGCM(KEY), None)


def test_a_compiled_channel_carries_long_bodies_on_the_compiled_path(
    compiled_channels, monkeypatch
):
    host, enclave, _ = _pair(COMPILED, COMPILED)
    try:
        assert host._fast_sealer is not None and enclave._fast_opener is not None

        def pure(*_a, **_k):
            raise AssertionError("a long common message took the pure path")

        monkeypatch.setattr(host, "_recv_frame", pure)
        monkeypatch.setattr(enclave, "_recv_frame", pure)
        x = torch.randn(65536)  # 256 KiB, over compiled_max_body
        rid = host.send(2, 1, [x], b"m")
        msg = enclave.recv()
        assert torch.equal(msg.tensors[0], x) and msg.blob == b"m"
        enclave.send(3, 1, [torch.relu(msg.tensors[0])])
        assert torch.equal(host.recv(expect=rid).tensors[0], torch.relu(x))
        assert host.stats.copy_s == 0.0  # the C path's layout: no Python staging copy
    finally:
        host.close()
        enclave.close()


# ----------------------------------------------------------------------------- cross-decryption


def _same(got, want) -> None:
    """Same dtypes, shapes and bytes (NaN payloads included)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("ext", [False, True], ids=["libcrypto", "aesgcm"])
@pytest.mark.parametrize("snapshot", [False, True])
def test_c_opener_decodes_pure_frames_and_pure_decodes_c_frames(mod, snapshot, ext):
    for seq, (tensors, blob) in enumerate(_messages()):
        raw = _pure_frame(5, 6, seq, tensors, blob, rid=seq + 1)
        status, kind, tag, got_seq, rid, n, blob_len, body_len, body, got_blob, specs = _c_open(
            mod, raw, seq, snapshot, max_body=1 << 20, ext=ext
        )
        assert (status, kind, tag, got_seq, rid, n, got_blob) == (
            0,
            5,
            6,
            seq,
            seq + 1,
            len(tensors),
            blob,
        )
        _same(frame.views_of(body, specs), tensors)
        c_raw = _c_frame(mod, 5, 6, seq, tensors, blob, seq + 1, capacity=len(raw) + 4096, ext=ext)
        plain = np.empty(len(c_raw) - HEADER_SIZE - TAG, np.uint8)
        crypto.Opener(KEY, PREFIX).aead.decrypt_into(
            crypto.NONCE.pack(PREFIX, seq), c_raw[HEADER_SIZE:], c_raw[:HEADER_SIZE], plain
        )
        header, decoded, got_blob = frame.decode_frame(
            c_raw[:HEADER_SIZE] + plain.tobytes(), 1 << 21
        )
        assert header.seq == seq and got_blob == blob
        _same(decoded, tensors)


@pytest.mark.parametrize(
    "host_cfg, enclave_cfg", [(COMPILED, PURE), (PURE, COMPILED), (COMPILED, COMPILED)]
)
def test_compiled_and_pure_ends_talk_to_each_other(mod, host_cfg, enclave_cfg):
    host, enclave, _ = _pair(host_cfg, enclave_cfg)
    try:
        for tensors, blob in _messages():
            rid = host.send(2, 1, tensors, blob)
            msg = enclave.recv()
            _same(msg.tensors, tensors)
            enclave.send(3, 4, msg.tensors, msg.blob)
            reply = host.recv(expect=rid)
            _same(reply.tensors, tensors)
            assert (reply.kind, reply.tag, reply.blob, reply.request_id) == (3, 4, blob, rid)
        host.send(2, 1, [torch.arange(4.0)])  # within the compiled size
        got = enclave.recv().tensors[0]
        got += 1  # a received tensor is private and writable
        enclave.send(3, 4, [got])
        assert host.recv().tensors[0].tolist() == [1.0, 2.0, 3.0, 4.0]
    finally:
        host.close()
        enclave.close()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("snapshot", [False, True])
@pytest.mark.parametrize("ext", [False, True], ids=["libcrypto", "aesgcm"])
def test_c_opener_refuses_tampering_replay_truncation_with_a_status(mod, ext, snapshot):
    raw = bytearray(_pure_frame(1, 2, 3, [torch.randn(16)], b"blob"))
    kw = {"ext": ext, "snapshot": snapshot}
    assert _c_open(mod, bytes(raw), 3, **kw)[0] == mod.OPEN_OK
    assert _c_open(mod, bytes(raw), 4, **kw)[0] == mod.OPEN_BAD_SEQ  # replayed
    assert _c_open(mod, bytes(raw), 2, **kw)[0] == mod.OPEN_BAD_SEQ  # skipped
    for pos in (HEADER_SIZE + 70, len(raw) - 1, 8, 40):  # body, tag, header tag, request id
        bad = bytearray(raw)
        bad[pos] ^= 1
        status, *_rest, body, blob, specs = _c_open(mod, bytes(bad), 3, **kw)
        assert status == mod.OPEN_BAD_TAG and body is None and blob is None
    status, *_rest, body, _, _ = _c_open(mod, bytes(raw[:-3]), 3, **kw)  # truncated
    assert status == mod.OPEN_BAD_HEADER and body == bytes(raw[:HEADER_SIZE])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_frames_are_refused_with_the_pure_paths_message(mod, name):
    errors = {}
    for cfg in (PURE, COMPILED):
        host, enclave, _ = _pair(cfg, cfg)
        try:
            plain = CORPUS[name]
            n, blob_len = HEADER.unpack_from(plain)[4], HEADER.unpack_from(plain)[6]
            host._send_raw(host._seal_body(1, 0, bytes(plain[HEADER_SIZE:]), n, blob_len))
            with pytest.raises(FrameError, match="extent|overflow") as info:
                enclave.recv(timeout=5)
            errors[cfg.compiled] = str(info.value)
            with pytest.raises(BoundaryError, match="unusable"):  # fail closed
                enclave.recv(timeout=0.01)
        finally:
            host.close()
            enclave.close()
    assert errors[True] == errors[False]


def test_compiled_channel_refuses_tampering_typed_and_fails_closed(compiled_channels):
    host, enclave, _ = _pair(COMPILED, COMPILED)
    try:
        assert enclave.compiled
        raw = bytearray(host._seal_frame(1, 2, [torch.randn(16)]))
        raw[HEADER_SIZE + 3] ^= 4
        _expect_failure(host, enclave, bytes(raw), IntegrityError, "authentication")
    finally:
        host.close()
        enclave.close()


def _pure_outcome(plain: bytes) -> tuple:
    """What the pure channel makes of an authenticated frame with this plaintext header + body."""
    fields = HEADER.unpack_from(plain)
    magic, version, kind, tag, n, seq, blob_len, body_len, rid = fields
    frame_len = len(plain) + TAG
    if (
        magic != frame.MAGIC
        or version != frame.VERSION
        or body_len > MAX_BODY
        or n > frame.MAX_TENSORS
        or n * frame.DESC_FIXED_SIZE + blob_len > body_len
        or body_len + HEADER_SIZE + TAG != frame_len
    ):
        return ("header",)
    body = np.frombuffer(plain, np.uint8, offset=HEADER_SIZE).copy()
    try:
        tensors, blob = frame.decode_body_parts(n, blob_len, body_len, body)
    except FrameError as exc:
        return ("body", str(exc))
    return ("ok", kind, tag, rid, tensors, blob)


def _c_outcome(mod, plain: bytes, ext: bool = False) -> tuple:
    header = bytes(plain[:HEADER_SIZE])
    out = bytearray(len(plain) + TAG)
    out[:HEADER_SIZE] = header
    crypto.Sealer(KEY, PREFIX).seal_into(
        0, header, bytes(plain[HEADER_SIZE:]), memoryview(out)[HEADER_SIZE:]
    )
    status, kind, tag, seq, rid, n, blob_len, body_len, body, blob, specs = _c_open(
        mod, bytes(out), ext=ext
    )
    if status == mod.OPEN_BAD_HEADER:
        return ("header",)
    assert status != mod.OPEN_BAD_TAG and status != mod.OPEN_BAD_SEQ
    if status == mod.OPEN_BAD_BODY:
        with pytest.raises(FrameError) as info:  # the channel asks the pure decoder why
            frame.decode_body_parts(n, blob_len, body_len, body)
        return ("body", str(info.value))
    return ("ok", kind, tag, rid, frame.views_of(body, specs), blob)


@FUZZ_TIMEOUT
def test_differential_fuzz_c_opener_agrees_with_the_pure_decoder(mod):
    """Authenticated, mutated frames (the attacker holds the key): the same verdict, the same result."""
    rng = random.Random(SEED + 2)
    seeds = [bytes(f) for f in _seed_frames(rng)]
    deadline = time.perf_counter() + _budget(2.0, 300.0)
    cases = decoded = 0
    while time.perf_counter() < deadline or cases < 2000:
        plain = bytearray(mutate(bytearray(rng.choice(seeds)), rng))
        if len(plain) < HEADER_SIZE:
            plain += bytes(HEADER_SIZE - len(plain))
        struct.pack_into("<Q", plain, 16, 0)  # seq: the expected one
        if rng.random() < 0.5 and len(plain) >= HEADER_SIZE:  # often make the length check pass
            struct.pack_into("<Q", plain, 32, len(plain) - HEADER_SIZE)
        plain = bytes(plain)
        want, got = _pure_outcome(plain), _c_outcome(mod, plain, ext=cases % 2 == 1)
        assert got[0] == want[0], (SEED + 2, cases, plain.hex(), want, got)
        if want[0] == "ok":
            decoded += 1
            assert got[1:4] == want[1:4] and got[5] == want[5]
            _same(got[4], want[4])
        else:
            assert got == want
        cases += 1
    assert 0 < decoded < cases, (decoded, cases)
    print(f"differential fuzz: {cases} cases, {decoded} decoded")


def test_a_closed_channel_frees_its_compiled_contexts(compiled_channels):
    host, enclave, _ = _pair(COMPILED, COMPILED)
    sealer, opener = host._fast_sealer, host._fast_opener
    assert sealer is not None and opener is not None
    host.close()
    enclave.close()
    with pytest.raises(ValueError, match="closed"):
        sealer.seal(memoryview(bytearray(4096)), 1, 0, 0, 0, [torch.ones(1)], b"")
    with pytest.raises(ValueError, match="closed"):
        opener.open(memoryview(bytearray(4096)), 64, MAX_BODY, 0, False)
