"""Wave's token routes: ``GET /container-token/{token}`` (describe), ``DELETE`` (revoke), and
``POST /container-token/{token}/renew`` (this service's own: Wave has no renewal route).

Both are the token owner's: the caller's ``Authorization`` goes to the service,
which answers 403 to anyone else (tokens created anonymously belong to whoever
holds them). The describe body follows Wave's ``DescribeWaveContainerResponse``:
token, expiration, the request, the source image and digest, the target image
and digest. A renewal's body is optional: ``{"duration": "43200s"}`` (the proto3 JSON form of
a Duration); without it the token is renewed for the service's token TTL.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.handlers.wave_api import call_service, json_response, parse_message, read_json_object, rfc3339, service
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import ANONYMOUS


def _layer(layer: pb.ContainerLayer) -> dict[str, Any]:
    # By hand: the proto3 JSON mapping writes int64 as a string, Wave's gzipSize is a number.
    return {
        "location": layer.location,
        "gzipDigest": layer.gzip_digest,
        "gzipSize": layer.gzip_size,
        "tarDigest": layer.tar_digest,
    }


def _config(config: pb.ContainerConfig) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entrypoint": list(config.entrypoint),
        "cmd": list(config.cmd),
        "env": list(config.env),
        "workingDir": config.working_dir,
        "layers": [_layer(layer) for layer in config.layers],
    }
    return {key: value for key, value in body.items() if value}


def describe_body(record: pb.ContainerRecord) -> dict[str, Any]:
    request: dict[str, Any] = {
        "user": None if record.owner == ANONYMOUS else {"userName": record.owner},
        "requestId": record.request_id,
        "containerImage": record.container_image,
        "containerConfig": _config(record.container_config),
        "platform": record.container_platform,
        "timestamp": rfc3339(record.create_time),
        "workflowId": record.workflow_id or None,
    }
    return {
        "token": record.container_token,
        "expiration": rfc3339(record.expiration),
        "request": {key: value for key, value in request.items() if value is not None},
        "source": {"image": record.container_image, "digest": record.source_digest},
        "wave": {"image": record.target_image, "digest": record.target_digest},
    }


async def describe_token(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    response = await call_service(
        request, service(request).DescribeContainer, pb.DescribeContainerRequest(container_token=token)
    )
    return json_response(describe_body(response.container))


async def revoke_token(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    await call_service(request, service(request).RevokeContainer, pb.RevokeContainerRequest(container_token=token))
    # Wave answers a bare 200.
    return web.Response(status=200)


async def renew_token(request: web.Request) -> web.Response:
    message = pb.RenewContainerRequest()
    if request.body_exists:
        parse_message(await read_json_object(request), message)
    message.container_token = request.match_info["token"]
    response = await call_service(request, service(request).RenewContainer, message)
    return json_response(
        {
            "token": response.container_token,
            "expiration": rfc3339(response.expiration),
            "maxExpiration": rfc3339(response.max_expiration),
        }
    )
