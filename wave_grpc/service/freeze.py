"""Freezes: the augmented image pushed to a registry for a permanent name.

A freeze is a copy, not a build. The augmented manifest and config are bytes
the rewrite already made (wave_grpc/image/rewrite.py), so every base and
injected layer keeps its digest and the frozen manifest's digest is the one
a pull of the same request under a token sees. The copy goes blobs first and
the manifest last, so the name never points at a missing blob:

* a blob the target repository has (``HEAD``) is skipped;
* a base layer whose source is in the target's registry is mounted from the
  source repository (nothing sent); a ``202`` (no mount) falls back to copying;
* otherwise it is streamed, source to target, in flat memory and checked
  against its digest and size on the way (wave_grpc/registry/push.py).

The record of a freeze request is the state: PENDING when stored, BUILDING
while a replica copies (under a lock every replica sees), DONE with
``succeeded`` and a ``reason``. Work that a restart interrupts stays BUILDING
and is resumed at the next start (the copy skips what is there); after
:data:`MAX_ATTEMPTS` starts it ends DONE, failed, saying so: never silently pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from wave_grpc.config import Config
from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import ImageManifest, MediaType
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import AugmentedImage
from wave_grpc.metrics import Metrics
from wave_grpc.pinning import augment_record, fetch_pinned
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import TokenRecord
from wave_grpc.registry.auth import hint_credentials
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.push import CheckedStream, Repository, StreamResent
from wave_grpc.stores.layers import LayerStore
from wave_grpc.stores.tokens import EPHEMERAL_LOCK_PREFIX, TokenStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MAX_ATTEMPTS = 3
# A replica holds a freeze this long; one that dies lets another resume it after.
LEASE_SECONDS = 15 * 60.0
# Pending freezes whose replica died are looked for this often.
RESUME_INTERVAL = 5 * 60.0
# Freezes one replica holds in memory (running or waiting for a worker); past it a new
# one stays PENDING in the store and the periodic resumption takes it up later.
MAX_QUEUED = 10_000
MAX_TAG = 128
FREEZE_SUFFIX = 16  # hex characters of the augmented manifest digest in the tag


def build_target(text: str, field: str = "build_repository") -> ImageRef:
    """The repository a freeze pushes to: a reference without tag or digest."""
    raw = text.strip()
    if not raw:
        raise invalid_argument(
            field, "is required with freeze: the repository to push to, e.g. registry.example.com/team/frozen"
        )
    if "@" in raw or ":" in raw.rsplit("/", 1)[-1]:
        raise invalid_argument(
            field, f"{brief(raw)} names a tag or digest; give the repository only (the tag is derived)"
        )
    return ImageRef.parse(raw + ":latest", field=field)


def frozen_tag(source: ImageRef, manifest_digest: Digest) -> str:
    """``<source tag>-<16 hex of the frozen manifest digest>``: one request, one name."""
    suffix = manifest_digest.hex[:FREEZE_SUFFIX]
    if source.tag is None or source.digest is not None:
        return suffix
    return f"{source.tag[: MAX_TAG - FREEZE_SUFFIX - 1]}-{suffix}"


def check_push_allowed(
    client: RegistryClient, target: ImageRef, field: str = "build_repository", *, source: ImageRef | None = None
) -> None:
    """Pushes go only where the operator's [[registries]] entry says (push_repositories), and a
    source whose entry sets ``freeze_to_other_registries = false`` stays in its own registry."""
    route = client.route(target.registry)
    if not route.listed:
        raise WaveError(
            Errors.DENIED,
            f"{field}: registry {target.registry} has no [[registries]] entry, and freezes push only where one "
            f"allows it; ask the operator to add an entry named {target.registry!r} with push_repositories",
        )
    if not route.allows_push(target.repository):
        raise WaveError(
            Errors.DENIED,
            f"{field}: the [[registries]] entry named {route.name!r} does not allow pushes to {target.repository}; "
            "ask the operator to add it (or a prefix such as 'team/*') to its push_repositories",
        )
    origin = client.route(source.registry) if source is not None else None
    if origin is not None and not origin.freeze_to_other_registries and origin.name != route.name:
        raise WaveError(
            Errors.DENIED,
            f"{field}: images from registry {origin.name} may be frozen only into {origin.name} (the "
            f"[[registries]] entry named {origin.name!r} sets freeze_to_other_registries = false); give a "
            f"build_repository in {origin.name}, or ask the operator to allow it",
        )


@dataclass(frozen=True, slots=True)
class _Blob:
    digest: Digest
    size: int
    kind: str  # "config", "base" (the source's or an included image's) or "injected"
    data: bytes = b""
    source: ImageRef | None = None  # where a base layer is


@dataclass(slots=True)
class _CopyStep:
    """What a copy is doing, for the reason given when its deadline passes."""

    what: str = "fetching the pinned source manifests and configs"
    done: int = 0
    total: int = 0


def _incident(record: pb.ContainerRecord) -> str:
    """A bug's reason: an incident id that finds its traceback in the log (logged here)."""
    incident = uuid.uuid4().hex[:12]
    log.exception("freeze %s failed (incident %s)", record.request_id, incident)
    return f"internal error (incident {incident}); see the service log"


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds:g}s"


def _now() -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()))
    return ts


class FreezeRunner:
    """Runs the freezes of this replica, at most ``[service].freeze_workers`` at once."""

    def __init__(
        self,
        config: Config,
        tokens: TokenStore,
        layers: LayerStore,
        upstream: RegistryClient,
        metrics: Metrics | None = None,
        clock: Callable[[], Timestamp] = _now,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._layers = layers
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._slots = asyncio.Semaphore(config.service.freeze_workers)
        self._running: dict[str, asyncio.Task[None]] = {}

    def submit(self, token: str) -> None:
        """Start (or resume) the freeze whose record has ``token``, unless this replica already runs it."""
        if token in self._running:
            return
        if len(self._running) >= MAX_QUEUED:
            log.warning("%d freezes queued here; a new one waits for the next resumption", MAX_QUEUED)
            return
        task = asyncio.create_task(self._run(token), name=f"freeze {token[:4]}")
        self._running[token] = task
        task.add_done_callback(lambda _: self._running.pop(token, None))

    async def resume(self) -> int:
        """Submit every freeze not DONE (after a restart, or a replica that died); answers how many."""
        found = 0
        async for record in self._tokens.live_records():
            if record.HasField("freeze") and record.freeze.status != pb.CONTAINER_STATUS_DONE:
                found += 1
                self.submit(record.container_token)
        return found

    async def resume_periodically(self, interval: float = RESUME_INTERVAL) -> None:
        while True:
            try:
                resumed = await self.resume()
            except WaveError as exc:
                # An expected outage (the token store down, already said once at start): one line.
                log.warning("looking for interrupted freezes failed: %s; retrying in %gs", exc.message, interval)
            except Exception:
                log.exception("looking for interrupted freezes failed; retrying in %gs", interval)
            else:
                if resumed:
                    log.info("%d freeze(s) not done: resumed (or running elsewhere)", resumed)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop copying; what was BUILDING is resumed at the next start."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, token: str) -> None:
        async with self._slots:
            lock = f"{EPHEMERAL_LOCK_PREFIX}freeze-{token}"
            holder = await self._tokens.lock(lock, LEASE_SECONDS)
            if holder is None:
                return  # another replica copies it
            try:
                await self._attempt(token)
            finally:
                await self._tokens.unlock(lock, holder)

    async def _attempt(self, token: str) -> None:
        record = await self._tokens.get(token)
        if record is None or not record.HasField("freeze") or record.freeze.status == pb.CONTAINER_STATUS_DONE:
            return
        state = record.freeze
        state.attempts += 1
        if state.attempts > MAX_ATTEMPTS:
            await self._finish(
                record,
                f"the copy was interrupted {MAX_ATTEMPTS} times (service restarts); ask for the freeze again",
            )
            return
        state.status = pb.CONTAINER_STATUS_BUILDING
        await self._tokens.update(record)
        deadline = self._config.service.freeze_deadline
        step = _CopyStep()
        try:
            async with asyncio.timeout(deadline.total_seconds()) as timer:
                await self._copy(record, step)
        except WaveError as exc:
            await self._finish(record, exc.message)
        except TimeoutError:
            if not timer.expired():
                await self._finish(record, _incident(record))
                return
            await self._finish(
                record,
                f"the copy did not end within {_duration(deadline)} ([service].freeze_deadline): it was "
                f"{step.what} ({step.done} of {step.total} blobs done); the source is too slow: ask for the "
                "freeze again later, or ask the operator to raise [service].freeze_deadline",
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._finish(record, _incident(record))
        else:
            await self._finish(record, "")

    async def _finish(self, record: pb.ContainerRecord, reason: str) -> None:
        state = record.freeze
        state.status = pb.CONTAINER_STATUS_DONE
        state.succeeded = not reason
        state.reason = reason
        state.done_time.CopyFrom(self._clock())
        await self._tokens.update(record)
        if self._metrics is not None:
            self._metrics.freezes.labels("succeeded" if not reason else "failed").inc()
        if reason:
            log.info("freeze %s failed: %s", record.request_id, reason)
        else:
            log.info("freeze %s pushed %s", record.request_id, record.target_image)

    async def _augmented(self, record: pb.ContainerRecord) -> AugmentedImage:
        pinned = TokenRecord.of(record)
        image = augment_record(await fetch_pinned(self._upstream, pinned), pinned)
        if str(image.manifest.digest) != record.target_manifest_digest:
            raise WaveError(
                Errors.INTERNAL,
                f"the augmented manifest is {image.manifest.digest}, not the {record.target_manifest_digest} "
                "computed at creation; ask for the freeze again",
            )
        return image

    async def _copy(self, record: pb.ContainerRecord, step: _CopyStep) -> None:
        source = ImageRef.parse(record.container_image)
        target_ref = ImageRef.parse(record.target_image, field="target_image")
        assert target_ref.tag is not None
        check_push_allowed(self._upstream, target_ref, source=source)
        target = Repository(self._upstream, target_ref.registry, target_ref.repository)
        image = await self._augmented(record)
        # One platform is pushed as its manifest; several as their manifests, then the index.
        several = len(image.images) > 1 and image.index is not None
        top = image.index if several and image.index is not None else image.manifest
        blobs = _blobs(image, source)
        progress = record.freeze.progress
        progress.Clear()
        progress.blobs_total = step.total = len(blobs)
        pushing = _Pushing(target, record.freeze.build_repository)
        if await pushing.run(target.manifest_digest(target_ref.tag)) == top.digest:
            progress.blobs_present = len(blobs)  # asked again: nothing to push
            return
        await self._tokens.update(record)
        target_route = self._upstream.route(target.registry).name
        for blob in blobs:
            step.what = f"on {blob.kind} blob {blob.digest} ({blob.size} bytes)"
            if await pushing.run(target.blob_size(blob.digest)) is not None:
                progress.blobs_present += 1
            elif blob.kind == "config":
                await pushing.run(target.push_blob(blob.digest, blob.size, blob.data))
                progress.blobs_copied += 1
                progress.bytes_copied += blob.size
            else:
                location = None
                if blob.source is not None and self._upstream.route(blob.source.registry).name == target_route:
                    location = await pushing.run(target.mount(blob.digest, blob.source.repository))
                    if location is None:
                        progress.blobs_mounted += 1
                        step.done += 1
                        await self._tokens.update(record)
                        continue
                await self._stream(pushing, blob, location)
                progress.blobs_copied += 1
                progress.bytes_copied += blob.size
            step.done += 1
            await self._tokens.update(record)
        step.what = "pushing the manifests"
        if several:
            for platform in image.images:
                manifest = platform.manifest
                await pushing.run(target.put_manifest(str(manifest.digest), manifest.data, manifest.media_type))
        await pushing.run(target.put_manifest(target_ref.tag, top.data, top.media_type))

    async def _stream(self, pushing: _Pushing, blob: _Blob, location: str | None) -> None:
        """Stream one blob into the target; a retry starts it again from its first byte."""
        target = pushing.target
        label = f"blob {blob.digest}"
        retries = self._config.upstream.retries
        for attempt in range(retries + 1):
            upload = location if location is not None and attempt == 0 else None
            try:
                async with self._source_chunks(blob) as chunks:
                    checked = CheckedStream(chunks, blob.digest, blob.size, label)
                    where: str = upload if upload is not None else await pushing.run(target.start_upload(blob.digest))
                    try:
                        await pushing.run(target.finish_upload(where, blob.digest, blob.size, checked.body))
                    except WaveError:
                        if checked.failure is not None:
                            raise checked.failure from None
                        raise
                return
            except StreamResent:
                if checked.failure is not None:
                    raise checked.failure from None
                if attempt == retries:
                    raise WaveError(
                        Errors.UPSTREAM_UNAVAILABLE,
                        f"{label}: the upload to registry {target.registry} was cut {retries + 1} times; retry later",
                    ) from None
                log.debug("freeze: %s was cut on its way to %s; starting it again", label, target.registry)

    @asynccontextmanager
    async def _source_chunks(self, blob: _Blob) -> AsyncIterator[AsyncIterator[bytes]]:
        """Where a blob's bytes come from: the layer store (injected) or its registry (base)."""
        source = blob.source
        if source is None:
            yield self._layers.read(blob.digest)
            return
        what = f"blob {source.registry}/{source.repository}@{blob.digest}"
        async with self._upstream.request(
            source.registry, source.repository, "GET", f"blobs/{blob.digest}", not_found=Errors.BLOB_UNKNOWN, what=what
        ) as resp:
            yield self._upstream.iter_body(resp, source.registry, what, chunk_size=1 << 20)


def _blobs(image: AugmentedImage, source: ImageRef) -> list[_Blob]:
    """Every blob the frozen image needs, once each: configs, then layers in manifest order."""
    blobs: dict[Digest, _Blob] = {}
    for platform in image.images:
        config = platform.config
        blobs.setdefault(config.digest, _Blob(config.digest, len(config.data), "config", config.data))
    for platform in image.images:
        manifest = ImageManifest.parse(
            platform.manifest.data, MediaType(platform.manifest.media_type), "augmented manifest"
        )
        for layer in manifest.layers:
            if layer.digest in platform.included:
                blob = _Blob(layer.digest, layer.size, "base", source=ImageRef.parse(platform.included[layer.digest]))
            elif layer.digest in platform.base_layers:
                blob = _Blob(layer.digest, layer.size, "base", source=source)
            else:
                blob = _Blob(layer.digest, layer.size, "injected")
            blobs.setdefault(layer.digest, blob)
    return list(blobs.values())


class _Pushing:
    """Errors from the target registry, reworded: a refused push names the entry to configure."""

    def __init__(self, target: Repository, build_repository: str) -> None:
        self.target = target
        self._build_repository = build_repository

    async def run(self, step: Awaitable[_T]) -> _T:
        try:
            return await step
        except WaveError as exc:
            if exc.kind is Errors.UPSTREAM_DENIED:
                route = self.target.client.route(self.target.registry)
                who = (
                    f"the credentials configured for it (user {route.username!r})"
                    if route.has_credentials
                    else "an anonymous push"
                )
                fix = (
                    f"check that user may push to {self.target.name}"
                    if route.has_credentials
                    else hint_credentials(route) + f", for a user that may push to {self.target.name}"
                )
                raise WaveError(
                    Errors.UPSTREAM_DENIED,
                    f"registry {self.target.registry} refused {who} to {self.target.name}; {fix}",
                ) from None
            raise
