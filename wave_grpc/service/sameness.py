"""Same request, same name: the fingerprint that finds a caller's live token for an identical creation.

Pipeline engines (Nextflow with Singularity or Apptainer) name their cached image files
after the image name, so a new token per run re-downloads every image. A creation whose
record would define the same image for the same caller answers that caller's live token.

The fingerprint is a sha256 over the record's canonical content that defines what is
served and to whom: the normalised source reference (it names the image), every pinned
digest (source, per-platform manifests, includes), the config overrides, the layers (as
stored: digests, size, location, platform), the computed target digest, and the owner's
listing key. Nothing that varies per call (request id, times, workflow id, the token) is
in it. Freeze records have none: their name already follows from the request.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import record_listing_key, record_platforms

# Bumped when what the fingerprint covers changes: old fingerprints then match nothing.
_FORM = 1


def _canonical(record: pb.ContainerRecord) -> dict[str, Any]:
    config = record.container_config
    return {
        "form": _FORM,
        "listing": record_listing_key(record),
        "image": record.container_image,
        "source": record.source_digest,
        "platforms": [
            [target.platform, target.source_manifest_digest, list(target.include_manifest_digests)]
            for target in record_platforms(record)
        ],
        "includes": [[include.image, include.source_digest] for include in record.includes],
        "entrypoint": list(config.entrypoint),
        "cmd": list(config.cmd),
        "env": list(config.env),
        "working_dir": config.working_dir,
        "layers": [
            [layer.location, layer.gzip_digest, layer.gzip_size, layer.tar_digest, layer.platform]
            for layer in config.layers
        ],
        "target": record.target_digest,
    }


def request_fingerprint(record: pb.ContainerRecord) -> str:
    """The hex sha256 an identical creation by the same caller computes again."""
    text = json.dumps(_canonical(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
