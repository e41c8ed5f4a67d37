"""The ``wave-grpc`` command: serve, augment, inspect, revoke."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf.json_format import MessageToDict

from wave_grpc import __version__
from wave_grpc.channel import service_channel
from wave_grpc.config import ConfigError, default_config_path, load_config
from wave_grpc.errors import WaveError
from wave_grpc.image.layers import (
    LayerDigester,
    LayerDigests,
    LayerFormatError,
    LayerLimits,
    directory_size,
    pack_directory,
)
from wave_grpc.image.tarcheck import TarCheckError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.registry.client import RegistryClient
from wave_grpc.serving import run_gateway_worker, run_servers
from wave_grpc.stores.gc import collect_layers
from wave_grpc.stores.open import open_layer_store, open_token_store

log = logging.getLogger("wave_grpc")

DEFAULT_SERVER = "127.0.0.1:50051"
WORKER_COMMAND = "gateway-worker"
INLINE_LIMIT = 1 << 20
UPLOAD_CHUNK = 1 << 20


class CliError(Exception):
    """A usage error (what was typed cannot work): printed without a traceback, exit code 2."""


class RequestFailed(Exception):
    """The request was made and failed (the service said no, or could not be reached): exit code 1."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def explain_rpc_error(exc: grpc.aio.AioRpcError, server: str, tls: bool = False) -> RequestFailed:
    """A gRPC failure as one line that says what to change."""
    code, details = exc.code(), exc.details() or ""
    lowered = f"{details} {exc.debug_error_string()}".lower()
    if "http1.x server" in lowered or "http/1" in lowered:
        return RequestFailed(
            f"{server} answered with HTTP/1 (is it the gateway's port?); --server takes the AugmentService's "
            f"address, [service].listen ({DEFAULT_SERVER} by default)",
            code.name,
        )
    tls_hint = (
        "check that --tls-ca is the CA that signed the service's [service].tls_cert, or omit --tls-ca if the "
        "service does not speak TLS"
        if tls
        else "if the service speaks TLS ([service].tls_cert is set), pass --tls-ca CA.pem"
    )
    if any(word in lowered for word in ("ssl", "tls", "handshake", "certificate")):
        return RequestFailed(f"TLS with the AugmentService at {server} failed ({details}); {tls_hint}", code.name)
    if code == grpc.StatusCode.UNAVAILABLE and "socket closed" in lowered:
        # The port took the connection and dropped it: another protocol than the one we spoke.
        return RequestFailed(f"the AugmentService at {server} closed the connection; {tls_hint}", code.name)
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in lowered or "connection refused" in lowered):
        return RequestFailed(
            f"cannot reach the AugmentService at {server} ({details}); check --server (env WAVE_GRPC_SERVER) "
            "and that `wave-grpc serve` is running",
            code.name,
        )
    return RequestFailed(f"{code.name}: {details}", code.name)


# -- serve ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config_path()
    config = load_config(path)
    log.info("config %s", path)
    try:
        asyncio.run(run_servers(config, args.only, ready=lambda line: print(line, flush=True)))
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


async def _gc(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    upstream = RegistryClient(config)
    await upstream.start()
    tokens = open_token_store(config.service.store)
    try:
        layers = open_layer_store(config, upstream)
        collected = await collect_layers(tokens, layers, config.layers.gc_grace.total_seconds(), dry_run=args.dry_run)
    except WaveError as exc:
        raise RequestFailed(exc.message, exc.kind.oci_code) from None
    finally:
        await tokens.close()
        await upstream.close()
    if collected is None:
        raise RequestFailed("another garbage collection is running (a service replica or `wave-grpc gc`); try later")
    verb = "would remove" if args.dry_run else "removed"
    for digest, size in collected.removed:
        print(f"{verb} {digest} ({size} bytes)")
    total = "would free" if args.dry_run else "freed"
    print(f"{verb} {len(collected.removed)} layer(s), {total} {collected.freed} bytes; kept {collected.kept}")
    return 0


def cmd_gateway_worker(args: argparse.Namespace) -> int:
    asyncio.run(run_gateway_worker(load_config(Path(args.config)), args.fd))
    return 0


# -- client helpers ------------------------------------------------------------


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    token = args.token or os.environ.get("WAVE_GRPC_TOKEN", "")
    return (("authorization", f"Bearer {token}"),) if token else ()


def _tls_ca(args: argparse.Namespace) -> str:
    tls_ca: str = args.tls_ca or os.environ.get("WAVE_GRPC_TLS_CA", "")
    if tls_ca and not Path(tls_ca).is_file():
        raise CliError(f"--tls-ca {tls_ca}: no such file")
    return tls_ca


@contextlib.asynccontextmanager
async def _stub(args: argparse.Namespace) -> AsyncIterator[pb_grpc.AugmentServiceAsyncStub]:
    options = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
    async with service_channel(args.server, _tls_ca(args), options) as channel:
        try:
            yield pb_grpc.AugmentServiceStub(channel)
        except grpc.aio.AioRpcError as exc:
            raise explain_rpc_error(exc, args.server, bool(_tls_ca(args))) from None


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        # sys.stderr is looked up per bar, not at import: it may be replaced after import.
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last = -1

    def advance(self, count: int) -> None:
        self.done += count
        percent = min(100, self.done * 100 // self.total)
        if self.enabled and percent != self._last:
            self._last = percent
            bar = "#" * (percent // 4)
            self.stream.write(f"\r{self.label:<28} [{bar:<25}] {percent:3d}% {self.done / 1e6:8.1f} MB")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


# The CLI checks the tar's structure before uploading; the service's own limits
# (inflation, devices) are the service's to enforce.
_CLIENT_LIMITS = LayerLimits(max_inflated_size=1 << 50, max_inflation_ratio=0, allow_devices=True)


def _digest_file(path: Path) -> LayerDigests:
    digester = LayerDigester(_CLIENT_LIMITS)
    progress = Progress(f"hashing {path.name}", path.stat().st_size)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK):
                digester.update(chunk)
                progress.advance(len(chunk))
        digests = digester.finish()
        digester.check_tar()
    except LayerFormatError as exc:
        raise CliError(f"--layer {path}: {exc}; give a directory or a .tar.gz file") from None
    except TarCheckError as exc:
        raise CliError(f"--layer {path}: the layer {exc}; give a directory or a .tar.gz of a tar archive") from None
    finally:
        progress.close()
    return digests


def pack_layer(spec: str, scratch: Path) -> tuple[Path, LayerDigests]:
    path = Path(spec)
    if path.is_dir():
        out = scratch / f"layer-{len(list(scratch.iterdir()))}.tar.gz"
        progress = Progress(f"packing {path.name or spec}", directory_size(path))
        with out.open("wb") as handle:
            digests = pack_directory(path, handle, progress.advance)
        progress.close()
        return out, digests
    if path.is_file():
        return path, _digest_file(path)
    raise CliError(f"--layer {spec}: no such directory or file")


async def _upload(
    stub: pb_grpc.AugmentServiceAsyncStub, path: Path, digests: LayerDigests, metadata: tuple[tuple[str, str], ...]
) -> pb.ContainerLayer:
    progress = Progress(f"uploading {path.name}", digests.gzip_size)

    async def messages() -> AsyncIterator[pb.UploadLayerRequest]:
        yield pb.UploadLayerRequest(
            gzip_digest=str(digests.gzip_digest),
            gzip_size=digests.gzip_size,
            tar_digest=str(digests.tar_digest),
        )
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
                yield pb.UploadLayerRequest(chunk=chunk)
                progress.advance(len(chunk))

    try:
        response = await stub.UploadLayer(messages(), metadata=metadata)
    finally:
        progress.close()
    return response.layer


def _print(message: Any, args: argparse.Namespace, text: str) -> None:
    if args.output == "json":
        print(json.dumps(MessageToDict(message), indent=2))
    else:
        print(text)


# -- augment / inspect / revoke ------------------------------------------------


def _config_of(args: argparse.Namespace) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        entrypoint=args.config_entrypoint or [],
        cmd=args.config_cmd or [],
        env=args.config_env or [],
        working_dir=args.config_working_dir or "",
    )


async def _validate(args: argparse.Namespace) -> None:
    """The source, the platform and the config, checked by the service before anything is packed."""
    async with _stub(args) as stub:
        await stub.CreateContainer(
            pb.CreateContainerRequest(
                container_image=args.image,
                container_platform=args.platform or "",
                container_config=_config_of(args),
                validate_only=True,
                freeze=args.freeze,
                build_repository=args.build_repo or "",
                container_includes=args.include,
            ),
            metadata=_metadata(args),
        )


async def _create(args: argparse.Namespace, packed: list[tuple[str, Path, LayerDigests]]) -> pb.CreateContainerResponse:
    metadata = _metadata(args)
    config = _config_of(args)
    async with _stub(args) as stub:
        for platform, path, digests in packed:
            if digests.gzip_size <= args.inline_limit:
                layer = pb.ContainerLayer(
                    location="data:" + base64.b64encode(path.read_bytes()).decode(),
                    gzip_digest=str(digests.gzip_digest),
                    gzip_size=digests.gzip_size,
                    tar_digest=str(digests.tar_digest),
                )
            else:
                layer = await _upload(stub, path, digests, metadata)
            layer.platform = platform
            config.layers.append(layer)
        request = pb.CreateContainerRequest(
            container_image=args.image,
            container_platform=args.platform or "",
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
        packed = [(platform, *pack_layer(spec, Path(scratch_name))) for platform, spec in specs]
        response = asyncio.run(_create(args, packed))
    if response.freeze and args.wait:
        status = asyncio.run(_await_freeze(args, response.request_id))
        if not status.succeeded:
            raise RequestFailed(f"the freeze to {response.target_image} failed: {status.reason}", "FREEZE_FAILED")
    _print(response, args, response.target_image)
    return 0


FREEZE_POLL_SECONDS = 1.0


async def _await_freeze(args: argparse.Namespace, request_id: str) -> pb.GetContainerStatusResponse:
    """Poll the freeze until it is DONE, drawing its progress on a terminal."""
    progress: Progress | None = None
    async with _stub(args) as stub:
        while True:
            status: pb.GetContainerStatusResponse = await stub.GetContainerStatus(
                pb.GetContainerStatusRequest(request_id=request_id), metadata=_metadata(args)
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


def token_of(value: str) -> str:
    """A token, or the target image name that carries one (``host/wt/<token>/path:tag``)."""
    parts = value.strip().split("/")
    if "wt" in parts[:-1]:
        return parts[parts.index("wt") + 1]
    return value.strip()


async def _inspect(args: argparse.Namespace) -> int:
    async with _stub(args) as stub:
        # DescribeContainer, not GetContainer: a description is the token owner's.
        response = await stub.DescribeContainer(
            pb.DescribeContainerRequest(container_token=token_of(args.token_id)), metadata=_metadata(args)
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
    _print(record, args, text)
    return 0


async def _list(args: argparse.Namespace) -> int:
    summaries: list[pb.ContainerSummary] = []
    async with _stub(args) as stub:
        page = ""
        while True:
            response = await stub.ListContainers(
                pb.ListContainersRequest(page_size=1000, page_token=page), metadata=_metadata(args)
            )
            summaries.extend(response.containers)
            page = response.next_page_token
            if not page:
                break
    if args.output == "json":
        print(json.dumps([MessageToDict(item) for item in summaries], indent=2))
        return 0
    if not summaries:
        print("no live tokens")
        return 0
    rows = [("TOKEN", "EXPIRES", "SOURCE", "TARGET")] + [
        (
            item.container_token or "(freeze)",
            item.expiration.ToJsonString(),
            item.container_image,
            item.target_image,
        )
        for item in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with _stub(args) as stub:
        response = await stub.RevokeContainer(
            pb.RevokeContainerRequest(container_token=token_of(args.token_id)), metadata=_metadata(args)
        )
    _print(response, args, f"revoked {response.container_token}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wave-grpc", description="Extend container images without rebuilding them.")
    parser.add_argument("--version", action="version", version=f"wave-grpc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{serve,augment,inspect,list,revoke,gc}", title="commands"
    )

    serve = sub.add_parser("serve", help="run the AugmentService and the gateway")
    serve.add_argument("--config", help="TOML config (default: the embedded configs/local.toml)")
    serve.add_argument("--only", choices=("service", "gateway"), help="run just one of them")
    serve.set_defaults(func=cmd_serve)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--server",
            default=os.environ.get("WAVE_GRPC_SERVER", DEFAULT_SERVER),
            help=f"AugmentService address host:port (default {DEFAULT_SERVER}; env WAVE_GRPC_SERVER)",
        )
        p.add_argument("--tls-ca", help="PEM CA bundle: reach the service over TLS (env WAVE_GRPC_TLS_CA)")
        p.add_argument("--token", help="caller token sent as 'authorization: Bearer' (env WAVE_GRPC_TOKEN)")
        p.add_argument("-o", "--output", choices=("text", "json"), default="text")
        return p

    augment = client("augment", "put layers and config on top of an image; print the new image name")
    augment.add_argument("image", help="source image, e.g. alpine or quay.io/org/tool:1.0")
    augment.add_argument("--layer", action="append", default=[], help="a directory (packed as /) or a .tar.gz")
    augment.add_argument("--config-env", action="append", metavar="NAME=VALUE")
    augment.add_argument(
        "--config-entrypoint", type=_split_words, help='a word or a JSON list, e.g. \'["/bin/sh","-c"]\''
    )
    augment.add_argument("--config-cmd", type=_split_words, help="a word or a JSON list")
    augment.add_argument("--config-working-dir", metavar="DIR")
    augment.add_argument(
        "--platform",
        help="os/arch[/variant] (default linux/amd64), or a comma-separated list for one name serving each",
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

    inspect = client("inspect", "describe a token")
    inspect.add_argument("token_id", metavar="TOKEN", help="a token, or the target image name that carries it")
    inspect.set_defaults(func=lambda a: asyncio.run(_inspect(a)))

    revoke = client("revoke", "revoke a token")
    revoke.add_argument("token_id", metavar="TOKEN", help="a token, or the target image name that carries it")
    revoke.set_defaults(func=lambda a: asyncio.run(_revoke(a)))

    gc = sub.add_parser("gc", help="garbage-collect the layer store now (as the service does every gc_interval)")
    gc.add_argument("--config", required=True, help="the service's TOML config")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    gc.set_defaults(func=lambda a: asyncio.run(_gc(a)))

    listing = client("list", "list your live tokens (anonymous callers: those created from this address)")
    listing.set_defaults(func=lambda a: asyncio.run(_list(a)))
    return parser


def worker_parser() -> argparse.ArgumentParser:
    """The internal ``gateway-worker`` command: one process of the gateway pool (wave_grpc/serving.py),
    started by ``serve``; kept out of the user-facing parser and its --help."""
    worker = argparse.ArgumentParser(prog="wave-grpc gateway-worker")
    worker.add_argument("--config", required=True)
    worker.add_argument("--fd", type=int, required=True)
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.set_defaults(func=cmd_gateway_worker)
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    internal = words[:1] == [WORKER_COMMAND]
    args = worker_parser().parse_args(words[1:]) if internal else build_parser().parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    as_json = getattr(args, "output", "text") == "json"
    try:
        return int(args.func(args))
    except (CliError, ConfigError) as exc:
        return _fail(str(exc), "USAGE", 2, as_json)
    except RequestFailed as exc:
        return _fail(str(exc), exc.code, 1, as_json)
    except KeyboardInterrupt:
        print("wave-grpc: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, code: str, status: int, as_json: bool) -> int:
    """One line on stderr; with ``-o json``, a JSON object on stdout as well (scripts parse that)."""
    if as_json:
        print(json.dumps({"error": message, "code": code}))
    print(f"wave-grpc: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
