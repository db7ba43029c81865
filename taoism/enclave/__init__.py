"""Code that runs inside the trust boundary and sees plaintext shielded weights and activations.

``ops`` defines what the enclave can run (and is shared with the host so plans can be checked
up front); ``program`` rebuilds a segment from its description; ``server`` is the enclave
process's main loop.
"""
