"""Layer garbage collection: mark what live tokens reference, sweep what nothing marked for gc_grace.

The same routine runs in the service every ``[layers].gc_interval`` and in
``wave-grpc gc``. A lock every replica sees (the token store's: Redis ``SET NX
EX``, or a file lock beside the SQLite database) makes sure one collects at a
time; each layer store also holds its own lock against a second collector on
the same machine. Why a layer that
a concurrent creation is about to reference is never removed is explained in
each store (wave_grpc/stores/layers.py, wave_grpc/stores/oci.py).
"""

from __future__ import annotations

import logging

from wave_grpc.image.digest import Digest
from wave_grpc.stores.layers import STORE_SCHEME, Collection, LayerStore
from wave_grpc.stores.tokens import TokenStore

log = logging.getLogger(__name__)

LOCK_NAME = "layer-gc"


async def referenced_layers(tokens: TokenStore) -> set[Digest]:
    """The stored layers that live tokens reference."""
    referenced: set[Digest] = set()
    async for record in tokens.live_records():
        for layer in record.container_config.layers:
            if layer.location.startswith(STORE_SCHEME):
                referenced.add(Digest.parse(layer.location[len(STORE_SCHEME) :]))
    return referenced


async def collect_layers(
    tokens: TokenStore, layers: LayerStore, grace: float, *, dry_run: bool = False, lock_ttl: float = 3600.0
) -> Collection | None:
    """One collection; None when another collector is at work."""
    holder = await tokens.lock(LOCK_NAME, lock_ttl)
    if holder is None:
        return None
    try:
        return await layers.collect(await referenced_layers(tokens), grace, dry_run=dry_run)
    finally:
        await tokens.unlock(LOCK_NAME, holder)
