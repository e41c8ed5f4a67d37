"""The CreateContainer ceiling: a bare grpc.aio server answering a fixed response.

``python -m bench.grpc_ceiling PORT`` answers every CreateContainer with the same
response, the size of a real one, and does nothing else: what gRPC in Python costs
per call on this machine, the floor under any creation.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

_CONTAINER_TOKEN = "abcdefghijkl"  # noqa: S105 -- a fixed answer, not a secret
ANSWER = pb.CreateContainerResponse(
    container_token=_CONTAINER_TOKEN,
    target_image=f"127.0.0.1:5000/wt/{_CONTAINER_TOKEN}/library/busybox:latest",
    container_image="127.0.0.1:5000/library/busybox:latest",
    request_id="0" * 32,
    source_digest="sha256:" + "0" * 64,
    target_digest="sha256:" + "1" * 64,
)


async def create_container(
    request: pb.CreateContainerRequest,
    context: grpc.aio.ServicerContext[pb.CreateContainerRequest, pb.CreateContainerResponse],
) -> pb.CreateContainerResponse:
    return ANSWER


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        create_container,
        request_deserializer=pb.CreateContainerRequest.FromString,
        response_serializer=pb.CreateContainerResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["AugmentService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"CreateContainer": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
