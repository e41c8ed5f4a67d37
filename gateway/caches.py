"""How an augmented image is kept in the content cache (wave_grpc/stores/content.py).

The cached form carries the base layers explicitly, so nothing has to be
re-derived from the manifest when it is read back.
"""

from __future__ import annotations

import base64
import json

from wave_grpc.image.digest import Digest
from wave_grpc.image.rewrite import AugmentedImage, Blob, InjectedLayer


def _blob_json(blob: Blob | None) -> list[str] | None:
    return None if blob is None else [blob.media_type, base64.b64encode(blob.data).decode()]


def _blob_from(value: list[str] | None) -> Blob | None:
    return None if value is None else Blob.of(base64.b64decode(value[1]), value[0])


def encode_augmented(image: AugmentedImage) -> bytes:
    return json.dumps(
        {
            "manifest": _blob_json(image.manifest),
            "config": _blob_json(image.config),
            "index": _blob_json(image.index),
            "base_layers": sorted(str(digest) for digest in image.base_layers),
        }
    ).encode()


def decode_augmented(data: bytes, injected: tuple[InjectedLayer, ...]) -> AugmentedImage:
    """Rebuild from the cached bytes (every blob's digest recomputed from its bytes)."""
    doc = json.loads(data)
    manifest = _blob_from(doc["manifest"])
    config = _blob_from(doc["config"])
    if manifest is None or config is None:
        raise ValueError("cached augmented image lacks its manifest or config")
    base = frozenset(Digest.parse(text) for text in doc["base_layers"])
    return AugmentedImage(manifest, config, _blob_from(doc["index"]), base, injected)
