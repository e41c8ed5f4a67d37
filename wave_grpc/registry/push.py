"""Writing to a registry: the distribution API's push side, over :class:`RegistryClient`.

Blobs go up as one monolithic upload (``POST`` a session, ``PUT`` the bytes with
``?digest=``): the registry checks the digest before it commits anything, so a
cut or wrong stream leaves no blob behind. Within one registry a blob is
mounted from another repository instead (``POST ?mount=&from=``), which sends
no bytes. A manifest goes last, by tag, byte for byte.

Used by the OCI layer store (wave_grpc/stores/oci.py) and by freezes
(wave_grpc/service/freeze.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MANIFEST_MEDIA_TYPES
from wave_grpc.registry.client import RegistryClient

PUSH = "pull,push"


class StreamResent(Exception):
    """The transport asked for a streamed body a second time (a retry): the caller restarts the copy."""


@dataclass(frozen=True, slots=True)
class Repository:
    """One repository of one registry, as writes address it."""

    client: RegistryClient
    registry: str
    name: str

    def label(self, reference: str = "") -> str:
        sep = "@" if ":" in reference else ":"
        return f"{self.registry}/{self.name}" + (f"{sep}{reference}" if reference else "")

    async def blob_size(self, digest: Digest) -> int | None:
        """The stored blob's size, or None when the repository does not have it."""
        try:
            async with self.client.request(
                self.registry,
                self.name,
                "HEAD",
                f"blobs/{digest}",
                not_found=Errors.BLOB_UNKNOWN,
                actions=PUSH,
                what=self.label(str(digest)),
            ) as resp:
                return resp.content_length
        except WaveError as exc:
            if exc.kind is Errors.BLOB_UNKNOWN:
                return None
            raise

    async def manifest_digest(self, reference: str) -> Digest | None:
        """What ``reference`` resolves to here, or None when it is not there."""
        try:
            async with self.client.request(
                self.registry,
                self.name,
                "HEAD",
                f"manifests/{reference}",
                accept=tuple(str(m) for m in MANIFEST_MEDIA_TYPES),
                actions=PUSH,
                what=self.label(reference),
            ) as resp:
                header = resp.headers.get("Docker-Content-Digest", "")
        except WaveError as exc:
            if exc.kind in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        return Digest.parse(header) if Digest.is_digest(header) else None

    async def mount(self, digest: Digest, source: str) -> str | None:
        """Mount ``digest`` from repository ``source`` of the same registry.

        None when mounted; else the upload location the registry opened instead
        (``202``: it does not have the blob there, or does not mount), to upload to.
        """
        upstream_source = self.client.upstream_repository(self.client.route(self.registry), source)
        async with self.client.request(
            self.registry,
            self.name,
            "POST",
            f"blobs/uploads/?mount={digest}&from={upstream_source}",
            actions=PUSH,
            mount_from=source,
            headers={"Content-Length": "0"},
            what=self.label(str(digest)),
        ) as resp:
            if resp.status == 201:
                return None
            return self._upload_location(resp.status, resp.headers.get("Location", ""), str(resp.url), digest)

    async def start_upload(self, digest: Digest) -> str:
        async with self.client.request(
            self.registry,
            self.name,
            "POST",
            "blobs/uploads/",
            actions=PUSH,
            headers={"Content-Length": "0"},
            what=self.label(str(digest)),
        ) as resp:
            return self._upload_location(resp.status, resp.headers.get("Location", ""), str(resp.url), digest)

    def _upload_location(self, status: int, location: str, base: str, digest: Digest) -> str:
        if status != 202 or not location:
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{self.label(str(digest))}: registry {self.registry} did not open an upload (HTTP {status})",
            )
        return urljoin(base, location)

    async def finish_upload(self, location: str, digest: Digest, size: int, body: Callable[[], Any]) -> None:
        """``PUT`` the whole blob to an upload ``location``; ``body`` makes it afresh per attempt."""
        separator = "&" if "?" in location else "?"
        async with self.client.request(
            self.registry,
            self.name,
            "PUT",
            "",
            url=f"{location}{separator}digest={digest}",
            actions=PUSH,
            body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            what=self.label(str(digest)),
        ) as resp:
            if resp.status != 201:
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{self.label(str(digest))}: registry {self.registry} answered HTTP {resp.status} to the upload",
                )

    async def push_blob(self, digest: Digest, size: int, source: Path | bytes) -> None:
        """Upload a blob held here (bytes, or a verified local file)."""

        def body() -> object:
            return source.open("rb") if isinstance(source, Path) else source

        await self.finish_upload(await self.start_upload(digest), digest, size, body)

    async def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        async with self.client.request(
            self.registry,
            self.name,
            "PUT",
            f"manifests/{reference}",
            actions=PUSH,
            body=lambda: data,
            headers={"Content-Type": media_type},
            what=self.label(reference),
        ) as resp:
            if resp.status not in (200, 201):
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{self.label(reference)}: registry {self.registry} answered HTTP {resp.status} to the manifest",
                )
            said = resp.headers.get("Docker-Content-Digest", "")
        if Digest.is_digest(said) and Digest.parse(said) != Digest.of(data):
            raise WaveError(
                Errors.DIGEST_INVALID,
                f"{self.label(reference)}: registry {self.registry} stored the manifest as {said}, "
                f"not {Digest.of(data)}; it rewrites manifests, so digests cannot be kept there",
            )


class CheckedStream:
    """A blob's bytes on their way from one registry to another, checked as they pass.

    The stream is cut (an exception inside the upload, so the target commits
    nothing) as soon as more than ``size`` bytes arrive, and at the end unless
    the bytes hash to ``digest``. ``failure`` keeps what was wrong, since the
    HTTP client reports a cut upload as its own connection error.
    """

    def __init__(self, chunks: AsyncIterator[bytes], digest: Digest, size: int, label: str) -> None:
        self._chunks = chunks
        self._digest = digest
        self._size = size
        self._label = label
        self._given = False
        self.sent = 0
        self.failure: WaveError | None = None

    def body(self) -> AsyncIterator[bytes]:
        """The body for one request; asked twice (a transport retry) it raises :class:`StreamResent`."""
        if self._given:
            raise StreamResent(self._label)
        self._given = True
        return self._checked()

    async def _checked(self) -> AsyncIterator[bytes]:
        hasher = hashlib.sha256()
        async for chunk in self._chunks:
            self.sent += len(chunk)
            if self.sent > self._size:
                self.failure = WaveError(
                    Errors.DIGEST_INVALID,
                    f"{self._label}: the source sent more than the {self._size} bytes it declared",
                )
                raise self.failure
            hasher.update(chunk)
            yield chunk
        if self.sent != self._size or hasher.hexdigest() != self._digest.hex:
            self.failure = WaveError(
                Errors.DIGEST_INVALID,
                f"{self._label}: the source sent {self.sent} bytes that are not blob {self._digest}; none stored",
            )
            raise self.failure
