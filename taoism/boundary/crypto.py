"""Session crypto of the trust boundary.

Handshake (per session, over the AF_UNIX socket, before any shared memory exists)::

    host    -> enclave  HELLO   host_pub | host_nonce
    enclave -> host     REPLY   enclave_pub | enclave_nonce | auth_E | confirm_E
    host    -> enclave  FINISH  auth_H | confirm_H          (or ABORT reason)
    enclave -> host     ACK                                 (or ABORT reason)

* ``*_pub`` are fresh X25519 public keys, ``*_nonce`` 32 random bytes.
* transcript ``T = label | host_pub | enclave_pub | host_nonce | enclave_nonce``.
* ``HKDF-SHA256(ikm=X25519 shared secret, info=T)`` yields 96 bytes: the
  host->enclave AES-256-GCM key, the enclave->host key and a key-confirmation key.
* ``auth_X = HMAC-SHA256(launch_token, "auth|" X | SHA256(T))`` proves that the
  peer holds the per-launch token the host handed to the enclave out of band;
  ``confirm_X = HMAC-SHA256(confirm_key, "confirm|" X | SHA256(T))`` proves it
  derived the same keys (no man in the middle on the ephemeral keys).

Simulation only: a real SGX backend replaces the launch-token proof by a remote
attestation quote whose report data binds ``SHA256(enclave_pub | T)``, so the host
knows it talks to the measured enclave; the rest of the protocol is unchanged.

Frames: nonce = 4-byte direction prefix | 8-byte big-endian sequence number;
associated data = the plaintext frame header (which holds the sequence number);
ciphertext = body, followed by the 16-byte GCM tag.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from taoism.errors import ConfigError, HandshakeError, IntegrityError

TAG_SIZE = 16
KEY_SIZE = 32
SESSION_NONCE_SIZE = 32
MIN_TOKEN_BYTES = 16
PREFIX_HOST_TO_ENCLAVE = b"TH2E"
PREFIX_ENCLAVE_TO_HOST = b"TE2H"
NONCE = struct.Struct(">4sQ")  # direction prefix | sequence number
_LABEL = b"taoism-boundary-v1"

_HS = struct.Struct("<4sBBH")  # magic, version, type, payload length
_HS_MAGIC = b"TAOH"
_HS_VERSION = 1
_HELLO, _REPLY, _FINISH, _ACK, _ABORT = 1, 2, 3, 4, 5
_HS_NAMES = {_HELLO: "HELLO", _REPLY: "REPLY", _FINISH: "FINISH", _ACK: "ACK", _ABORT: "ABORT"}
_PUB = 32


class _PeerAborted(HandshakeError):
    """The peer sent ABORT (no need to tell it to abort in turn)."""


def new_launch_token() -> bytes:
    """A fresh random per-launch token (32 bytes) to hand to the enclave process out of band."""
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class SessionKeys:
    """Keys of one session (fresh per handshake; never logged)."""

    host_to_enclave: bytes = field(repr=False)
    enclave_to_host: bytes = field(repr=False)
    confirm: bytes = field(repr=False)
    transcript_hash: bytes


def derive_session_keys(
    shared_secret: bytes,
    host_pub: bytes,
    enclave_pub: bytes,
    host_nonce: bytes,
    enclave_nonce: bytes,
) -> SessionKeys:
    """HKDF-SHA256 over the X25519 secret, with the transcript as ``info``."""
    transcript = _LABEL + host_pub + enclave_pub + host_nonce + enclave_nonce
    okm = HKDF(algorithm=hashes.SHA256(), length=3 * KEY_SIZE, salt=None, info=transcript).derive(
        shared_secret
    )
    return SessionKeys(
        okm[:KEY_SIZE],
        okm[KEY_SIZE : 2 * KEY_SIZE],
        okm[2 * KEY_SIZE :],
        hashlib.sha256(transcript).digest(),
    )


def auth_proof(launch_token: bytes, role: bytes, transcript_hash: bytes) -> bytes:
    """Proof of possession of the launch token, bound to this session's transcript."""
    return hmac.new(launch_token, b"auth|" + role + transcript_hash, hashlib.sha256).digest()


def key_confirmation(confirm_key: bytes, role: bytes, transcript_hash: bytes) -> bytes:
    """Proof that the sender derived the same session keys."""
    return hmac.new(confirm_key, b"confirm|" + role + transcript_hash, hashlib.sha256).digest()


class Sealer:
    """Encrypts outgoing frames of one direction; owns the send sequence counter.

    ``aead``/``prefix``/``next_seq`` are read by the channel's inlined hot path.
    """

    __slots__ = ("aead", "_key", "prefix", "next_seq")

    def __init__(self, key: bytes, prefix: bytes) -> None:
        self.aead = AESGCM(key)
        self._key = key
        self.prefix = prefix
        self.next_seq = 0

    def take_seq(self) -> int:
        """Reserve the next sequence number (never reused: a GCM nonce must not repeat)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def seal_into(self, seq: int, header: bytes, plaintext: Any, out: Any) -> None:
        """Encrypt ``plaintext`` into ``out`` (len(plaintext) + 16 bytes) with ``header`` as AD."""
        self.aead.encrypt_into(NONCE.pack(self.prefix, seq), plaintext, header, out)

    def seal_parts_into(
        self,
        seq: int,
        header: bytes,
        parts: Sequence[tuple[int, Any]],
        body_len: int,
        out: memoryview,
    ) -> None:
        """Encrypt a body given as ``(offset, bytes)`` parts straight into ``out`` (streaming GCM).

        Gaps between parts are encrypted as zero bytes, so the result equals
        ``seal_into`` of the gathered body; this avoids staging large tensors.
        """
        enc = Cipher(algorithms.AES(self._key), modes.GCM(NONCE.pack(self.prefix, seq))).encryptor()
        enc.authenticate_additional_data(header)
        update_into = enc.update_into
        pos = 0
        for off, data in parts:
            if off != pos:
                update_into(bytes(off - pos), out[pos:off])
            end = off + len(data)
            if end != off:
                update_into(data, out[off:end])
            pos = end
        if pos != body_len:
            update_into(bytes(body_len - pos), out[pos:body_len])
        enc.finalize()
        out[body_len : body_len + TAG_SIZE] = enc.tag


class Opener:
    """Decrypts incoming frames of one direction; enforces strictly increasing sequence numbers.

    ``aead``/``prefix``/``next_seq`` are read by the channel's inlined hot path.
    """

    __slots__ = ("aead", "prefix", "next_seq")

    def __init__(self, key: bytes, prefix: bytes) -> None:
        self.aead = AESGCM(key)
        self.prefix = prefix
        self.next_seq = 0

    def check_seq(self, seq: int) -> None:
        """IntegrityError unless ``seq`` is the expected next sequence number."""
        expected = self.next_seq
        if seq != expected:
            what = "replayed" if seq < expected else "skipped or reordered"
            raise IntegrityError(
                f"frame sequence number {seq} but expected {expected}: {what} frame rejected"
            )

    def open_into(self, seq: int, header: bytes, ciphertext: Any, out: Any) -> None:
        """Check ``seq`` is the expected next one, authenticate and decrypt into ``out``."""
        self.check_seq(seq)
        try:
            self.aead.decrypt_into(NONCE.pack(self.prefix, seq), ciphertext, header, out)
        except InvalidTag:
            raise auth_failure(seq) from None
        self.next_seq = seq + 1


def auth_failure(seq: int) -> IntegrityError:
    """The error for a frame that fails AES-GCM authentication."""
    return IntegrityError(
        f"frame seq={seq} failed AES-GCM authentication: header or body was tampered with, "
        "or it comes from another session"
    )


# ----------------------------------------------------------------------------- handshake


def check_launch_token(token: Any) -> bytes:
    """Validate the launch token argument."""
    if not isinstance(token, (bytes, bytearray)) or len(token) < MIN_TOKEN_BYTES:
        raise ConfigError(
            f"launch_token must be at least {MIN_TOKEN_BYTES} random bytes (got "
            f"{type(token).__name__}); create one per launch with new_launch_token()"
        )
    return bytes(token)


def _send_msg(sock: socket.socket, kind: int, payload: bytes) -> None:
    try:
        sock.sendall(_HS.pack(_HS_MAGIC, _HS_VERSION, kind, len(payload)) + payload)
    except OSError as exc:
        raise HandshakeError(
            f"could not send handshake {_HS_NAMES[kind]}: {exc}; the peer closed the socket"
        ) from exc


def _recv_exact(sock: socket.socket, n: int, deadline: float, stage: str) -> bytes:
    """Read exactly ``n`` bytes (never more: later bytes may carry file descriptors)."""
    buf = bytearray()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeError(
                f"handshake timed out waiting for {stage}; is the peer running and "
                "using the same protocol? (ChannelConfig.handshake_timeout_s)"
            )
        if not poller.poll(remaining * 1000.0):
            continue
        try:
            chunk = sock.recv(n - len(buf), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            raise HandshakeError(f"socket error while waiting for {stage}: {exc}") from exc
        if not chunk:
            raise HandshakeError(
                f"peer closed the socket while we waited for {stage} (it crashed or "
                "rejected the session)"
            )
        buf += chunk
    return bytes(buf)


def _recv_msg(sock: socket.socket, expected: int, size: int, deadline: float) -> bytes:
    stage = f"handshake {_HS_NAMES[expected]}"
    head = _recv_exact(sock, _HS.size, deadline, stage)
    magic, version, kind, length = _HS.unpack(head)
    if magic != _HS_MAGIC or version != _HS_VERSION:
        raise HandshakeError(
            f"bad handshake header {head!r} while waiting for {stage}: the peer is not a "
            f"taoism boundary endpoint of version {_HS_VERSION}"
        )
    if kind == _ABORT:
        reason = _recv_exact(sock, min(length, 1024), deadline, "ABORT reason").decode(
            "utf-8", "replace"
        )
        raise _PeerAborted(f"peer aborted the handshake: {reason}")
    if kind != expected or length != size:
        raise HandshakeError(
            f"unexpected handshake message type={kind} length={length} while waiting for "
            f"{stage} ({size} bytes)"
        )
    return _recv_exact(sock, size, deadline, stage)


def _abort(sock: socket.socket, reason: str) -> None:
    try:
        _send_msg(sock, _ABORT, reason.encode()[:1024])
    except HandshakeError:
        pass


def _exchange(private: X25519PrivateKey, peer_pub: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError as exc:
        raise HandshakeError(f"invalid X25519 public key from peer: {exc}") from exc


def host_handshake(sock: socket.socket, launch_token: bytes, timeout_s: float) -> SessionKeys:
    """Run the host side of the handshake; HandshakeError on any failure (the peer is told to abort)."""
    token = check_launch_token(launch_token)
    return _aborting(sock, _host_handshake, token, timeout_s)


def enclave_handshake(sock: socket.socket, launch_token: bytes, timeout_s: float) -> SessionKeys:
    """Run the enclave side of the handshake; HandshakeError on any failure (the peer is told to abort)."""
    token = check_launch_token(launch_token)
    return _aborting(sock, _enclave_handshake, token, timeout_s)


def _aborting(sock: socket.socket, run: Any, token: bytes, timeout_s: float) -> SessionKeys:
    try:
        return run(sock, token, timeout_s)
    except HandshakeError as exc:
        if not isinstance(exc, _PeerAborted):
            _abort(sock, str(exc))
        raise


def _host_handshake(sock: socket.socket, token: bytes, timeout_s: float) -> SessionKeys:
    deadline = time.monotonic() + timeout_s
    private = X25519PrivateKey.generate()
    host_pub = private.public_key().public_bytes_raw()
    host_nonce = os.urandom(SESSION_NONCE_SIZE)
    _send_msg(sock, _HELLO, host_pub + host_nonce)
    reply = _recv_msg(sock, _REPLY, _PUB + SESSION_NONCE_SIZE + 64, deadline)
    enclave_pub, enclave_nonce = reply[:_PUB], reply[_PUB : _PUB + SESSION_NONCE_SIZE]
    proof, confirm = reply[-64:-32], reply[-32:]
    keys = derive_session_keys(
        _exchange(private, enclave_pub), host_pub, enclave_pub, host_nonce, enclave_nonce
    )
    th = keys.transcript_hash
    if not hmac.compare_digest(proof, auth_proof(token, b"enclave", th)):
        raise HandshakeError(
            "enclave failed peer authentication: its proof does not match this launch's token "
            "(wrong token handed to the enclave, or not our enclave)"
        )
    if not hmac.compare_digest(confirm, key_confirmation(keys.confirm, b"enclave", th)):
        raise HandshakeError(
            "enclave key confirmation failed: session keys differ (man in the middle?)"
        )
    _send_msg(
        sock, _FINISH, auth_proof(token, b"host", th) + key_confirmation(keys.confirm, b"host", th)
    )
    _recv_msg(sock, _ACK, 0, deadline)
    return keys


def _enclave_handshake(sock: socket.socket, token: bytes, timeout_s: float) -> SessionKeys:
    deadline = time.monotonic() + timeout_s
    hello = _recv_msg(sock, _HELLO, _PUB + SESSION_NONCE_SIZE, deadline)
    host_pub, host_nonce = hello[:_PUB], hello[_PUB:]
    private = X25519PrivateKey.generate()
    enclave_pub = private.public_key().public_bytes_raw()
    enclave_nonce = os.urandom(SESSION_NONCE_SIZE)
    keys = derive_session_keys(
        _exchange(private, host_pub), host_pub, enclave_pub, host_nonce, enclave_nonce
    )
    th = keys.transcript_hash
    _send_msg(
        sock,
        _REPLY,
        enclave_pub
        + enclave_nonce
        + auth_proof(token, b"enclave", th)
        + key_confirmation(keys.confirm, b"enclave", th),
    )
    finish = _recv_msg(sock, _FINISH, 64, deadline)
    if not hmac.compare_digest(finish[:32], auth_proof(token, b"host", th)):
        raise HandshakeError(
            "host failed peer authentication: its proof does not match our launch token"
        )
    if not hmac.compare_digest(finish[32:], key_confirmation(keys.confirm, b"host", th)):
        raise HandshakeError(
            "host key confirmation failed: session keys differ (man in the middle?)"
        )
    _send_msg(sock, _ACK, b"")
    return keys


__all__ = [
    "PREFIX_ENCLAVE_TO_HOST",
    "PREFIX_HOST_TO_ENCLAVE",
    "TAG_SIZE",
    "Opener",
    "Sealer",
    "SessionKeys",
    "auth_proof",
    "check_launch_token",
    "derive_session_keys",
    "enclave_handshake",
    "host_handshake",
    "key_confirmation",
    "new_launch_token",
]
