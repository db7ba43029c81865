"""``python -m taoism.serve ARGS``: the same as ``taoism serve ARGS`` (one set of options).

The CLI is started by module name, as the process backend starts the enclave server: the
server package does not import the CLI layer above it.
"""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    sys.argv[1:1] = ["serve"]
    runpy.run_module("taoism.cli", run_name="__main__", alter_sys=True)
