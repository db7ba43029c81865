"""Chunked executors: each runs one kind of layer in chunks that fit the enclave's free memory.

``base`` holds the context, operands, sinks, plans and the executor base; ``elementwise``,
``shape``, ``pooling``, ``conv``, ``linear``, ``matmul``, ``attention``, ``embedding`` and
``norm`` the executors; ``select`` the tables that choose
one for a graph node.
"""

from taoism.enclave.exec.base import (
    ChunkPlan,
    ExecContext,
    Executor,
    Operand,
    RegionExecutor,
    Sink,
    run_chunked,
)
from taoism.enclave.exec.conv import ConvExecutor
from taoism.enclave.exec.elementwise import BatchNormExecutor, BinaryExecutor, UnaryExecutor
from taoism.enclave.exec.linear import LinearExecutor
from taoism.enclave.exec.pooling import AdaptivePoolExecutor, PoolExecutor
from taoism.enclave.exec.select import executor_for
from taoism.enclave.exec.shape import CatExecutor, FlattenExecutor

__all__ = [
    "AdaptivePoolExecutor",
    "BatchNormExecutor",
    "BinaryExecutor",
    "CatExecutor",
    "ChunkPlan",
    "ConvExecutor",
    "ExecContext",
    "Executor",
    "FlattenExecutor",
    "LinearExecutor",
    "Operand",
    "PoolExecutor",
    "RegionExecutor",
    "Sink",
    "UnaryExecutor",
    "executor_for",
    "run_chunked",
]
