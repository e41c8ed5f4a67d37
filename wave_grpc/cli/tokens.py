"""``inspect``, ``list``, ``revoke`` and ``renew``: the caller's tokens, described, listed, revoked and renewed."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict

from wave_grpc.cli.client import add_client_command, caller_metadata, service_stub
from wave_grpc.cli.errors import CliError
from wave_grpc.cli.output import print_result
from wave_grpc.cli.status import is_request_id, status_word
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def token_of(value: str) -> str:
    """A token, or the target image name that carries one (``host/wt/<token>/path:tag``)."""
    parts = value.strip().split("/")
    if "wt" in parts[:-1]:
        return parts[parts.index("wt") + 1]
    return value.strip()


async def _inspect(args: argparse.Namespace) -> int:
    if is_request_id(args.token_id):
        raise CliError(
            f"{args.token_id} is a request id, not a token: follow a freeze with "
            f"`wave-grpc status {args.token_id.strip()} [--await]`"
        )
    async with service_stub(args) as stub:
        # DescribeContainer, not GetContainer: a description is the token owner's.
        response = await stub.DescribeContainer(
            pb.DescribeContainerRequest(container_token=token_of(args.token_id)), metadata=caller_metadata(args)
        )
    record = response.container
    layers = ", ".join(f"{layer.gzip_digest} ({layer.gzip_size} bytes)" for layer in record.container_config.layers)
    text = "\n".join(
        f"{label:<12} {value}"
        for label, value in (
            ("token", record.container_token),
            ("image", record.target_image),
            ("source", f"{record.container_image} ({record.source_digest})"),
            ("platform", record.container_platform),
            ("digest", record.target_digest),
            ("created", record.create_time.ToJsonString()),
            ("expires", record.expiration.ToJsonString()),
            ("layers", layers or "none"),
        )
    )
    print_result(record, args, text)
    return 0


async def _list(args: argparse.Namespace) -> int:
    summaries: list[pb.ContainerSummary] = []
    async with service_stub(args) as stub:
        page = ""
        while True:
            response = await stub.ListContainers(
                pb.ListContainersRequest(page_size=1000, page_token=page), metadata=caller_metadata(args)
            )
            summaries.extend(response.containers)
            page = response.next_page_token
            if not page:
                break
        # A freeze's state is its own RPC; a token is live (listed tokens are never expired).
        states = [
            status_word(
                await stub.GetContainerStatus(
                    pb.GetContainerStatusRequest(request_id=item.request_id), metadata=caller_metadata(args)
                )
            )
            if item.freeze
            else "live"
            for item in summaries
        ]
    if args.output == "json":
        listed = [{**MessageToDict(item), "status": state} for item, state in zip(summaries, states, strict=True)]
        print(json.dumps(listed, indent=2))
        return 0
    if not summaries:
        print("no live tokens")
        return 0
    rows = [("TOKEN", "STATUS", "EXPIRES", "SOURCE", "TARGET")] + [
        (
            item.container_token or "(freeze)",
            state,
            item.expiration.ToJsonString(),
            item.container_image,
            item.target_image,
        )
        for item, state in zip(summaries, states, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with service_stub(args) as stub:
        response = await stub.RevokeContainer(
            pb.RevokeContainerRequest(container_token=token_of(args.token_id)), metadata=caller_metadata(args)
        )
    print_result(response, args, f"revoked {response.container_token}")
    return 0


# The config's duration form ("36h", "90m", "30s", "7d"); a bare number is seconds.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise CliError(f'--for {text!r} is not a positive duration; use e.g. "36h", "90m", "7d"')
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


async def _renew(args: argparse.Namespace) -> int:
    request = pb.RenewContainerRequest(container_token=token_of(args.token_id))
    if args.duration is not None:
        duration = Duration()
        duration.FromTimedelta(parse_duration(args.duration))
        request.duration.CopyFrom(duration)
    async with service_stub(args) as stub:
        response = await stub.RenewContainer(request, metadata=caller_metadata(args))
    text = (
        f"renewed {response.container_token}: expires {response.expiration.ToJsonString()} "
        f"(at most {response.max_expiration.ToJsonString()})"
    )
    print_result(response, args, text)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    return asyncio.run(_inspect(args))


def cmd_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))


def cmd_revoke(args: argparse.Namespace) -> int:
    return asyncio.run(_revoke(args))


def cmd_renew(args: argparse.Namespace) -> int:
    return asyncio.run(_renew(args))


def add_inspect_command(sub: Subcommands) -> None:
    inspect = add_client_command(sub, "inspect", "describe a token")
    inspect.add_argument("token_id", metavar="TOKEN", help="a token, or the target image name that carries it")
    inspect.set_defaults(func=cmd_inspect)


def add_revoke_command(sub: Subcommands) -> None:
    revoke = add_client_command(sub, "revoke", "revoke a token")
    revoke.add_argument("token_id", metavar="TOKEN", help="a token, or the target image name that carries it")
    revoke.set_defaults(func=cmd_revoke)


def add_list_command(sub: Subcommands) -> None:
    listing = add_client_command(
        sub, "list", "list your live tokens (needs a caller token: --token; anonymous callers are refused)"
    )
    listing.set_defaults(func=cmd_list)


def add_renew_command(sub: Subcommands) -> None:
    renew = add_client_command(sub, "renew", "extend a token's expiration (never past [service].max_token_lifetime)")
    renew.add_argument("token_id", metavar="TOKEN", help="a token, or the target image name that carries it")
    renew.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="from now, e.g. 12h, 90m, 7d (default: the service's token TTL, up to the token's maximum lifetime)",
    )
    renew.set_defaults(func=cmd_renew)
