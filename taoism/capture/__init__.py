"""Capture: turn a plain ``nn.Module`` into a graph with shapes (host side, plaintext).

Two paths: torch.fx (torch.nn layers as nodes) and torch.export (ATen ops, for models fx
cannot trace). This runs before anything is shielded, on the caller's own model.
"""

from taoism.capture.trace import CAPTURE_KINDS, CapturedGraph, NodeInfo, capture

__all__ = ["CAPTURE_KINDS", "CapturedGraph", "NodeInfo", "capture"]
