"""Fuzzing and format pinning of the boundary's frame decoder and channel.

A seeded mutation fuzzer (no extra dependency): every mutated frame must either
decode or raise ``FrameError``/``BoundaryError``; any other exception is a bug.
The bounded run takes a few seconds in ``make test``; ``TAOISM_FUZZ_LONG=1``
runs ~100x more cases (``TAOISM_FUZZ_SEED`` picks another seed). A corpus of
the cases that once escaped untyped (issue 9) is replayed on every run, and a
golden-bytes test pins the wire format (docs/boundary.md).
"""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
import torch
from test_boundary import _pair  # noqa: E402  (tests/ is on sys.path under pytest)

from taoism.boundary import crypto, frame
from taoism.boundary.frame import HEADER, HEADER_SIZE, decode_frame, encode_frame
from taoism.errors import BoundaryError, FrameError

LONG = os.environ.get("TAOISM_FUZZ_LONG") == "1"
SEED = int(os.environ.get("TAOISM_FUZZ_SEED", "20260901"))
MAX_FRAME = 1 << 20
INTERESTING_U64 = (
    0,
    1,
    2,
    7,
    8,
    63,
    64,
    65,
    255,
    4096,
    (1 << 31) - 1,
    1 << 31,
    1 << 32,
    (1 << 32) + 1,
    1 << 48,
    (1 << 62) + 1,
    1 << 63,
    (1 << 63) + 1,
    (1 << 64) - 1,
    MAX_FRAME,
    MAX_FRAME + 1,
)


def _desc(code: int, shape: tuple[int, ...], nbytes: int) -> bytes:
    return struct.pack("<BBHIQ", code, len(shape), 0, 0, nbytes) + struct.pack(
        f"<{len(shape)}Q", *shape
    )


def _raw_frame(descs: list[bytes], data: bytes = b"", blob: bytes = b"") -> bytearray:
    """A plaintext frame with hand-written descriptors (``data`` starts at the first 64-byte boundary)."""
    head = b"".join(descs) + blob
    body = head + bytes(frame.align_up(len(head)) - len(head)) + data if descs else head
    out = bytearray(
        HEADER.pack(frame.MAGIC, frame.VERSION, 1, 0, len(descs), 0, len(blob), len(body), 0)
    )
    return out + body


# The inputs that raised TypeError/RuntimeError out of torch.empty before the bounds (issue 9).
CORPUS = {
    "zero_elements_dim_2**63": _raw_frame([_desc(1, (0, 1 << 63), 0)]),
    "zero_elements_dim_2**64-1": _raw_frame([_desc(1, (2**64 - 1, 0, 3), 0)]),
    "zero_elements_stride_overflow": _raw_frame([_desc(1, (0, 1 << 62, 4), 0)]),
    "zero_elements_stride_overflow_8d": _raw_frame([_desc(2, (1 << 10,) * 7 + (0,), 0)]),
    "zero_elements_bf16_huge": _raw_frame([_desc(4, (1 << 40, 0, 1 << 40), 0)]),
    "two_tensors_second_overflows": _raw_frame([_desc(5, (0,), 0), _desc(5, (3, 0, 1 << 61), 0)]),
}


def _decode_ok_or_frame_error(raw: bytes | bytearray) -> bool:
    """True if ``raw`` decoded; False on FrameError; anything else propagates (a bug)."""
    try:
        decode_frame(raw, MAX_FRAME)
    except FrameError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_frames_raise_frame_error(name):
    with pytest.raises(FrameError, match="extent|overflow"):
        decode_frame(CORPUS[name], MAX_FRAME)


def test_largest_allowed_empty_tensor_still_decodes():
    """Positive control for the extent bound: an empty tensor right at the limit decodes."""
    shape = (0, 1 << 59)  # 2**59 x 8-byte float64 = 2**62 bytes, exactly the limit
    header, tensors, _ = decode_frame(_raw_frame([_desc(2, shape, 0)]), MAX_FRAME)
    assert tensors[0].shape == shape and tensors[0].dtype == torch.float64
    with pytest.raises(FrameError, match="extent"):
        decode_frame(_raw_frame([_desc(2, (0, (1 << 59) + 1), 0)]), MAX_FRAME)


def test_sender_refuses_an_empty_tensor_the_receiver_would_refuse():
    t = torch.empty((0, 1 << 60), dtype=torch.float64)  # torch allows it; its extent is 2**63 bytes
    with pytest.raises(FrameError, match="extent"):
        encode_frame(1, 0, 0, [t])


# ----------------------------------------------------------------------------- golden bytes


GOLDEN_HEX = (
    # header: magic, version 2, kind 3, tag 7, n_tensors 2, seq 5, blob_len 2, body_len 132, request_id 9
    "54414f31"
    "0200"
    "0300"
    "07000000"
    "02000000"
    "0500000000000000"
    "0200000000000000"
    "8400000000000000"
    "0900000000000000"
    # descriptor 0: int32 (code 6), ndim 1, nbytes 12, shape (3,)
    "0601000000000000"
    "0c00000000000000"
    "0300000000000000"
    # descriptor 1: float32 (code 1), ndim 2, nbytes 4, shape (1, 1)
    "0102000000000000"
    "0400000000000000"
    "0100000000000000"
    "0100000000000000"
    # blob "hi", zero padding to offset 64
    "6869"
    + "00" * 6
    # tensor 0 at offset 64: 0, 1, 2 (int32); zero padding to offset 128
    + "000000000100000002000000"
    + "00" * 52
    # tensor 1 at offset 128: 1.5 (float32)
    + "0000c03f"
)


def test_golden_bytes_pin_the_frame_format():
    tensors = [torch.arange(3, dtype=torch.int32), torch.tensor([[1.5]], dtype=torch.float32)]
    raw = encode_frame(3, 7, 5, tensors, b"hi", request_id=9)
    assert raw.hex() == GOLDEN_HEX.replace(" ", "")
    header, decoded, blob = decode_frame(bytes.fromhex(GOLDEN_HEX), MAX_FRAME)
    assert header == frame.FrameHeader(3, 7, 2, 5, 2, 132, 9) and blob == b"hi"
    assert torch.equal(decoded[0], tensors[0]) and torch.equal(decoded[1], tensors[1])


def test_golden_bytes_pin_the_aead_framing():
    """Nonce = direction prefix | big-endian seq; associated data = the plaintext header; tag appended."""
    key = bytes(range(32))
    raw = bytes.fromhex(GOLDEN_HEX)
    sealer = crypto.Sealer(key, crypto.PREFIX_HOST_TO_ENCLAVE)
    out = bytearray(len(raw) - HEADER_SIZE + crypto.TAG_SIZE)
    sealer.seal_into(5, raw[:HEADER_SIZE], raw[HEADER_SIZE:], out)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"TH2E" + (5).to_bytes(8, "big")
    assert bytes(out) == AESGCM(key).encrypt(nonce, raw[HEADER_SIZE:], raw[:HEADER_SIZE])
    assert out[-16:].hex() == GOLDEN_TAG_HEX


GOLDEN_TAG_HEX = "0c7d7bd5790e21f3f1c0b4ac724830b4"  # AES-256-GCM, key bytes(range(32)), seq 5


# ----------------------------------------------------------------------------- the mutator


def _seed_frames(rng: random.Random) -> list[bytearray]:
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    frames = [encode_frame(1, 0, 0, [], b""), encode_frame(2, 1, 3, [], b"blob")]
    for dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    ):
        for shape in ((), (0,), (3,), (2, 3), (1, 0, 4), (2, 1, 2, 1, 2)):
            t = (torch.rand(shape, generator=gen) * 10).to(dtype)
            frames.append(
                encode_frame(rng.randrange(8), rng.randrange(99), 0, [t], b"x" * rng.randrange(3))
            )
    frames.append(
        encode_frame(1, 0, 0, [torch.ones(2), torch.zeros(0, 3), torch.arange(5)], b"json")
    )
    frames += [bytearray(f) for f in CORPUS.values()]
    return frames


def _field_offsets(raw: bytearray) -> list[int]:
    """Offsets of u64-aligned fields: header fields and the descriptor area."""
    fields = [4, 6, 8, 12, 16, 24, 32, 40]
    n = len(raw)
    return fields + list(range(HEADER_SIZE, min(n, HEADER_SIZE + 160), 8))


def mutate(raw: bytearray, rng: random.Random) -> bytearray:
    """One to three random structural mutations of ``raw`` (a copy)."""
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if op == 0 and out:  # bit flip
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and out:  # interesting byte
            out[rng.randrange(len(out))] = rng.choice((0, 1, 8, 9, 0x7F, 0x80, 0xFF))
        elif op in (2, 3):  # interesting u64 (or its low u32/u16) at a field offset
            off = rng.choice(_field_offsets(out))
            width = rng.choice((8, 8, 4, 2))
            if off + width <= len(out):
                value = rng.choice(INTERESTING_U64) if rng.random() < 0.8 else rng.getrandbits(64)
                out[off : off + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif op == 4 and out:  # truncate
            del out[rng.randrange(len(out)) :]
        elif op == 5:  # extend with junk or zeros
            out += (
                bytes(rng.randrange(1, 80))
                if rng.random() < 0.5
                else rng.randbytes(rng.randrange(1, 80))
            )
        elif op == 6 and len(out) > HEADER_SIZE:  # recompute body_len so the length check passes
            struct.pack_into("<Q", out, 32, len(out) - HEADER_SIZE)
        elif (
            op == 7 and len(out) >= HEADER_SIZE + 16
        ):  # a descriptor dim set huge with a zero dim beside it
            pos = HEADER_SIZE + 16
            if pos + 16 <= len(out):
                struct.pack_into("<QQ", out, pos, 0, rng.choice(INTERESTING_U64))
    return out


def _budget(short_s: float, long_s: float) -> float:
    return long_s if LONG else short_s


# The long run's 300 s budget must not meet pytest-timeout's default of 300 s (pyproject.toml).
FUZZ_TIMEOUT = pytest.mark.timeout(_budget(300.0, 480.0))


@FUZZ_TIMEOUT
def test_fuzz_frame_decoder_never_fails_untyped():
    rng = random.Random(SEED)
    seeds = _seed_frames(rng)
    deadline = time.perf_counter() + _budget(2.0, 300.0)
    cases = decoded = 0
    while time.perf_counter() < deadline or cases < 2000:
        raw = mutate(rng.choice(seeds), rng)
        try:
            decoded += _decode_ok_or_frame_error(raw)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(
                f"untyped {type(exc).__name__} ({exc}) from decode_frame on seed {SEED}, case {cases}: "
                f"{bytes(raw).hex()}"
            )
        cases += 1
    # The mutator must reach both outcomes, or it is not exploring anything.
    assert 0 < decoded < cases, (decoded, cases)


@FUZZ_TIMEOUT
def test_fuzz_channel_with_authenticated_malformed_frames():
    """The attacker holds the sending key (a malicious host): well-authenticated, malformed plaintext."""
    rng = random.Random(SEED + 1)
    seeds = _seed_frames(rng)
    host, enclave, _ = _pair()
    deadline = time.perf_counter() + _budget(2.0, 300.0)
    cases = accepted = 0
    try:
        while time.perf_counter() < deadline or cases < 100:
            plain = mutate(rng.choice(seeds), rng)
            if len(plain) < HEADER_SIZE:
                plain += bytes(HEADER_SIZE - len(plain))
            fields = list(HEADER.unpack_from(plain))
            fields[0], fields[5] = (
                frame.MAGIC if rng.random() < 0.9 else fields[0],
                host._sealer.take_seq(),
            )
            header = HEADER.pack(*fields)
            body = bytes(plain[HEADER_SIZE:])
            raw = bytearray(header) + bytearray(len(body) + crypto.TAG_SIZE)
            host._sealer.seal_into(fields[5], header, body, memoryview(raw)[HEADER_SIZE:])
            if rng.random() < 0.1:  # unauthenticated damage on top
                raw = mutate(raw, rng)
            host._send_raw(bytes(raw))
            try:
                enclave.recv(timeout=5)
                accepted += 1
            except BoundaryError:
                host.close()
                enclave.close()
                host, enclave, _ = _pair()
            except Exception as exc:  # noqa: BLE001
                pytest.fail(
                    f"untyped {type(exc).__name__} ({exc}) from Channel.recv, seed {SEED + 1}, case {cases}: "
                    f"header {header.hex()} body {body.hex()}"
                )
            cases += 1
    finally:
        host.close()
        enclave.close()
    assert 0 < accepted < cases, (accepted, cases)


# ----------------------------------------------------------------------------- a live enclave process


@pytest.mark.parametrize("name", ["zero_elements_dim_2**63", "zero_elements_stride_overflow"])
def test_live_enclave_closes_the_session_with_status_3_on_a_malformed_frame(name):
    from taoism.backends.sim import SimBackend
    from taoism.config import EnclaveConfig

    plain = CORPUS[name]
    backend = SimBackend(EnclaveConfig(timeout_s=10.0))
    backend.start()
    try:
        proc, chan = backend._proc, backend._chan
        n_tensors, blob_len = HEADER.unpack_from(plain)[4], HEADER.unpack_from(plain)[6]
        chan._send_raw(
            chan._seal_body(2, 0, bytes(plain[HEADER_SIZE:]), n_tensors, blob_len)
        )  # kind RUN
        assert proc.wait(timeout=20) == 3
        log = backend._log_tail(4000)
        assert "closing the session: FrameError" in log and "Traceback" not in log, log
    finally:
        backend.close()


def test_reply_meta_round_trips_in_both_forms_and_rejects_junk_typed():
    from taoism.errors import ProgramError
    from taoism.protocol.schema import ReplyMeta

    plain = ReplyMeta(0.00125, 3.5e-5)
    blob = plain.encode()
    assert len(blob) == 17 and ReplyMeta.decode(blob) == plain  # the per-crossing binary form
    assert ReplyMeta.pack_times(0.00125, 3.5e-5) == blob  # what the enclave's hot path sends
    assert ReplyMeta.unpack_times(blob) == (0.00125, 3.5e-5)  # and what the host's reads
    profiled = ReplyMeta(0.5, 0.25, (0.1, 0.2), {"peak_bytes": 7})
    assert ReplyMeta.unpack_times(profiled.encode()) is None
    assert ReplyMeta.unpack_times(blob[:-1]) is None and ReplyMeta.unpack_times(b"") is None
    assert profiled.encode()[:1] == b"{" and ReplyMeta.decode(profiled.encode()) == profiled
    rng = random.Random(SEED)
    seeds = [blob, profiled.encode(), b"{}", b""]
    for _ in range(3000):
        raw = bytes(mutate(bytearray(rng.choice(seeds)), rng))
        fast = ReplyMeta.unpack_times(raw)  # never raises; where it answers, decode agrees
        try:
            got = ReplyMeta.decode(raw)
        except ProgramError:
            assert fast is None
            continue
        assert isinstance(got, ReplyMeta) and isinstance(got.compute_s, float)
        if fast is not None:
            assert got.node_times is None and got.memory is None
            assert struct.pack("<dd", *fast) == struct.pack("<dd", got.compute_s, got.crypto_s)
