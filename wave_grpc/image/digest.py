"""Content digests (``algorithm:hex``), validated at construction."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from wave_grpc.errors import Errors, WaveError, brief

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        length = _HEX_LENGTHS.get(self.algorithm)
        if length is None:
            raise ValueError(f"unsupported digest algorithm {brief(self.algorithm)}; use sha256")
        if len(self.hex) != length or not _HEX.match(self.hex):
            raise ValueError(f"digest hex must be {length} lowercase hex characters")

    @classmethod
    def parse(cls, text: str, *, field: str = "digest") -> Digest:
        """Parse ``sha256:<hex>``; a bad value is a DIGEST_INVALID naming ``field``."""
        algorithm, sep, hex_part = text.partition(":")
        if not sep:
            raise WaveError(Errors.DIGEST_INVALID, f"{field}: {brief(text)} is not a digest; expected sha256:<64 hex>")
        try:
            return cls(algorithm, hex_part)
        except ValueError as exc:
            raise WaveError(Errors.DIGEST_INVALID, f"{field}: {brief(text)} is not a digest: {exc}") from None

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def is_digest(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except WaveError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
