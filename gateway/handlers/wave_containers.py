"""Wave's container requests: ``POST /v1alpha2/container``, ``POST /container-token`` (the
older path Nextflow still uses), ``GET /v1alpha2/container/{requestId}/status``, and
``POST /v1alpha1/inspect`` for clients that look at an image before they pull it.

A request body is Wave's ``SubmitContainerTokenRequest`` as the ``wave`` CLI sends
it (nulls omitted) or as Nextflow does (explicit nulls, empty objects, fields this
service has no use for such as ``fingerprint``, ``timestamp``, ``dryRun``,
``towerWorkspaceId``): all of them parse into ``CreateContainerRequest``. A field
that asks for a feature this service does not implement (a build, a mirror, a
security scan) is refused by name with 400 rather than ignored, because the
caller would otherwise get an image that is not what it asked for.

``freeze`` with ``buildRepository`` answers at once with the frozen name and no
token; the status endpoint is PENDING or BUILDING (``succeeded`` absent, which
Wave's clients read as "wait") until the push is DONE.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from gateway.handlers.wave_api import (
    CREATE_TIMEOUT,
    call_service,
    json_response,
    parse_message,
    read_json_object,
    rfc3339,
    service,
)
from gateway.handlers.wave_arch_layers import assign_arch_layers
from wave_grpc.errors import invalid_argument
from wave_grpc.image.manifest import MediaType
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

_BUILD = "building images is not supported by wave-grpc; give containerImage and add files as containerConfig.layers"


def _given(value: Any) -> bool:
    return value is not None and value is not False and value not in ("", [], {})


# Wave request fields for features this service does not implement, each with the
# test that says the caller asked for it and what to change. Values that ask for
# nothing (null, false, "", [], {}; scanMode "none"; format "docker") pass.
_UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("containerFile", _given, _BUILD),
    ("condaFile", _given, _BUILD),
    ("spackFile", _given, _BUILD),
    ("packages", _given, _BUILD),
    ("buildContext", _given, _BUILD),
    ("mirror", _given, "mirroring is not supported; drop it or set it to false"),
    (
        "scanMode",
        lambda v: _given(v) and v != "none",
        'security scans are not supported; drop scanMode or set it to "none"',
    ),
    ("scanLevels", _given, "security scans are not supported; drop scanLevels"),
    (
        "format",
        lambda v: _given(v) and v != "docker",
        'image formats other than docker (singularity) are not supported; drop format or set it to "docker"',
    ),
)


def check_supported(body: dict[str, Any]) -> None:
    for field, asked, hint in _UNSUPPORTED:
        if asked(body.get(field)):
            raise invalid_argument(field, hint)


async def create_container(request: web.Request) -> web.Response:
    """Both paths answer the same body: the v2 fields plus the normalised source image."""
    body = await read_json_object(request)
    check_supported(body)
    platform = body.get("containerPlatform")
    if isinstance(platform, list) and all(isinstance(item, str) for item in platform):
        # Also taken as a JSON list; the proto field is Wave's comma-separated form.
        body["containerPlatform"] = ",".join(platform)
    if body.get("freeze") is not True:
        # Nextflow sends its configured build repository with every request; Wave uses it
        # only to build or freeze, and so does this service.
        body.pop("buildRepository", None)
    message = pb.CreateContainerRequest()
    parse_message(body, message)
    assign_arch_layers(message)
    response = await call_service(request, service(request).CreateContainer, message, CREATE_TIMEOUT)
    if response.freeze:
        return json_response(
            {
                "requestId": response.request_id,
                "targetImage": response.target_image,
                "containerImage": response.container_image,
                "freeze": True,
                "mirror": False,
                # No "succeeded" yet: the push runs; the status endpoint says when it is done.
            }
        )
    return json_response(
        {
            "requestId": response.request_id,
            "containerToken": response.container_token,
            "targetImage": response.target_image,
            "expiration": rfc3339(response.expiration),
            "containerImage": response.container_image,
            # An identical request by the same caller answers its live token (Wave's "cached");
            # absent otherwise, which Wave's clients read as false.
            "cached": True if response.cached else None,
            # Nothing is frozen, mirrored or built: the image is ready when this answers.
            "freeze": False,
            "mirror": False,
            "succeeded": True,
        }
    )


def _seconds(duration: Duration) -> str:
    """Wave's duration form: decimal seconds with nanoseconds, e.g. ``"0.000000000"``."""
    return f"{duration.seconds}.{duration.nanos:09d}"


async def container_status(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    response = await call_service(
        request, service(request).GetContainerStatus, pb.GetContainerStatusRequest(request_id=request_id)
    )
    done = response.status == pb.CONTAINER_STATUS_DONE
    return json_response(
        {
            "id": response.request_id,
            "status": pb.ContainerStatus.Name(response.status).removeprefix("CONTAINER_STATUS_"),
            # Absent until DONE, as Wave answers a request still in progress.
            "succeeded": response.succeeded if done else None,
            "reason": response.reason or None,
            "creationTime": rfc3339(response.create_time),
            "duration": _seconds(response.duration) if done else None,
            # A token's expiry (renewals move it); a freeze has none.
            "expiration": rfc3339(response.expiration) if response.HasField("expiration") else None,
        }
    )


# The runtime part of an image config, in the names Wave's inspect answer uses.
_RUNTIME_KEYS = {
    "Env": "env",
    "Cmd": "cmd",
    "Entrypoint": "entrypoint",
    "WorkingDir": "workingDir",
    "User": "user",
    "Labels": "labels",
    "ExposedPorts": "exposedPorts",
    "Volumes": "volumes",
    "StopSignal": "stopSignal",
}


def _config_spec(config: dict[str, Any]) -> dict[str, Any]:
    runtime = config.get("config")
    if not isinstance(runtime, dict):
        runtime = {}
    return {
        "architecture": config.get("architecture"),
        "os": config.get("os"),
        "created": config.get("created"),
        "config": {name: runtime[key] for key, name in _RUNTIME_KEYS.items() if runtime.get(key) is not None},
        "rootfs": config.get("rootfs"),
    }


async def inspect_image(request: web.Request) -> web.Response:
    """Wave's ``POST /v1alpha1/inspect``: the image's manifest and config, as a creation would pin them."""
    body = await read_json_object(request)
    message = pb.InspectImageRequest()
    parse_message(body, message)
    response = await call_service(request, service(request).InspectImage, message, CREATE_TIMEOUT)
    manifest = json.loads(response.manifest)
    return json_response(
        {
            "container": {
                "registry": response.registry,
                "hostName": response.registry,
                "imageName": response.image_name,
                "reference": response.reference,
                "digest": response.digest,
                "config": _config_spec(json.loads(response.config)),
                "manifest": manifest,
                "v1": manifest.get("schemaVersion") == 1,
                "v2": manifest.get("schemaVersion") == 2,
                "oci": response.manifest_media_type == str(MediaType.OCI_MANIFEST),
            }
        }
    )
