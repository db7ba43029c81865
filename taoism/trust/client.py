"""Host side: relay nonce and attestation bytes between the enclave and the key service.

The host sees only the nonce, the report and the wrapped key; it never holds the model key.
Every request has a time-out; failures are typed: KeyReleaseError when the service is down,
times out or answers badly, AttestationError (with the service's ``reason``) when it refuses.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from urllib.parse import urlsplit

from taoism.errors import AttestationError, ConfigError, KeyReleaseError
from taoism.trust.keyserver import NONCE_PATH, RELEASE_PATH
from taoism.trust.report import NONCE_SIZE
from taoism.trust.wrap import WRAPPED_SIZE

MAX_RESPONSE = 64 * 1024


class KeyServiceClient:
    """Talks to one key service at ``address`` (``http://host:port`` or ``host:port``)."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        url = urlsplit(address if "://" in address else f"http://{address}")
        if url.scheme != "http" or not url.hostname or not url.port:
            raise ConfigError(
                f"key service address {address!r} must look like http://127.0.0.1:PORT"
            )
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        self.address, self.host, self.port, self.timeout_s = (
            address,
            url.hostname,
            url.port,
            timeout_s,
        )

    def fetch_nonce(self) -> bytes:
        """A fresh verifier nonce."""
        nonce = self._request("GET", NONCE_PATH, None)
        if len(nonce) != NONCE_SIZE:
            raise KeyReleaseError(
                f"key service at {self.address} sent a {len(nonce)}-byte nonce, expected "
                f"{NONCE_SIZE}: is this a taoism key service?"
            )
        return nonce

    def release(self, envelope: bytes) -> bytes:
        """Relay an attestation envelope; returns the wrapped model key."""
        wrapped = self._request("POST", RELEASE_PATH, envelope)
        if len(wrapped) != WRAPPED_SIZE:
            raise KeyReleaseError(
                f"key service at {self.address} sent {len(wrapped)} bytes, expected a "
                f"{WRAPPED_SIZE}-byte wrapped key"
            )
        return wrapped

    def request_key(self, attest: Callable[[bytes], bytes]) -> bytes:
        """Fetch a nonce, have the enclave ``attest(nonce) -> envelope``, relay it; returns the wrapped key."""
        return self.release(attest(self.fetch_nonce()))

    def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        what = f"{method} {path} to key service at {self.address}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={"Content-Type": "application/octet-stream"} if body is not None else {},
            )
            resp = conn.getresponse()
            length = int(resp.getheader("Content-Length") or -1)
            if not 0 <= length <= MAX_RESPONSE:
                raise KeyReleaseError(f"{what}: response length {length} outside 0..{MAX_RESPONSE}")
            data = resp.read(length)
        except TimeoutError:
            raise KeyReleaseError(
                f"{what} timed out after {self.timeout_s:g} s: the key service is hung or "
                "unreachable; check it is running and retry"
            ) from None
        except (ConnectionError, OSError, http.client.HTTPException, ValueError) as exc:
            raise KeyReleaseError(
                f"{what} failed ({type(exc).__name__}: {exc}): the key service is down or not "
                "a taoism key service; start `taoism keyserver --package ...` and check the "
                "address"
            ) from None
        finally:
            conn.close()
        if resp.status == 200:
            return data
        try:
            doc = json.loads(data.decode("utf-8"))
            reason, message = str(doc["reason"]), str(doc["message"])
        except (ValueError, KeyError, TypeError):
            raise KeyReleaseError(f"{what}: HTTP {resp.status} with an unreadable body") from None
        if resp.status == 403 and reason != "key-release":
            raise AttestationError(
                f"key service at {self.address} refused the attestation report ({reason}): "
                f"{message}",
                reason,
            )
        raise KeyReleaseError(f"{what}: refused with HTTP {resp.status} ({reason}): {message}")


__all__ = ["KeyServiceClient"]
