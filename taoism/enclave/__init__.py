"""Code that runs inside the trust boundary and sees plaintext shielded weights and activations.

``server`` is the enclave process's main loop; ``program`` rebuilds segments from their
description (:mod:`taoism.protocol.schema`, ops from :mod:`taoism.protocol.vocabulary`);
``budget`` is the memory manager of a loaded program: ``memory`` (accounting), ``pages``
(sealed pages), ``paged`` (tensors as grids of sealed blocks), ``weights`` (resident or sealed
weights), ``runner`` (the budgeted segment runner, with ``eviction`` and ``generic``) and
``exec/`` (the chunked executors).

The host imports nothing from here except ``planning`` (:func:`taoism.enclave.planning.plan_memory`,
shapes only); ``tests/test_imports.py`` enforces it.
"""
