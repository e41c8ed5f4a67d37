"""What a host string is: an IP address in any spelling a resolver accepts, or a plain name.

Pure and dependency-free, so that the config (validating ``layer_hosts``) and the
address policy (wave_grpc/registry/policy.py) decide it the same way.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def ip_literal(host: str) -> Address | None:
    """The address a host string spells, in any spelling a resolver accepts
    (``127.1``, ``0x7f.0.0.1``, ``2130706433``, ``[::ffff:127.0.0.1]``), or None for a name."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        # inet_aton takes the BSD spellings (hex, octal, fewer than four parts).
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def as_ipv4(address: Address) -> Address:
    """IPv4-mapped and 6to4 IPv6 addresses judged as the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return mapped
    return address


def public_unicast(address: Address) -> bool:
    """A globally routable unicast address: not loopback, private, link-local, unique-local,
    shared (CGNAT), reserved, multicast or unspecified."""
    address = as_ipv4(address)
    return address.is_global and not address.is_multicast


def plain_host_name(host: str) -> bool:
    """A DNS name, not an address in any spelling."""
    name = host.lower().rstrip(".")
    if not name or ip_literal(name) is not None:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Networks:
    """Addresses and CIDR blocks (trusted proxies): does a peer's address fall in one of them?

    Empty is a meaningful value (no block listed); a caller says what empty means."""

    blocks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Networks:
        """``["10.0.0.0/8", "127.0.0.1", "::1"]``; a ``ValueError`` names the entry that is neither."""
        blocks = []
        for entry in entries:
            try:
                blocks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8)") from None
        return cls(tuple(blocks))

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def __contains__(self, host: object) -> bool:
        """True when ``host`` (an address string, IPv4-mapped judged as IPv4) is in a listed block."""
        address = ip_literal(host) if isinstance(host, str) else None
        if address is None:
            return False
        candidates = {address, as_ipv4(address)}
        return any(candidate in block for candidate in candidates for block in self.blocks)

    def __str__(self) -> str:
        return ", ".join(str(block) for block in self.blocks)
