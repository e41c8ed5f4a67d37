"""``augment``: check the request with the service, pack and send the layers, create the
token, and with ``--freeze --await`` follow the freeze until it is done."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from wave_grpc.cli.client import add_client_command, caller_metadata, service_stub
from wave_grpc.cli.errors import CliError, RequestFailed
from wave_grpc.cli.layers import INLINE_LIMIT, pack_layer, send_layer
from wave_grpc.cli.output import print_result
from wave_grpc.cli.status import await_freeze
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.image.compression import Compression
from wave_grpc.image.layers import LayerDigests
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def _config_of(args: argparse.Namespace) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        entrypoint=args.config_entrypoint or [],
        cmd=args.config_cmd or [],
        env=args.config_env or [],
        working_dir=args.config_working_dir or "",
    )


async def _validate(args: argparse.Namespace) -> None:
    """The source, the platform and the config, checked by the service before anything is packed."""
    async with service_stub(args) as stub:
        await stub.CreateContainer(
            pb.CreateContainerRequest(
                container_image=args.image,
                container_platform=",".join(args.platform),
                container_config=_config_of(args),
                validate_only=True,
                freeze=args.freeze,
                build_repository=args.build_repo or "",
                container_includes=args.include,
            ),
            metadata=caller_metadata(args),
        )


async def _create(args: argparse.Namespace, packed: list[tuple[str, Path, LayerDigests]]) -> pb.CreateContainerResponse:
    metadata = caller_metadata(args)
    config = _config_of(args)
    async with service_stub(args) as stub:
        for platform, path, digests in packed:
            layer = await send_layer(stub, path, digests, args.inline_limit, metadata)
            layer.platform = platform
            config.layers.append(layer)
        request = pb.CreateContainerRequest(
            container_image=args.image,
            container_platform=",".join(args.platform),
            container_config=config,
            freeze=args.freeze,
            build_repository=args.build_repo or "",
            container_includes=args.include,
        )
        response: pb.CreateContainerResponse = await stub.CreateContainer(request, metadata=metadata)
    return response


def cmd_augment(args: argparse.Namespace) -> int:
    # (platform, path): "" is every platform.
    specs = [("", spec) for spec in args.layer] + [(platform, spec) for platform, spec in args.platform_layer]
    for platform, spec in specs:
        if not Path(spec).exists():
            option = f"--platform-layer {platform}" if platform else "--layer"
            raise CliError(f"{option} {spec}: no such directory or file")
    if args.freeze and not args.build_repo:
        raise CliError("--freeze needs --build-repo REPO: the repository the frozen image is pushed to")
    if args.build_repo and not args.freeze:
        raise CliError("--build-repo is used only with --freeze; add --freeze, or drop --build-repo")
    if args.wait and not args.freeze:
        raise CliError("--await waits for a freeze; add --freeze --build-repo REPO, or drop --await")
    if specs or args.freeze or args.include:
        # A typo in the image name costs one round trip, not a packing and an upload.
        asyncio.run(_validate(args))
    with tempfile.TemporaryDirectory(prefix="wave-grpc-") as scratch_name:
        # Packed outside any event loop: asyncio.run turns Ctrl-C into a cancellation
        # that a busy synchronous step would not see until it ended.
        compression = Compression(args.compress)
        packed = [(platform, *pack_layer(spec, Path(scratch_name), compression)) for platform, spec in specs]
        response = asyncio.run(_create(args, packed))
    if response.freeze and args.wait:
        status = asyncio.run(await_freeze(args, response.request_id))
        if not status.succeeded:
            raise RequestFailed(f"the freeze to {response.target_image} failed: {status.reason}", "FREEZE_FAILED")
    print_result(response, args, response.target_image)
    if response.freeze and not args.wait:
        print(f"freezing: follow it with `wave-grpc status {response.request_id} --await`", file=sys.stderr)
    return 0


def _split_words(value: str) -> list[str]:
    """``--config-entrypoint`` takes a JSON list or a single word."""
    if value.startswith("["):
        try:
            words = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON list: {exc}") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise argparse.ArgumentTypeError("must be a JSON list of strings")
        return words
    return [value]


def add_augment_command(sub: Subcommands) -> None:
    augment = add_client_command(sub, "augment", "put layers and config on top of an image; print the new image name")
    augment.add_argument("image", help="source image, e.g. alpine or quay.io/org/tool:1.0")
    augment.add_argument(
        "--layer", action="append", default=[], help="a directory (packed as /) or a .tar.gz or .tar.zst"
    )
    augment.add_argument("--config-env", action="append", metavar="NAME=VALUE")
    augment.add_argument(
        "--config-entrypoint", type=_split_words, help='a word or a JSON list, e.g. \'["/bin/sh","-c"]\''
    )
    augment.add_argument("--config-cmd", type=_split_words, help="a word or a JSON list")
    augment.add_argument("--config-working-dir", metavar="DIR")
    augment.add_argument(
        "--platform",
        action="append",
        default=[],
        help="os/arch[/variant] (default linux/amd64), or a comma-separated list for one name serving each; "
        "repeated --platform options add to that list",
    )
    augment.add_argument(
        "--platform-layer",
        nargs=2,
        action="append",
        default=[],
        metavar=("PLATFORM", "PATH"),
        help="a layer for one platform of --platform only (repeatable); --layer is every platform's",
    )
    augment.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="IMAGE",
        help="append this image's layers after the source's (repeatable, at most 10)",
    )
    augment.add_argument(
        "--compress",
        choices=[str(c) for c in Compression],
        default=str(Compression.GZIP),
        help="how a --layer directory is packed (zstd images are served in the OCI family); "
        "a file is sent as it is (.tar.gz or .tar.zst)",
    )
    augment.add_argument(
        "--inline-limit",
        type=int,
        default=INLINE_LIMIT,
        help="layers up to this many bytes go inline; bigger ones via UploadLayer",
    )
    augment.add_argument(
        "--freeze", action="store_true", help="push the augmented image to --build-repo for a permanent name"
    )
    augment.add_argument("--build-repo", metavar="REPO", help="with --freeze: e.g. registry.example.com/team/frozen")
    augment.add_argument(
        "--await",
        dest="wait",
        action="store_true",
        help="with --freeze: wait until the push is done (the name is printed last; non-zero on failure)",
    )
    augment.set_defaults(func=cmd_augment)
