"""The vocabulary every component speaks: OCI and Docker media types, digests, JSON."""

from __future__ import annotations

import hashlib
from typing import Any

from wave_grpc.image.manifest import MediaType

# Spelled once, in MediaType; plain strings here because the harness writes them into JSON and headers.
OCI_MANIFEST = str(MediaType.OCI_MANIFEST)
OCI_INDEX = str(MediaType.OCI_INDEX)
OCI_CONFIG = str(MediaType.OCI_CONFIG)
OCI_LAYER_GZIP = str(MediaType.OCI_LAYER_GZIP)
DOCKER_MANIFEST = str(MediaType.DOCKER_MANIFEST)
DOCKER_MANIFEST_LIST = str(MediaType.DOCKER_LIST)
DOCKER_CONFIG = str(MediaType.DOCKER_CONFIG)
DOCKER_LAYER_GZIP = str(MediaType.DOCKER_LAYER_GZIP)
#: Sent as four separate ``Accept`` headers (distribution 2.8 reads them as a list).
ALL_MANIFEST_TYPES: tuple[str, ...] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
)
INDEX_TYPES = frozenset(str(m) for m in MediaType if m.is_index)

JSONDict = dict[str, Any]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
