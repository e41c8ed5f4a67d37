"""``status``: follow a freeze by its request id (``augment --freeze`` prints it with ``-o json``),
once or, with ``--await``, until it is done; ``augment --freeze --await`` waits the same way."""

from __future__ import annotations

import argparse
import asyncio
import re

from wave_grpc.cli.client import add_client_command, caller_metadata, service_stub
from wave_grpc.cli.errors import CliError, RequestFailed
from wave_grpc.cli.output import Progress, print_result
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

FREEZE_POLL_SECONDS = 1.0

# What CreateContainer answers as request_id (uuid4().hex); a token is 12 characters.
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def is_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value.strip()) is not None


def status_word(status: pb.GetContainerStatusResponse) -> str:
    """``pending``, ``building``, ``ready`` (done and pushed) or ``failed``."""
    if status.status == pb.CONTAINER_STATUS_DONE:
        return "ready" if status.succeeded else "failed"
    if status.status == pb.CONTAINER_STATUS_BUILDING:
        return "building"
    return "pending"


async def fetch_status(args: argparse.Namespace, request_id: str) -> pb.GetContainerStatusResponse:
    async with service_stub(args) as stub:
        status: pb.GetContainerStatusResponse = await stub.GetContainerStatus(
            pb.GetContainerStatusRequest(request_id=request_id), metadata=caller_metadata(args)
        )
    return status


async def await_freeze(args: argparse.Namespace, request_id: str) -> pb.GetContainerStatusResponse:
    """Poll the freeze until it is DONE, drawing its progress on a terminal."""
    progress: Progress | None = None
    async with service_stub(args) as stub:
        while True:
            status: pb.GetContainerStatusResponse = await stub.GetContainerStatus(
                pb.GetContainerStatusRequest(request_id=request_id), metadata=caller_metadata(args)
            )
            counts = status.freeze_progress
            if counts.blobs_total:
                if progress is None:
                    progress = Progress("freezing (blobs)", counts.blobs_total)
                done = counts.blobs_present + counts.blobs_mounted + counts.blobs_copied
                progress.advance(done - progress.done)
            if status.status == pb.CONTAINER_STATUS_DONE:
                if progress is not None:
                    progress.close()
                return status
            await asyncio.sleep(FREEZE_POLL_SECONDS)


def _status_text(status: pb.GetContainerStatusResponse) -> str:
    counts = status.freeze_progress
    word = status_word(status)
    if counts.blobs_total:
        done = counts.blobs_present + counts.blobs_mounted + counts.blobs_copied
        word += f" ({done}/{counts.blobs_total} blobs, {counts.bytes_copied} bytes copied)"
    rows = [("request", status.request_id), ("status", word)]
    if status.reason:
        rows.append(("reason", status.reason))
    # Unset times are left out: a frozen image does not expire.
    if status.HasField("create_time"):
        rows.append(("created", status.create_time.ToJsonString()))
    if status.status == pb.CONTAINER_STATUS_DONE and status.HasField("duration"):
        rows.append(("took", f"{status.duration.ToTimedelta().total_seconds():.1f}s"))
    if status.HasField("expiration"):
        rows.append(("expires", status.expiration.ToJsonString()))
    return "\n".join(f"{label:<12} {value}" for label, value in rows)


def cmd_status(args: argparse.Namespace) -> int:
    request_id = args.request_id.strip()
    if not is_request_id(request_id):
        raise CliError(
            f"{args.request_id!r} is not a request id (32 lowercase hex characters, the requestId that "
            "`augment --freeze -o json` prints); for a token, use `wave-grpc inspect TOKEN`"
        )
    status = asyncio.run(await_freeze(args, request_id) if args.wait else fetch_status(args, request_id))
    print_result(status, args, _status_text(status))
    if status.status == pb.CONTAINER_STATUS_DONE and not status.succeeded:
        raise RequestFailed(f"the freeze {request_id} failed: {status.reason}", "FREEZE_FAILED")
    return 0


def add_status_command(sub: Subcommands) -> None:
    status = add_client_command(sub, "status", "follow a freeze by its request id (exit 1 if it failed)")
    status.add_argument("request_id", metavar="REQUEST_ID", help="the requestId `augment --freeze -o json` prints")
    status.add_argument(
        "--await", dest="wait", action="store_true", help="wait until the freeze is done, drawing its progress"
    )
    status.set_defaults(func=cmd_status)
