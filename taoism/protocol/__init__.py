"""What the host and the enclave agree on, and nothing else: plaintext-free, imported by both.

``kinds`` are the channel's message kinds; ``vocabulary`` is the op whitelist (the modules,
functions and methods the enclave can run, and the JSON encoding of graph arguments);
``schema`` is the program description and the reply metadata. No module here holds or sees a
shielded weight or activation.
"""

from taoism.protocol.kinds import Kind
from taoism.protocol.schema import PROGRAM_FORMAT, MemorySection, ReplyMeta, parse_program

__all__ = ["Kind", "MemorySection", "PROGRAM_FORMAT", "ReplyMeta", "parse_program"]
