"""Nextflow's multi-arch request: one layer per architecture, the architecture named in its location.

With ``arch 'linux/amd64,linux/arm64'`` Nextflow (nf-wave 1.19 and later) sends every
platform in ``containerPlatform`` and one Fusion layer per architecture in a single
``containerConfig.layers`` list, e.g. ``.../fusion-amd64.tar.gz`` and ``.../fusion-arm64.tar.gz``;
nothing else in the body says which layer is whose. Over REST only, a layer without an
explicit ``platform`` whose location's file name names exactly one requested architecture
as a word goes into that platform's image only; every other layer goes to all. Over gRPC
the explicit ``ContainerLayer.platform`` is the only way: a client there says what it means.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from wave_grpc.errors import WaveError
from wave_grpc.image.platform import Platform
from wave_grpc.pinning import parse_platforms
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

# The spellings Nextflow and build tools put in file names, as whole words (between
# characters that are not letters or digits): "fusion-amd64.tar.gz", "x86_64.json".
_ARCH_WORD = re.compile(r"(?<![a-z0-9])(amd64|arm64|x86_64|aarch64)(?![a-z0-9])")


def _named_architectures(location: str) -> set[str]:
    """The architectures (normalised: amd64, arm64) an http(s) location's file name names."""
    if not location.strip().lower().startswith(("http://", "https://")):
        return set()
    file_name = urlsplit(location.strip()).path.rsplit("/", 1)[-1].lower()
    return {Platform.parse(word).architecture for word in _ARCH_WORD.findall(file_name)}


def assign_arch_layers(request: pb.CreateContainerRequest) -> None:
    """Give each unassigned layer that names one requested architecture that platform (see the module doc)."""
    try:
        platforms = parse_platforms(request.container_platform)
    except WaveError:
        return  # the service refuses the platform list, naming the field
    if len(platforms) < 2:
        return
    for layer in request.container_config.layers:
        if layer.platform.strip():
            continue
        named = _named_architectures(layer.location)
        chosen = [platform for platform in platforms if platform.architecture in named]
        if len(named) == 1 and len(chosen) == 1:
            layer.platform = str(chosen[0])
