"""How an augmented image is kept in the content cache (wave_grpc/stores/content.py).

The cached form carries the base layers explicitly, so nothing has to be
re-derived from the manifest when it is read back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from wave_grpc.image.digest import Digest
from wave_grpc.image.rewrite import AugmentedImage, Blob, InjectedLayer, PlatformImage


def _blob_json(blob: Blob | None) -> list[str] | None:
    return None if blob is None else [blob.media_type, base64.b64encode(blob.data).decode()]


def _blob_from(value: list[str] | None) -> Blob | None:
    return None if value is None else Blob.of(base64.b64decode(value[1]), value[0])


def encode_augmented(image: AugmentedImage) -> bytes:
    return json.dumps(
        {
            "images": [
                {
                    "manifest": _blob_json(platform.manifest),
                    "config": _blob_json(platform.config),
                    "base_layers": sorted(str(digest) for digest in platform.base_layers),
                    "included": {str(digest): ref for digest, ref in platform.included.items()},
                }
                for platform in image.images
            ],
            "index": _blob_json(image.index),
        }
    ).encode()


def decode_augmented(data: bytes, injected: Sequence[tuple[InjectedLayer, ...]]) -> AugmentedImage:
    """Rebuild from the cached bytes (every blob's digest recomputed from its bytes);
    ``injected`` is each platform's injected layers, from the record."""
    doc = json.loads(data)
    images = []
    for entry, layers in zip(doc["images"], injected, strict=True):
        manifest = _blob_from(entry["manifest"])
        config = _blob_from(entry["config"])
        if manifest is None or config is None:
            raise ValueError("cached augmented image lacks its manifest or config")
        base = frozenset(Digest.parse(text) for text in entry["base_layers"])
        included = {Digest.parse(text): str(ref) for text, ref in entry["included"].items()}
        images.append(PlatformImage(manifest, config, base, layers, included))
    return AugmentedImage(tuple(images), _blob_from(doc["index"]))
