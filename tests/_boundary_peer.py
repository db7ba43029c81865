"""Enclave-side peer process for tests/test_boundary.py.

Run as ``python _boundary_peer.py FD [MAX_FRAME_BYTES] [SPIN_US]``; reads the launch
token (hex) from stdin, opens the enclave end of the channel on socket FD and serves:

* ECHO: send the message back unchanged;
* DIE: exit at once (simulated enclave crash) without answering;
* DIE_LATER: exit after 0.5 s without reading anything more;
* STOP: close the channel and exit 0.

Exit codes: 0 after STOP, 3 on HandshakeError, 4 when the host closed the boundary.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from taoism.boundary import ChannelConfig, open_enclave_channel
from taoism.errors import BoundaryError, HandshakeError

ECHO, DIE, DIE_LATER, STOP = 1, 2, 3, 4
EXIT_HANDSHAKE, EXIT_HOST_CLOSED = 3, 4


def main(argv: list[str]) -> int:
    fd = int(argv[1])
    config = ChannelConfig(
        max_frame_bytes=int(argv[2]) if len(argv) > 2 else ChannelConfig().max_frame_bytes,
        spin_us=float(argv[3]) if len(argv) > 3 else ChannelConfig().spin_us,
        handshake_timeout_s=10.0,
    )
    token = bytes.fromhex(sys.stdin.readline().strip())
    sock = socket.socket(fileno=fd)
    try:
        chan = open_enclave_channel(sock, token, config=config)
    except HandshakeError as exc:
        print(f"HANDSHAKE_ERROR {exc}", flush=True)
        return EXIT_HANDSHAKE
    print("READY", flush=True)
    with chan:
        while True:
            try:
                msg = chan.recv()
            except BoundaryError as exc:
                print(f"HOST_CLOSED {type(exc).__name__}: {exc}", flush=True)
                return EXIT_HOST_CLOSED
            if msg.kind == ECHO:
                chan.send(msg.kind, msg.tag, msg.tensors, msg.blob)
            elif msg.kind == DIE:
                os._exit(17)
            elif msg.kind == DIE_LATER:
                time.sleep(0.5)
                os._exit(17)
            elif msg.kind == STOP:
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
