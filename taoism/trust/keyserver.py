"""The owner's key service: releases a package's model key only to an attested enclave.

A real server process on a loopback TCP port, built on the standard library's
``http.server.ThreadingHTTPServer`` (two endpoints, tiny bodies: a framework would add a
dependency and nothing we need). ``GET /v1/nonce`` returns 32 fresh random bytes;
``POST /v1/release`` takes an attestation envelope and answers the model key wrapped to the
enclave's ephemeral key (200) or a JSON refusal ``{"reason", "message"}`` (403 / 400 / 503).
Run it with ``python -m taoism.trust.keyserver`` or :func:`main_keyserver`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO

from taoism.errors import AttestationError, ConfigError, KeyReleaseError, TaoismError
from taoism.trust.format import KEY_SIZE
from taoism.trust.keys import load_public_key, read_secret
from taoism.trust.quotes import SimQuoteVerifier
from taoism.trust.reader import open_package
from taoism.trust.report import ENVELOPE, MAX_QUOTE, REPORT
from taoism.trust.sealing import check_model_key
from taoism.trust.verify import ReportVerifier, VerifierConfig
from taoism.trust.wrap import wrap_model_key

NONCE_PATH, RELEASE_PATH = "/v1/nonce", "/v1/release"
MAX_BODY = ENVELOPE.size + REPORT.size + MAX_QUOTE
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KeyServerConfig:
    """Everything a key service needs (paths are used as given, never relative to the repo)."""

    package: str
    model_key: str
    owner_public: str
    platform_public: str
    allow: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 0
    nonce_ttl_s: float = 60.0
    max_age_s: float = 60.0


class _Handler(BaseHTTPRequestHandler):
    server: KeyServer
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path != NONCE_PATH:
            return self._refuse(404, "not-found", f"unknown path {self.path}; use GET {NONCE_PATH}")
        try:
            self._send(200, "application/octet-stream", self.server.verifier.nonces.issue())
        except KeyReleaseError as exc:
            self._refuse(503, "busy", str(exc))

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        if self.path != RELEASE_PATH:
            return self._refuse(
                404, "not-found", f"unknown path {self.path}; use POST {RELEASE_PATH}"
            )
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._refuse(400, "malformed", f"body length must be 1..{MAX_BODY} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            return self._refuse(400, "malformed", "body truncated")
        try:
            report = self.server.verifier.verify(body)
            wrapped = wrap_model_key(self.server.model_key, report.enclave_public, report.encode())
        except AttestationError as exc:
            return self._refuse(403, exc.reason, str(exc))
        except KeyReleaseError as exc:
            return self._refuse(403, "key-release", str(exc))
        self._send(200, "application/octet-stream", wrapped)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.log_message("refused (%s): %s", reason, message)
        self._send(
            status, "application/json", json.dumps({"reason": reason, "message": message}).encode()
        )

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("taoism keyserver: " + (fmt % args) + "\n")


class KeyServer(ThreadingHTTPServer):
    """The HTTP key service bound to one package, its model key and an allow-list."""

    daemon_threads = True

    def __init__(self, config: KeyServerConfig) -> None:
        with open_package(config.package, config.owner_public) as pkg:
            package_hash, package_id, check = pkg.header_hash, pkg.package_id, pkg.header.key_check
        self.model_key = check_model_key(read_secret(config.model_key, KEY_SIZE), package_id, check)
        try:
            allow = frozenset(bytes.fromhex(m) for m in config.allow)
        except ValueError:
            raise ConfigError(
                f"--allow values must be 64 hex digits (got {list(config.allow)})"
            ) from None
        vcfg = VerifierConfig(
            allow, package_hash, nonce_ttl_s=config.nonce_ttl_s, max_age_s=config.max_age_s
        )
        platform = SimQuoteVerifier(load_public_key(config.platform_public))
        self.verifier = ReportVerifier(vcfg, {platform.kind: platform})
        super().__init__((config.host, config.port), _Handler)

    @property
    def address(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"


def main_keyserver(
    package: str,
    model_key: str,
    owner_public: str,
    platform_public: str,
    allow: Sequence[str],
    host: str = "127.0.0.1",
    port: int = 0,
    nonce_ttl_s: float = 60.0,
    max_age_s: float = 60.0,
    out: TextIO | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; prints ``taoism keyserver listening on URL`` once ready. Returns 0."""
    stream = sys.stdout if out is None else out
    server = KeyServer(
        KeyServerConfig(
            package,
            model_key,
            owner_public,
            platform_public,
            tuple(allow),
            host,
            port,
            nonce_ttl_s,
            max_age_s,
        )
    )

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"taoism keyserver listening on {server.address}", file=stream, flush=True)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


def add_keyserver_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``taoism keyserver`` options (for the CLI to reuse)."""
    parser.add_argument("--package", required=True, help="the model.taoism package")
    parser.add_argument(
        "--model-key",
        default=None,
        help="the 0600 model key file written with the package (default: PACKAGE.key)",
    )
    parser.add_argument(
        "--owner-public", required=True, help="owner Ed25519 public key (owner.pub)"
    )
    parser.add_argument(
        "--platform-public", required=True, help="simulated platform public key (platform.pub)"
    )
    parser.add_argument(
        "--allow",
        action="append",
        required=True,
        metavar="MEASUREMENT",
        help="an accepted enclave measurement (64 hex digits); repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--nonce-ttl", type=float, default=60.0, help="seconds a nonce stays valid")
    parser.add_argument("--max-age", type=float, default=60.0, help="max report age in seconds")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m taoism.trust.keyserver``."""
    parser = argparse.ArgumentParser(prog="taoism keyserver", description=__doc__.splitlines()[0])
    add_keyserver_arguments(parser)
    a = parser.parse_args(argv)
    try:
        return main_keyserver(
            a.package,
            a.model_key or a.package + ".key",
            a.owner_public,
            a.platform_public,
            a.allow,
            a.host,
            a.port,
            a.nonce_ttl,
            a.max_age,
        )
    except (TaoismError, OSError) as exc:
        print(f"taoism keyserver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
