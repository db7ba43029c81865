"""Capture: turn a plain ``nn.Module`` into a torch.fx graph with shapes (host side, plaintext).

This runs before anything is shielded, on the caller's own model.
"""

from taoism.capture.trace import CapturedGraph, NodeInfo, capture

__all__ = ["CapturedGraph", "NodeInfo", "capture"]
